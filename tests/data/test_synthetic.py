"""Synthetic corpus generator: determinism, on-disk formats, class sets, honest labels, re-runs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from tsd_ray.common.types import SPLIT_DOMAIN, SPLITS
from tsd_ray.data.synthetic import (
    CLASSES,
    FAMILIES,
    PRESETS,
    CorpusDirError,
    SyntheticPreset,
    class_sets,
    draw_instance,
    make_corpus,
    plan_corpus,
    render_clip,
    render_event,
    write_metadata,
)
from tsd_ray.data.synthetic import corpus as corpus_mod

STRONG_FILES = {
    "source_train": "source_train.tsv",
    "source_val": "source_val.tsv",
    "target_train": "target_train_strong.tsv",
    "target_val": "target_val.tsv",
    "target_test": "target_test.tsv",
}
TIME = re.compile(r"^\d+\.\d{3}$")

# A very small preset (1 class per family: 4 source + 4 target) for the multi-run tests.
MICRO = SyntheticPreset(
    "micro",
    16000,
    1,
    {"source_train": 4, "source_val": 2, "target_train": 4, "target_val": 2, "target_test": 2},
    1,
)


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def _sparse(label: str) -> bool:
    cls = CLASSES[label]
    return cls.family == "pulse_train" or cls.fixed.get("carrier") == "crackle"


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    spec = make_corpus(out, "tiny", seed=0)
    assert spec == out / "dataset.yaml"
    return out


# ------------------------------------------------------------------------------------------
# Catalogue and class sets
# ------------------------------------------------------------------------------------------


def test_catalogue_and_presets():
    assert len(CLASSES) >= 48 and len(FAMILIES) >= 6
    assert {c.family for c in CLASSES.values()} == set(FAMILIES)
    assert [PRESETS[p].sample_rate for p in ("tiny", "demo", "paper")] == [16000, 32000, 44100]
    sizes = {p: tuple(map(len, class_sets(p))) for p in PRESETS}
    assert sizes == {"tiny": (8, 8), "demo": (20, 20), "paper": (28, 28)}
    paper_s, paper_t = class_sets("paper")
    assert len(set(paper_s) | set(paper_t)) >= 48
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        class_sets("huge")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_class_sets_disjoint_by_default_overlap_on_request(preset):
    s, t = class_sets(preset)
    assert not set(s) & set(t)
    s2, t2 = class_sets(preset, overlap_classes=True)
    assert s2 == s and len(t2) == len(t)
    shared = set(s2) & set(t2)
    assert len(shared) == len(t) // 2
    # both domains still span every family
    assert {CLASSES[c].family for c in t2} == set(FAMILIES)


def test_overlap_corpus_plan_uses_shared_classes_in_target_splits():
    plan = plan_corpus("tiny", 0, overlap_classes=True)
    shared = set(plan.source_classes) & set(plan.target_classes)
    target_labels = {e.label for c in plan.mixtures["target_test"] for e in c.events}
    assert target_labels <= set(plan.target_classes)
    assert target_labels & shared
    assert {c.events[0].label for c in plan.references} == set(plan.classes)


# ------------------------------------------------------------------------------------------
# The written tiny corpus
# ------------------------------------------------------------------------------------------


def test_spec_file(tiny):
    spec = yaml.safe_load((tiny / "dataset.yaml").read_text())
    s, t = class_sets("tiny")
    assert spec["root"] == "." and spec["unknown_labels"] == "quarantine"
    assert spec["source_classes"] == list(s) and spec["target_classes"] == list(t)
    assert spec["splits"]["target_train"] == {
        "format": "dcase_weak",
        "labels": "metadata/target_train_weak.tsv",
        "audio": "audio/target_train",
    }
    assert spec["splits"]["target_train_strong"]["format"] == "dcase_strong"
    assert spec["references"]["format"] == "dcase_reference"
    for entry in [*spec["splits"].values(), spec["references"]]:
        assert (tiny / entry["labels"]).is_file() and (tiny / entry["audio"]).is_dir()


def test_strong_tsvs_exact_format_and_labels_inside_clip(tiny):
    for split, name in STRONG_FILES.items():
        header, rows = _rows(tiny / "metadata" / name)
        assert header == ["filename", "onset", "offset", "event_label"]
        assert rows
        for row in rows:
            assert len(row) == 4, row
            assert TIME.match(row[1]) and TIME.match(row[2]), row
            onset, offset = float(row[1]), float(row[2])
            assert 0.0 <= onset < offset <= 10.0, row
            assert row[3] in CLASSES
            assert (tiny / "audio" / split / row[0]).is_file()


def test_weak_and_reference_tsvs(tiny):
    header, weak = _rows(tiny / "metadata" / "target_train_weak.tsv")
    assert header == ["filename", "event_labels"]
    _, strong = _rows(tiny / "metadata" / "target_train_strong.tsv")
    from_strong: dict[str, set[str]] = {}
    for row in strong:
        from_strong.setdefault(row[0], set()).add(row[3])
    assert len(weak) == PRESETS["tiny"].mixtures["target_train"]
    for fname, labels in weak:
        assert labels == ",".join(sorted(from_strong[fname]))
    header, refs = _rows(tiny / "metadata" / "references.tsv")
    assert header == ["filename", "event_label"]
    s, t = class_sets("tiny")
    counts: dict[str, int] = {}
    for fname, label in refs:
        counts[label] = counts.get(label, 0) + 1
        assert (tiny / "audio" / "references" / fname).is_file()
    assert counts == {c: PRESETS["tiny"].refs_per_class for c in (*s, *t)}


def test_counts_and_every_class_in_every_split(tiny):
    s, t = class_sets("tiny")
    for split, name in STRONG_FILES.items():
        _, rows = _rows(tiny / "metadata" / name)
        files = {r[0] for r in rows}
        assert len(files) == PRESETS["tiny"].mixtures[split]
        assert len(list((tiny / "audio" / split).glob("*.wav"))) == len(files)
        per_file = {f: sum(r[0] == f for r in rows) for f in files}
        assert set(per_file.values()) <= {1, 2, 3, 4}
        classes = s if SPLIT_DOMAIN[split] == "source" else t
        assert {r[3] for r in rows} == set(classes), split
    # some clips hold two events of one class
    _, rows = _rows(tiny / "metadata" / "source_train.tsv")
    pairs = [(r[0], r[3]) for r in rows]
    assert len(pairs) > len(set(pairs))


def test_audio_files(tiny):
    sr = PRESETS["tiny"].sample_rate
    for split in SPLITS:
        for path in sorted((tiny / "audio" / split).glob("*.wav"))[:6]:
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype, info.frames) == (
                sr,
                1,
                "PCM_16",
                10 * sr,
            )
    for path in (tiny / "audio" / "references").glob("*.wav"):
        info = sf.info(path)
        assert info.channels == 1 and info.subtype == "PCM_16" and info.samplerate == sr
        assert 0.5 * sr <= info.frames <= 4.0 * sr
    assert not list(tiny.rglob("*.part"))
    marker = json.loads((tiny / ".complete.json").read_text())
    assert (marker["preset"], marker["seed"], marker["overlap_classes"]) == ("tiny", 0, False)


def test_classes_json(tiny):
    doc = json.loads((tiny / "classes.json").read_text())
    s, t = class_sets("tiny")
    assert set(doc["classes"]) == set(s) | set(t)
    for name, entry in doc["classes"].items():
        assert entry["family"] == CLASSES[name].family
        assert entry["domain"] == ("source" if name in s else "target")


def test_readers_accept_the_corpus(tiny):
    from tsd_ray.data.corpora import load_spec, read_corpus

    corpus = read_corpus(load_spec(tiny / "dataset.yaml"))
    assert not corpus.quarantined
    assert {k: len(v) for k, v in corpus.mixtures.items()} == PRESETS["tiny"].mixtures
    assert len(corpus.references) == 16 * PRESETS["tiny"].refs_per_class
    assert corpus.source_classes == class_sets("tiny")[0]


# ------------------------------------------------------------------------------------------
# Honest labels and isolated references
# ------------------------------------------------------------------------------------------


def test_event_renders_start_and_end_at_the_labelled_samples():
    """Every class's signal is present in the first and last 20 ms of its extent."""
    sr = 16000
    w = int(0.02 * sr)
    for cls in CLASSES.values():
        for seed in range(2):
            rng = np.random.default_rng(seed)
            params = draw_instance(cls, rng)
            n = int(round(params["duration"] * sr))
            x = render_event(cls, params, n, sr, rng)
            assert x.shape == (n,) and np.all(np.isfinite(x))
            head, tail = np.sqrt(np.mean(x[:w] ** 2)), np.sqrt(np.mean(x[-w:] ** 2))
            assert head > 0.01 and tail > 0.01, (cls.name, head, tail)


