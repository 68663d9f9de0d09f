"""Typed configuration: one frozen dataclass per component, loaded from YAML.

Every job builds a :class:`Config` from a YAML file plus ``--set a.b=c`` overrides. Unknown
keys and values of the wrong type are rejected with a :class:`ConfigError` that names the
dotted key, so a typo never silently falls back to a default (the reference implementation's
``dict(yaml, **kwargs)`` did exactly that).

Shipped configs live in ``tsd_ray/configs/``; a config file may start with
``base: <name or path>`` and list only its changes (variants are data, not copied files).
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tsd_ray.common.digest import digest

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config key is unknown, missing or has a value of the wrong type."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel front end (paper §5.2). Frame rate = sample_rate / hop_length = 50 frames/s."""

    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 441
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2
    log_offset: float = 1e-6  # log(mel + offset)
    clip_s: float = 10.0  # mixtures are padded/cropped to this length
    max_overhang_s: float = 0.5  # longer files than clip+this are quarantined
    reference_s: float = 4.0  # reference clips are padded/cropped to this length
    device: str = "auto"  # auto | cpu | cuda: where mels are computed in the build


@dataclass(frozen=True)
class SamplesConfig:
    """How TSD samples are made from mixtures (docs/architecture.md, "TSD samples")."""

    output_hop_s: float = 0.04  # model output resolution (time pooled x2)
    negatives_per_positive: float = 0.5  # ceil(N * this) negatives per mixture
    seed: int = 0


@dataclass(frozen=True)
class BuildConfig:
    """Feature build on Ray Data."""

    rows_per_shard: int = 256  # mixtures per Parquet shard
    num_workers: int = 0  # parallel shard writers; 0: one per available CPU (>=1)


@dataclass(frozen=True)
class EncoderConfig:
    """Conditional network (Cnn14-style reference encoder)."""

    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    embedding_dim: int = 128
    dropout: float = 0.2
    panns_checkpoint: str | None = None  # path/URI of a public PANNs Cnn14 .pth
    finetune_trunk: bool = True  # False: train only the embedding head (sensible with PANNs)
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 32
    # The pretraining head over the embedding: "linear", or "cosine" (normalised softmax with a
    # learnt scale: classes are told apart by the embedding's direction, which is what the
    # detector and the leave-one-out check see).
    classifier: Literal["linear", "cosine"] = "linear"
    # What the encoder learns from (tsd_ray/train/encoder_items.py): "references" = the reference pool
    # alone; "all" = also the source-domain events cut at their onsets/offsets and the weak
    # clips (target_train, and source_train with its events' labels), multi-label, with
    # augmentation (EQ, gain, mel shift, stretch, mixing, SpecAugment). Never val/test audio.
    # "references" is the default until "all" measures better (README, "Measured", "Real sound").
    train_on: Literal["references", "all"] = "references"
    weak_fraction: float = 0.25  # share of the weak clips trained on per epoch (train_on: all)
    mix_prob: float = 0.5  # probability of mixing an item with another (train_on: all)
    # Joint fine-tuning with the detector (tsd_ray/train/joint.py): "off" = the pretrained
    # encoder stays frozen and every phase reads its embedding table; "head" = the layers after
    # the conv trunk (fc1, fc_embedding) train with each phase's detector loss (the trunk's
    # pooled outputs of the reference pool are computed once per phase: cheap on CPU); "all" =
    # the whole encoder runs on each batch's references and trains (the cost of an encoder step
    # per detector step: for GPUs). The fine-tuned encoder travels in the student's model file.
    joint: Literal["off", "head", "all"] = "off"
    joint_lr_scale: float = 0.1  # encoder learning rate = the phase's learning rate x this
    # How the frames of a clip shorter than the encoder's window (the reference length) are
    # filled: "floor" = as stored, the log-mel floor (silence) after the clip; "repeat" = the
    # clip's own frames repeated to the window's end, so the trunk's pooling over time sees the
    # sound rather than mostly silence (a median reference of the real dev corpus: 0.7 s of 4). The
    # encoder's model file keeps it: every caller that embeds a clip fills it the same way.
    fill: Literal["floor", "repeat"] = "floor"


