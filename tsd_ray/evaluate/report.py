"""Reports: JSON + Markdown tables shaped like the paper's Tables 1-3, and per-class tables.

All scores are F-measures in percent. ``results`` (what :func:`write_report` takes)::

    {
      "SS": {"segment_f": 58.6, "event_f": 50.4, "per_class": {...optional}},
      "WS": {...}, "MS": {..., "final_student": "f"},          # any subset of SS/WS/MS
      "ablations": {name: {"segment_f", "event_f",
                           "switches": {"KD": bool, "PS": bool, "AD": bool}}},   # optional
      "iterations": [{"iteration": k, "f_segment_f", "f_event_f",
                      "w_segment_f", "w_event_f"}, ...],                         # optional
      "settings": {"segment_s": 1.0, "t_collar_s": 0.2, "percentage_of_length": 0.2, ...},
    }

Every table states the segment length and collars it was scored with (``settings``).
Files go through :mod:`tsd_ray.common.storage`, so ``out_dir`` may be a local folder or a URI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tsd_ray.common import environment, storage
from tsd_ray.metrics.postprocess import PostProcessing

METHODS: dict[str, str] = {
    "SS": "SS (f student, strong target labels: upper bound)",
    "WS": "WS (w student, weak target labels)",
    "MS": "MS (two-student, mixed supervision)",
}
SWITCHES: tuple[str, ...] = ("KD", "PS", "AD", "SR")
_SWITCH_ALIASES = {
    "KD": ("KD", "kd"),
    "PS": ("PS", "ps", "pseudo"),
    "AD": ("AD", "ad", "adversarial"),
    "SR": ("SR", "sr", "source_replay"),
}


#: What the PSDS1 and intersection-F columns are (tsd_ray/metrics/intersection.py).
INTERSECTION_NOTE = (
    "PSDS1: polyphonic sound detection score, intersection-based (DTC = GTC = 0.7, alpha_ST = 1, "
    "eFPR up to 100 per hour; 0-1), over every threshold of the scores after the tuned median "
    "filter. Intersection-F: DTC = GTC = 0.5 at the tuned post-processing. Both as sed_scores_eval "
    "defines them (the DCASE task-4 baseline's metrics), each class over the samples that ask for it."
)


class ReportError(ValueError):
    """``results`` is missing something a table needs; the message names the key."""


# --------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------


def _is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def fmt(x: Any, digits: int = 2) -> str:
    """A score as text: fixed decimals; ``–`` for None/NaN (undefined, e.g. no references)."""
    if _is_missing(x):
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "✓" if x else "✗"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---:" if a == "c" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _score(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(entry, Mapping):
        raise ReportError(f"results[{where}] must be a mapping with 'segment_f' and 'event_f'")
    if key not in entry:
        raise ReportError(f"results[{where}] has no {key!r} (F-score in percent)")
    return entry[key]


def settings_line(settings: Mapping[str, Any]) -> str:
    """One sentence stating how the scores were computed (segment length, collars, average)."""
    missing = [k for k in ("segment_s", "t_collar_s", "percentage_of_length") if k not in settings]
    if missing:
        raise ReportError(
            f"results['settings'] lacks {missing}: reports must state the segment length and "
            "collars (take them from EvalConfig or Scores.settings())"
        )
    seg = float(settings["segment_s"])
    collar_ms = 1000.0 * float(settings["t_collar_s"])
    pol = 100.0 * float(settings["percentage_of_length"])
    return (
        f"Segment-based F over {seg:g} s segments; event-based F with a {collar_ms:g} ms onset "
        f"collar and an offset collar of max({collar_ms:g} ms, {pol:g} % of the event length). "
        "F-scores in %, macro-averaged over target classes (sed_eval), each TSD sample scored "
        "as its own file; post-processing tuned on validation only."
    )


def _jsonable(x: Any) -> Any:
    """Plain JSON values: NaN -> null, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if hasattr(x, "to_dict"):
        return _jsonable(x.to_dict())
    return x


