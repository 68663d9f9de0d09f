"""The outcome of a Ray Tune search: one row per trial, the best trial, the summary table and
the best config as YAML (written by :func:`tsd_ray.experiments.tune.write_outputs`)."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tsd_ray.common import storage
from tsd_ray.experiments.tune_space import SearchSpace, plain
from tsd_ray.experiments.tune_trial import TRIAL_DONE_STEP, trial_config, trial_run_name


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    run: str
    status: str  # completed | stopped early | error
    val_score: float | None
    val_split: str
    phases: int
    last_phase: str
    params: dict
    error: str = ""


@dataclass(frozen=True)
class SearchOutcome:
    experiment: str  # the Tune experiment folder (TensorBoard: tensorboard --logdir <this>)
    rows: tuple[TrialRow, ...]
    best: TrialRow | None
    best_config: str | None  # URI of best_config.yaml
    summary_md: str
    summary_json: str
    restored: bool


def trial_id_from_dir(path: str) -> str:
    """``.../trial_main_9254e_00001_1_eval_threshold=...`` -> ``9254e_00001`` (a trial that
    never reported has no ``trial_id`` in its metrics)."""
    m = re.search(r"trial_main_([0-9a-f]+_\d{5})", path)
    return m.group(1) if m else Path(path).name


def trial_row(result, name: str, root: str, keys: list[str]) -> TrialRow:
    """A trial's summary row; "completed" = its ledger records the end of Algorithm 1."""
    m = dict(result.metrics or {})
    trial_id = str(m.get("trial_id") or trial_id_from_dir(str(result.path)))
    run = trial_run_name(name, trial_id)
    led_uri = storage.join(root, run, "ledger.json")
    done = storage.exists(led_uri) and TRIAL_DONE_STEP in storage.read_json(led_uri).get("steps", {})
    if result.error is not None:
        status = "error"
    elif done:
        status = "completed"
    else:
        status = "stopped early"
    score = m.get("val_score")
    score = None if score is None or (isinstance(score, float) and math.isnan(score)) else round(float(score), 3)
    cfg = result.config or {}
    return TrialRow(
        trial_id=trial_id, run=run, status=status, val_score=score, val_split=str(m.get("val_split", "")),
        phases=int(m.get("phases_done", 0) or 0), last_phase=str(m.get("phase", "")),
        params={k: plain(cfg.get(k)) for k in keys},
        error="" if result.error is None else f"{type(result.error).__name__}: {result.error}"[:300],
    )


def pick_best(rows: list[TrialRow] | tuple[TrialRow, ...], mode: str = "max") -> TrialRow | None:
    """Best completed trial (a trial stopped early never scored its final model)."""
    done = [r for r in rows if r.status == "completed" and r.val_score is not None]
    if not done:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return sorted(done, key=lambda r: (-sign * r.val_score, r.trial_id))[0]


def format_summary(rows: list[TrialRow] | tuple[TrialRow, ...], space: SearchSpace, best: TrialRow | None,
                   experiment: str) -> str:
    keys = space.keys
    lines = [
        f"# Tune search '{Path(experiment).name}'",
        "",
        f"Space: `{space.path}`; metric `{space.metric}` ({space.mode}): the f student's best "
        "validation score (F, %) so far; `split` says which validation split it is on.",
        f"Scheduler: {space.scheduler}; experiment folder: `{experiment}` "
        f"(TensorBoard: `tensorboard --logdir {experiment}`).",
        "",
        "| trial | status | val_score | split | phases | last phase | " + " | ".join(keys) + " |",
        "|---|---|---:|---|---:|---|" + "---|" * len(keys),
    ]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.1f}" if v == int(v) else f"{v:.4g}"
        return str(v)

    for r in rows:
        score = "—" if r.val_score is None else f"{r.val_score:.2f}"
        mark = " **best**" if best is not None and r.trial_id == best.trial_id else ""
        lines.append(f"| {r.trial_id}{mark} | {r.status} | {score} | {r.val_split} | {r.phases} | {r.last_phase} | "
                     + " | ".join(fmt(r.params.get(k)) for k in keys) + " |")
    if best is not None:
        lines += ["", f"Best: trial {best.trial_id} (run `{best.run}`), val_score {best.val_score:.2f}; "
                      "config: `best_config.yaml` (run it with `python jobs/iterate.py --config best_config.yaml`)."]
    else:
        lines += ["", "No trial completed: no best config written."]
    errs = [r for r in rows if r.error]
    if errs:
        lines += ["", "Errors:", *[f"- {r.trial_id}: {r.error}" for r in errs]]
    return "\n".join(lines) + "\n"


def best_config_yaml(base: dict, best: TrialRow, *, name: str, root: str, space: SearchSpace) -> str:
    """A full config YAML for ``jobs/iterate.py --config``: the base plus the best trial's
    sampled values, run name ``<name>-best`` under the same storage (features are reused)."""
    cfg = trial_config(base, best.params, run_name=f"{name}-best", root=root)
    header = [
        f"# Best trial {best.trial_id} of Tune search '{name}' (space {space.path}):",
        f"# val_score {best.val_score:.2f} on {best.val_split} (f student's best validation score).",
        "# Sampled values: " + ", ".join(f"{k}={v}" for k, v in best.params.items()),
        f"# The trial's own run (ledger, models): {storage.join(root, best.run)}",
        "# Train it again (MS recipe and whatever method.recipes lists):",
        "#   python jobs/iterate.py --config best_config.yaml",
    ]
    buf = io.StringIO()
    yaml.safe_dump(cfg.to_dict(), buf, sort_keys=False)
    return "\n".join(header) + "\n" + buf.getvalue()