def test_mixture_energy_is_higher_inside_labelled_events(tiny):
    """Source clips whose events all have SNR >= 6 dB: inside-label power > 2x outside power.

    Sparse classes (pulse trains, crackle) are left out: their SNR is an active level (the
    gaps between clicks do not count), so their mean power over the label can be lower.
    """
    sr = PRESETS["tiny"].sample_rate
    _, rows = _rows(tiny / "metadata" / "event_details.tsv")
    by_file: dict[str, list[list[str]]] = {}
    for row in rows:
        if row[0] == "source_train":
            by_file.setdefault(row[1], []).append(row)
    checked = 0
    for fname, events in by_file.items():
        if min(float(e[5]) for e in events) < 6.0 or any(_sparse(e[4]) for e in events):
            continue
        y, _ = sf.read(tiny / "audio" / "source_train" / fname, dtype="float32")
        inside = np.zeros(y.shape[0], dtype=bool)
        for e in events:
            inside[int(round(float(e[2]) * sr)) : int(round(float(e[3]) * sr))] = True
        if inside.mean() > 0.9:
            continue
        p_in, p_out = np.mean(y[inside] ** 2), np.mean(y[~inside] ** 2)
        assert p_in > 2.0 * p_out, (fname, p_in, p_out)
        checked += 1
    assert checked >= 5


