"""Pictures: one recording's detection, and a run's training curves (PNG, matplotlib Agg).

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so no global
backend is switched and no display is needed. Sizes are deterministic: ``figsize`` inches x
``dpi`` (default 12 x 6 at 100 dpi = 1200 x 600 pixels); no tight bounding box.
Files go through :mod:`tsd_ray.common.storage` (local path or URI).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from tsd_ray.apps.detect_model import DetectError, read_ledger_steps
from tsd_ray.common import storage
from tsd_ray.common.types import Event

FIGSIZE = (12.0, 6.0)  # inches
DPI = 100


def _figure(figsize: tuple[float, float], dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)  # no bbox_inches="tight": keeps the size exact
    storage.write_bytes_atomic(out_png, buf.getvalue())
    return out_png


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR header; ValueError if not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def plot_detection(
    detection: Any,
    out_png: str,
    *,
    mel: np.ndarray | None = None,
    frame_hop_s: float | None = None,
    true_events: Sequence[Event] = (),
    title: str | None = None,
    figsize: tuple[float, float] = FIGSIZE,
    dpi: int = DPI,
) -> str:
    """Mel spectrogram (top), target probability with the threshold (middle), detected and
    true events as bars (bottom) of one :class:`tsd_ray.apps.detect_inference.Detection`. Returns ``out_png``.

    ``mel`` (T, F) defaults to ``detection.mel``; its frames are ``frame_hop_s`` apart (default:
    half the output hop, i.e. 20 ms). ``true_events`` (e.g. from ``--labels``) are drawn in
    their own row.
    """
    mel = detection.mel if mel is None else mel
    hop = float(detection.frame_hop_s)
    probs = np.asarray(detection.probs, dtype=float)  # (T',)
    duration = max(float(detection.duration_s), len(probs) * hop)
    fig = _figure(figsize, dpi)
    gs = fig.add_gridspec(3, 1, height_ratios=(2.2, 1.6, 0.9), hspace=0.12,
                          left=0.07, right=0.98, top=0.92, bottom=0.09)
    ax_mel = fig.add_subplot(gs[0])
    ax_p = fig.add_subplot(gs[1], sharex=ax_mel)
    ax_ev = fig.add_subplot(gs[2], sharex=ax_mel)

    if mel is not None and len(mel):
        mhop = frame_hop_s or hop / 2
        ax_mel.imshow(np.asarray(mel, dtype=float).T, origin="lower", aspect="auto", cmap="magma",
                      extent=(0.0, mel.shape[0] * mhop, 0, mel.shape[1]), interpolation="nearest")
        ax_mel.set_ylabel("mel bin")
    else:
        ax_mel.text(0.5, 0.5, "(no spectrogram)", ha="center", va="center", transform=ax_mel.transAxes)
    ax_mel.set_title(title or f"{detection.name}: target '{detection.label}'", fontsize=11)
    ax_mel.tick_params(labelbottom=False)

    t = (np.arange(len(probs)) + 0.5) * hop
    pp = detection.postprocessing
    ax_p.plot(t, probs, color="tab:blue", lw=1.0, label="target probability")
    ax_p.axhline(pp.threshold, color="tab:red", ls="--", lw=1.0,
                 label=f"threshold {pp.threshold:g}"
                 + (f", median filter {pp.median_frames} frames" if pp.median_frames > 1 else ""))
    ax_p.set_ylim(-0.02, 1.02)
    ax_p.set_ylabel("probability")
    ax_p.legend(loc="upper right", fontsize=8, framealpha=0.85)
    ax_p.tick_params(labelbottom=False)

    rows = [("detected", detection.events, "tab:orange")]
    if true_events:
        rows.insert(0, ("true", tuple(true_events), "tab:green"))
    for y, (_, events, colour) in enumerate(rows):
        bars = [(e.onset, e.offset - e.onset) for e in events]
        if bars:
            ax_ev.broken_barh(bars, (y + 0.15, 0.7), facecolors=colour)
    ax_ev.set_yticks([y + 0.5 for y in range(len(rows))], [r[0] for r in rows])
    ax_ev.set_ylim(0, len(rows))
    ax_ev.set_xlim(0.0, duration)
    ax_ev.set_xlabel("time (s)")
    return _save(fig, out_png)


def training_curves(steps: dict[str, dict]) -> list[dict[str, Any]]:
    """Per-phase curves from ledger steps in training order (``finished_at``; the ledger file
    itself is written with sorted keys): ``[{"name", "epoch", "loss", "val_event_f",
    "val_segment_f"}]`` with one list entry per epoch for each key."""
    out = []
    order = sorted(steps.items(), key=lambda kv: (str(kv[1].get("finished_at", "")) if isinstance(kv[1], dict) else "", kv[0]))
    for name, step in order:
        hist = step.get("history") if isinstance(step, dict) else None
        if not hist:
            continue
        hist = sorted(hist, key=lambda h: h.get("epoch", 0))
        out.append({
            "name": str(hist[0].get("phase", name)),
            "epoch": [int(h.get("epoch", i)) for i, h in enumerate(hist)],
            **{k: [float(h.get(k, np.nan)) for h in hist] for k in ("loss", "val_event_f", "val_segment_f")},
        })
    return out


def plot_training(
    run_dir: str,
    out_png: str,
    *,
    steps: Sequence[str] | None = None,
    figsize: tuple[float, float] = FIGSIZE,
    dpi: int = DPI,
) -> str:
    """Training curves of a run from ``<run_dir>/ledger.json``: loss (top) and validation
    event-/segment-F (bottom, %) per epoch, the phases one after another along the x axis with
    separators and names. ``steps`` picks ledger steps by name prefix (e.g. ``["MS-"]``).
    Returns ``out_png``; raises :class:`tsd_ray.apps.detect_model.DetectError` when the run has no curves.
    """

    all_steps = read_ledger_steps(run_dir)
    if steps:
        all_steps = {k: v for k, v in all_steps.items() if any(k.startswith(s) for s in steps)}
    curves = training_curves(all_steps)
    if not curves:
        raise DetectError(f"{run_dir}: the ledger holds no finished training phase with a history to plot")
    fig = _figure(figsize, dpi)
    gs = fig.add_gridspec(2, 1, hspace=0.08, left=0.07, right=0.98, top=0.80, bottom=0.09)
    ax_l = fig.add_subplot(gs[0])
    ax_v = fig.add_subplot(gs[1], sharex=ax_l)
    x0 = 0
    for i, c in enumerate(curves):
        x = x0 + np.arange(len(c["loss"]))
        ax_l.plot(x, c["loss"], marker="o", ms=3, color="tab:blue")
        ax_v.plot(x, c["val_event_f"], marker="o", ms=3, color="tab:orange", label="event-F" if i == 0 else None)
        ax_v.plot(x, c["val_segment_f"], marker="s", ms=3, color="tab:green", label="segment-F" if i == 0 else None)
        if i:
            for ax in (ax_l, ax_v):
                ax.axvline(x0 - 0.5, color="0.6", ls=":", lw=1.0)
        crowded = len(curves) > 4
        ax_l.text(x0 - 0.4 if crowded else x0 + (len(x) - 1) / 2, 1.02, c["name"], transform=ax_l.get_xaxis_transform(),
                  rotation=30 if crowded else 0, ha="left" if crowded else "center", va="bottom", fontsize=8)
        x0 += len(x)
    ax_l.set_ylabel("training loss")
    ax_l.tick_params(labelbottom=False)
    ax_v.set_ylabel("validation F (%)")
    ax_v.set_xlabel("epoch (phases in training order)")
    ax_v.set_xlim(-0.5, x0 - 0.5)
    ax_v.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"training curves: {run_dir}", fontsize=10, y=0.99)
    return _save(fig, out_png)
