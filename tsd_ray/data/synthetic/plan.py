"""The synthetic corpus as a plan, before any audio: presets, the class sets of each domain,
and every clip's events and reference clips, drawn from seeded random streams (one per split
and clip), so the same preset and seed give the same corpus byte for byte. Rendering and
writing it: :mod:`tsd_ray.data.synthetic.corpus`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tsd_ray.common.types import SPLIT_DOMAIN, SPLITS
from tsd_ray.data.synthetic.sounds import (
    CLASSES,
    FAMILIES,
    draw_instance,
    family_classes,
)

#: Event SNR (dB): the event's active level (sounds.active_rms) vs the background RMS.
DOMAIN_SNR_DB: dict[str, tuple[float, float]] = {"source": (0.0, 15.0), "target": (-5.0, 10.0)}

#: Mixture loudness (dBFS RMS), drawn per clip; the peak is then kept below PEAK_LIMIT.
LEVEL_DBFS = (-32.0, -20.0)
_PLAN, _AUDIO, _ORDER = 0, 1, 2  # random streams of one clip

#: SNR (dB) of a reference clip's event over its light noise floor.
REFERENCE_SNR_DB = (20.0, 35.0)

#: P(1, 2, 3, 4 events) in a mixture and P(an extra event repeats a class of the clip).
EVENT_COUNT_P = (0.3, 0.3, 0.25, 0.15)

REPEAT_P = 0.2

#: Same-class events in one clip keep at least this gap (s) so their labels never merge.
SAME_CLASS_GAP_S = 0.1

#: Reference clips: event at most this long (s), silence-ish padding on both sides (s).
REFERENCE_MAX_EVENT_S = 3.4

REFERENCE_PAD_S = (0.05, 0.3)

REFERENCE_CLIP_S = (0.5, 4.0)

# Random-stream codes; fixed here (not derived from SPLITS) so the bytes never depend on it.
_SPLIT_CODE = {
    "source_train": 1,
    "source_val": 2,
    "target_train": 3,
    "target_val": 4,
    "target_test": 5,
}

_REFERENCE_CODE = 6

#: The domain pattern over a family's classes (see class_sets).
_DOMAIN_PATTERN = ("source", "target", "target", "source", "source", "target", "target")


@dataclass(frozen=True)
class SyntheticPreset:
    """Size of a synthetic corpus.

    ``classes_per_family`` classes are taken from each of the 8 families (half source, half
    target); ``mixtures`` gives the number of mixtures per split, each ``clip_s`` long.
    """

    name: str
    sample_rate: int  # Hz, of every written file
    classes_per_family: int
    mixtures: dict[str, int]
    refs_per_class: int
    clip_s: float = 10.0


PRESETS: dict[str, SyntheticPreset] = {
    "tiny": SyntheticPreset(
        "tiny",
        16000,
        2,
        {
            "source_train": 48,
            "source_val": 16,
            "target_train": 64,
            "target_val": 16,
            "target_test": 16,
        },
        3,
    ),
    "demo": SyntheticPreset(
        "demo",
        32000,
        5,
        {
            "source_train": 500,
            "source_val": 100,
            "target_train": 900,
            "target_val": 150,
            "target_test": 240,
        },
        8,
        # 5-s clips: the demo's whole main job must fit in 15 minutes on 2 CPU cores (a CPU
        # Bi-GRU steps through every output frame); real corpora and `paper` use 10 s.
        clip_s=5.0,
    ),
    "paper": SyntheticPreset(
        "paper",
        44100,
        7,
        {
            "source_train": 4000,
            "source_val": 800,
            "target_train": 8000,
            "target_val": 1000,
            "target_test": 1500,
        },
        20,
    ),
}


@dataclass(frozen=True)
class EventPlan:
    """One event of a clip: where it lies (samples) and how it sounds."""

    label: str
    onset: int  # first sample of the event
    length: int  # samples; offset = onset + length
    snr_db: float
    params: dict[str, float] = field(default_factory=dict)  # draw_instance() output


@dataclass(frozen=True)
class ClipPlan:
    """One audio file to write: a mixture (domain source/target) or a reference clip."""

    split: str  # a split of SPLITS, or "references"
    filename: str
    domain: str  # "source" | "target" | "reference"
    sample_rate: int  # Hz; onsets, lengths and n_samples are in samples at this rate
    n_samples: int
    level_dbfs: float
    events: tuple[EventPlan, ...]
    audio_seed: tuple[int, ...]


@dataclass(frozen=True)
class CorpusPlan:
    """Everything :func:`make_corpus` writes, before any audio is rendered."""

    preset: SyntheticPreset
    seed: int
    overlap_classes: bool
    source_classes: tuple[str, ...]
    target_classes: tuple[str, ...]
    mixtures: dict[str, tuple[ClipPlan, ...]]
    references: tuple[ClipPlan, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        """Every class used by the corpus, source classes first."""
        extra = tuple(c for c in self.target_classes if c not in self.source_classes)
        return self.source_classes + extra


def get_preset(preset: str | SyntheticPreset) -> SyntheticPreset:
    """A preset by name (tiny | demo | paper) or the preset itself."""
    if isinstance(preset, SyntheticPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def class_sets(
    preset: str | SyntheticPreset, overlap_classes: bool = False
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(source_classes, target_classes) of a preset.

    Each family contributes its first ``classes_per_family`` classes, split between domains
    by the pattern S T T S S T T (flipped for every other family), so that neighbouring,
    confusable classes of a family land in the same domain and the halves are equal.
    With ``overlap_classes`` the target set keeps every other of its own classes and takes
    every other source class instead (same size; half of it shared with the source domain).
    """
    p = get_preset(preset)
    if not 1 <= p.classes_per_family <= len(_DOMAIN_PATTERN):
        raise ValueError(
            f"preset {p.name}: classes_per_family must be in 1..{len(_DOMAIN_PATTERN)}"
        )
    source: list[str] = []
    target: list[str] = []
    for fi, family in enumerate(FAMILIES):
        for pos, cls in enumerate(family_classes(family)[: p.classes_per_family]):
            dom = _DOMAIN_PATTERN[pos]
            if fi % 2 == 1:
                dom = "target" if dom == "source" else "source"
            (source if dom == "source" else target).append(cls.name)
    if overlap_classes:
        target = target[::2] + source[1::2]
    return tuple(source), tuple(target)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _plan_events(
    first_class: str,
    classes: tuple[str, ...],
    domain: str,
    n_clip: int,
    sr: int,
    rng: np.random.Generator,
) -> tuple[EventPlan, ...]:
    n_events = int(rng.choice(len(EVENT_COUNT_P), p=EVENT_COUNT_P)) + 1
    events: list[EventPlan] = []
    gap = int(SAME_CLASS_GAP_S * sr)
    for i in range(n_events):
        present = sorted({e.label for e in events})
        if i == 0:
            label = first_class
        elif rng.random() < REPEAT_P:
            label = present[int(rng.integers(len(present)))]
        else:
            free = [c for c in classes if c not in present]
            if not free:
                break
            label = free[int(rng.integers(len(free)))]
        params = draw_instance(CLASSES[label], rng)
        length = min(n_clip, max(2, int(round(params["duration"] * sr))))
        snr = float(rng.uniform(*DOMAIN_SNR_DB[domain]))
        same = [(e.onset, e.onset + e.length) for e in events if e.label == label]
        for _ in range(20):
            onset = int(rng.integers(0, n_clip - length + 1))
            if all(onset + length + gap <= a or onset >= b + gap for a, b in same):
                events.append(EventPlan(label, onset, length, snr, params))
                break
        # else: no room for another event of this class; the clip keeps fewer events
    return tuple(sorted(events, key=lambda e: (e.onset, e.label)))