@dataclass(frozen=True)
class DetectorConfig:
    """Detection network shared by the f and w students."""

    channels: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
    time_pool_block: int = 0  # index of the conv block that pools time x2 (-> 40 ms frames)
    freq_pool: tuple[int, int, int, int, int] = (2, 2, 2, 2, 2)  # per-block mel-axis pooling
    gru_hidden: int = 256
    fc_hidden: int = 256
    embedding_dim: int = 128
    dropout: float = 0.2
    projection_dim: int = 128  # KD projections W_s, W_w


@dataclass(frozen=True)
class DiscriminatorConfig:
    channels: tuple[int, int, int] = (64, 64, 64)


@dataclass(frozen=True)
class MethodConfig:
    """Two-student method switches (Tables 2-3; docs/architecture.md, "Baselines, ablations and the iteration study")."""

    kd: bool = True  # frame-level knowledge distillation (eq. 4-5)
    pseudo: bool = True  # pseudo-supervised f student (eq. 7)
    adversarial: bool = True  # domain discriminator with gradient reversal (eq. 8-9)
    lambda_d: float = 0.2
    # Target-domain phases keep training on source rows with their strong labels (eq. 2), so
    # localisation learnt on D_s is not forgotten while the students learn D_t (README, Jobs).
    source_replay: bool = True
    replay_weight: float = 1.0
    alpha_kd: float = 1.0
    max_iterations: int = 2  # loop of Algorithm 1 line 5
    # The loop stops after this many iterations in which the reported model (see final_student)
    # did not improve on validation.
    iteration_patience: int = 1
    # The MS row's model. "best" (default): the best-validating f student or the best-validating
    # target-domain w student (phase 3 or a loop), whichever scores higher on validation; the
    # loop then runs while either student improves on the better one. "f": the f student with the
    # best validation score, and the loop runs while f improves (the paper's Algorithm 1 exactly).
    # The rule: tsd_ray/experiments/final_model.py; measurements: README, "Which model is MS".
    final_student: Literal["f", "best"] = "best"
    recipes: tuple[str, ...] = ("SS", "WS", "MS")  # what jobs/iterate.py runs
    overlap_classes: bool = False  # informational: source/target class sets overlap


@dataclass(frozen=True)
class PhaseConfig:
    """Per-phase optimisation settings."""

    epochs: int = 10
    lr: float = 1e-3
    patience: int = 3  # early stopping on the validation score


@dataclass(frozen=True)
class PhasesConfig:
    f_source: PhaseConfig = field(default_factory=PhaseConfig)
    w_source: PhaseConfig = field(default_factory=PhaseConfig)
    w_target: PhaseConfig = field(default_factory=PhaseConfig)
    f_target: PhaseConfig = field(default_factory=PhaseConfig)
    w_loop: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=5, lr=5e-4))
    f_loop: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=5, lr=5e-4))
    ss: PhaseConfig = field(default_factory=PhaseConfig)
    ws: PhaseConfig = field(default_factory=PhaseConfig)


@dataclass(frozen=True)
class AugmentConfig:
    time_shift_frames: int = 0  # max circular shift in output frames (labels move too)
    freq_mask_bins: int = 0  # SpecAugment-style frequency mask width (labels unchanged)
    time_mask_frames: int = 0  # time mask width in input frames (labels unchanged)
    # How a new recording of a class differs from the training ones (labels unchanged): a gain
    # of up to +-gain_db and a smooth random EQ curve of up to +-eq_db over the mel bins, and a
    # shift of up to max_bin_shift mel bins (about a semitone each). The encoder trains with the
    # same (train/encoder_items.py). 0 = off; at 0 they leave a run's digest as it was.
    gain_db: float = 0.0
    eq_db: float = 0.0
    max_bin_shift: int = 0
    # With probability mix_prob a training mixture gets another mixture of its batch (same
    # domain and label kind) added at -mix_max_db..0 dB, labels joined per class (needs
    # train.group_by_mixture). 0 = off.
    mix_prob: float = 0.0
    mix_max_db: float = 12.0


