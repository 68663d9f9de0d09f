"""Post-processing of frame probabilities: median filter, threshold, gap filling and a minimum
event length (:func:`clean_activity`), and merging active frames into events
(:func:`postprocess` with a :class:`PostProcessing`). Pure numpy; used by scoring, validation
and detection alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tsd_ray.common.types import Event, Seconds

#: Decimal places event times are rounded to (microseconds): `30 * 0.04` is not exactly 1.2 in floating
#: point, and sed_eval compares collars with `<=` (tsd_ray/metrics/scoring.py explains).
TIME_DECIMALS = 6


@dataclass(frozen=True)
class PostProcessing:
    """Post-processing settings, in output frames: probability threshold, median window, and
    after thresholding the longest gap between two active runs that is filled
    (``fill_gap_frames``; 0 = none) and the shortest run kept as an event
    (``min_event_frames``; 0 or 1 = all)."""

    threshold: float = 0.5
    median_frames: int = 1  # odd; 1 = no filtering
    fill_gap_frames: int = 0
    min_event_frames: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"PostProcessing.threshold must be in [0, 1], got {self.threshold}")
        _check_window(self.median_frames, "PostProcessing.median_frames")
        for name in ("fill_gap_frames", "min_event_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"PostProcessing.{name} must be an integer >= 0, got {v!r}")

    def to_dict(self) -> dict:
        return {"threshold": float(self.threshold), "median_frames": int(self.median_frames),
                "fill_gap_frames": int(self.fill_gap_frames), "min_event_frames": int(self.min_event_frames)}

    @classmethod
    def from_dict(cls, d: dict) -> PostProcessing:
        """From :meth:`to_dict`'s keys; files written before gap filling lack the last two (0)."""
        return cls(threshold=float(d["threshold"]), median_frames=int(d["median_frames"]),
                   fill_gap_frames=int(d.get("fill_gap_frames", 0)), min_event_frames=int(d.get("min_event_frames", 0)))

    def describe(self) -> str:
        """``threshold 0.3, median filter 9 frames[, gaps up to 5 frames filled][, events under 5
        frames dropped]``."""
        out = f"threshold {self.threshold:g}, median filter {self.median_frames} frames"
        if self.fill_gap_frames:
            out += f", gaps up to {self.fill_gap_frames} frames filled"
        if self.min_event_frames > 1:
            out += f", events under {self.min_event_frames} frames dropped"
        return out

    def active(self, filtered: np.ndarray) -> np.ndarray:
        """Active frames of median-filtered probabilities: ``> threshold``, then
        :func:`clean_activity`."""
        return clean_activity(np.asarray(filtered) > self.threshold, self.fill_gap_frames, self.min_event_frames)


def _check_window(window: int, name: str) -> None:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise ValueError(f"{name} must be an odd integer >= 1, got {window!r}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 1 (1 = off), got {window}")


def median_filter(probs: np.ndarray, window: int) -> np.ndarray:
    """Running median of a 1-D signal over ``window`` frames (odd), edges padded by repetition.

    Returns a new float array of the same length; ``window=1`` returns a copy.
    """
    _check_window(window, "median window")
    x = np.asarray(probs, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"median_filter expects a 1-D array (frames,), got shape {x.shape}")
    if window == 1 or x.size == 0:
        return x.copy()
    half = window // 2
    padded = np.pad(x, half, mode="edge")  # (T + window - 1,)
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)  # (T, window)
    # The odd-window median is the middle order statistic (partition: ~5x np.median's speed).
    return np.partition(windows, half, axis=-1)[:, half]


def _runs(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the runs of True in a 1-D bool array."""
    edges = np.diff(np.concatenate(([0], row.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def clean_activity(active: np.ndarray, fill_gap_frames: int = 0, min_event_frames: int = 0) -> np.ndarray:
    """Active frames (..., T) after filling every gap of at most ``fill_gap_frames`` inactive
    frames between two active runs (an event broken by a short dip is one event), then dropping
    runs shorter than ``min_event_frames`` (isolated blips). Each row on its own; the input as a
    bool array when there is nothing to do, else a new array."""
    if fill_gap_frames <= 0 and min_event_frames <= 1:
        return np.asarray(active, dtype=bool)
    a = np.array(active, dtype=bool)  # a copy, C-contiguous
    if a.size == 0:
        return a
    for row in a.reshape(-1, a.shape[-1]):  # views into ``a``
        if fill_gap_frames > 0:
            starts, ends = _runs(row)
            for i in np.flatnonzero(starts[1:] - ends[:-1] <= fill_gap_frames):
                row[ends[i]:starts[i + 1]] = True
        if min_event_frames > 1:
            starts, ends = _runs(row)
            for i in np.flatnonzero(ends - starts < min_event_frames):
                row[starts[i]:ends[i]] = False
    return a


def frames_to_events(active: np.ndarray, *, frame_hop_s: Seconds, label: str) -> list[Event]:
    """Merge runs of active frames into events.

    A run of frames ``start .. end - 1`` becomes ``Event(start * hop, end * hop, label)``,
    times rounded to the microsecond.
    """
    a = np.asarray(active, dtype=bool)
    if a.ndim != 1:
        raise ValueError(f"frames_to_events expects a 1-D array (frames,), got shape {a.shape}")
    if frame_hop_s <= 0:
        raise ValueError(f"frame_hop_s must be > 0, got {frame_hop_s}")
    starts, ends = _runs(a)
    return [
        Event(
            round(float(s) * frame_hop_s, TIME_DECIMALS),
            round(float(e) * frame_hop_s, TIME_DECIMALS),
            label,
        )
        for s, e in zip(starts, ends, strict=True)
    ]


def postprocess(
    probs: np.ndarray,
    pp: PostProcessing,
    *,
    frame_hop_s: Seconds,
    label: str,
    n_valid: int | None = None,
) -> list[Event]:
    """Per-frame probabilities ``(T',)`` -> events of ``label``.

    Drops padded frames beyond ``n_valid``, median-filters over ``pp.median_frames`` frames,
    keeps frames with ``p > pp.threshold``, fills short gaps and drops short runs
    (:meth:`PostProcessing.active`) and merges runs into events.
    """
    x = np.asarray(probs, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"postprocess expects 1-D probabilities (frames,), got shape {x.shape}")
    if n_valid is not None:
        x = x[:n_valid]
    if not np.all(np.isfinite(x)):
        raise ValueError(f"postprocess: non-finite probabilities for label {label!r}")
    return frames_to_events(pp.active(median_filter(x, pp.median_frames)), frame_hop_s=frame_hop_s, label=label)