def test_references_are_single_isolated_events(tiny):
    plan = plan_corpus("tiny", 0)
    sr = plan.preset.sample_rate
    for clip in plan.references[::4]:
        assert len(clip.events) == 1
        ev = clip.events[0]
        y, _ = sf.read(tiny / "audio" / "references" / clip.filename, dtype="float32")
        assert y.shape[0] == clip.n_samples
        event_power = np.mean(y[ev.onset : ev.onset + ev.length] ** 2)
        pads = np.concatenate([y[: max(0, ev.onset - 80)], y[ev.onset + ev.length + 80 :]])
        assert pads.size > 0.04 * sr
        assert 10 * np.log10(event_power / np.mean(pads**2)) > 15.0, clip.filename


# ------------------------------------------------------------------------------------------
# Determinism and re-runs
# ------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_serial_and_parallel(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "_BATCH", 4)  # several tasks, finishing in any order
    a = make_corpus(tmp_path / "a", MICRO, seed=3, num_workers=1).parent
    b = make_corpus(tmp_path / "b", MICRO, seed=3, num_workers=2).parent
    da, db = _digests(a), _digests(b)
    assert da == db
    assert sum(k.endswith(".wav") for k in da) == sum(MICRO.mixtures.values()) + 8
    # another seed: other labels and other audio
    other = plan_corpus(MICRO, seed=4)
    write_metadata(other, tmp_path / "c")
    assert _digests(tmp_path / "c")["metadata/source_train.tsv"] != da["metadata/source_train.tsv"]
    y3, _ = sf.read(a / "audio" / "target_val" / "target_val_00000.wav", dtype="float32")
    y4 = render_clip(other.mixtures["target_val"][0])
    assert y3.shape == y4.shape and not np.allclose(y3, y4, atol=1e-3)


def test_rerun_is_a_noop_and_other_corpora_are_refused(tiny, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()}
    assert make_corpus(tiny, "tiny", seed=0) == tiny / "dataset.yaml"
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()} == before
    with pytest.raises(CorpusDirError, match="seed=1"):
        make_corpus(tiny, "tiny", seed=1)
    with pytest.raises(CorpusDirError, match="preset='demo'"):
        make_corpus(tiny, "demo", seed=0)
    with pytest.raises(CorpusDirError, match="overlap_classes=True"):
        make_corpus(tiny, "tiny", seed=0, overlap_classes=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CorpusDirError, match="not empty"):
        make_corpus(other, "tiny", seed=0)


def test_interrupted_run_leaves_no_marker_and_resumes(tmp_path, monkeypatch):
    real = corpus_mod._render_batch

    def dies_halfway(clips, audio_root):
        real(clips[:5], audio_root)
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(corpus_mod, "_render_batch", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        make_corpus(out, MICRO, seed=3)
    assert not (out / ".complete.json").exists() and (out / ".in_progress.json").exists()
    assert len(list(out.rglob("*.wav"))) == 5
    with pytest.raises(CorpusDirError, match="unfinished"):
        make_corpus(out, MICRO, seed=9)
    monkeypatch.setattr(corpus_mod, "_render_batch", real)
    make_corpus(out, MICRO, seed=3)
    assert (out / ".complete.json").exists() and not (out / ".in_progress.json").exists()
    clean = make_corpus(tmp_path / "clean", MICRO, seed=3).parent
    assert _digests(out) == _digests(clean)
