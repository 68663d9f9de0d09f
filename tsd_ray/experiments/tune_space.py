"""Ray Tune search spaces: the YAML form (``tune_spaces/*.yaml``), parsed and checked against
the config before Ray starts (:func:`load_space`, :func:`check_params`, :func:`validate`).
The format is described in :mod:`tsd_ray.experiments.tune` and docs/tune.md."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

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

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")


SCHEDULERS = ("asha", "fifo")


#: Metrics a trial reports that can drive selection and early stopping.
SELECTION_METRICS = ("val_score",)


#: Path-valued config keys made absolute before trials start (trials run in their own folder).
PATH_KEYS = (("data", "spec"), ("data", "features"), ("encoder", "panns_checkpoint"))


class SpaceError(ConfigError):
    """A search space file is malformed or names a config key/value the config rejects."""


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
