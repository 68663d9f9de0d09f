"""Ray Tune over the two-student method's knobs: search spaces as YAML, one trial per run.

A search space (``tune_spaces/*.yaml``) names the same dotted config keys as ``--set`` and
the config files (``method.lambda_d``, ``phases.f_source.lr``, ``eval.threshold``…)::

    metric: val_score            # the only metric a trial reports for selection (F-score, %)
    mode: max
    scheduler: asha              # asha (early stopping) | fifo (every trial runs to the end)
    seed: 0                      # optional: seed of the random sampler
    base_config: tiny            # optional: used when the job gets no --config
    budget: {num_samples: 8, max_concurrent_trials: 1, grace_period: 1, reduction_factor: 2}
    params:
      method.lambda_d: {type: loguniform, low: 0.01, high: 1.0}
      method.max_iterations: {type: randint, low: 1, high: 4}      # both ends included
      phases.w_target.lr: {type: choice, values: [0.001, 0.003]}
      eval.threshold: {type: grid, values: [0.4, 0.5]}              # every value, x num_samples

Everything is checked before Ray starts (:func:`load_space`, :func:`check_params`): unknown
space fields, unknown or section-valued config keys, malformed distributions, and values of
the wrong type for their key (each distribution's extreme/choice values are pushed through
the config loader, so ``ConfigError`` speaks for the key), each error naming the key.

A trial (:func:`trial_main`) is one run of Algorithm 1 (the MS recipe, the very code of
``jobs/iterate.py``: :class:`tsd_ray.experiments.pipeline.Run` + :func:`tsd_ray.experiments.pipeline.run_ms`); every
phase is its own Ray Train ``TorchTrainer`` run inside the trial, and the trial reports to
Tune after every finished phase (:class:`ScoreTracker` says what ``val_score`` is), so ASHA
can stop weak trials after their first phases. ``training_iteration`` counts phases.

Resources: a trial's driver takes no CPU (a small ``memory`` reservation only) so Ray Data
and Ray Train keep the cores (docs/architecture.md, "Ray Tune trial resources": a 1-CPU trial driver starves them on a small
machine); the Train workers of each phase come from the trial config's ``train`` section, and
:func:`concurrency_cap` keeps concurrent trials within the cluster's CPUs/GPUs.

Sharing and resuming: features are built once by the driver; the reference encoder is
pretrained once (per encoder/train/feature settings) and handed to every trial whose
settings match. Each trial has its own run folder ``<storage>/<name>-trial-<trial id>``
and ledger, so a restored experiment (``Tuner.restore``) re-runs only unfinished phases.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import io
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tsd_ray.common import storage
from tsd_ray.common.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    get_key,
    load_yaml_dict,
    set_dotted,
    to_dict,
)
from tsd_ray.common.digest import digest, without_neutral_keys
from tsd_ray.common.progress import say
from tsd_ray.common.ray_env import cluster_cpus, cluster_gpus, ensure_ray, quiet_data_context
from tsd_ray.data.shards import load_manifest
from tsd_ray.experiments.final_model import Outcome, final_model
from tsd_ray.experiments.ledger import Ledger
from tsd_ray.experiments.pipeline import Run, prepare_features, run_ms
from tsd_ray.train.driver import embeddings_file
from tsd_ray.train.encoder import embed_references, pretrain_encoder

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")
SCHEDULERS = ("asha", "fifo")
#: Metrics a trial reports that can drive selection and early stopping.
SELECTION_METRICS = ("val_score",)
#: Trial drivers hold no CPU: only this much of Ray's ``memory`` resource (a bundle needs one
#: non-zero resource; ``{"CPU": 0}`` alone is rejected by Tune).
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 128 * 1024**2}
#: Ledger step a trial records when Algorithm 1 ran to its end (not stopped by the scheduler).
TRIAL_DONE_STEP = "tune-trial-complete"
#: Written into the experiment folder: what the search was started with (restore checks it).
SETUP_FILE = "tsd_tune_setup.json"
#: Path-valued config keys made absolute before trials start (trials run in their own folder).
_PATH_KEYS = (("data", "spec"), ("data", "features"), ("encoder", "panns_checkpoint"))


class SpaceError(ConfigError):
    """A search space file is malformed or names a config key/value the config rejects."""


# --------------------------------------------------------------------------------------------
# Search space: typed form of the YAML
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One searched config key and its distribution.

    ``randint`` includes both ends (``low: 1, high: 4`` samples 1, 2, 3 or 4), unlike
    ``ray.tune.randint``; ``grid`` tries every value (``num_samples`` times).
    """

    key: str  # dotted config key, e.g. "method.lambda_d"
    type: Literal["choice", "uniform", "loguniform", "randint", "grid"]
    values: tuple[Any, ...] = ()  # choice / grid
    low: float | int | None = None  # uniform / loguniform / randint
    high: float | int | None = None

    def to_tune(self) -> Any:
        """The ``ray.tune`` search-space object of this entry."""
        from ray import tune as rtune

        if self.type == "choice":
            return rtune.choice(list(self.values))
        if self.type == "grid":
            return rtune.grid_search(list(self.values))
        if self.type == "uniform":
            return rtune.uniform(float(self.low), float(self.high))
        if self.type == "loguniform":
            return rtune.loguniform(float(self.low), float(self.high))
        return rtune.randint(int(self.low), int(self.high) + 1)  # tune's upper end is exclusive

    def probe_values(self) -> list[Any]:
        """Values the distribution can produce that together exercise the key's type check."""
        if self.type in ("choice", "grid"):
            return list(self.values)
        if self.type == "randint":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]  # always floats, as tune samples them

    def max_value(self) -> Any:
        vals = self.probe_values()
        return max(vals) if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals) else None


