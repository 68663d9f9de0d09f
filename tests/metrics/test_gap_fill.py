"""Gap filling and the minimum event length in post-processing, scoring and tuning."""

from __future__ import annotations

import numpy as np
import pytest
from factory import random_scored_samples
from test_scoring import tuning_samples

from tsd_ray.common.types import Event
from tsd_ray.metrics.intersection import intersection_f
from tsd_ray.metrics.postprocess import PostProcessing, clean_activity, postprocess
from tsd_ray.metrics.scoring import ScoredSample, _score_grid, score_samples, tune_postprocessing


def _bits(s: str) -> np.ndarray:
    return np.array([c == "1" for c in s])


def _str(a: np.ndarray) -> str:
    return "".join("1" if x else "0" for x in a)


def test_inner_gaps_are_filled_and_short_runs_dropped():
    a = _bits("0110010001011100")
    assert _str(clean_activity(a, 2, 0)) == "0111110001111100"  # gaps of 2 and 1; not 3
    assert _str(clean_activity(a, 0, 3)) == "0000000000011100"
    # filling comes first: a run broken by one frame is one event, long enough to stay
    assert clean_activity(_bits("101"), 1, 3).tolist() == [True, True, True]
    # edges are not gaps; rows are cleaned on their own; nothing to do gives the same frames
    assert clean_activity(_bits("0010"), 5, 0).tolist() == [False, False, True, False]
    two = clean_activity(np.stack([_bits("1001"), _bits("1000")]), 2, 2)
    assert two.tolist() == [[True] * 4, [False] * 4]
    assert clean_activity(a, 0, 1).tolist() == a.tolist()


def test_postprocess_applies_both_after_the_threshold():
    p = np.array([0.9, 0.9, 0.1, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.1])
    hop = 0.04
    assert len(postprocess(p, PostProcessing(0.5), frame_hop_s=hop, label="a")) == 3
    events = postprocess(p, PostProcessing(0.5, fill_gap_frames=1, min_event_frames=2), frame_hop_s=hop, label="a")
    assert events == [Event(0.0, 0.2, "a")]


def test_postprocessing_settings_are_checked_and_round_trip():
    with pytest.raises(ValueError, match="fill_gap_frames"):
        PostProcessing(0.5, fill_gap_frames=-1)
    with pytest.raises(ValueError, match="min_event_frames"):
        PostProcessing(0.5, min_event_frames=1.5)
    pp = PostProcessing(0.3, 9, 5, 10)
    assert PostProcessing.from_dict(pp.to_dict()) == pp
    # a detector file written before gap filling holds only the first two
    assert PostProcessing.from_dict({"threshold": 0.3, "median_frames": 9}) == PostProcessing(0.3, 9)
    assert pp.describe() == "threshold 0.3, median filter 9 frames, gaps up to 5 frames filled, events under 10 frames dropped"


def test_the_grid_scorer_equals_scoring_each_point():
    samples = random_scored_samples(3, decimals=None)
    classes = ["bark", "bell", "siren"]
    grid = [PostProcessing(t, w, g, m) for t in (0.3, 0.5) for w in (1, 5) for g in (0, 3) for m in (0, 4)]
    fast = _score_grid(samples, grid, classes=classes)
    for pp, sc in zip(grid, fast, strict=True):
        each = score_samples(samples, pp, classes=classes)
        assert (sc.event_f, sc.segment_f, sc.event_f_micro) == (each.event_f, each.segment_f, each.event_f_micro), pp
    assert len({round(s.event_f, 6) for s in fast}) > 4  # the points differ: gaps and lengths act


def test_tuning_fills_dropouts_and_drops_spikes_when_the_median_filter_may_not():
    """tuning_samples' events have one-frame dropouts and every sample a one-frame spike: without
    a median filter, filling one-frame gaps and dropping one-frame runs gives every event exactly."""
    best, table = tune_postprocessing(tuning_samples(), classes=["A", "B"], thresholds=[0.5], median_windows=[1],
                                      fill_gaps=[0, 1], min_event_lengths=[0, 2])
    assert best == PostProcessing(0.5, 1, fill_gap_frames=1, min_event_frames=2)
    rows = {(r["fill_gap_frames"], r["min_event_frames"]): r["event_f"] for r in table["rows"]}
    assert len(rows) == 4 and rows[(1, 2)] == 100.0 and max(rows[(0, 0)], rows[(1, 0)], rows[(0, 2)]) < 100.0


def test_intersection_f_sees_the_same_post_processing():
    """A two-frame blip outside the event is a false positive unless runs under 3 frames go."""
    p = np.full(100, 0.1)
    p[10:40] = 0.9  # the event, detected
    p[70:72] = 0.9  # a blip
    s = ScoredSample("x", "a", p, (Event(0.4, 1.6, "a"),))
    plain = intersection_f([s], classes=["a"], frame_hop_s=0.04, threshold=0.5)
    cleaned = intersection_f([s], classes=["a"], frame_hop_s=0.04, threshold=0.5, min_event_frames=3)
    assert (plain["per_class"]["a"]["tp"], plain["per_class"]["a"]["fp"]) == (1, 1)
    assert (cleaned["per_class"]["a"]["tp"], cleaned["per_class"]["a"]["fp"]) == (1, 0)