@dataclass(frozen=True)
class TrainConfig:
    """Ray Train settings shared by every phase."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    reserve_cpus_for_data: float = 1.0  # kept free on the node for Ray Data (docs/architecture.md, "Ray Data and Train on a small machine")
    batch_size: int = 32
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    # "constant": every step at phases.<key>.lr (encoder.lr). "cosine": the rate falls along a
    # half cosine, step by step, from it to 0 at the end of the phase's last epoch. A pure
    # function of (epoch, step), so a resumed phase continues on the same curve. Not the
    # default: it has not measured better (README, "Measured").
    lr_schedule: Literal["constant", "cosine"] = "constant"
    shuffle_buffer: int = 256  # local shuffle buffer rows for iter_torch_batches
    # Training batches hold whole mixtures (every sample of a mixture: one per target class)
    # and the detector's CNN, which does not see the reference, runs once per mixture. Batches
    # then hold about batch_size samples from batch_size / (samples per mixture) mixtures, and
    # the shuffle buffer counts mixtures. false: samples shuffled independently (the CNN runs
    # once per sample: slower; bench/bench_grouped.py measures by how much).
    group_by_mixture: bool = True
    # Splits with at most this many samples are expanded once per job and kept in the object
    # store (no Parquet read + expansion every epoch or phase); larger ones stream from Parquet.
    cache_max_samples: int = 20000
    mixed_precision: bool = True  # bf16 autocast on GPU; ignored on CPU
    max_failures: int = 2  # FailureConfig
    seed: int = 0  # model init, augmentation and every epoch's local shuffle (per worker; see shuffle_seed)
    # true: a phase run twice with one seed (and worker count) gives the same numbers on CPU.
    # The training split's block order is drawn from the seed and the phase name, and Ray Data
    # feeds the workers in order (ExecutionOptions.preserve_order), so every worker gets the same
    # blocks each time; Ray's default hands each block to whichever worker asks first. Each
    # worker then keeps its share of the blocks for the whole phase and shuffles it every epoch.
    # false: Ray's default (blocks reshuffled every epoch, dealt out on demand).
    reproducible: bool = True
    fail_at_epoch: int = -1  # fault injection for tests: a worker raises once at this epoch


@dataclass(frozen=True)
class EvalConfig:
    """Post-processing and sed_eval settings (docs/architecture.md, "Evaluation and model selection")."""

    segment_s: float = 1.0
    t_collar_s: float = 0.2
    percentage_of_length: float = 0.2
    threshold: float = 0.5  # default until tuned on validation
    median_frames: int = 1
    fill_gap_frames: int = 0  # gaps of at most this many frames between active runs are filled
    min_event_frames: int = 0  # active runs shorter than this are dropped (0, 1: none)
    # The grid tuned on validation before the test split is scored (output frames, 40 ms):
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    median_windows: tuple[int, ...] = (1, 3, 5, 9)
    fill_gaps: tuple[int, ...] = (0,)
    min_event_lengths: tuple[int, ...] = (0,)
    selection_metric: Literal["event_f", "segment_f"] = "event_f"
    # How each epoch's validation score is taken (best epoch, early stopping, final student,
    # loop stop): "fixed" = at `threshold` / `median_frames`; "tuned" = the best over the grid
    # selection_thresholds x selection_median_windows, scored from one set of predictions (on
    # real audio event-F at a fixed 0.5 is near zero in every epoch and selects nothing).
    selection: Literal["fixed", "tuned"] = "fixed"
    selection_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7)
    selection_median_windows: tuple[int, ...] = (5,)


@dataclass(frozen=True)
class DataSection:
    """Where the built features live and which corpus spec made them."""

    spec: str | None = None  # dataset spec YAML (see README); None: synthetic corpus
    synthetic_preset: str = "tiny"  # used when spec is None
    synthetic_seed: int = 0
    features: str | None = None  # URI of built features; None: <storage>/_features/<corpus>-<digest>


@dataclass(frozen=True)
class RunSection:
    name: str = "tsd"
    storage: str = "~/tsd_runs"


@dataclass(frozen=True)
class Config:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    phases: PhasesConfig = field(default_factory=PhasesConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def digest(self, *sections: str) -> str:
        """Short stable hash of the given sections (all when none given)."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        return digest(d)


