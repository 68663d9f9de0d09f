"""Intersection-based evaluation (PSDS, intersection-based F): hand-checked cases and values of
sed_scores_eval 0.0.4 on a seeded fixture (printed by ``bench/check_intersection.py --golden``)."""

from __future__ import annotations

import numpy as np
import pytest
from factory import random_scored_samples

from tsd_ray.common.types import Event
from tsd_ray.metrics import intersection
from tsd_ray.metrics.intersection import intersection_f, intersection_scores, psd_roc_area, psds
from tsd_ray.metrics.scoring import ScoredSample

HOP = 0.1


def _sample(sid, target, active_frames, events=(), n=50, level=0.9):
    probs = np.zeros(n)
    for lo, hi in active_frames:
        probs[lo:hi] = level
    return ScoredSample(sid, target, probs, tuple(Event(on, off, target) for on, off in events))


def _f(samples, classes=("a",), threshold=0.5, **kw):
    return intersection_f(samples, classes=list(classes), frame_hop_s=HOP, threshold=threshold, **kw)


def test_a_detection_on_its_event_is_a_true_positive():
    res = _f([_sample("s", "a", [(10, 20)], [(1.0, 2.0)])])
    assert res["per_class"]["a"] == {"f": 100.0, "precision": 100.0, "recall": 100.0, "tp": 1, "fp": 0,
                                    "n_true_events": 1}
    assert psds([_sample("s", "a", [(10, 20)], [(1.0, 2.0)])], classes=["a"], frame_hop_s=HOP).value == 1.0


def test_a_detection_mostly_outside_the_truth_is_a_false_positive():
    # 1.5-3.0 s against an event at 1.0-2.0: 0.5 of 1.5 s inside (33 % < dtc 50 %).
    res = _f([_sample("s", "a", [(15, 30)], [(1.0, 2.0)])])["per_class"]["a"]
    assert (res["tp"], res["fp"], res["f"]) == (0, 1, 0.0)
    # With dtc 0.3 it is accepted, but covers only half the event: gtc 0.5 passes, 0.6 does not.
    assert _f([_sample("s", "a", [(15, 30)], [(1.0, 2.0)])], dtc=0.3)["per_class"]["a"]["tp"] == 1
    res = _f([_sample("s", "a", [(15, 30)], [(1.0, 2.0)])], dtc=0.3, gtc=0.6)["per_class"]["a"]
    assert (res["tp"], res["fp"]) == (0, 0)


def test_an_event_is_detected_by_the_union_of_its_detections():
    # Two detections of 0.3 s each inside a 1-s event: 60 % covered together, 30 % each.
    s = _sample("s", "a", [(10, 13), (15, 18)], [(1.0, 2.0)])
    assert _f([s])["per_class"]["a"]["tp"] == 1
    assert _f([s], gtc=0.7)["per_class"]["a"]["tp"] == 0


def test_detections_on_negative_samples_are_false_positives_of_their_class_only():
    samples = [_sample("pos", "a", [(10, 20)], [(1.0, 2.0)]), _sample("neg", "a", [(30, 35)]),
               _sample("other", "b", [(0, 50)], [(0.0, 5.0)])]
    res = _f(samples, classes=("a", "b"))
    assert (res["per_class"]["a"]["tp"], res["per_class"]["a"]["fp"]) == (1, 1)
    assert (res["per_class"]["b"]["tp"], res["per_class"]["b"]["fp"]) == (1, 0)
    assert res["f"] == pytest.approx((100 * 2 / 3 + 100) / 2)


def test_the_false_positive_rate_is_per_hour_of_the_class_samples():
    # Class a: one event found at 0.9, one false detection at 0.5, and at 0 (below every frame)
    # each sample is one long false detection; 2 x 5 s of audio.
    samples = [_sample("pos", "a", [(10, 20)], [(1.0, 2.0)]), _sample("neg", "a", [(30, 35)], level=0.5),
               _sample("other", "b", [(0, 50)], [(0.0, 5.0)])]
    e, t = intersection._roc([intersection._prepare(s, HOP, 1) for s in samples[:2]], HOP, 0.7, 0.7)
    assert e.tolist() == pytest.approx([0.0, 0.0, 3600.0 / 10.0, 2 * 3600.0 / 10.0])
    assert t.tolist() == [0.0, 1.0, 1.0, 0.0]
    # Over max_efpr 100/h the false positive (360/h) is never reached: TPR 1 from eFPR 0 on.
    res = psds(samples, classes=["a", "b"], frame_hop_s=HOP)
    assert res.per_class["a"]["psds"] == 1.0
    assert res.per_class["a"]["hours"] == pytest.approx(10.0 / 3600.0)
    assert res.value == 1.0


