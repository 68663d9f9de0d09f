"""Evaluation of target sound detection (docs/architecture.md, "Evaluation and model selection"): post-processing and sed_eval scoring.

A TSD *sample* is a (mixture, target class) pair. The detector gives one probability per
output frame (``frame_hop_s`` = 40 ms by default; frame ``i`` covers
``[i * hop, (i + 1) * hop)`` seconds). Post-processing turns these into events:

1. keep the ``n_valid`` real frames (drop padding),
2. median filter over ``median_frames`` frames (odd; 1 = off),
3. threshold (a frame is active when ``p > threshold``),
4. merge runs of active frames into events ``(start * hop, end * hop)``.

For an odd window the median filter commutes with thresholding (``median(p) > t`` exactly
when more than half of the window is ``> t``), so filtering the probabilities and then
thresholding is the same as the DCASE practice of median-filtering the binary decisions.

Scoring uses sed_eval with **each sample as its own file** (file name = ``sample_id``), so
a detection on a negative sample (target absent) only adds a false positive of its target
class, and a correct rejection adds nothing. Reported F-scores are in percent:

* segment-based F over ``segment_s`` segments, each file scored over its full duration
  (``n_valid * hop``), not just up to its last event;
* event-based F with onset collar ``t_collar_s`` and offset collar
  ``max(t_collar_s, percentage_of_length * reference length)``;
* macro average over classes (sed_eval's ``results_class_wise_average_metrics``) and the
  micro (overall) average.

sed_eval behaviour worth knowing (checked against sed_eval 0.2.1 and tested):

* By default sed_eval gives a class **with no system output** precision NaN and hence
  F = NaN, and its macro average is a ``nanmean``: a class the system never detects would
  silently drop out of the macro score. We switch sed_eval's
  ``empty_system_output_handling`` to ``"zero_score"`` so such a class scores 0.
* A class with **no reference events** in the evaluated set has recall NaN and F = NaN,
  whatever the system does; ``nanmean`` leaves it out of the macro average. So false
  positives on negative samples of a class that has no positive sample are not reflected
  in the macro score (they are in the micro score and in ``per_class``).
  ``Scores.n_classes_scored`` says how many classes the macro average covers.
* Collar tests are ``|Δ| <= collar`` on floats, and segment boundaries use ``ceil``, so
  event times are rounded to the microsecond (``frame * hop`` is not exact in binary
  floating point: ``30 * 0.04 = 1.2000000000000002``).
* sed_eval loops over all classes for every file (cost grows with the class count), and
  its per-file Python is most of a post-processing grid's time. :func:`sed_eval_metrics`
  counts one-label files (every TSD sample) directly (:mod:`tsd_ray.metrics.counts`) and
  evaluates other files by their own labels, summing the counters exactly (see there); the
  scores are still sed_eval's, from those counters.
* sed_eval raises ``ValueError`` on labels outside ``event_label_list`` and requires
  ``float`` settings (``time_resolution=1`` is rejected); both are checked here first with
  messages naming the sample.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from tsd_ray.common.types import Event, Seconds
from tsd_ray.metrics.counts import add_one_label_files, file_labels
from tsd_ray.metrics.postprocess import (
    TIME_DECIMALS,
    PostProcessing,
    frames_to_events,
    median_filter,
    postprocess,
)

Metric = Literal["event_f", "segment_f", "event_f_micro", "segment_f_micro"]


@dataclass(frozen=True, eq=False)
class ScoredSample:
    """One TSD sample ready to be scored.

    ``probs`` holds the detector's per-frame probabilities of the target, shape ``(T',)``,
    at the output hop. ``events`` are the true events: the mixture's events may be passed
    as they are, only those labelled ``target`` are used (none for a negative sample).
    ``n_valid`` is the number of real frames (the rest is padding); None means all.
    (``eq=False``: numpy arrays have no single truth value for ``==``.)
    """

    sample_id: str
    target: str
    probs: np.ndarray  # (T',)
    events: tuple[Event, ...]
    n_valid: int | None = None

    def __post_init__(self) -> None:
        probs = np.asarray(self.probs)
        if not np.issubdtype(probs.dtype, np.floating):
            probs = probs.astype(np.float64)  # keep float32 as given: no copy of big sets
        if probs.ndim != 1:
            raise ValueError(
                f"sample {self.sample_id!r}: probs must be 1-D (frames,), got shape {probs.shape}"
            )
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "events", tuple(self.events))
        if self.n_valid is not None and not 0 <= self.n_valid <= probs.shape[0]:
            raise ValueError(
                f"sample {self.sample_id!r}: n_valid={self.n_valid} outside [0, {probs.shape[0]}]"
                " (the number of frames in probs)"
            )

    @property
    def num_frames(self) -> int:
        """Number of real (unpadded) frames."""
        return self.probs.shape[0] if self.n_valid is None else self.n_valid

    def reference_events(self) -> list[Event]:
        """The true events of the target class (empty for a negative sample)."""
        return [e for e in self.events if e.label == self.target]


def scored_samples_from_batch(batch: Mapping[str, Any], probs: np.ndarray) -> list[ScoredSample]:
    """One :class:`ScoredSample` per row of a batch of evaluation samples: the batch's
    ``sample_id``, ``target``, ``n_valid``, ``event_onsets`` / ``event_offsets`` (the target's
    true events, in seconds) and the student's frame probabilities ``probs`` (B, T')."""
    out = []
    for i in range(len(batch["sample_id"])):
        target = str(batch["target"][i])
        events = tuple(Event(float(on), float(off), target)
                       for on, off in zip(batch["event_onsets"][i], batch["event_offsets"][i]))
        out.append(ScoredSample(sample_id=str(batch["sample_id"][i]), target=target, probs=probs[i],
                                events=events, n_valid=int(batch["n_valid"][i])))
    return out


@dataclass(frozen=True)
class Scores:
    """sed_eval scores of a set of samples. F-scores are in percent (0-100); NaN when undefined.

    ``per_class[label]`` holds ``segment_f``, ``segment_precision``, ``segment_recall``,
    ``event_f``, ``event_precision``, ``event_recall`` (percent), ``n_ref_events``,
    ``n_sys_events``, ``n_ref_segments``, ``n_sys_segments`` and ``n_samples`` (samples
    with this target, positive or negative).
    """

    segment_f: float  # macro over classes with reference events, %
    event_f: float  # macro over classes with reference events, %
    segment_f_micro: float  # %
    event_f_micro: float  # %
    per_class: dict[str, dict[str, float]]
    n_samples: int
    n_classes_scored: int  # classes the macro averages cover (those with reference events)
    segment_s: Seconds
    t_collar_s: Seconds
    percentage_of_length: float
    frame_hop_s: Seconds | None = None  # None when scored from event lists
    postprocessing: PostProcessing | None = None  # None when scored from event lists
    evaluated_s: Seconds = 0.0  # total duration scored by the segment-based metric
    classes: tuple[str, ...] = field(default_factory=tuple)

    def settings(self) -> dict[str, Any]:
        """The evaluation settings, for reports (``report.write_report(results["settings"])``)."""
        out: dict[str, Any] = {
            "segment_s": self.segment_s,
            "t_collar_s": self.t_collar_s,
            "percentage_of_length": self.percentage_of_length,
            "average": "macro over target classes (sed_eval class-wise average)",
        }
        if self.frame_hop_s is not None:
            out["frame_hop_s"] = self.frame_hop_s
        if self.postprocessing is not None:
            out["threshold"] = self.postprocessing.threshold
            out["median_frames"] = self.postprocessing.median_frames
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-safe apart from NaN, which report writers turn into null)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, PostProcessing):
                value = {"threshold": value.threshold, "median_frames": value.median_frames}
            elif isinstance(value, dict):
                value = {k: dict(v) for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _to_sed_eval(events: Iterable[Event], filename: str) -> list[dict[str, Any]]:
    return [
        {
            "filename": filename,
            "event_label": e.label,
            "onset": round(float(e.onset), TIME_DECIMALS),
            "offset": round(float(e.offset), TIME_DECIMALS),
        }
        for e in events
    ]


def _percent(x: Any) -> float:
    x = float(x)
    return x * 100.0 if math.isfinite(x) else math.nan


SedEvalFile = tuple[str, list[dict[str, Any]], list[dict[str, Any]], Seconds]


def _new_metrics(
    labels: list[str], segment_s: Seconds, t_collar_s: Seconds, percentage_of_length: float
) -> tuple[Any, Any]:
    with warnings.catch_warnings():  # dcase_util (under sed_eval) imports the deprecated pkg_resources
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import sed_eval  # imported here: keeps `import tsd_ray.metrics.scoring` light

    seg = sed_eval.sound_event.SegmentBasedMetrics(
        event_label_list=list(labels), time_resolution=float(segment_s)
    )
    ev = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=list(labels),
        t_collar=float(t_collar_s),
        percentage_of_length=float(percentage_of_length),
        evaluate_onset=True,
        evaluate_offset=True,
    )
    # A class the system never outputs must score 0, not NaN (module docstring).
    seg.empty_system_output_handling = "zero_score"
    ev.empty_system_output_handling = "zero_score"
    return seg, ev


def sed_eval_metrics(
    files: Sequence[SedEvalFile],
    *,
    classes: Sequence[str],
    segment_s: Seconds = 1.0,
    t_collar_s: Seconds = 0.2,
    percentage_of_length: float = 0.2,
    method: Literal["direct", "grouped", "plain"] = "direct",
) -> tuple[Any, Any]:
    """sed_eval ``(SegmentBasedMetrics, EventBasedMetrics)`` over ``classes`` holding the
    counters of ``files``, as if ``evaluate(reference, estimate)`` had been called once per file.

    ``files`` holds ``(file_id, reference_dicts, estimate_dicts, duration_s)`` in sed_eval's
    event-dict form. ``method``:

    * ``"plain"``: sed_eval itself, file by file. It loops over every class of
      ``event_label_list`` for every file, so 500 one-class TSD files over 40 classes cost 40x
      what they need;
    * ``"grouped"``: files are evaluated by sed_eval objects whose label list is only the
      labels present in them, and their counters are summed into the returned objects: every
      count sed_eval keeps is additive over files, and a class absent from a file only adds
      true-negative segments, which are added back exactly (3-10x faster than plain);
    * ``"direct"`` (default): files with at most one label (every TSD sample) are counted by
      :mod:`tsd_ray.metrics.counts` without sed_eval, the others as in ``"grouped"`` (with
      each median window filtered once, a 40-point grid over 775 real validation samples
      took 1.8 s instead of 12.9 s).

    All three give identical counters (``tests/metrics/test_scoring.py``), and the scores are
    always computed by sed_eval from them.
    """
    if method not in ("direct", "grouped", "plain"):
        raise ValueError(f"method must be 'direct', 'grouped' or 'plain', got {method!r}")
    classes = list(classes)
    total_seg, total_ev = _new_metrics(classes, segment_s, t_collar_s, percentage_of_length)
    if method == "plain":
        for _fid, ref, est, duration in files:
            total_seg.evaluate(ref, est, evaluated_length_seconds=duration)
            total_ev.evaluate(ref, est)
        return total_seg, total_ev

    groups: dict[tuple[str, ...], list[SedEvalFile]] = {}
    for f in files:
        labels = file_labels(f[1], f[2])
        if not set(labels) <= set(classes):
            raise ValueError(
                f"file {f[0]!r}: labels {sorted(set(labels) - set(classes))} not in classes"
            )
        groups.setdefault(labels, []).append(f)
    if method == "direct":
        one_label = [f for labels, members in groups.items() if len(labels) <= 1 for f in members]
        add_one_label_files(total_seg, total_ev, one_label, classes, segment_s=segment_s, t_collar_s=t_collar_s,
                            percentage_of_length=percentage_of_length)
        groups = {labels: members for labels, members in groups.items() if len(labels) > 1}
    for labels, members in groups.items():
        seg, ev = _new_metrics(list(labels), segment_s, t_collar_s, percentage_of_length)
        n_segments = 0
        for _fid, ref, est, duration in members:
            seg.evaluate(ref, est, evaluated_length_seconds=duration)
            ev.evaluate(ref, est)
            # Same expression as SegmentBasedMetrics.evaluate: rows of the file's event roll.
            n_segments += int(math.ceil(duration * 1 / float(seg.time_resolution)))
        absent = [c for c in classes if c not in labels]
        for key, value in seg.overall.items():
            total_seg.overall[key] += value
        total_seg.overall["Ntn"] += len(absent) * n_segments
        for c in labels:
            for key, value in seg.class_wise[c].items():
                total_seg.class_wise[c][key] += value
        for c in absent:
            total_seg.class_wise[c]["Ntn"] += n_segments
        total_seg.evaluated_length_seconds += seg.evaluated_length_seconds
        total_seg.evaluated_files += seg.evaluated_files
        for key, value in ev.overall.items():
            total_ev.overall[key] += value
        for c in labels:
            for key, value in ev.class_wise[c].items():
                total_ev.class_wise[c][key] += value
        total_ev.evaluated_length += ev.evaluated_length
        total_ev.evaluated_files += ev.evaluated_files
    return total_seg, total_ev


def score_event_lists(
    references: Mapping[str, Sequence[Event]],
    estimates: Mapping[str, Sequence[Event]],
    durations_s: Mapping[str, Seconds],
    *,
    classes: Sequence[str],
    segment_s: Seconds = 1.0,
    t_collar_s: Seconds = 0.2,
    percentage_of_length: float = 0.2,
    targets: Mapping[str, str] | None = None,
) -> Scores:
    """Score event lists with sed_eval, one file per key of ``durations_s``.

    ``references``/``estimates`` map a file id to its events (a missing key means none);
    ``durations_s`` gives each file's length in seconds, over which the segment-based
    metric scores it. ``targets`` (file id -> target class) only feeds the per-class sample
    counts. Most callers want :func:`score_samples`.
    """
    classes = list(dict.fromkeys(classes))
    if not classes:
        raise ValueError("classes must name at least one class")
    known = set(classes)
    for name, mapping in (("references", references), ("estimates", estimates)):
        extra = set(mapping) - set(durations_s)
        if extra:
            raise ValueError(
                f"{name} has files without a duration in durations_s: {sorted(extra)[:5]}"
            )
        for fid, evs in mapping.items():
            for e in evs:
                if e.label not in known:
                    raise ValueError(
                        f"file {fid!r}: event label {e.label!r} ({name}) is not in classes "
                        f"{classes}; pass every target class in `classes`"
                    )
                if not e.offset > e.onset:
                    raise ValueError(f"file {fid!r}: event {e} ({name}) has offset <= onset")

    files = [
        (
            fid,
            _to_sed_eval(references.get(fid, ()), fid),
            _to_sed_eval(estimates.get(fid, ()), fid),
            round(float(duration), TIME_DECIMALS),
        )
        for fid, duration in durations_s.items()
    ]
    seg, ev = sed_eval_metrics(
        files,
        classes=classes,
        segment_s=segment_s,
        t_collar_s=t_collar_s,
        percentage_of_length=percentage_of_length,
    )
    samples_per_class = dict.fromkeys(classes, 0)
    for fid in durations_s:
        if targets is not None and targets.get(fid) in samples_per_class:
            samples_per_class[targets[fid]] += 1

    with warnings.catch_warnings():
        # nanmean over all-NaN classes warns; the resulting NaN is the documented answer.
        warnings.simplefilter("ignore", RuntimeWarning)
        seg_macro = seg.results_class_wise_average_metrics()["f_measure"]
        ev_macro = ev.results_class_wise_average_metrics()["f_measure"]
        seg_micro = seg.results_overall_metrics()["f_measure"]
        ev_micro = ev.results_overall_metrics()["f_measure"]
        seg_cls = seg.results_class_wise_metrics()
        ev_cls = ev.results_class_wise_metrics()

    per_class: dict[str, dict[str, float]] = {}
    for c in classes:
        s_f, e_f = seg_cls[c]["f_measure"], ev_cls[c]["f_measure"]
        per_class[c] = {
            "segment_f": _percent(s_f["f_measure"]),
            "segment_precision": _percent(s_f["precision"]),
            "segment_recall": _percent(s_f["recall"]),
            "event_f": _percent(e_f["f_measure"]),
            "event_precision": _percent(e_f["precision"]),
            "event_recall": _percent(e_f["recall"]),
            "n_ref_events": int(ev.class_wise[c]["Nref"]),
            "n_sys_events": int(ev.class_wise[c]["Nsys"]),
            "n_ref_segments": int(seg.class_wise[c]["Nref"]),
            "n_sys_segments": int(seg.class_wise[c]["Nsys"]),
            "n_samples": samples_per_class[c],
        }
    return Scores(
        segment_f=_percent(seg_macro["f_measure"]),
        event_f=_percent(ev_macro["f_measure"]),
        segment_f_micro=_percent(seg_micro["f_measure"]),
        event_f_micro=_percent(ev_micro["f_measure"]),
        per_class=per_class,
        n_samples=len(durations_s),
        n_classes_scored=sum(1 for c in classes if ev.class_wise[c]["Nref"] > 0),
        segment_s=float(segment_s),
        t_collar_s=float(t_collar_s),
        percentage_of_length=float(percentage_of_length),
        evaluated_s=float(seg.evaluated_length_seconds),
        classes=tuple(classes),
    )


def _postprocess_samples(
    samples: Sequence[ScoredSample], pp: PostProcessing, frame_hop_s: Seconds
) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for s in samples:
        try:
            out[s.sample_id] = postprocess(
                s.probs, pp, frame_hop_s=frame_hop_s, label=s.target, n_valid=s.n_valid
            )
        except ValueError as err:
            raise ValueError(f"sample {s.sample_id!r}: {err}") from None
    return out


def _check_samples(samples: Sequence[ScoredSample], classes: Sequence[str]) -> None:
    seen: set[str] = set()
    known = set(classes)
    for s in samples:
        if s.sample_id in seen:
            raise ValueError(f"duplicate sample_id {s.sample_id!r}: sample ids must be unique")
        seen.add(s.sample_id)
        if s.target not in known:
            raise ValueError(
                f"sample {s.sample_id!r}: target {s.target!r} is not in classes {list(classes)}"
            )


def _score_estimates(
    samples: Sequence[ScoredSample], estimates: Mapping[str, Sequence[Event]], pp: PostProcessing, *,
    classes: Sequence[str], frame_hop_s: Seconds, segment_s: Seconds, t_collar_s: Seconds,
    percentage_of_length: float,
) -> Scores:
    scores = score_event_lists(
        {s.sample_id: s.reference_events() for s in samples},
        estimates,
        {s.sample_id: s.num_frames * frame_hop_s for s in samples},
        classes=classes,
        segment_s=segment_s,
        t_collar_s=t_collar_s,
        percentage_of_length=percentage_of_length,
        targets={s.sample_id: s.target for s in samples},
    )
    return replace(scores, frame_hop_s=float(frame_hop_s), postprocessing=pp)


def score_samples(
    samples: Sequence[ScoredSample],
    pp: PostProcessing,
    *,
    classes: Sequence[str],
    frame_hop_s: Seconds = 0.04,
    segment_s: Seconds = 1.0,
    t_collar_s: Seconds = 0.2,
    percentage_of_length: float = 0.2,
) -> Scores:
    """Post-process each sample with ``pp`` and score all of them with sed_eval.

    Each sample is its own sed_eval file (``sample_id``), scored over its full duration
    ``num_frames * frame_hop_s`` seconds; its references are its events of the target
    class. ``classes`` lists the classes averaged over (every sample's target must be in
    it). F-scores are in percent; see the module docstring for the averaging rules.
    """
    samples = list(samples)
    _check_samples(samples, classes)
    return _score_estimates(samples, _postprocess_samples(samples, pp, frame_hop_s), pp, classes=classes,
                            frame_hop_s=frame_hop_s, segment_s=segment_s, t_collar_s=t_collar_s,
                            percentage_of_length=percentage_of_length)


def _score_grid(samples: list[ScoredSample], grid: Sequence[PostProcessing], *, classes: Sequence[str],
                frame_hop_s: Seconds = 0.04, segment_s: Seconds = 1.0, t_collar_s: Seconds = 0.2,
                percentage_of_length: float = 0.2) -> list[Scores]:
    """:func:`score_samples` at every grid point, each median filter applied once per sample."""
    _check_samples(samples, classes)
    filtered: dict[int, list[np.ndarray]] = {}
    out = []
    for pp in grid:
        if pp.median_frames not in filtered:
            filtered[pp.median_frames] = []
            for s in samples:
                x = np.asarray(s.probs[: s.num_frames], dtype=np.float64)
                if not np.all(np.isfinite(x)):
                    raise ValueError(f"sample {s.sample_id!r}: postprocess: non-finite probabilities "
                                     f"for label {s.target!r}")
                filtered[pp.median_frames].append(median_filter(x, pp.median_frames))
        estimates = {s.sample_id: frames_to_events(pp.active(f), frame_hop_s=frame_hop_s, label=s.target)
                     for s, f in zip(samples, filtered[pp.median_frames], strict=True)}
        out.append(_score_estimates(samples, estimates, pp, classes=classes, frame_hop_s=frame_hop_s,
                                    segment_s=segment_s, t_collar_s=t_collar_s,
                                    percentage_of_length=percentage_of_length))
    return out


_WORKER_STATE: dict[str, Any] = {}


def _init_worker(samples: list[ScoredSample], kwargs: dict[str, Any]) -> None:
    _WORKER_STATE["samples"] = samples
    _WORKER_STATE["kwargs"] = kwargs


def _score_grid_point(pp: PostProcessing) -> Scores:
    return score_samples(_WORKER_STATE["samples"], pp, **_WORKER_STATE["kwargs"])


def tune_postprocessing(
    val_samples: Sequence[ScoredSample],
    *,
    classes: Sequence[str],
    thresholds: Sequence[float],
    median_windows: Sequence[int],
    fill_gaps: Sequence[int] = (0,),
    min_event_lengths: Sequence[int] = (0,),
    metric: Metric = "event_f",
    num_jobs: int = 1,
    **score_kwargs: Any,
) -> tuple[PostProcessing, dict[str, Any]]:
    """Grid-search threshold x median window (x gap filled x minimum event length, in frames;
    by default none of either) on **validation samples only**.

    Never pass test samples here: the chosen post-processing is then applied unchanged to
    the test split. Every grid point is scored with :func:`score_samples` (``score_kwargs``:
    ``frame_hop_s``, ``segment_s``, ``t_collar_s``, ``percentage_of_length``) and the one
    with the highest ``metric`` wins; ties go to the first in grid order (thresholds outer,
    then windows, gaps, minimum lengths), NaN counts as lowest. ``num_jobs > 1`` scores grid points in that many
    processes (spawned, so safe inside threaded programs); results equal ``num_jobs=1``.

    Returns the best :class:`PostProcessing` and a table
    ``{"metric", "best": {...}, "rows": [{"threshold", "median_frames", "fill_gap_frames",
    "min_event_frames", "segment_f", "event_f", "segment_f_micro", "event_f_micro"}, ...]}``
    (percent).
    """
    allowed = ("event_f", "segment_f", "event_f_micro", "segment_f_micro")
    if metric not in allowed:
        raise ValueError(f"metric must be one of {allowed}, got {metric!r}")
    if not thresholds or not median_windows or not fill_gaps or not min_event_lengths:
        raise ValueError("thresholds, median_windows, fill_gaps and min_event_lengths must each hold "
                         "at least one value")
    if num_jobs < 1:
        raise ValueError(f"num_jobs must be >= 1, got {num_jobs}")
    unknown = set(score_kwargs) - {"frame_hop_s", "segment_s", "t_collar_s", "percentage_of_length"}
    if unknown:
        raise TypeError(f"tune_postprocessing: unexpected keyword arguments {sorted(unknown)}")
    grid = [
        PostProcessing(threshold=float(t), median_frames=int(w), fill_gap_frames=int(g), min_event_frames=int(m))
        for t in thresholds
        for w in median_windows
        for g in fill_gaps
        for m in min_event_lengths
    ]
    samples = list(val_samples)
    kwargs = {"classes": list(classes), **score_kwargs}
    if num_jobs == 1 or len(grid) == 1:
        results = _score_grid(samples, grid, **kwargs)
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(num_jobs, len(grid)),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(samples, kwargs),
        ) as pool:
            results = list(pool.map(_score_grid_point, grid))

    rows = [
        {
            **pp.to_dict(),
            "segment_f": sc.segment_f,
            "event_f": sc.event_f,
            "segment_f_micro": sc.segment_f_micro,
            "event_f_micro": sc.event_f_micro,
        }
        for pp, sc in zip(grid, results, strict=True)
    ]
    best_i = 0
    for i, row in enumerate(rows):
        value, best = row[metric], rows[best_i][metric]
        if math.isfinite(value) and (not math.isfinite(best) or value > best):
            best_i = i
    return grid[best_i], {"metric": metric, "best": dict(rows[best_i]), "rows": rows}