# --------------------------------------------------------------------------------------------
# Generic (de)serialisation with checking
# --------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict of YAML/JSON-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the converted value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            # YAML 1.1 reads a bare off / on / no / yes as a boolean: take the word back
            value = next((w for w in (("on", "yes", "true") if value else ("off", "no", "false")) if w in args), value)
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        item_types = [args[0]] * len(value) if (not args or args[-1] is Ellipsis) else list(args)
        if not args:
            item_types = [Any] * len(value)
        out = [_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types))]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # pragma: no cover


#: Keys that configs (and model files written before their removal) may still name; nothing
#: read them, so they are dropped with a warning that says what to use instead.
REMOVED_KEYS: dict[str, str] = {
    "run.seed": "it was never read; the seed of a run is train.seed",
    "discriminator.hidden": "it was never read; the discriminator's width is discriminator.channels",
    "encoder.patience": "it was never read; encoder pretraining runs encoder.epochs epochs",
}


#: Keys renamed so that every duration is named ``*_s``: the old name (in a config file, or in
#: a model file or manifest written before) is read as the new one, with a warning.
RENAMED_KEYS: dict[str, str] = {
    "frontend.clip_seconds": "frontend.clip_s",
    "frontend.reference_seconds": "frontend.reference_s",
    "frontend.max_overhang_seconds": "frontend.max_overhang_s",
    "samples.output_hop_seconds": "samples.output_hop_s",
}


def _drop_removed_keys(data: dict, prefix: str) -> dict:
    kept = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if key in REMOVED_KEYS:
            log.warning("config key '%s' was removed and is ignored: %s", key, REMOVED_KEYS[key])
        elif key in RENAMED_KEYS:
            new = RENAMED_KEYS[key]
            if new.rsplit(".", 1)[-1] in data:
                raise ConfigError(f"config names both '{key}' and its new name '{new}'; keep '{new}'")
            log.warning("config key '%s' is now '%s'; read as such (rename it in your config)", key, new)
            kept[new.rsplit(".", 1)[-1]] = value
        else:
            kept[name] = value
    return kept


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad types raise ConfigError."""
    where = prefix or "<config>"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    data = _drop_removed_keys(data, prefix)
    unknown = sorted(set(data) - names)
    if unknown:
        bad = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"unknown config key '{bad}'; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve_config_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    p = Path(name_or_path).expanduser()
    candidates = [p]
    if relative_to is not None and not p.is_absolute():
        candidates.append(relative_to / p)
    candidates += [CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(
        f"config file '{name_or_path}' not found (looked in the working directory and "
        f"{CONFIG_DIR}; shipped configs: {', '.join(sorted(x.stem for x in CONFIG_DIR.glob('*.yaml')))})"
    )


def load_yaml_dict(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a config YAML, following ``base:`` chains (a variant lists only its changes)."""
    path = _resolve_config_path(name_or_path)
    if path in _seen:
        raise ConfigError(f"config 'base' chain loops at {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections")
    base = data.pop("base", None)
    if base is not None:
        parent = load_yaml_dict(_resolve_config_path(base, path.parent), _seen + (path,))
        data = _merge(parent, data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> (["a", "b"], parsed YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from exc
    return parts, value


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, creating sections as needed."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"'{key}': '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    data = _merge({}, data)
    for text in overrides or ():
        parts, value = parse_override(text)
        key = ".".join(parts)
        if key in RENAMED_KEYS:
            log.warning("--set %s: the key is now '%s'", key, RENAMED_KEYS[key])
            key = RENAMED_KEYS[key]
        try:
            set_dotted(data, key, value)
        except ConfigError as exc:
            raise ConfigError(f"override '{text}': {exc}") from None
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Load and check a config: shipped name (``tiny``) or path, then ``a.b=c`` overrides."""
    data = load_yaml_dict(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return from_dict(Config, data)


def config_from_dict(data: dict) -> Config:
    return from_dict(Config, data)


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def get_key(cfg: Any, dotted: str) -> Any:
    """Value at a dotted key; ConfigError naming the key when it does not exist."""
    node = cfg
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise ConfigError(f"unknown config key '{dotted}'")
        node = getattr(node, part)
    return node
