"""The one rule that picks Algorithm 1's final model (pipeline, Tune's score, detect's export)."""

import pytest

from tsd_ray.experiments.final_model import Outcome, final_model


def o(name, student, score, split="target_val"):
    return Outcome(name, student, split, score, f"{name}.pt")


PHASES = [o("p1", "f", 90.0, "source_val"), o("p2", "w", 95.0, "source_val"), o("p3", "w", 30.0),
          o("p4", "f", 20.0), o("it1_w", "w", 35.0), o("it1_f", "f", 25.0), o("it2_f", "f", 25.0)]


def test_algorithm_1_takes_the_best_target_f_and_the_earlier_phase_on_a_tie():
    chosen = final_model(PHASES, pseudo=True, final_student="f")
    assert chosen.name == "it1_f"  # 25 > 20; it2_f's equal 25 does not replace it
    assert final_model(PHASES[:3], pseudo=True, final_student="f") is None  # no target f yet


def test_final_student_best_takes_a_w_only_when_it_validates_strictly_higher():
    assert final_model(PHASES, pseudo=True, final_student="best").name == "it1_w"
    tied = [o("p3", "w", 25.0), o("p4", "f", 25.0)]
    assert final_model(tied, pseudo=True, final_student="best").name == "p4"
    # before any target f, the better student so far is the target w
    assert final_model(PHASES[:3], pseudo=True, final_student="best").name == "p3"


def test_without_pseudo_supervision_the_target_w_is_final_and_source_scores_never_count():
    assert final_model(PHASES[:3], pseudo=False, final_student="f").name == "p3"
    assert final_model(PHASES[:2], pseudo=False, final_student="best") is None


def test_unknown_final_student_is_refused():
    with pytest.raises(ValueError, match="final_student"):
        final_model(PHASES, pseudo=True, final_student="w")