def _write(out_dir: Any, name: str, text: str) -> str:
    uri = storage.join(str(out_dir), name)
    storage.write_bytes_atomic(uri, text.encode("utf-8"))
    return uri


def _write_json(out_dir: Any, name: str, obj: Any) -> str:
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return _write(out_dir, name, text)


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def format_table1(results: Mapping[str, Any]) -> str:
    """Table 1: Method | Segment-F (%) | Event-F (%) for SS / WS / MS (those present), with
    PSDS1 and intersection-based F beside them when the evaluations hold them.

    When all three are present, also the share of the WS -> SS event-F gap MS closes.
    """
    present = [key for key in METHODS if key in results]
    if not present:
        raise ReportError(f"results has none of {list(METHODS)}: nothing for Table 1")
    intersection = any(isinstance(results[k], Mapping) and "psds1" in results[k] for k in present)
    rows = []
    for key in present:
        entry = results[key]
        row = [METHODS[key], fmt(_score(entry, "segment_f", repr(key))), fmt(_score(entry, "event_f", repr(key)))]
        if intersection:
            row += [fmt(entry.get("psds1"), 3), fmt(entry.get("intersection_f"))]
        rows.append(row)
    header = ["Method", "Segment-F (%)", "Event-F (%)"]
    if intersection:
        header += ["PSDS1", "Intersection-F (%)"]
    out = _table(header, rows)
    if intersection:
        out += "\n\n" + INTERSECTION_NOTE
    gap = event_gap_closed(results)
    below = [k for k in ("MS", "WS") if gap is not None and float(results["SS"]["event_f"]) < float(results[k]["event_f"])]
    if below:
        out += (f"\n\n**SS, the upper bound, scores below {' and '.join(below)} here** (event-F): SS is not an "
                "upper bound on this run, so no share of the WS → SS gap is given. Look at the per-class scores.")
    elif gap is not None:
        out += f"\n\nMS closes {gap:.1f} % of the WS → SS event-F gap."
    if results.get("MS", {}).get("final_student") == "w":
        out += "\n\nMS is scored with its w student, which had the higher validation score (method.final_student=best)."
    return out


def event_gap_closed(results: Mapping[str, Any]) -> float | None:
    """``100 * (MS - WS) / (SS - WS)`` on event-F; None when a score is missing or SS == WS."""
    try:
        ss, ws, ms = (float(results[k]["event_f"]) for k in ("SS", "WS", "MS"))
    except (KeyError, TypeError, ValueError):
        return None
    if any(math.isnan(v) for v in (ss, ws, ms)) or abs(ss - ws) < 1e-9:
        return None
    return 100.0 * (ms - ws) / (ss - ws)


def _switch(switches: Mapping[str, Any], name: str) -> Any:
    for alias in _SWITCH_ALIASES[name]:
        if alias in switches:
            return bool(switches[alias])
    return None


def format_table2(ablations: Mapping[str, Mapping[str, Any]]) -> str:
    """Table 2: ablation | KD | PS | AD | SR (✓/✗) | Segment-F (%) | Event-F (%).

    Each entry's ``switches`` gives KD/PS/AD/SR (or kd/pseudo/adversarial/source_replay);
    ``–`` when absent.
    """
    rows = []
    for name, entry in ablations.items():
        switches = entry.get("switches", entry) if isinstance(entry, Mapping) else {}
        rows.append(
            [
                str(name),
                *(fmt(_switch(switches, s)) for s in SWITCHES),
                fmt(_score(entry, "segment_f", f"'ablations'][{name!r}")),
                fmt(_score(entry, "event_f", f"'ablations'][{name!r}")),
            ]
        )
    return _table(["Setting", *SWITCHES, "Segment-F (%)", "Event-F (%)"], rows, "l" + "c" * len(SWITCHES) + "rr")