@dataclass(frozen=True)
class Budget:
    """How many trials, how many at once, and ASHA's rungs (in reported phases)."""

    num_samples: int = 1
    max_concurrent_trials: int = 1
    grace_period: int = 1  # phases every trial runs before it can be stopped
    reduction_factor: float = 2.0  # ASHA keeps the best 1/reduction_factor at each rung
    max_t: int | None = None  # rung horizon in phases; None: the longest trial's phase count


@dataclass(frozen=True)
class SearchSpace:
    path: str
    params: tuple[ParamSpec, ...]
    budget: Budget = field(default_factory=Budget)
    metric: str = "val_score"
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["asha", "fifo"] = "asha"
    base_config: str | None = None  # resolved path or shipped config name
    seed: int | None = None
    description: str = ""

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def param_space(self) -> dict[str, Any]:
        """``{dotted key: ray.tune distribution}`` for ``Tuner(param_space=...)``."""
        return {p.key: p.to_tune() for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


_SPACE_FIELDS = {"metric", "mode", "scheduler", "seed", "base_config", "budget", "params", "description"}
_PARAM_FIELDS = {
    "choice": {"type", "values"},
    "grid": {"type", "values"},
    "uniform": {"type", "low", "high"},
    "loguniform": {"type", "low", "high"},
    "randint": {"type", "low", "high"},
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _parse_param(where: str, key: Any, entry: Any) -> ParamSpec:
    if not isinstance(key, str) or not key.strip():
        raise SpaceError(f"{where}: param names must be dotted config keys, got {key!r}")
    at = f"{where}: param '{key}'"
    if not isinstance(entry, Mapping):
        raise SpaceError(f"{at}: expected a mapping like {{type: choice, values: [...]}}, got {entry!r}")
    kind = entry.get("type")
    if kind not in DISTRIBUTIONS:
        raise SpaceError(f"{at}: 'type' must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
    extra = sorted(set(entry) - _PARAM_FIELDS[kind])
    if extra:
        raise SpaceError(f"{at}: unknown field(s) {extra} for type {kind} "
                         f"(allowed: {', '.join(sorted(_PARAM_FIELDS[kind]))})")
    if kind in ("choice", "grid"):
        values = entry.get("values")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{at}: type {kind} needs a non-empty list 'values', got {values!r}")
        return ParamSpec(key, kind, values=tuple(values))
    low, high = entry.get("low"), entry.get("high")
    if not (_is_number(low) and _is_number(high)):
        raise SpaceError(f"{at}: type {kind} needs numbers 'low' and 'high', got low={low!r}, high={high!r}")
    if kind == "randint":
        if not (isinstance(low, int) and isinstance(high, int)):
            raise SpaceError(f"{at}: randint needs integer 'low' and 'high', got low={low!r}, high={high!r}")
        if low > high:
            raise SpaceError(f"{at}: randint needs low <= high (both included), got {low} > {high}")
    elif not low < high:
        raise SpaceError(f"{at}: {kind} needs low < high, got low={low}, high={high}")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{at}: loguniform needs low > 0, got {low}")
    return ParamSpec(key, kind, low=low, high=high)


def _parse_budget(where: str, raw: Any) -> Budget:
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{where}: 'budget' must be a mapping, got {raw!r}")
    names = {f.name for f in dataclasses.fields(Budget)}
    extra = sorted(set(raw) - names)
    if extra:
        raise SpaceError(f"{where}: unknown budget field(s) {extra} (allowed: {', '.join(sorted(names))})")
    b = {**dataclasses.asdict(Budget()), **raw}
    for k in ("num_samples", "max_concurrent_trials", "grace_period"):
        if isinstance(b[k], bool) or not isinstance(b[k], int) or b[k] < 1:
            raise SpaceError(f"{where}: budget.{k} must be an integer >= 1, got {b[k]!r}")
    if not _is_number(b["reduction_factor"]) or b["reduction_factor"] <= 1:
        raise SpaceError(f"{where}: budget.reduction_factor must be a number > 1, got {b['reduction_factor']!r}")
    mt = b["max_t"]
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < b["grace_period"]):
        raise SpaceError(f"{where}: budget.max_t must be an integer >= grace_period ({b['grace_period']}), got {mt!r}")
    return Budget(num_samples=b["num_samples"], max_concurrent_trials=b["max_concurrent_trials"],
                  grace_period=b["grace_period"], reduction_factor=float(b["reduction_factor"]), max_t=mt)


def parse_space(data: Any, where: str = "<space>", relative_to: Path | None = None) -> SearchSpace:
    """Check the structure of a space mapping (not yet against a config: see check_params)."""
    if not isinstance(data, Mapping):
        raise SpaceError(f"{where}: a search space must be a mapping with 'params', got {type(data).__name__}")
    extra = sorted(set(data) - _SPACE_FIELDS)
    if extra:
        raise SpaceError(f"{where}: unknown field(s) {extra} (allowed: {', '.join(sorted(_SPACE_FIELDS))})")
    metric = data.get("metric", "val_score")
    if metric not in SELECTION_METRICS:
        raise SpaceError(f"{where}: metric must be one of {list(SELECTION_METRICS)} (what a trial reports), got {metric!r}")
    mode = data.get("mode", "max")
    if mode != "max":
        raise SpaceError(f"{where}: mode must be max ({metric} is an F-score in %), got {mode!r}")
    scheduler = data.get("scheduler", "asha")
    if scheduler not in SCHEDULERS:
        raise SpaceError(f"{where}: scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SpaceError(f"{where}: seed must be an integer, got {seed!r}")
    params_raw = data.get("params")
    if not isinstance(params_raw, Mapping) or not params_raw:
        raise SpaceError(f"{where}: 'params' must be a non-empty mapping of dotted config keys to distributions")
    params = tuple(_parse_param(where, k, v) for k, v in params_raw.items())
    base = data.get("base_config")
    if base is not None:
        if not isinstance(base, str):
            raise SpaceError(f"{where}: base_config must be a config name or path, got {base!r}")
        if relative_to is not None and (relative_to / base).is_file():
            base = str((relative_to / base).resolve())
    desc = data.get("description", "")
    return SearchSpace(
        path=where, params=params, budget=_parse_budget(where, data.get("budget")), metric=metric,
        mode=mode, scheduler=scheduler, base_config=base, seed=seed, description=str(desc or ""),
    )


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Read and structurally check a search space YAML (``base_config`` is resolved relative
    to the space file when such a file exists there)."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"search space '{path}' not found (shipped spaces live in tune_spaces/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from exc
    return parse_space(data, where=str(path), relative_to=p.parent)


# --------------------------------------------------------------------------------------------
# Checking a space against the config
# --------------------------------------------------------------------------------------------




def plain(value: Any) -> Any:
    """numpy scalars (what tune samples) -> Python values, recursively; YAML/JSON-safe."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _all_keys(cfg: Any, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        k = f"{prefix}{f.name}"
        out += _all_keys(v, k + ".") if dataclasses.is_dataclass(v) else [k]
    return out


def check_params(space: SearchSpace, base: dict) -> Config:
    """Every param names a leaf key of :class:`Config` (not ``run.*``, set by the tuner) and
    every value its distribution can give passes the config's type check. Returns the base
    config. Raises :class:`SpaceError` naming the space file and the key."""
    try:
        base_cfg = config_from_dict(base)
    except ConfigError as exc:
        raise ConfigError(f"base config: {exc}") from exc
    valid = _all_keys(base_cfg)
    for p in space.params:
        at = f"{space.path}: param '{p.key}'"
        try:
            value = get_key(base_cfg, p.key)
        except ConfigError:
            near = difflib.get_close_matches(p.key, valid, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else " (keys are those of tsd_ray.common.config.Config, e.g. method.lambda_d)"
            raise SpaceError(f"{at}: unknown config key '{p.key}'{hint}") from None
        if dataclasses.is_dataclass(value):
            raise SpaceError(f"{at}: '{p.key}' is a config section; name a key inside it "
                             f"({', '.join(f.name for f in dataclasses.fields(value))})")
        if p.key.split(".")[0] == "run":
            raise SpaceError(f"{at}: run.* keys are set by the tuner (trial run names, storage); search other keys")
        for v in p.probe_values():
            data = copy.deepcopy(base)
            set_dotted(data, p.key, plain(v))
            try:
                config_from_dict(data)
            except ConfigError as exc:
                raise SpaceError(f"{at}: {p.type} value {v!r} is not valid for this key: {exc}") from None
    return base_cfg


def resolve_base(space: SearchSpace, config: str | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The base config mapping: ``config`` (else the space's ``base_config``) + ``--set`` overrides."""
    name = config or space.base_config
    if name is None:
        raise SpaceError(f"{space.path}: no --config given and the space names no base_config")
    return apply_overrides(load_yaml_dict(name), list(overrides))


def validate(space_path: str | os.PathLike, config: str | None = None,
             overrides: list[str] | tuple[str, ...] = ()) -> tuple[SearchSpace, dict, Config]:
    """Everything checked before a trial starts: (space, base mapping, base config)."""
    space = load_space(space_path)
    base = resolve_base(space, config, overrides)
    cfg = check_params(space, base)
    return space, base, cfg


# --------------------------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------------------------


def phases_of(method) -> int:
    """Reports (= phases) one MS run makes at most: p1-p3 (+ p4 + 2 per loop iteration)."""
    return 3 + (1 + 2 * method.max_iterations if method.pseudo else 0)


def max_reports(space: SearchSpace, cfg: Config) -> int:
    """The longest trial's phase count (ASHA's default horizon)."""
    iters = cfg.method.max_iterations
    pseudo = cfg.method.pseudo
    for p in space.params:
        if p.key == "method.max_iterations" and p.max_value() is not None:
            iters = max(iters, int(p.max_value()))
        if p.key == "method.pseudo":
            pseudo = True
    return phases_of(dataclasses.replace(cfg.method, max_iterations=iters, pseudo=pseudo))


def trial_config(base: dict, params: Mapping[str, Any], *, run_name: str, root: str) -> Config:
    """A trial's config: base mapping + sampled params (dotted keys), its own run name."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, plain(value))
    set_dotted(data, "run.name", run_name)
    set_dotted(data, "run.storage", root)
    return config_from_dict(data)


def trial_run_name(name: str, trial_id: str) -> str:
    return f"{name}-trial-{trial_id}"


class ScoreTracker:
    """What a trial reports after each phase.

    ``val_score`` is the validation score of the model MS would report if the run ended now
    (:func:`tsd_ray.experiments.final_model.final_model`, the rule ``run_ms`` uses): once a
    target-domain student qualifies (phase 3's w when ``method.pseudo`` is off or
    ``method.final_student=best``, else phase 4's f), its score; before that, the best f score
    on the source validation split (phase 1). So the last value equals the final MS model's
    score, and ASHA, which compares trials at equal ``training_iteration`` (after the same
    phase), never compares values from different splits.
    """

    def __init__(self, pseudo: bool = True, either: bool = False):
        self.pseudo = pseudo
        self.final_student = "best" if either else "f"
        self.outcomes: list[Outcome] = []
        self.val_score = math.nan
        self.val_split = ""

    @property
    def phases_done(self) -> int:
        return len(self.outcomes)

    def update(self, phase: str, student: str, val_split: str, score: float) -> dict[str, Any]:
        """Metrics to report after ``phase`` (``student`` f/w, scored ``score`` on ``val_split``)."""
        score = float(score)
        self.outcomes.append(Outcome(phase, student, val_split, score))
        chosen = final_model(self.outcomes, pseudo=self.pseudo, final_student=self.final_student)
        if chosen is None:  # no target-domain model yet: the source-domain f (or the first phase)
            source_f = [o for o in self.outcomes if o.student == "f" and not o.on_target]
            chosen = max(source_f, key=lambda o: o.score) if source_f else self.outcomes[0]
        self.val_score, self.val_split = chosen.score, chosen.val_split
        return {
            "val_score": self.val_score,
            "val_split": self.val_split,
            "phase": phase,
            "phase_student": student,
            "phase_val_score": score,
            "phases_done": self.phases_done,
        }


@dataclass(frozen=True)
class TrialSetup:
    """What every trial gets from the driver (small, picklable)."""

    name: str  # experiment name
    root: str  # storage root (absolute path or URI)
    base: dict  # base config mapping (paths absolute)
    features: str  # manifest URI the driver prepared
    data_key: str  # data_key() of the base config: trials with the same key reuse `features`
    encoder_key: str = ""  # encoder_key() of the shared encoder ("" when none)
    encoder_uri: str = ""
    embeddings_uri: str = ""


def data_key(cfg: Config) -> str:
    """Digest of what decides the features (corpus, front end, samples, build)."""
    d = to_dict(cfg)
    return digest({k: d[k] for k in ("data", "frontend", "samples", "build")} | {"overlap": cfg.method.overlap_classes})


def encoder_key(cfg: Config, features_uri: str) -> str:
    """Digest of what decides the pretrained encoder: its section, train settings, features."""
    tr = without_neutral_keys({"train": to_dict(cfg.train)})["train"]
    return digest({"encoder": to_dict(cfg.encoder), "train": tr, "features": features_uri})


def shared_encoder(cfg: Config, root: str, manifest) -> tuple[str, str, str]:
    """Pretrain (or find) the encoder + embedding table once for all matching trials.

    Lives in the run folder ``_encoder-<key>`` with a ledger pinned to the key, so a second
    search with the same encoder settings reuses it. Returns (key, encoder URI, embeddings URI).
    """

    key = encoder_key(cfg, manifest.uri)
    run_name = f"_encoder-{key}"
    led = Ledger.open(storage.join(root, run_name), key)
    if not led.done("encoder"):
        say(f"pretraining the shared encoder ({run_name})")
        led.record("encoder", model_uri=pretrain_encoder(cfg, manifest, storage_path=root, run_name=run_name))
    if not led.done("embeddings"):
        uri = embed_references(led.get("encoder")["model_uri"], manifest, embeddings_file(root, run_name))
        led.record("embeddings", uri=uri)
    return key, led.get("encoder")["model_uri"], led.get("embeddings")["uri"]


def _reporting_run_class():
    class ReportingRun(Run):
        """A pipeline Run that calls ``on_phase(spec, entry)`` after every phase (done or skipped)."""

        def __init__(self, cfg, root, manifest, on_phase: Callable[[Any, dict], None]):
            super().__init__(cfg, root, manifest)
            self._on_phase = on_phase

        def phase(self, spec):
            entry = super().phase(spec)
            self._on_phase(spec, entry)
            return entry

    return ReportingRun


def run_trial(setup: TrialSetup, params: Mapping[str, Any], trial_id: str,
              report: Callable[[dict], None]) -> dict[str, Any]:
    """One trial: Algorithm 1 (MS) with the sampled params, ``report`` after every phase."""

    cfg = trial_config(setup.base, params, run_name=trial_run_name(setup.name, trial_id), root=setup.root)
    if data_key(cfg) == setup.data_key:
        manifest = load_manifest(setup.features)
    else:  # the search changes the features themselves: build (or find) this trial's own
        manifest = prepare_features(cfg, setup.root)
    tracker = ScoreTracker(pseudo=cfg.method.pseudo, either=cfg.method.final_student == "best")

    def on_phase(spec, entry):
        report({**tracker.update(spec.name, spec.student, spec.val_split, entry["best_val_score"]), "run": cfg.run.name})

    run = _reporting_run_class()(cfg, setup.root, manifest, on_phase)
    if (setup.encoder_uri and not run.ledger.done("encoder")
            and encoder_key(cfg, manifest.uri) == setup.encoder_key):
        run.ledger.record("encoder", model_uri=setup.encoder_uri, shared=True)
        run.ledger.record("embeddings", uri=setup.embeddings_uri, shared=True)
    say(f"trial {trial_id}: {dict(params)} -> run {cfg.run.name}")
    run.prepare_encoder()
    ms = run_ms(run, cfg.method)
    final = ms["final"]
    info = {"val_score": tracker.val_score, "val_split": tracker.val_split,
            "final_student": ms["final_student"], "final_model_uri": final["model_uri"],
            "phases": tracker.phases_done, "params": plain(dict(params))}
    if not run.ledger.done(TRIAL_DONE_STEP):
        run.ledger.record(TRIAL_DONE_STEP, **info)
    return info


def trial_main(config: dict, setup: TrialSetup) -> None:
    """Tune function trainable (wrapped with ``tune.with_parameters(trial_main, setup=...)``)."""
    import ray
    from ray import tune as rtune

    quiet_data_context()
    trial_id = rtune.get_context().get_trial_id()
    # what this trial's driver holds (0 CPUs: the cores stay with Ray Data and Ray Train)
    held = {"driver_cpus": float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))}
    run_trial(setup, config, trial_id, lambda metrics: rtune.report({**metrics, **held}))


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def concurrency_cap(cfg: Config, cluster_cpus: float, cluster_gpus: float) -> int:
    """How many trials fit at once so Train workers never take the CPUs Ray Data needs.

    Mirrors :func:`tsd_ray.train.driver.scaling_config`: a CPU trial's workers take up to
    ``cluster_cpus - reserve_cpus_for_data``; a GPU trial's take ``gpus_per_worker`` each.
    """
    tc = cfg.train
    free = max(0.0, cluster_cpus - tc.reserve_cpus_for_data)
    if tc.use_gpu:
        by_gpu = int(cluster_gpus // max(1e-9, tc.num_workers * tc.gpus_per_worker))
        by_cpu = int(free // max(1e-9, tc.num_workers * tc.cpus_per_worker))
        return max(1, min(by_gpu, by_cpu))
    per_worker = round(min(tc.cpus_per_worker, max(0.1, free) / tc.num_workers), 2)
    return max(1, int((free + 1e-9) // (per_worker * tc.num_workers)))


def _absolute_paths(base: dict) -> dict:
    out = copy.deepcopy(base)
    for section, key in _PATH_KEYS:
        v = (out.get(section) or {}).get(key)
        if isinstance(v, str) and v and not storage.is_uri(v) and not os.path.isabs(os.path.expanduser(v)):
            out[section][key] = str(Path(v).expanduser().resolve())
    return out


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


def _trial_id_from_dir(path: str) -> str:
    """``.../trial_main_9254e_00001_1_eval_threshold=...`` -> ``9254e_00001`` (a trial that
    never reported has no ``trial_id`` in its metrics)."""
    m = re.search(r"trial_main_([0-9a-f]+_\d{5})", path)
    return m.group(1) if m else Path(path).name


def _row(result, name: str, root: str, keys: list[str]) -> TrialRow:
    """A trial's summary row; "completed" = its ledger records the end of Algorithm 1."""
    m = dict(result.metrics or {})
    trial_id = str(m.get("trial_id") or _trial_id_from_dir(str(result.path)))
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


def _setup_record(space: SearchSpace, base: dict, num_samples: int) -> dict:
    """What a restore must match: the space's content (not its path), base config, samples."""
    sp = {k: v for k, v in space.to_dict().items() if k not in ("path", "description")}
    return json.loads(json.dumps({"space": sp, "base_config_digest": digest(base), "num_samples": num_samples}))


def run_search(
    space: SearchSpace,
    base: dict,
    *,
    storage_root: str | None = None,
    name: str | None = None,
    num_samples: int | None = None,
    max_concurrent_trials: int | None = None,
    verbose: int = 1,
) -> SearchOutcome:
    """Run (or resume) a search and write its outputs into the experiment folder.

    ``base`` is the checked base config mapping (:func:`validate`). Started again with the same
    ``name`` under the same storage the experiment is restored (``Tuner.restore``): finished
    trials stay, unfinished ones re-run only their unfinished phases. A changed space or base
    config under the same name is refused.
    """
    from ray import tune as rtune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    base = _absolute_paths(base)
    cfg = check_params(space, base)
    root = storage.expand(storage_root or cfg.run.storage)
    name = name or f"tune-{Path(space.path).stem}"
    n = num_samples or space.budget.num_samples
    exp = storage.join(root, name)
    setup_uri = storage.join(exp, SETUP_FILE)
    record = _setup_record(space, base, n)
    fs, exp_path = storage.resolve(exp)

    ensure_ray()
    manifest = prepare_features(cfg, root)  # once, before any trial: trials never race to build it
    enc_key, enc_uri, emb_uri = shared_encoder(cfg, root, manifest)
    setup = TrialSetup(name=name, root=root, base=base, features=manifest.uri, data_key=data_key(cfg),
                       encoder_key=enc_key, encoder_uri=enc_uri, embeddings_uri=emb_uri)
    trainable = rtune.with_resources(rtune.with_parameters(trial_main, setup=setup), dict(TRIAL_DRIVER_RESOURCES))

    restored = rtune.Tuner.can_restore(exp_path, storage_filesystem=fs)
    if restored:
        if storage.exists(setup_uri):
            old = storage.read_json(setup_uri)
            if old != record:
                raise SpaceError(
                    f"experiment {exp} was started with another space/base config/num_samples; "
                    "restore it with the same ones, or pass another --name for a new search")
        say(f"restoring Tune experiment {exp}: finished trials are kept, unfinished ones resume")
        tuner = rtune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True,
                                    storage_filesystem=fs)
    else:
        cap = concurrency_cap(cfg, cluster_cpus(), cluster_gpus())
        want = max_concurrent_trials or space.budget.max_concurrent_trials
        if want > cap:
            say(f"max_concurrent_trials {want} -> {cap}: more concurrent trials would starve Ray Data/Train "
                f"on this cluster ({cluster_cpus():.0f} CPUs, {cluster_gpus():.0f} GPUs)")
        concurrent = min(want, cap)
        if space.scheduler == "asha":
            horizon = space.budget.max_t or max_reports(space, cfg)
            scheduler = ASHAScheduler(
                time_attr="training_iteration", max_t=max(horizon, space.budget.grace_period),
                grace_period=space.budget.grace_period, reduction_factor=space.budget.reduction_factor,
                stop_last_trials=False,  # a trial is never cut just for reaching the horizon
            )
        else:
            scheduler = FIFOScheduler()
        storage.write_json_atomic(setup_uri, record)
        tuner = rtune.Tuner(
            trainable,
            param_space=space.param_space(),
            tune_config=rtune.TuneConfig(
                metric=space.metric, mode=space.mode, num_samples=n, scheduler=scheduler,
                # the limit goes to the generator: with an explicit search_alg Tune ignores
                # TuneConfig.max_concurrent_trials for BasicVariantGenerator
                search_alg=BasicVariantGenerator(random_state=space.seed, max_concurrent=concurrent),
            ),
            run_config=rtune.RunConfig(
                name=name, storage_path=storage.resolve(root)[1], storage_filesystem=fs,
                failure_config=rtune.FailureConfig(max_failures=1), verbose=verbose,
            ),
        )
    say(f"Tune search '{name}': {len(space.params)} params, {n} sample(s), scheduler {space.scheduler}; "
        f"experiment folder {exp}")
    grid = tuner.fit()
    return write_outputs(grid, space, base, name=name, root=root, restored=restored)


def write_outputs(grid, space: SearchSpace, base: dict, *, name: str, root: str, restored: bool = False) -> SearchOutcome:
    """Summary table (Markdown + JSON) and ``best_config.yaml`` into the experiment folder."""

    exp = storage.join(root, name)
    rows = [_row(r, name, root, space.keys) for r in grid]
    order = {"completed": 0, "stopped early": 1, "error": 2}
    sign = -1.0 if space.mode == "max" else 1.0
    rows.sort(key=lambda r: (order[r.status], r.val_score is None, sign * (r.val_score or 0.0), r.trial_id))
    best = pick_best(rows, space.mode)
    md = format_summary(rows, space, best, exp)
    md_uri, js_uri = storage.join(exp, "tune_summary.md"), storage.join(exp, "tune_summary.json")
    storage.write_bytes_atomic(md_uri, md.encode())
    best_uri = None
    if best is not None:
        best_uri = storage.join(exp, "best_config.yaml")
        storage.write_bytes_atomic(best_uri, best_config_yaml(base, best, name=name, root=root, space=space).encode())
    storage.write_json_atomic(js_uri, {
        "experiment": exp, "space": space.path, "metric": space.metric, "mode": space.mode,
        "scheduler": space.scheduler, "best": None if best is None else dataclasses.asdict(best),
        "best_config": best_uri, "trials": [dataclasses.asdict(r) for r in rows],
    })
    print(md, flush=True)
    say(f"summary: {md_uri}" + (f"; best config: {best_uri}" if best_uri else ""))
    return SearchOutcome(experiment=exp, rows=tuple(rows), best=best, best_config=best_uri,
                         summary_md=md_uri, summary_json=js_uri, restored=restored)