def test_psds_penalises_classes_that_disagree():
    # One class found at eFPR 0, the other never: mean 0.5, std 0.5 -> effective TPR 0.
    rocs = {"a": (np.array([0.0]), np.array([1.0])), "b": (np.array([0.0]), np.array([0.0]))}
    assert psd_roc_area(rocs, alpha_st=1.0, max_efpr=100.0)[0] == 0.0
    assert psd_roc_area(rocs, alpha_st=0.0, max_efpr=100.0)[0] == 0.5
    # A step to TPR 1 at eFPR 25 leaves 75 % of the area up to 100.
    step = {"a": (np.array([0.0, 25.0, 150.0]), np.array([0.0, 1.0, 1.0]))}
    assert psd_roc_area(step, alpha_st=1.0, max_efpr=100.0)[0] == pytest.approx(0.75)


def test_classes_without_true_events_are_left_out():
    samples = [_sample("pos", "a", [(10, 20)], [(1.0, 2.0)]), _sample("neg", "b", [(0, 5)])]
    res = psds(samples, classes=["a", "b"], frame_hop_s=HOP)
    assert res.classes_scored == ("a",) and np.isnan(res.per_class["b"]["psds"])
    assert np.isnan(_f(samples, classes=("a", "b"))["per_class"]["b"]["f"])


# Values of sed_scores_eval 0.0.4 (`python -m bench.check_intersection --golden` in a venv with it),
# computed class by class on the same fixture and combined with its multi-class PSD-ROC.
GOLDEN = {
    "psds1": 0.11895286750983773,
    "psds1_median5": 0.30514699353742236,
    "psds_alpha0": 0.32309798116425936,
    "f_04": 61.40441683919945,
    "f_05_median5": 71.36021872863978,
}


@pytest.fixture(scope="module")
def fixture_samples():
    samples = random_scored_samples(2, per_class=12, decimals=None)
    return samples, sorted({s.target for s in samples})


def test_psds_equals_sed_scores_eval(fixture_samples):
    samples, classes = fixture_samples
    kw = {"classes": classes, "frame_hop_s": 0.04}
    assert psds(samples, **kw).value == pytest.approx(GOLDEN["psds1"], abs=1e-12)
    assert psds(samples, median_frames=5, **kw).value == pytest.approx(GOLDEN["psds1_median5"], abs=1e-12)
    assert psds(samples, alpha_st=0.0, **kw).value == pytest.approx(GOLDEN["psds_alpha0"], abs=1e-12)


def test_intersection_f_equals_sed_scores_eval(fixture_samples):
    samples, classes = fixture_samples
    kw = {"classes": classes, "frame_hop_s": 0.04}
    assert intersection_f(samples, threshold=0.4, **kw)["f"] == pytest.approx(GOLDEN["f_04"], abs=1e-9)
    got = intersection_f(samples, threshold=0.5, median_frames=5, **kw)["f"]
    assert got == pytest.approx(GOLDEN["f_05_median5"], abs=1e-9)


def test_both_scores_from_one_preparation_equal_each_alone(fixture_samples):
    samples, classes = fixture_samples
    kw = {"classes": classes, "frame_hop_s": 0.04, "median_frames": 5}
    both_psds, both_f = intersection_scores(samples, threshold=0.5, **kw)
    assert both_psds.value == pytest.approx(GOLDEN["psds1_median5"], abs=1e-12)
    assert both_f == intersection_f(samples, threshold=0.5, **kw)
    assert both_f["f"] == pytest.approx(GOLDEN["f_05_median5"], abs=1e-9)


def test_long_recordings_are_counted_in_chunks_of_levels(fixture_samples, monkeypatch):
    samples, classes = fixture_samples
    whole = psds(samples, classes=classes, frame_hop_s=0.04)
    monkeypatch.setattr(intersection, "_CELLS", 500)  # a few levels at a time
    chunked = psds(samples, classes=classes, frame_hop_s=0.04)
    assert chunked.value == whole.value and np.array_equal(chunked.tpr, whole.tpr)


def test_bad_input_is_named():
    s = _sample("s", "a", [(10, 20)], [(1.0, 2.0)])
    with pytest.raises(ValueError, match="target 'a' is not in classes"):
        psds([s], classes=["b"], frame_hop_s=HOP)
    with pytest.raises(ValueError, match="dtc must be in"):
        _f([s], dtc=0.0)
    with pytest.raises(ValueError, match="duplicate sample_id 's'"):
        psds([s, s], classes=["a"], frame_hop_s=HOP)
