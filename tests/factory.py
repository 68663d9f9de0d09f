"""Factory of small fixture corpora written in the exact on-disk shapes of the real ones.

Every ``write_*`` function writes audio (seeded noise, via soundfile) and label files the way
the real corpus lays them out, and returns the paths. Rows are given as tuples of fields
(joined with tabs) or as raw strings (written as-is, e.g. to plant a malformed line); the
defaults are clean, realistic rows. ``missing_audio`` names files whose audio is *not* written.

- :func:`write_dcase_strong_fixture`: DESED/DCASE strong TSV + audio folder.
- :func:`write_dcase_weak_fixture`: DCASE weak TSV + audio folder.
- :func:`write_urbansed_fixture`: ``audio/<split>/X.wav`` + ``annotations/<split>/X.txt`` + ``.jams``.
- :func:`write_audioset_fixture`: ``audioset_train_strong.tsv`` + ``mid_to_display_name.tsv``.
- :func:`write_reference_fixture`: reference TSV + isolated clips.
- :func:`write_spec_fixture`: a whole dataset (all roles, all formats) and its spec YAML.
- :func:`random_scored_samples`: scored TSD samples (frame probabilities + true events) for the metrics.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from tsd_ray.common.types import Event
from tsd_ray.metrics.scoring import ScoredSample

Row = Sequence[str] | str


@dataclass(frozen=True)
class Written:
    """Paths of a written fixture (None where the format has no such file)."""

    audio: Path  # audio folder
    labels: Path | None = None  # label TSV
    annotations: Path | None = None  # URBAN-SED annotation folder
    label_names: Path | None = None  # AudioSet mid_to_display_name.tsv


def write_wav(
    path: str | Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1, seed: int = 0
) -> Path:
    """Write ``seconds`` of seeded low-level noise as 16-bit PCM WAV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    data = (0.1 * rng.standard_normal((n, channels))).astype(np.float32)  # (N, C)
    sf.write(path, data if channels > 1 else data[:, 0], sr, subtype="PCM_16")
    return path


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def write_tsv(path: str | Path, header: Sequence[str] | None, rows: Iterable[Row]) -> Path:
    """Write a tab-separated file (``header`` None: no header line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [] if header is None else ["\t".join(header)]
    lines += [r if isinstance(r, str) else "\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _first_field(row: Row) -> str:
    return (row.split("\t")[0] if isinstance(row, str) else row[0]).strip()


def _write_audio_for(
    audio_dir: Path, names: Iterable[str], missing: Iterable[str], seconds: float, sr: int
) -> None:
    skip = set(missing)
    for name in dict.fromkeys(names):
        if name and name not in skip:
            write_wav(audio_dir / name, seconds, sr, seed=_seed(name))


# --------------------------------------------------------------------------------------------
# DESED / DCASE
# --------------------------------------------------------------------------------------------

#: DESED-style strong rows: unsorted events in one file and a no-event file (empty fields).
STRONG_ROWS: tuple[Row, ...] = (
    ("Y00pbt6aJV8Y_30.000_40.000.wav", "0.000", "4.971", "Dog"),
    ("Y0bRUkLsttto_10.000_20.000.wav", "3.187", "9.543", "Speech"),
    ("Y0bRUkLsttto_10.000_20.000.wav", "0.512", "1.734", "Speech"),
    ("Y0bRUkLsttto_10.000_20.000.wav", "2.000", "6.250", "Dog"),
    ("Y1nNJNHTEzbg_0.000_10.000.wav", "", "", ""),
)

#: DCASE weak rows: comma-separated labels, one clip with none.
WEAK_ROWS: tuple[Row, ...] = (
    ("Y0AnJNEjW2Cs_20.000_30.000.wav", "Dog,Speech"),
    ("Y0E33n7VH_bU_60.000_70.000.wav", "Speech"),
    ("Y0GwfhnfJbrg_30.000_40.000.wav", ""),
)


def write_dcase_strong_fixture(
    directory: str | Path,
    rows: Iterable[Row] = STRONG_ROWS,
    *,
    tsv_name: str = "strong.tsv",
    audio_name: str = "audio",
    missing_audio: Iterable[str] = (),
    seconds: float = 10.0,
    sr: int = 16000,
) -> Written:
    """DESED strong TSV (``filename onset offset event_label``) + one WAV per listed file."""
    directory = Path(directory)
    rows = list(rows)
    audio = directory / audio_name
    audio.mkdir(parents=True, exist_ok=True)
    labels = write_tsv(directory / tsv_name, ("filename", "onset", "offset", "event_label"), rows)
    _write_audio_for(audio, (_first_field(r) for r in rows), missing_audio, seconds, sr)
    return Written(audio=audio, labels=labels)


def write_dcase_weak_fixture(
    directory: str | Path,
    rows: Iterable[Row] = WEAK_ROWS,
    *,
    tsv_name: str = "weak.tsv",
    audio_name: str = "audio",
    missing_audio: Iterable[str] = (),
    seconds: float = 10.0,
    sr: int = 16000,
) -> Written:
    """DCASE weak TSV (``filename event_labels``) + one WAV per listed file."""
    directory = Path(directory)
    rows = list(rows)
    audio = directory / audio_name
    audio.mkdir(parents=True, exist_ok=True)
    labels = write_tsv(directory / tsv_name, ("filename", "event_labels"), rows)
    _write_audio_for(audio, (_first_field(r) for r in rows), missing_audio, seconds, sr)
    return Written(audio=audio, labels=labels)


# --------------------------------------------------------------------------------------------
# URBAN-SED
# --------------------------------------------------------------------------------------------

#: URBAN-SED annotations per soundscape stem (no header, ``onset offset label``).
URBANSED_FILES: dict[str, tuple[Row, ...]] = {
    "soundscape_train_bimodal0": (
        ("4.511", "7.900", "siren"),
        ("0.000", "3.202", "dog_bark"),
    ),
    "soundscape_train_bimodal1": (("1.250", "2.040", "car_horn"),),
    "soundscape_train_uniform2": (
        ("0.731", "5.118", "dog_bark"),
        ("2.600", "9.990", "siren"),
    ),
}


def write_urbansed_fixture(
    root: str | Path,
    split: str = "train",
    files: dict[str, Sequence[Row]] | None = None,
    *,
    missing_audio: Iterable[str] = (),
    missing_annotation: Iterable[str] = (),
    seconds: float = 10.0,
    sr: int = 44100,
) -> Written:
    """``root/audio/<split>/X.wav`` + ``root/annotations/<split>/X.txt`` (+ ``X.jams``).

    ``missing_audio`` / ``missing_annotation`` name stems whose WAV / TXT is not written.
    """
    root = Path(root)
    files = URBANSED_FILES if files is None else files
    audio = root / "audio" / split
    annotations = root / "annotations" / split
    audio.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    no_audio, no_ann = set(missing_audio), set(missing_annotation)
    for stem, lines in files.items():
        if stem not in no_audio:
            write_wav(audio / f"{stem}.wav", seconds, sr, seed=_seed(stem))
        if stem not in no_ann:
            write_tsv(annotations / f"{stem}.txt", None, lines)
        jams = {
            "annotations": [],
            "file_metadata": {"duration": seconds, "jams_version": "0.3.1"},
            "sandbox": {},
        }
        (annotations / f"{stem}.jams").write_text(json.dumps(jams))
    return Written(audio=audio, annotations=annotations)


# --------------------------------------------------------------------------------------------
# AudioSet strong
# --------------------------------------------------------------------------------------------

#: machine id -> display name (mid_to_display_name.tsv).
AUDIOSET_NAMES: dict[str, str] = {
    "/m/04rlf": "Music",
    "/m/09x0r": "Speech",
    "/m/0bt9lr": "Dog",
    "/m/07yv9": "Vehicle",
}

#: AudioSet strong rows (``segment_id start_time_seconds end_time_seconds label``).
AUDIOSET_ROWS: tuple[Row, ...] = (
    ("YxlGt805lTA_30000", "0.000", "2.140", "/m/04rlf"),
    ("YxlGt805lTA_30000", "1.070", "3.560", "/m/09x0r"),
    ("b0RFKhbpFJA_30000", "0.000", "10.000", "/m/0bt9lr"),
    ("-0SdAVK79lg_110000", "4.310", "6.060", "/m/09x0r"),
)


def write_audioset_fixture(
    directory: str | Path,
    rows: Iterable[Row] = AUDIOSET_ROWS,
    names: dict[str, str] | None = None,
    *,
    tsv_name: str = "audioset_train_strong.tsv",
    filename_template: str = "{segment_id}.wav",
    missing_audio: Iterable[str] = (),
    seconds: float = 10.0,
    sr: int = 16000,
) -> Written:
    """AudioSet strong TSV + ``mid_to_display_name.tsv`` (no header) + audio named by template.

    ``missing_audio`` names segment ids whose audio is not written (as when videos vanish).
    """
    directory = Path(directory)
    rows = list(rows)
    names = AUDIOSET_NAMES if names is None else names
    labels = write_tsv(
        directory / tsv_name,
        ("segment_id", "start_time_seconds", "end_time_seconds", "label"),
        rows,
    )
    label_names = write_tsv(directory / "mid_to_display_name.tsv", None, names.items())
    audio = directory / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    skip = set(missing_audio)
    for segment_id in dict.fromkeys(_first_field(r) for r in rows):
        if segment_id and segment_id not in skip:
            name = filename_template.format(segment_id=segment_id)
            write_wav(audio / name, seconds, sr, seed=_seed(segment_id))
    return Written(audio=audio, labels=labels, label_names=label_names)


# --------------------------------------------------------------------------------------------
# Reference pool
# --------------------------------------------------------------------------------------------

REFERENCE_ROWS: tuple[Row, ...] = (
    ("dog_001.wav", "Dog"),
    ("speech_001.wav", "Speech"),
    ("speech_002.wav", "Speech"),
)


def write_reference_fixture(
    directory: str | Path,
    rows: Iterable[Row] = REFERENCE_ROWS,
    *,
    tsv_name: str = "references.tsv",
    audio_name: str = "references",
    missing_audio: Iterable[str] = (),
    seconds: float = 2.0,
    sr: int = 16000,
) -> Written:
    """Reference TSV (``filename event_label``) + one isolated clip per listed file."""
    directory = Path(directory)
    rows = list(rows)
    audio = directory / audio_name
    audio.mkdir(parents=True, exist_ok=True)
    labels = write_tsv(directory / tsv_name, ("filename", "event_label"), rows)
    _write_audio_for(audio, (_first_field(r) for r in rows), missing_audio, seconds, sr)
    return Written(audio=audio, labels=labels)


# --------------------------------------------------------------------------------------------
# A whole dataset spec
# --------------------------------------------------------------------------------------------

SPEC_SOURCE_CLASSES: tuple[str, ...] = ("car_horn", "dog_bark", "siren")
SPEC_TARGET_CLASSES: tuple[str, ...] = ("Dog", "Music", "Speech")

#: URBAN-SED validate split (source_val).
URBANSED_VALIDATE_FILES: dict[str, tuple[Row, ...]] = {
    "soundscape_validate_bimodal0": (("1.000", "2.500", "car_horn"), ("3.000", "8.000", "siren")),
    "soundscape_validate_uniform1": (("0.250", "4.750", "dog_bark"),),
}
#: target_train: weak labels (and, for the SS baseline, strong ones of the same files).
TARGET_TRAIN_WEAK_ROWS: tuple[Row, ...] = (
    ("Y0AnJNEjW2Cs_20.000_30.000.wav", "Dog,Speech"),
    ("Y0E33n7VH_bU_60.000_70.000.wav", "Music"),
    ("Y0GwfhnfJbrg_30.000_40.000.wav", ""),
    ("Y0Hs0Tr_YfzA_0.000_10.000.wav", "Speech"),
)
TARGET_TRAIN_STRONG_ROWS: tuple[Row, ...] = (
    ("Y0AnJNEjW2Cs_20.000_30.000.wav", "5.000", "9.000", "Speech"),
    ("Y0AnJNEjW2Cs_20.000_30.000.wav", "0.500", "2.120", "Dog"),
    ("Y0E33n7VH_bU_60.000_70.000.wav", "0.000", "10.000", "Music"),
    ("Y0GwfhnfJbrg_30.000_40.000.wav", "", "", ""),
    ("Y0Hs0Tr_YfzA_0.000_10.000.wav", "3.310", "4.020", "Speech"),
)
TARGET_TEST_ROWS: tuple[Row, ...] = (
    ("Y5J603SAj7QM_210.000_220.000.wav", "0.000", "3.500", "Dog"),
    ("Y5J603SAj7QM_210.000_220.000.wav", "4.100", "8.000", "Music"),
    ("Y7XXOB6ndzrg_0.000_10.000.wav", "1.500", "2.250", "Speech"),
    ("Y8HzY0VOaWu0_30.000_40.000.wav", "", "", ""),
)
SPEC_REFERENCE_ROWS: tuple[Row, ...] = (
    ("car_horn_01.wav", "car_horn"),
    ("dog_bark_01.wav", "dog_bark"),
    ("siren_01.wav", "siren"),
    ("Dog_01.wav", "Dog"),
    ("Music_01.wav", "Music"),
    ("Speech_01.wav", "Speech"),
    ("Speech_02.wav", "Speech"),
)


def write_spec_fixture(
    directory: str | Path,
    *,
    target_train_as_weak: bool = False,
    seconds: float = 10.0,
    sr: int = 16000,
    **top_level: object,
) -> Path:
    """Write a small dataset using every role and format, and its spec; returns the spec path.

    - source_train / source_val: URBAN-SED ``train`` / ``validate`` (format urbansed)
    - target_train: DCASE weak TSV; target_train_strong: DCASE strong TSV of the same files
      (with ``target_train_as_weak``: target_train is the strong TSV with ``as_weak: true``
      and there is no target_train_strong)
    - target_val: AudioSet strong (format audioset_strong); target_test: DCASE strong
    - references: dcase_reference, one clip per class (two for Speech)

    ``top_level`` keys (e.g. ``target_classes=[...]``, ``unknown_labels="ignore"``) are
    written into the spec as given. Paths in the spec are relative to ``root: .``.
    """
    d = Path(directory)
    urban = d / "URBAN-SED"
    write_urbansed_fixture(urban, "train", URBANSED_FILES, seconds=seconds, sr=sr)
    write_urbansed_fixture(urban, "validate", URBANSED_VALIDATE_FILES, seconds=seconds, sr=sr)
    meta = d / "metadata"
    write_dcase_weak_fixture(
        d,
        TARGET_TRAIN_WEAK_ROWS,
        tsv_name="metadata/target_train_weak.tsv",
        audio_name="audio/target_train",
        seconds=seconds,
        sr=sr,
    )
    write_dcase_strong_fixture(
        d,
        TARGET_TRAIN_STRONG_ROWS,
        tsv_name="metadata/target_train_strong.tsv",
        audio_name="audio/target_train",
        seconds=seconds,
        sr=sr,
    )
    write_audioset_fixture(
        d / "audioset",
        AUDIOSET_ROWS,
        tsv_name="audioset_eval_strong.tsv",
        seconds=seconds,
        sr=sr,
    )
    write_dcase_strong_fixture(
        d,
        TARGET_TEST_ROWS,
        tsv_name="metadata/target_test.tsv",
        audio_name="audio/target_test",
        seconds=seconds,
        sr=sr,
    )
    write_reference_fixture(
        d,
        SPEC_REFERENCE_ROWS,
        tsv_name="metadata/references.tsv",
        audio_name="audio/references",
        sr=sr,
    )
    assert meta.is_dir()
    splits: dict[str, dict[str, object]] = {
        "source_train": {
            "format": "urbansed",
            "audio": "URBAN-SED/audio/train",
            "annotations": "URBAN-SED/annotations/train",
        },
        "source_val": {
            "format": "urbansed",
            "audio": "URBAN-SED/audio/validate",
            "annotations": "URBAN-SED/annotations/validate",
        },
        "target_train": {
            "format": "dcase_weak",
            "labels": "metadata/target_train_weak.tsv",
            "audio": "audio/target_train",
        },
        "target_train_strong": {
            "format": "dcase_strong",
            "labels": "metadata/target_train_strong.tsv",
            "audio": "audio/target_train",
        },
        "target_val": {
            "format": "audioset_strong",
            "labels": "audioset/audioset_eval_strong.tsv",
            "label_names": "audioset/mid_to_display_name.tsv",
            "audio": "audioset/audio",
            "filename_template": "{segment_id}.wav",
        },
        "target_test": {
            "format": "dcase_strong",
            "labels": "metadata/target_test.tsv",
            "audio": "audio/target_test",
        },
    }
    if target_train_as_weak:
        splits["target_train"] = dict(splits.pop("target_train_strong"), as_weak=True)
    spec: dict[str, object] = {
        "name": "fixture",
        "root": ".",
        "splits": splits,
        "references": {
            "format": "dcase_reference",
            "labels": "metadata/references.tsv",
            "audio": "audio/references",
        },
    }
    spec.update(top_level)
    path = d / "dataset.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def edit_spec(path: str | Path, **changes: object) -> Path:
    """Rewrite a spec YAML with top-level keys replaced (value None removes the key)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def random_scored_samples(
    seed: int = 0,
    *,
    classes: Sequence[str] = ("bark", "bell", "siren"),
    per_class: int = 6,
    frames: int = 120,
    frame_hop_s: float = 0.04,
    decimals: int | None = 2,
) -> list[ScoredSample]:
    """TSD samples (``tsd_ray.metrics.scoring.ScoredSample``) with seeded events and scores that a
    plausible detector could give: a smooth noise floor, raised (by a random amount, sometimes
    shifted or cut short) over each true event, and a few spurious bumps. Two in three samples
    hold 1-2 events of their target (apart, as sed_scores_eval requires); the rest are negatives. Scores are rounded to
    ``decimals`` places (None: not rounded)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in classes:
        for i in range(per_class):
            floor = np.convolve(rng.uniform(0.0, 0.3, frames + 8), np.ones(9) / 9, mode="valid")
            probs = floor.copy()
            events = []
            n_events = 0 if i % 3 == 2 else int(rng.integers(1, 3))
            taken = np.zeros(frames + 2, dtype=bool)  # events of one class never touch
            for _ in range(n_events):
                length = int(rng.integers(8, frames // 3))
                start = int(rng.integers(0, frames - length))
                if taken[start:start + length + 2].any():
                    continue
                taken[start:start + length + 2] = True
                events.append(Event(round(start * frame_hop_s + rng.uniform(0, frame_hop_s), 3),
                                    round((start + length) * frame_hop_s, 3), c))
                shift = int(rng.integers(-4, 5))
                cut = int(rng.integers(0, length // 2)) if rng.random() < 0.3 else 0
                lo, hi = max(0, start + shift), min(frames, start + shift + length - cut)
                probs[lo:hi] += rng.uniform(0.2, 0.7)
            for _ in range(int(rng.integers(0, 3))):
                at = int(rng.integers(0, frames - 5))
                probs[at:at + int(rng.integers(2, 6))] += rng.uniform(0.1, 0.6)
            n_valid = frames - int(rng.integers(0, 10))
            out.append(ScoredSample(sample_id=f"{c}-{i:02d}", target=c,
                                    probs=_rounded(np.clip(probs, 0.0, 1.0), decimals), events=tuple(events),
                                    n_valid=n_valid))
    return out


def _rounded(x: np.ndarray, decimals: int | None) -> np.ndarray:
    return x if decimals is None else x.round(decimals)
