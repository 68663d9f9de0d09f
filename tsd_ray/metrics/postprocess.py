"""Post-processing of frame probabilities: median filter, threshold, and merging active frames
into events (:func:`postprocess` with a :class:`PostProcessing`). Pure numpy; used by scoring,
validation and detection alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tsd_ray.common.types import Event, Seconds

#: Decimal places event times are rounded to (microseconds): `30 * 0.04` is not exactly 1.2 in floating
#: point, and sed_eval compares collars with `<=` (tsd_ray/metrics/scoring.py explains).
TIME_DECIMALS = 6


@dataclass(frozen=True)
class PostProcessing:
    """Post-processing settings: probability threshold and median window in output frames."""

    threshold: float = 0.5
    median_frames: int = 1  # odd; 1 = no filtering

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"PostProcessing.threshold must be in [0, 1], got {self.threshold}")
        _check_window(self.median_frames, "PostProcessing.median_frames")


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
    edges = np.diff(np.concatenate(([0], a.astype(np.int8), [0])))  # (T + 1,)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
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
    keeps frames with ``p > pp.threshold`` and merges runs (see the module docstring).
    """
    x = np.asarray(probs, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"postprocess expects 1-D probabilities (frames,), got shape {x.shape}")
    if n_valid is not None:
        x = x[:n_valid]
    if not np.all(np.isfinite(x)):
        raise ValueError(f"postprocess: non-finite probabilities for label {label!r}")
    return frames_to_events(
        median_filter(x, pp.median_frames) > pp.threshold, frame_hop_s=frame_hop_s, label=label
    )