def format_table3(iterations: Sequence[Mapping[str, Any]]) -> str:
    """Table 3: iteration | f student segment/event F | w student segment/event F."""
    keys = ("f_segment_f", "f_event_f", "w_segment_f", "w_event_f")
    rows = []
    for i, row in enumerate(iterations):
        if "iteration" not in row:
            raise ReportError(f"results['iterations'][{i}] has no 'iteration'")
        rows.append([str(row["iteration"]), *(fmt(row.get(k)) for k in keys)])
    header = ["Iteration", "f Segment-F (%)", "f Event-F (%)", "w Segment-F (%)", "w Event-F (%)"]
    return _table(header, rows)


def format_per_class_table(per_class: Mapping[str, Mapping[str, Any]]) -> str:
    """Per-class table from ``Scores.per_class``: F / precision / recall (%) and counts, and each
    class's PSDS1 / intersection-F when the evaluation holds them."""
    cols = [
        ("Samples", "n_samples"),
        ("Ref. events", "n_ref_events"),
        ("Segment-F", "segment_f"),
        ("Segment-P", "segment_precision"),
        ("Segment-R", "segment_recall"),
        ("Event-F", "event_f"),
        ("Event-P", "event_precision"),
        ("Event-R", "event_recall"),
    ]
    if any("psds1" in v for v in per_class.values()):
        cols += [("PSDS1", "psds1"), ("Inter-F", "intersection_f")]
    rows = [[str(c), *(fmt(v.get(k), 3 if k == "psds1" else 2) for _, k in cols)]
            for c, v in sorted(per_class.items())]
    return _table(["Class", *(h for h, _ in cols)], rows)


def format_tuning_table(tuning: Mapping[str, Any]) -> str:
    """The validation grid of ``tune_postprocessing`` (threshold x median window x gap filled x
    minimum event length)."""
    rows = [
        [
            fmt(r["threshold"]),
            str(r["median_frames"]),
            str(r.get("fill_gap_frames", 0)),
            str(r.get("min_event_frames", 0)),
            fmt(r.get("segment_f")),
            fmt(r.get("event_f")),
        ]
        for r in tuning.get("rows", ())
    ]
    return _table(["Threshold", "Median (frames)", "Gap filled (frames)", "Min event (frames)", "Segment-F (%)",
                   "Event-F (%)"], rows, "rrrrrr")


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------


def format_report(results: Mapping[str, Any], *, title: str) -> str:
    """The whole Markdown report (Tables 1-3 where the data exist, per-class tables)."""
    settings = results.get("settings")
    if not isinstance(settings, Mapping):
        raise ReportError("results has no 'settings' mapping (segment_s, t_collar_s, ...)")
    parts = [f"# {title}", settings_line(settings)]
    extra = {
        k: v
        for k, v in settings.items()
        if k not in ("segment_s", "t_collar_s", "percentage_of_length")
    }
    if extra:
        parts.append("Settings: " + ", ".join(f"{k} = `{v}`" for k, v in extra.items()))
    parts += ["## Table 1: target-domain test scores", format_table1(results)]
    if results.get("ablations"):
        parts += ["## Table 2: ablations (✓ on, ✗ off)", format_table2(results["ablations"])]
    if results.get("iterations"):
        parts += [
            "## Table 3: scores after each iteration of Algorithm 1",
            format_table3(results["iterations"]),
        ]
    for key in METHODS:
        per_class = results.get(key, {}).get("per_class") if key in results else None
        if per_class:
            parts += [f"## Per-class scores: {key}", format_per_class_table(per_class)]
    if results.get("encoder"):
        parts += ["## Reference encoder", format_encoder_quality(results["encoder"])]
    if results.get("environment"):
        parts += ["## Environment", format_environment(results["environment"])]
    return "\n\n".join(parts) + "\n"


def format_encoder_quality(q: Mapping[str, Any]) -> str:
    """Leave-one-out nearest-centroid accuracy of the reference embeddings, overall and per class."""
    acc = q.get("accuracy")
    head = (f"Leave-one-out nearest-centroid accuracy of the {q.get('n', '?')} reference embeddings: "
            f"**{fmt(None if acc is None else 100 * acc, 1)} %**")
    if q.get("unscored"):
        head += f" (one reference only, not scored: {', '.join(q['unscored'])})"
    rows = [[str(c), fmt(None if a is None else 100 * a, 1)] for c, a in sorted(q.get("per_class", {}).items())]
    return head + "\n\n" + _table(["Class", "Accuracy (%)"], rows)


