"""Intersection-based evaluation: PSDS (the DCASE task-4 "PSDS1" scenario) and intersection-based F.

Definitions (Bilen et al., "A framework for the robust evaluation of sound event detection",
ICASSP 2020; the threshold-independent form of Ebbers et al., ICASSP 2022, as implemented by
sed_scores_eval), for one class and one decision threshold:

* a **detection** is a run of frames whose (median-filtered) score passes the threshold;
* it is **accepted** when at least ``dtc`` of its length lies inside true events of its class
  (detection tolerance criterion); otherwise it is a **false positive**;
* a true event is **detected** (a true positive) when the accepted detections cover at least
  ``gtc`` of its length (ground-truth intersection criterion);
* TPR = detected events / true events; eFPR = false positives per hour of audio.

Sweeping the threshold traces the class's PSD-ROC (TPR as the best TPR reachable at an
eFPR <= x). PSDS averages the per-class curves, subtracts ``alpha_st`` times their standard
deviation over classes (clipped at 0), and takes the area up to ``max_efpr`` divided by
``max_efpr``. **PSDS1** is ``dtc = gtc = 0.7``, ``alpha_st = 1``, ``alpha_ct = 0``,
``max_efpr = 100`` per hour. The **intersection-based F** at one threshold counts true
positives, false positives and missed events the same way (DCASE reports it with
``dtc = gtc = 0.5``), macro-averaged over classes.

What target sound detection changes: a TSD sample asks about one class only, so a class's
curve is computed over the samples that ask about it (positives and negatives), and its eFPR
is normalised by *their* total duration (in SED every file is scored for every class and the
whole set's duration is used). Cross-triggers (``alpha_ct``) do not exist in TSD and are not
computed. Classes without a true event in the set are left out of the averages, as the
sed_eval macro scores in :mod:`tsd_ray.metrics.scoring` leave them out.

Thresholds: the operating points are every distinct score level of the class's samples (a frame
is active when its score is >= the level, i.e. when a threshold just below it is passed), so
the curve is exact, as sed_scores_eval's: each sample is counted at its own levels and the
changes are summed. ``bench/check_intersection.py`` compares both implementations on seeded
fixtures. Event times are rounded to the microsecond, as in the rest of the scoring. Events of
one class that overlap in a sample count as separate true events, each detected by its own
coverage; a detection's share inside the truth is taken against their union (sed_scores_eval
refuses such input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tsd_ray.common.types import Seconds
from tsd_ray.metrics.postprocess import TIME_DECIMALS, clean_activity, median_filter
from tsd_ray.metrics.scoring import ScoredSample

#: The DCASE task-4 PSDS1 scenario (since 2021): localisation-strict, no cross-triggers.
PSDS1 = {"dtc": 0.7, "gtc": 0.7, "alpha_st": 1.0, "max_efpr": 100.0}
#: Criteria of the intersection-based F the DCASE task-4 baseline reports beside PSDS.
INTERSECTION_F = {"dtc": 0.5, "gtc": 0.5}
_SECONDS_PER_HOUR = 3600.0
_TOL = 1e-9  # criteria are compared with this slack (times are rounded to the microsecond)
_CELLS = 1 << 22  # levels x frames evaluated at once for one sample (bounds memory on long files)


@dataclass(frozen=True)
class _Sample:
    """One TSD sample prepared for intersection-based counting."""

    scores: np.ndarray  # (n,) median-filtered frame scores
    frame_true: np.ndarray  # (n, E) seconds of frame k inside true event j
    frame_in_truth: np.ndarray  # (n,) seconds of frame k inside any true event
    true_s: np.ndarray  # (E,) true events' durations
    duration_s: Seconds


def _prepare(s: ScoredSample, frame_hop_s: Seconds, median_frames: int) -> _Sample:
    n = s.num_frames
    x = np.asarray(s.probs[:n], dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"sample {s.sample_id!r}: non-finite probabilities")
    on, off = [], []
    for e in s.reference_events():
        clipped = e.clipped(n * frame_hop_s)
        if clipped is not None:
            on.append(round(clipped.onset, TIME_DECIMALS))
            off.append(round(clipped.offset, TIME_DECIMALS))
    on_a, off_a = np.asarray(on, dtype=np.float64), np.asarray(off, dtype=np.float64)
    edges = np.round(np.arange(n + 1) * frame_hop_s, TIME_DECIMALS)
    frame_true = _overlap(edges[:-1], edges[1:], on_a, off_a)  # (n, E)
    u_on, u_off = _union(on_a, off_a)
    return _Sample(scores=median_filter(x, median_frames) if n else x, frame_true=frame_true,
                   frame_in_truth=_overlap(edges[:-1], edges[1:], u_on, u_off).sum(axis=1),
                   true_s=off_a - on_a, duration_s=n * float(frame_hop_s))


def _overlap(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """Seconds of each interval ``[a0, a1)`` inside each interval ``[b0, b1)``: shape (len(a), len(b))."""
    return np.clip(np.minimum(a1[:, None], b1[None, :]) - np.maximum(a0[:, None], b0[None, :]), 0.0, None)


def _union(on: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted intervals covering the same time as ``[on, off)``."""
    if on.size == 0:
        return on, off
    order = np.argsort(on, kind="stable")
    on, off = on[order], off[order]
    reach = np.maximum.accumulate(off)
    new = np.ones(on.size, dtype=bool)
    new[1:] = on[1:] > reach[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], on.size) - 1
    return on[starts], reach[ends]


