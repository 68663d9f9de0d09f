"""TSD samples from mixtures (paper §3, DESIGN §2).

A mixture with N distinct target-domain classes yields N positive samples (target = that
class, frame labels = its events) and ceil(N * negatives_per_positive) negative samples (a
class absent from the mixture, chosen to balance classes: the absent class with the fewest
negatives so far, ties broken by a seeded RNG). A clip with no class of its domain yields one
negative, so background-only clips still teach rejection.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tsd_ray.types import Event, MixtureRecord, Seconds


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
    """Binary frame activity (n_frames,) uint8; frame i spans [i*hop_s, (i+1)*hop_s).

    A frame is active when it overlaps an event, so the first active frame is
    floor(onset/hop) and the last is ceil(offset/hop) - 1: within one frame of the labels.
    """
    y = np.zeros(n_frames, dtype=np.uint8)
    for ev in events:
        start = max(0, int(math.floor(ev.onset / hop_s + 1e-9)))
        stop = min(n_frames, int(math.ceil(ev.offset / hop_s - 1e-9)))
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
) -> dict[str, list[TsdSample]]:
    """Samples for each mixture of one split, keyed by mixture_id (deterministic for a seed).

    ``classes`` is the domain's class set: only these become targets (other labels in the
    clip are background). With ``fixed_references`` every sample gets one reference id of its
    class from ``references`` (class -> ids), drawn once with the seed (val/test).
    """
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
