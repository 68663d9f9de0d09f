"""Phases of the two-student method as data (Algorithm 1, baselines, ablations).

Every line of Algorithm 1, the SS/WS baselines and every ablation is a :class:`PhaseSpec`;
one training function (:mod:`tsd_ray.train.worker`) runs them all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

from tsd_ray.common.config import Config, PhaseConfig
from tsd_ray.common.digest import digest

Student = Literal["f", "w"]
Loss = Literal["frame", "clip", "pseudo"]


@dataclass(frozen=True)
class PhaseSpec:
    """One training phase.

    ``loss``: ``frame`` = frame BCE on strong labels (eq. 2); ``clip`` = clip BCE on the
    LinSoft output (eq. 3); ``pseudo`` = frame BCE on soft labels from ``pseudo_teacher``
    (eq. 7). ``kd_teacher`` adds ``alpha_kd * L_kd`` (eq. 4-5). ``adversarial`` adds the
    domain discriminator with gradient reversal on both domains (eq. 8-9). ``replay`` (target
    phases only) adds ``replay_weight`` x frame BCE on source rows with strong labels.
    """

    name: str
    student: Student
    train_split: str
    val_split: str
    loss: Loss
    epochs: int
    lr: float
    patience: int
    init: str | None = None  # model file to start the student from
    kd_teacher: str | None = None  # f-student model file (KD)
    pseudo_teacher: str | None = None  # w-student model file (pseudo labels)
    adversarial: bool = False
    lambda_d: float = 0.2
    alpha_kd: float = 1.0
    replay: bool = False  # a target phase also fits the source rows' strong labels (eq. 2)
    replay_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.replay and self.domain != "target":
            raise ValueError(f"phase {self.name}: replay is for target-domain phases, not {self.train_split}")

    @property
    def domain(self) -> str:
        return self.train_split.split("_")[0]

    @property
    def aux_split(self) -> str | None:
        """The other domain's training split: fed to the discriminator, and replayed."""
        if not (self.adversarial or self.replay):
            return None
        return "target_train" if self.domain == "source" else "source_train"

    def to_dict(self) -> dict:
        return asdict(self)

    def content_key(self) -> str:
        """Digest of everything that makes this phase train as it does: all fields but the name.

        Within one run (whose config its ledger pins) two specs with one key train the same
        student, so the second can take the first's result: an ablation's phases before its
        switch takes effect are the main chain's own (teachers and inits are model URIs, so
        the sameness carries down the chain).
        """
        fields = self.to_dict()
        fields.pop("name")
        return digest(fields)

    def with_(self, **changes) -> PhaseSpec:
        return replace(self, **changes)


def _p(cfg: Config, key: str) -> PhaseConfig:
    return getattr(cfg.phases, key)


def make_phase(cfg: Config, key: str, name: str, **kw) -> PhaseSpec:
    """Build a phase from the config section ``phases.<key>`` and the method switches."""
    pc = _p(cfg, key)
    m = cfg.method
    wants_replay = kw.pop("replay", True)  # popped first: never passed on twice
    replay = bool(m.source_replay and wants_replay and kw["train_split"].startswith("target_"))
    return PhaseSpec(
        name=name,
        epochs=pc.epochs,
        lr=pc.lr,
        patience=pc.patience,
        adversarial=m.adversarial if kw.pop("adversarial", True) else False,
        lambda_d=m.lambda_d,
        alpha_kd=m.alpha_kd,
        replay=replay,
        replay_weight=m.replay_weight if replay else 1.0,
        **kw,
    )


def ss_phase(cfg: Config) -> PhaseSpec:
    """SS baseline: f student on the target domain's strong labels (upper bound)."""
    return make_phase(
        cfg, "ss", "SS", student="f", train_split="target_train", val_split="target_val",
        loss="frame", adversarial=False, replay=False,
    )


def ws_phase(cfg: Config) -> PhaseSpec:
    """WS baseline: w student on the target domain's weak labels only."""
    return make_phase(
        cfg, "ws", "WS", student="w", train_split="target_train", val_split="target_val",
        loss="clip", adversarial=False, replay=False,
    )
