"""Which student is the final model of Algorithm 1: the one rule, used by the pipeline
(:func:`tsd_ray.experiments.pipeline.run_ms`), Tune's per-phase score
(:class:`tsd_ray.experiments.tune_trial.ScoreTracker`) and detect's export of an older run's ledger.

Only students validated on the target domain compete (source-domain scores are on another
split). With pseudo supervision the final model is the f student with the best validation
score (Algorithm 1), or, with ``method.final_student: best``, the better of the best f and the
best w (a w wins only by a strictly higher score). Without pseudo supervision there is no
target-domain f: the final model is the best target-domain w. A tie keeps the earlier phase.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["TIE", "Outcome", "final_model"]

TIE = 1e-9  # a later phase must beat an earlier one by more than this


@dataclass(frozen=True)
class Outcome:
    """One finished phase as the rule sees it."""

    name: str
    student: str  # "f" or "w"
    val_split: str  # the split its best_val_score was measured on
    score: float  # best validation score of the phase
    model_uri: str = ""

    @property
    def on_target(self) -> bool:
        return self.val_split.startswith("target")


def _best(outcomes: Iterable[Outcome]) -> Outcome | None:
    best = None
    for o in outcomes:
        if best is None or o.score > best.score + TIE:
            best = o
    return best


def final_model(outcomes: Iterable[Outcome], *, pseudo: bool, final_student: str) -> Outcome | None:
    """The final model among ``outcomes`` (in phase order), or None while none qualifies.

    ``final_student``: ``"f"`` (Algorithm 1 as written) or ``"best"`` (see the module text).
    """
    if final_student not in ("f", "best"):
        raise ValueError(f"method.final_student: 'f' or 'best', got {final_student!r}")
    target = [o for o in outcomes if o.on_target]
    best_w = _best(o for o in target if o.student == "w")
    if not pseudo:
        return best_w
    best_f = _best(o for o in target if o.student == "f")
    if final_student == "best" and best_w is not None and (best_f is None or best_w.score > best_f.score + TIE):
        return best_w
    return best_f