def _counts(sm: _Sample, levels: np.ndarray, frame_hop_s: Seconds, dtc: float, gtc: float,
            *, strict: bool, fill_gap_frames: int = 0, min_event_frames: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, false positives) of one sample at each decision level: a frame is active
    when its score is ``> level`` (``strict``) or ``>= level``, then gaps are filled and short
    runs dropped as :func:`~tsd_ray.metrics.postprocess.clean_activity` does. Shapes (L,)."""
    n = sm.scores.size
    if n == 0 or levels.size == 0:
        return np.zeros(levels.size, dtype=np.int64), np.zeros(levels.size, dtype=np.int64)
    if levels.size * n > _CELLS:
        step = max(1, _CELLS // n)
        parts = [_counts(sm, levels[i:i + step], frame_hop_s, dtc, gtc, strict=strict,
                         fill_gap_frames=fill_gap_frames, min_event_frames=min_event_frames)
                 for i in range(0, levels.size, step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    active = sm.scores[None, :] > levels[:, None] if strict else sm.scores[None, :] >= levels[:, None]
    active = clean_activity(active, fill_gap_frames, min_event_frames)
    start = active.copy()
    start[:, 1:] &= ~active[:, :-1]  # a run starts at an active frame after an inactive one
    det = np.cumsum(start.ravel()).reshape(active.shape) - 1  # detection id of each active frame
    ids = det[active]
    n_det = int(start.sum())
    frames = np.bincount(ids, minlength=n_det)
    inside = np.bincount(ids, weights=np.broadcast_to(sm.frame_in_truth, active.shape)[active], minlength=n_det)
    accepted = inside >= dtc * frames * frame_hop_s - _TOL
    rows = np.nonzero(start)[0]  # the level of each detection (row-major, as the ids)
    fp = np.bincount(rows[~accepted], minlength=levels.size)
    if sm.true_s.size == 0 or not accepted.any():
        return np.zeros(levels.size, dtype=np.int64), fp
    kept = np.zeros(active.shape)
    kept[active] = accepted[ids]
    covered = kept @ sm.frame_true  # (L, E) seconds of each true event inside accepted detections
    tp = np.count_nonzero(covered >= gtc * sm.true_s[None, :] - _TOL, axis=1)
    return tp, fp


@dataclass(frozen=True)
class PSDSResult:
    """A PSDS value (0-1) with the curves behind it.

    ``per_class[c]`` holds ``psds`` (the area under that class's PSD-ROC / ``max_efpr``, NaN
    for a class with no true event), ``n_true_events`` and ``hours`` (its samples' duration).
    ``efpr`` / ``tpr`` are the combined effective curve (mean - alpha_st * std, clipped at 0).
    """

    value: float
    dtc: float
    gtc: float
    alpha_st: float
    max_efpr: float
    efpr: np.ndarray
    tpr: np.ndarray
    per_class: dict[str, dict]
    classes_scored: tuple[str, ...]


def _by_class(samples: Sequence[ScoredSample], classes: Sequence[str], frame_hop_s: Seconds,
              median_frames: int) -> dict[str, list[_Sample]]:
    if frame_hop_s <= 0:
        raise ValueError(f"frame_hop_s must be > 0, got {frame_hop_s}")
    out: dict[str, list[_Sample]] = {c: [] for c in classes}
    seen: set[str] = set()
    for s in samples:
        if s.target not in out:
            raise ValueError(f"sample {s.sample_id!r}: target {s.target!r} is not in classes {list(classes)}")
        if s.sample_id in seen:
            raise ValueError(f"duplicate sample_id {s.sample_id!r}: sample ids must be unique")
        seen.add(s.sample_id)
        out[s.target].append(_prepare(s, frame_hop_s, median_frames))
    return out


def _roc(members: list[_Sample], frame_hop_s: Seconds, dtc: float, gtc: float) -> tuple[np.ndarray, np.ndarray]:
    """A class's operating points ``(efpr per hour, tpr)`` at every distinct score level of its
    samples, the 'nothing detected' point first. Each sample's counts change only at its own
    levels, so they are summed over samples as changes (deltas) at those levels."""
    levels, d_tp, d_fp = [], [], []
    for sm in members:
        lv = np.unique(sm.scores)[::-1]  # descending
        tp, fp = _counts(sm, lv, frame_hop_s, dtc, gtc, strict=False)
        levels.append(lv)
        d_tp.append(np.diff(tp, prepend=0))
        d_fp.append(np.diff(fp, prepend=0))
    all_levels, where = np.unique(np.concatenate(levels), return_inverse=True)  # ascending
    tp = np.cumsum(np.bincount(where, weights=np.concatenate(d_tp), minlength=all_levels.size)[::-1])
    fp = np.cumsum(np.bincount(where, weights=np.concatenate(d_fp), minlength=all_levels.size)[::-1])
    hours = sum(sm.duration_s for sm in members) / _SECONDS_PER_HOUR
    n_true = sum(sm.true_s.size for sm in members)
    return np.concatenate(([0.0], fp)) / hours, np.concatenate(([0.0], tp)) / n_true


def _curve_at(efpr: np.ndarray, tpr: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The best TPR among the operating points with eFPR <= each ``x`` (0 if none)."""
    order = np.lexsort((tpr, efpr))
    e, t = efpr[order], np.maximum.accumulate(tpr[order])
    i = np.searchsorted(e, x, side="right") - 1
    return np.where(i >= 0, t[np.maximum(i, 0)], 0.0)


def _staircase_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under a step curve that holds ``y[i]`` from ``x[i]`` to ``x[i + 1]`` (the last to ``x_max``)."""
    widths = np.diff(np.append(x, x_max))
    return float(np.sum(y * np.clip(widths, 0.0, None)))


def psd_roc_area(rocs: dict[str, tuple[np.ndarray, np.ndarray]], *, alpha_st: float,
                 max_efpr: float) -> tuple[float, np.ndarray, np.ndarray]:
    """PSDS from per-class operating points ``{class: (efpr, tpr)}``: returns ``(psds, efpr, tpr)``
    of the combined curve (mean - alpha_st * std over classes, clipped at 0) up to ``max_efpr``."""
    if not rocs:
        return float("nan"), np.zeros(0), np.zeros(0)
    grid = np.unique(np.concatenate([[0.0]] + [e[e <= max_efpr] for e, _ in rocs.values()]))
    curves = np.stack([_curve_at(e, t, grid) for e, t in rocs.values()])  # (C, X)
    effective = np.maximum(curves.mean(axis=0) - alpha_st * curves.std(axis=0), 0.0)
    return _staircase_area(grid, effective, max_efpr) / max_efpr, grid, effective


def psds(
    samples: Sequence[ScoredSample],
    *,
    classes: Sequence[str],
    frame_hop_s: Seconds,
    median_frames: int = 1,
    dtc: float = PSDS1["dtc"],
    gtc: float = PSDS1["gtc"],
    alpha_st: float = PSDS1["alpha_st"],
    max_efpr: float = PSDS1["max_efpr"],
) -> PSDSResult:
    """PSDS of TSD samples (PSDS1 by default); see the module docstring for the definition.

    ``median_frames`` filters each sample's scores first (the validation-tuned window; the
    threshold is what PSDS sweeps). ``classes`` lists the classes to average over; those with
    no true event among the samples are left out (``classes_scored`` names the others).
    """
    return _psds(_by_class(samples, classes, frame_hop_s, median_frames), frame_hop_s, dtc, gtc, alpha_st, max_efpr)


def _psds(by_class: dict[str, list[_Sample]], frame_hop_s: Seconds, dtc: float, gtc: float, alpha_st: float,
          max_efpr: float) -> PSDSResult:
    _check_criteria(dtc, gtc)
    if max_efpr <= 0 or alpha_st < 0:
        raise ValueError(f"need max_efpr > 0 and alpha_st >= 0; got {max_efpr}, {alpha_st}")
    rocs, per_class = {}, {}
    for c, members in by_class.items():
        n_true = sum(sm.true_s.size for sm in members)
        hours = sum(sm.duration_s for sm in members) / _SECONDS_PER_HOUR
        entry: dict = {"n_true_events": n_true, "hours": hours, "psds": float("nan")}
        if n_true > 0:
            e, t = _roc(members, frame_hop_s, dtc, gtc)
            rocs[c] = (e, t)
            entry["psds"] = psd_roc_area({c: (e, t)}, alpha_st=0.0, max_efpr=max_efpr)[0]
        per_class[c] = entry
    value, grid, effective = psd_roc_area(rocs, alpha_st=alpha_st, max_efpr=max_efpr)
    return PSDSResult(value=value, dtc=dtc, gtc=gtc, alpha_st=alpha_st, max_efpr=max_efpr, efpr=grid,
                      tpr=effective, per_class=per_class, classes_scored=tuple(rocs))


def _check_criteria(dtc: float, gtc: float) -> None:
    for name, v in (("dtc", dtc), ("gtc", gtc)):
        if not 0.0 < v <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {v}")


def intersection_f(
    samples: Sequence[ScoredSample],
    *,
    classes: Sequence[str],
    frame_hop_s: Seconds,
    threshold: float,
    median_frames: int = 1,
    dtc: float = INTERSECTION_F["dtc"],
    gtc: float = INTERSECTION_F["gtc"],
    fill_gap_frames: int = 0,
    min_event_frames: int = 0,
) -> dict:
    """Intersection-based F (%) at one post-processing (frames with filtered score ``> threshold``,
    gaps filled and short runs dropped, as :func:`tsd_ray.metrics.postprocess.postprocess`
    decides): ``{"f": macro over classes with true events, "per_class": {c: {"f", "precision",
    "recall", "tp", "fp", "n_true_events"}}}``."""
    return _intersection_f(_by_class(samples, classes, frame_hop_s, median_frames), frame_hop_s, threshold,
                           median_frames, dtc, gtc, fill_gap_frames=fill_gap_frames, min_event_frames=min_event_frames)


def _intersection_f(by_class: dict[str, list[_Sample]], frame_hop_s: Seconds, threshold: float, median_frames: int,
                    dtc: float, gtc: float, *, fill_gap_frames: int = 0, min_event_frames: int = 0) -> dict:
    _check_criteria(dtc, gtc)
    level = np.asarray([float(threshold)])
    per_class = {}
    for c, members in by_class.items():
        tp = fp = n_true = 0
        for sm in members:
            t, f = _counts(sm, level, frame_hop_s, dtc, gtc, strict=True, fill_gap_frames=fill_gap_frames,
                           min_event_frames=min_event_frames)
            tp, fp, n_true = tp + int(t[0]), fp + int(f[0]), n_true + sm.true_s.size
        p = 100.0 * tp / (tp + fp) if tp + fp else 0.0
        r = 100.0 * tp / n_true if n_true else float("nan")
        f1 = 100.0 * 2 * tp / (2 * tp + fp + n_true - tp) if n_true else float("nan")
        per_class[c] = {"f": f1, "precision": p, "recall": r, "tp": tp, "fp": fp, "n_true_events": n_true}
    scored = [v["f"] for v in per_class.values() if v["n_true_events"] > 0]
    return {"f": float(np.mean(scored)) if scored else float("nan"), "per_class": per_class,
            "dtc": dtc, "gtc": gtc, "threshold": float(threshold), "median_frames": median_frames,
            "fill_gap_frames": fill_gap_frames, "min_event_frames": min_event_frames}


def intersection_scores(
    samples: Sequence[ScoredSample], *, classes: Sequence[str], frame_hop_s: Seconds, threshold: float,
    median_frames: int = 1, fill_gap_frames: int = 0, min_event_frames: int = 0,
) -> tuple[PSDSResult, dict]:
    """PSDS1 (:func:`psds`, over the median-filtered scores) and the intersection-based F at the
    whole post-processing (:func:`intersection_f`) with the DCASE criteria, from one
    preparation of the samples (median filter and event overlaps computed once)."""
    by_class = _by_class(samples, classes, frame_hop_s, median_frames)
    return (_psds(by_class, frame_hop_s, **PSDS1),
            _intersection_f(by_class, frame_hop_s, threshold, median_frames, **INTERSECTION_F,
                            fill_gap_frames=fill_gap_frames, min_event_frames=min_event_frames))