def _plan_split(
    split: str, preset: SyntheticPreset, seed: int, classes: tuple[str, ...]
) -> tuple[ClipPlan, ...]:
    count = preset.mixtures[split]
    domain = SPLIT_DOMAIN[split]
    code = _SPLIT_CODE[split]
    sr = preset.sample_rate
    n_clip = int(round(preset.clip_s * sr))
    # Round-robin the first event's class (shuffled), so every class occurs in every split
    # (at least count // len(classes) times) even in the tiny preset.
    order = _rng(seed, code, 0, _ORDER)
    cycle = list(order.permutation(len(classes)))
    firsts = [classes[cycle[i % len(classes)]] for i in range(count)]
    order.shuffle(firsts)
    clips = []
    for i in range(count):
        rng = _rng(seed, code, i, _PLAN)
        events = _plan_events(firsts[i], classes, domain, n_clip, sr, rng)
        clips.append(
            ClipPlan(
                split=split,
                filename=f"{split}_{i:05d}.wav",
                domain=domain,
                sample_rate=sr,
                n_samples=n_clip,
                level_dbfs=float(rng.uniform(*LEVEL_DBFS)),
                events=events,
                audio_seed=(seed, code, i, _AUDIO),
            )
        )
    return tuple(clips)


def _plan_references(
    preset: SyntheticPreset, seed: int, classes: tuple[str, ...]
) -> tuple[ClipPlan, ...]:
    sr = preset.sample_rate
    clips = []
    index = 0
    for name in classes:
        cls_code = list(CLASSES).index(name)
        for k in range(preset.refs_per_class):
            rng = _rng(seed, _REFERENCE_CODE, cls_code, k, _PLAN)
            params = draw_instance(CLASSES[name], rng, max_duration_s=REFERENCE_MAX_EVENT_S)
            length = max(2, int(round(params["duration"] * sr)))
            pre = int(round(rng.uniform(*REFERENCE_PAD_S) * sr))
            post = int(round(rng.uniform(*REFERENCE_PAD_S) * sr))
            # clip length within REFERENCE_CLIP_S: only the trailing pad gives or takes
            lo, hi = (int(round(s * sr)) for s in REFERENCE_CLIP_S)
            post = min(max(post, lo - pre - length), hi - pre - length)
            total = pre + length + post
            ev = EventPlan(name, pre, length, float(rng.uniform(*REFERENCE_SNR_DB)), params)
            clips.append(
                ClipPlan(
                    split="references",
                    filename=f"ref_{index:05d}.wav",
                    domain="reference",
                    sample_rate=sr,
                    n_samples=total,
                    level_dbfs=float(rng.uniform(*LEVEL_DBFS)),
                    events=(ev,),
                    audio_seed=(seed, _REFERENCE_CODE, cls_code, k, _AUDIO),
                )
            )
            index += 1
    return tuple(clips)


def plan_corpus(
    preset: str | SyntheticPreset = "tiny", seed: int = 0, overlap_classes: bool = False
) -> CorpusPlan:
    """Every clip of the corpus with its events; deterministic for (preset, seed, overlap)."""
    p = get_preset(preset)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    source, target = class_sets(p, overlap_classes)
    mixtures = {}
    for split in SPLITS:
        classes = source if SPLIT_DOMAIN[split] == "source" else target
        mixtures[split] = _plan_split(split, p, seed, classes)
    used = source + tuple(c for c in target if c not in source)
    return CorpusPlan(
        p, seed, overlap_classes, source, target, mixtures, _plan_references(p, seed, used)
    )
