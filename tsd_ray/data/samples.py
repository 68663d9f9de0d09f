"""TSD samples from mixtures (paper §3; docs/architecture.md, "TSD samples").

A mixture with N distinct target-domain classes yields N positive samples (target = that
class, frame labels = its events) and ceil(N * negatives_per_positive) negative samples (a
class absent from the mixture, chosen to balance classes: the absent class with the fewest
negatives so far, ties broken by a seeded RNG). A clip with no class of its domain yields one
negative, so background-only clips still teach rejection.

Val/test samples get a fixed reference, drawn only among references that passed the build's
audio check (:func:`build_samples`, ``unusable_references``). A positive whose target's events
all lie in the part of a too-long file that is cropped away becomes a negative
(:func:`clip_label_after_crop`).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tsd_ray.common.types import Event, MixtureRecord, Seconds


@dataclass(frozen=True)
class TsdSample:
    """One (mixture, target class) pair."""

    sample_id: str
    mixture_id: str
    split: str
    domain: str
    target: str
    clip_label: int  # 1 if the target occurs in the mixture
    reference_id: str | None  # fixed for val/test; None = re-drawn every epoch (training)


def frame_labels(events: Sequence[Event], *, n_frames: int, hop_s: Seconds) -> np.ndarray:
    """Binary frame activity (n_frames,) uint8 of ``events`` (see :func:`frame_activity`)."""
    return frame_activity([e.onset for e in events], [e.offset for e in events], n_frames=n_frames, hop_s=hop_s)


def frame_activity(onsets: Sequence[float], offsets: Sequence[float], *, n_frames: int, hop_s: Seconds,
                   dtype=np.uint8) -> np.ndarray:
    """Frame activity (n_frames,) of events given by their onsets/offsets (s), 1 where active;
    frame i spans [i*hop_s, (i+1)*hop_s). The training labels of a strong sample.

    A frame is active when it overlaps an event, so the first active frame is
    floor(onset/hop) and the last is ceil(offset/hop) - 1: within one frame of the labels.
    """
    y = np.zeros(n_frames, dtype=dtype)
    for on, off in zip(onsets, offsets):
        start = max(0, int(math.floor(on / hop_s + 1e-9)))
        stop = min(n_frames, int(math.ceil(off / hop_s - 1e-9)))
        if stop > start:
            y[start:stop] = 1
    return y


def build_samples(
    mixtures: Sequence[MixtureRecord],
    classes: Sequence[str],
    *,
    negatives_per_positive: float = 0.5,
    references: Mapping[str, Sequence[str]] | None = None,
    fixed_references: bool = False,
    seed: int = 0,
    unusable_references: Mapping[str, str] | None = None,
) -> dict[str, list[TsdSample]]:
    """Samples for each mixture of one split, keyed by mixture_id (deterministic for a seed).

    ``classes`` is the domain's class set: only these become targets (other labels in the
    clip are background). With ``fixed_references`` every sample gets one reference id of its
    class from ``references`` (class -> ids), drawn once with the seed (val/test).

    ``unusable_references`` (id -> reason): references the build left out (unreadable or
    silent audio). A sample whose draw lands on one re-draws among its class's usable ones,
    with an RNG of its own (seed and sample id), so every other sample, negatives included,
    is drawn exactly as without it; a class with no usable reference left is a ValueError.
    """
    unusable = dict(unusable_references or {})
    rng = random.Random(seed)
    class_set = sorted(set(classes))
    if not class_set:
        raise ValueError("build_samples: the domain has no classes")
    negatives_so_far: Counter[str] = Counter({c: 0 for c in class_set})
    out: dict[str, list[TsdSample]] = {}
    for mix in sorted(mixtures, key=lambda m: m.mixture_id):
        present = [c for c in mix.clip_classes() if c in negatives_so_far]
        absent = [c for c in class_set if c not in present]
        n_neg = math.ceil(len(present) * negatives_per_positive) if present else 1
        n_neg = min(n_neg, len(absent))
        negatives: list[str] = []
        for _ in range(n_neg):
            pool = [c for c in absent if c not in negatives]
            low = min(negatives_so_far[c] for c in pool)
            choice = rng.choice([c for c in pool if negatives_so_far[c] == low])
            negatives_so_far[choice] += 1
            negatives.append(choice)
        rows = []
        for target, label in [(c, 1) for c in present] + [(c, 0) for c in negatives]:
            ref = None
            if fixed_references:
                ids = (references or {}).get(target)
                if not ids:
                    raise ValueError(f"no reference clip for class '{target}'")
                ref = rng.choice(sorted(ids))
                if ref in unusable:
                    ref = _redraw_reference(ids, unusable, target, f"{seed}:{mix.mixture_id}#{target}")
            rows.append(
                TsdSample(
                    sample_id=f"{mix.mixture_id}#{target}",
                    mixture_id=mix.mixture_id,
                    split=mix.split,
                    domain=mix.domain,
                    target=target,
                    clip_label=label,
                    reference_id=ref,
                )
            )
        out[mix.mixture_id] = rows
    return out


def _redraw_reference(ids: Sequence[str], unusable: Mapping[str, str], target: str, key: str) -> str:
    """One usable reference of ``target`` among ``ids``, drawn by an RNG seeded with ``key``."""
    kept = sorted(i for i in ids if i not in unusable)
    if not kept:
        reasons = "; ".join(f"{i}: {unusable[i]}" for i in sorted(ids))
        raise ValueError(
            f"every reference clip of class '{target}' was left out by the audio check ({reasons}); "
            "replace them in the reference pool (see quarantine.tsv) and build again"
        )
    return random.Random(key).choice(kept)


def clip_label_after_crop(
    target: str, clip_label: int, events: Sequence[Event] | None, kept_events: Sequence[Event]
) -> int:
    """The clip label of a sample once its mixture is cropped to ``frontend.clip_s``.

    Files up to ``clip_s + max_overhang_s`` long are accepted and cropped, and the
    events are clipped to the kept part (``kept_events``; an event wholly in the tail is gone).
    A positive whose target has events in the file but none left in the kept part becomes a
    negative (label 0): the audio the model sees does not hold the target, and a negative of
    a class the mixture's domain knows is a valid sample of the design (the mixture keeps its
    other samples). Without events for the target (``events`` None, or weak labels only for
    this class) nothing says where the sound was, so the label stays as given.

    Args:
        target: the sample's target class.
        clip_label: its planned label (1 = the target occurs in the file).
        events: all events of the file (strong labels), None when the corpus gives none.
        kept_events: the events clipped to the kept part, empty ones dropped.
    """
    if clip_label != 1 or events is None or not any(e.label == target for e in events):
        return clip_label
    return int(any(e.label == target for e in kept_events))


def summarize(samples_by_split: Mapping[str, Mapping[str, Sequence[TsdSample]]]) -> dict:
    """Counts per split and class: {split: {"mixtures", "samples", "positives", "negatives",
    "per_class": {cls: {"pos", "neg"}}}}."""
    summary = {}
    for split, by_mix in samples_by_split.items():
        per_class: dict[str, dict[str, int]] = defaultdict(lambda: {"pos": 0, "neg": 0})
        pos = neg = 0
        for rows in by_mix.values():
            for s in rows:
                key = "pos" if s.clip_label else "neg"
                per_class[s.target][key] += 1
                pos += s.clip_label
                neg += 1 - s.clip_label
        summary[split] = {
            "mixtures": len(by_mix),
            "samples": pos + neg,
            "positives": pos,
            "negatives": neg,
            "per_class": dict(sorted(per_class.items())),
        }
    return summary