def format_environment(env: Mapping[str, Any]) -> str:
    """The environment lines, and a warning when the run's steps come from several environments."""
    text = environment.format_markdown(env)
    by_env = env.get("steps_by_environment") or {}
    if len(by_env) > 1:
        text += (f"\n\n**This run's steps were made in {len(by_env)} environments** (see `environment.json`): "
                 + "; ".join(f"`{d}`: {', '.join(steps)}" for d, steps in by_env.items()))
    return text


def write_report(results: Mapping[str, Any], out_dir: Any, *, title: str) -> dict[str, str]:
    """Write ``report.json`` (``results`` + title, NaN as null) and ``report.md`` to ``out_dir``.

    ``out_dir``: local folder or URI. Returns ``{"json": uri, "md": uri}``.
    """
    md = format_report(results, title=title)  # validates before anything is written
    return {
        "json": _write_json(out_dir, "report.json", {"title": title, **results}),
        "md": _write(out_dir, "report.md", md),
    }


def write_per_class(
    per_class: Mapping[str, Mapping[str, Any]],
    out_dir: Any,
    *,
    title: str,
    settings: Mapping[str, Any],
    stem: str = "per_class",
) -> dict[str, str]:
    """Write ``<stem>.json`` and ``<stem>.md`` with the per-class table of one evaluation."""
    md = "\n\n".join([f"# {title}", settings_line(settings), format_per_class_table(per_class)])
    return {
        "json": _write_json(
            out_dir, f"{stem}.json", {"title": title, "settings": settings, "per_class": per_class}
        ),
        "md": _write(out_dir, f"{stem}.md", md + "\n"),
    }


def format_evaluation(res: Mapping[str, Any], *, title: str | None = None) -> str:
    """Markdown for one model's evaluation (``tsd_ray.evaluate.predict.evaluate_model``'s result)."""
    for key in ("segment_f", "event_f", "settings"):
        if key not in res:
            raise ReportError(f"evaluation result has no {key!r}")
    title = title or f"Evaluation on {res.get('split', '?')}"
    parts = [f"# {title}", settings_line(res["settings"])]
    rows = [
        ["Segment-F (%)", fmt(res["segment_f"]), fmt(res.get("segment_f_micro"))],
        ["Event-F (%)", fmt(res["event_f"]), fmt(res.get("event_f_micro"))],
    ]
    if "psds1" in res:
        rows += [["PSDS1", fmt(res["psds1"], 3), "–"], ["Intersection-F (%)", fmt(res.get("intersection_f")), "–"]]
    parts.append(_table(["Metric", "Macro", "Micro"], rows))
    if "psds1" in res:
        parts.append(INTERSECTION_NOTE)
    pp = res.get("postprocessing")
    if pp:
        parts.append(f"Post-processing (tuned on validation): {PostProcessing.from_dict(pp).describe()}.")
    if "n_samples" in res:
        parts.append(f"Samples scored: {res['n_samples']}.")
    if res.get("per_class"):
        parts += ["## Per-class scores", format_per_class_table(res["per_class"])]
    if res.get("tuning"):
        parts += ["## Validation grid", format_tuning_table(res["tuning"])]
    if res.get("environment"):
        parts += ["## Environment", format_environment(res["environment"])]
    return "\n\n".join(parts) + "\n"


def write_evaluation(
    res: Mapping[str, Any], out_dir: Any, *, title: str | None = None
) -> dict[str, str]:
    """Write ``evaluation.json`` and ``evaluation.md`` (headline, post-processing, per class)."""
    md = format_evaluation(res, title=title)
    return {
        "json": _write_json(out_dir, "evaluation.json", res),
        "md": _write(out_dir, "evaluation.md", md),
    }
