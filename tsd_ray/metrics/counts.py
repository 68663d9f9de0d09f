"""sed_eval's counters for one-label files, counted directly (no sed_eval call per file).

A TSD sample is a sed_eval file whose reference and system events all carry one label (its
target). For such a file every counter that sed_eval's ``SegmentBasedMetrics`` and
``EventBasedMetrics`` keep can be computed with a few numpy operations, by sed_eval's own rules:

* segment-based: event rolls at ``time_resolution`` with ``floor(onset / res)`` to
  ``ceil(offset / res)``, cut or padded to ``ceil(duration / res)`` segments; true positive,
  false positive, false negative and true negative segments of the file's class; the other
  classes only add true negatives (as in :func:`tsd_ray.metrics.scoring.sed_eval_metrics`);
  overall S = 0, D = false negatives, I = false positives (one label per segment);
* event-based: an estimate hits a reference when ``|onset difference| <= t_collar`` and
  ``|offset difference| <= max(t_collar, percentage_of_length * reference length)``; true
  positives are a maximum bipartite matching of the hits (sed_eval's "optimal" matching:
  its size does not depend on the algorithm); with one label there are no substitutions
  (a leftover pair that hits would enlarge a maximum matching).

The counts are added to sed_eval metric objects, so every F-score, precision and recall is
still computed by sed_eval from them. ``tests/metrics/test_scoring.py`` checks that the
counters equal plain sed_eval's on random files; post-processing grids and every epoch's
validation score are where the time goes (``tune_postprocessing``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def file_labels(ref: Sequence[dict], est: Sequence[dict]) -> tuple[str, ...]:
    """The labels a file's reference and system events carry, sorted."""
    return tuple(sorted({e["event_label"] for e in ref} | {e["event_label"] for e in est}))


def _roll(events: Sequence[dict], n_segments: int, res: float) -> np.ndarray:
    """sed_eval's event roll of one class, cut or padded to ``n_segments``."""
    top = max([n_segments] + [int(math.ceil(e["offset"] * 1 / res)) for e in events])
    roll = np.zeros(top, dtype=bool)
    for e in events:
        roll[int(math.floor(e["onset"] * 1 / res)):int(math.ceil(e["offset"] * 1 / res))] = True
    return roll[:n_segments]


def _max_matching(hits: np.ndarray) -> int:
    """Size of a maximum matching in a bipartite graph given as a (refs, estimates) bool matrix."""
    n_ref, n_est = hits.shape
    if n_ref == 0 or n_est == 0 or not hits.any():
        return 0
    if n_ref == 1 or n_est == 1:
        return 1
    match_est = [-1] * n_est  # reference matched to each estimate
    adjacency = [np.flatnonzero(hits[j]).tolist() for j in range(n_ref)]

    def augment(j: int, seen: list[bool]) -> bool:
        for i in adjacency[j]:
            if not seen[i]:
                seen[i] = True
                if match_est[i] < 0 or augment(match_est[i], seen):
                    match_est[i] = j
                    return True
        return False

    return sum(augment(j, [False] * n_est) for j in range(n_ref))


def event_hits(ref: Sequence[dict], est: Sequence[dict], t_collar: float, percentage_of_length: float) -> np.ndarray:
    """sed_eval's onset and offset conditions for every (reference, estimate) pair: (R, E) bool."""
    r_on = np.array([e["onset"] for e in ref], dtype=np.float64)
    r_off = np.array([e["offset"] for e in ref], dtype=np.float64)
    e_on = np.array([e["onset"] for e in est], dtype=np.float64)
    e_off = np.array([e["offset"] for e in est], dtype=np.float64)
    offset_collar = np.maximum(t_collar, percentage_of_length * (r_off - r_on))
    return (np.abs(r_on[:, None] - e_on[None, :]) <= t_collar) & (
        np.abs(r_off[:, None] - e_off[None, :]) <= offset_collar[:, None])


def add_one_label_files(seg: Any, ev: Any, files: Sequence[tuple[str, list, list, float]], classes: Sequence[str],
                        *, segment_s: float, t_collar_s: float, percentage_of_length: float) -> None:
    """Add the counters of ``files`` (``(file_id, reference_dicts, estimate_dicts, duration_s)``,
    each with at most one label) to sed_eval's ``seg`` / ``ev`` metric objects over ``classes``."""
    res = float(segment_s)
    n_classes = len(classes)
    for fid, ref, est, duration in files:
        labels = file_labels(ref, est)
        if len(labels) > 1:
            raise ValueError(f"file {fid!r} holds labels {list(labels)}: only one-label files are counted here")
        n_segments = int(math.ceil(duration * 1 / res))
        seg.evaluated_length_seconds += duration
        seg.evaluated_files += 1
        ev.evaluated_length += max([0.0] + [e["offset"] for e in ref])
        ev.evaluated_files += 1
        if not labels:  # nothing to find, nothing found: true negatives only
            seg.overall["Ntn"] += n_classes * n_segments
            for c in classes:
                seg.class_wise[c]["Ntn"] += n_segments
            continue
        label = labels[0]
        r, s = _roll(ref, n_segments, res), _roll(est, n_segments, res)
        tp = int(np.count_nonzero(r & s))
        fp = int(np.count_nonzero(s & ~r))
        fn = int(np.count_nonzero(r & ~s))
        tn = int(n_segments - tp - fp - fn)
        counts = {"Ntp": tp, "Ntn": tn, "Nfp": fp, "Nfn": fn, "Nref": tp + fn, "Nsys": tp + fp}
        for key, value in counts.items():
            seg.overall[key] += value
            seg.class_wise[label][key] += value
        seg.overall["Ntn"] += (n_classes - 1) * n_segments
        seg.overall["D"] += fn
        seg.overall["I"] += fp
        for c in classes:
            if c != label:
                seg.class_wise[c]["Ntn"] += n_segments

        hits = event_hits(ref, est, t_collar_s, percentage_of_length)
        ntp = _max_matching(hits)
        counts = {"Nref": len(ref), "Nsys": len(est), "Ntp": ntp, "Nfp": len(est) - ntp, "Nfn": len(ref) - ntp}
        for key, value in counts.items():
            ev.overall[key] += value
            ev.class_wise[label][key] += value
