"""Evaluation: post-processing, sed_eval parity, sed_eval quirks, tuning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sed_eval
from hypothesis import given, settings
from hypothesis import strategies as st

from tsd_ray.common.types import Event
from tsd_ray.metrics.postprocess import PostProcessing, frames_to_events, median_filter, postprocess
from tsd_ray.metrics.scoring import (
    ScoredSample,
    score_event_lists,
    score_samples,
    sed_eval_metrics,
    tune_postprocessing,
)

HOP = 0.04
T = 250  # 10 s at 40 ms


def events_to_frames(events, *, n_frames, frame_hop_s, label=None):
    """Frame activity (n_frames,) bool: frame i is active when its centre lies in an event
    (of ``label``, if given): the inverse of frames_to_events for events on the frame grid."""
    centres = (np.arange(n_frames) + 0.5) * frame_hop_s
    active = np.zeros(n_frames, dtype=bool)
    for e in events:
        if label is None or e.label == label:
            active |= (centres >= e.onset) & (centres < e.offset)
    return active


def probs_with(spans_s, n_frames=T, on=0.9, off=0.1):
    """Probabilities that are ``on`` over the given (onset, offset) spans (seconds, on the grid)."""
    p = np.full(n_frames, off)
    for onset, offset in spans_s:
        p[round(onset / HOP) : round(offset / HOP)] = on
    return p


# ------------------------------------------------------------------ median filter


def test_median_filter_known_values_and_edges():
    x = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    # edge-padded: [0, 0,1,0,0,1,1,0,1, 1]
    np.testing.assert_array_equal(median_filter(x, 3), [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(median_filter(x, 1), x)
    assert median_filter(x, 1) is not x


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.sampled_from([1, 3, 5, 7, 9]))
def test_median_filter_matches_brute_force(values, window):
    x = np.array(values)
    half = window // 2
    padded = np.concatenate([[x[0]] * half, x, [x[-1]] * half])
    expected = [np.median(padded[i : i + window]) for i in range(len(x))]
    np.testing.assert_array_equal(median_filter(x, window), expected)


@pytest.mark.parametrize("window", [0, 2, 4, -1, 1.0, True])
def test_median_filter_rejects_bad_windows(window):
    with pytest.raises(ValueError, match="odd integer"):
        median_filter(np.zeros(5), window)
    with pytest.raises(ValueError, match="median_frames"):
        PostProcessing(median_frames=window)


def test_median_commutes_with_threshold():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200)
    for w in (3, 5, 9):
        binary_first = median_filter((p > 0.5).astype(float), w) > 0.5
        np.testing.assert_array_equal(median_filter(p, w) > 0.5, binary_first)


# ------------------------------------------------------------------ frames <-> events


def test_frames_to_events_known():
    a = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    assert frames_to_events(a, frame_hop_s=HOP, label="dog") == [
        Event(0.04, 0.12, "dog"),
        Event(0.2, 0.24, "dog"),
        Event(0.28, 0.4, "dog"),  # run to the last frame closes at len * hop
    ]
    assert frames_to_events(np.zeros(5, bool), frame_hop_s=HOP, label="dog") == []
    assert frames_to_events(np.ones(250, bool), frame_hop_s=HOP, label="x") == [
        Event(0.0, 10.0, "x")
    ]


def test_frame_times_are_rounded_to_exact_decimals():
    # 30 * 0.04 == 1.2000000000000002 in floating point; events must say 1.2.
    a = np.zeros(40, bool)
    a[30:35] = True
    assert frames_to_events(a, frame_hop_s=HOP, label="x") == [Event(1.2, 1.4, "x")]


@st.composite
def grid_events(draw):
    """Disjoint, non-touching runs on the 40 ms grid of a clip of n frames."""
    n = draw(st.integers(1, 300))
    cuts = sorted(draw(st.sets(st.integers(0, n), max_size=12)))
    runs = [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts) - 1, 2)]
    runs = [(s, e) for s, e in runs if e > s]
    merged: list[tuple[int, int]] = []
    for s, e in runs:  # drop runs that touch the previous one (they would merge)
        if merged and s <= merged[-1][1]:
            continue
        merged.append((s, e))
    return n, merged


@given(grid_events())
def test_events_frames_events_round_trip(case):
    n, runs = case
    events = [Event(round(s * HOP, 6), round(e * HOP, 6), "c") for s, e in runs]
    frames = events_to_frames(events, n_frames=n, frame_hop_s=HOP)
    assert frames.sum() == sum(e - s for s, e in runs)
    assert frames_to_events(frames, frame_hop_s=HOP, label="c") == events


@given(st.lists(st.booleans(), max_size=300))
def test_frames_events_frames_round_trip(bits):
    a = np.array(bits, dtype=bool)
    events = frames_to_events(a, frame_hop_s=HOP, label="c")
    np.testing.assert_array_equal(events_to_frames(events, n_frames=a.size, frame_hop_s=HOP), a)


# ------------------------------------------------------------------ postprocess


def test_postprocess_drops_padding_filters_and_thresholds():
    p = probs_with([(1.0, 2.0)], n_frames=260)
    p[250:] = 1.0  # padding beyond the clip must never become an event
    p[100] = 0.95  # isolated spike: removed by a 3-frame median
    p[30] = 0.2  # single-frame dropout inside the event: filled by the median
    pp = PostProcessing(threshold=0.5, median_frames=3)
    assert postprocess(p, pp, frame_hop_s=HOP, label="a", n_valid=250) == [Event(1.0, 2.0, "a")]
    raw = postprocess(p, PostProcessing(0.5, 1), frame_hop_s=HOP, label="a", n_valid=250)
    assert raw == [Event(1.0, 1.2, "a"), Event(1.24, 2.0, "a"), Event(4.0, 4.04, "a")]
    # threshold is strict: p == threshold is inactive
    assert postprocess(np.full(5, 0.5), PostProcessing(0.5), frame_hop_s=HOP, label="a") == []


def test_postprocess_rejects_nan():
    p = np.zeros(10)
    p[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        postprocess(p, PostProcessing(), frame_hop_s=HOP, label="a")


# ------------------------------------------------------------------ parity with sed_eval

CLASSES = ["A", "B", "C"]

# (sample_id, target, true events of the *mixture*, estimated spans, n_valid, n_frames)
PARITY_CASES = [
    # onset 160 ms late (inside the 200 ms collar) -> hit; onset 240 ms late -> miss
    ("s1", "A", [Event(1.0, 3.0, "A"), Event(5.0, 6.0, "A")], [(1.16, 3.0), (5.24, 6.0)], 250, 250),
    # offset 200 ms late on a 0.6 s event: allowed by the 200 ms collar
    ("s2", "B", [Event(2.0, 2.6, "B")], [(2.0, 2.8)], 250, 250),
    # negative sample (target C absent; the mixture's A event is not a reference):
    # its detection is one false positive of C only
    ("s3", "C", [Event(0.0, 4.0, "A")], [(7.0, 8.0)], 250, 250),
    # positive C missed entirely
    ("s4", "C", [Event(0.4, 1.2, "C")], [], 250, 250),
    # correct rejection: adds nothing
    ("s5", "A", [Event(3.0, 4.0, "B")], [], 250, 250),
    # event ending at the clip end; 10 padded frames beyond n_valid are "on" in probs
    ("s6", "B", [Event(8.0, 10.0, "B")], [(8.04, 10.0)], 250, 260),
    # short clip (6 s): scored over its full 6 s, not up to its last event (2.0 s)
    ("s7", "A", [Event(1.0, 2.0, "A")], [(1.0, 2.0), (4.0, 5.0)], 150, 150),
    # offset 240 ms early on a 0.6 s event: outside max(0.2, 0.2*0.6) -> miss
    ("s8", "B", [Event(6.0, 6.6, "B")], [(6.0, 6.36)], 250, 250),
]


def parity_samples():
    out = []
    for sid, target, events, spans, n_valid, n_frames in PARITY_CASES:
        p = probs_with(spans, n_frames=n_frames)
        p[n_valid:] = 0.99
        out.append(ScoredSample(sid, target, p, tuple(events), n_valid=n_valid))
    return out


def direct_sed_eval():
    """sed_eval called directly on hand-built event lists (no tsd_ray code involved)."""
    seg = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=CLASSES, time_resolution=1.0)
    ev = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=CLASSES,
        t_collar=0.2,
        percentage_of_length=0.2,
        evaluate_onset=True,
        evaluate_offset=True,
    )
    for sid, target, events, spans, n_valid, _ in PARITY_CASES:
        ref = [
            {"filename": sid, "event_label": e.label, "onset": e.onset, "offset": e.offset}
            for e in events
            if e.label == target
        ]
        est = [
            {"filename": sid, "event_label": target, "onset": on, "offset": off}
            for on, off in spans
        ]
        seg.evaluate(ref, est, evaluated_length_seconds=n_valid * 0.04)
        ev.evaluate(ref, est)
    return seg, ev


def test_score_samples_matches_sed_eval_directly():
    scores = score_samples(parity_samples(), PostProcessing(0.5, 1), classes=CLASSES)
    seg, ev = direct_sed_eval()
    assert scores.segment_f == pytest.approx(
        100 * seg.results_class_wise_average_metrics()["f_measure"]["f_measure"]
    )
    assert scores.event_f == pytest.approx(
        100 * ev.results_class_wise_average_metrics()["f_measure"]["f_measure"]
    )
    assert scores.segment_f_micro == pytest.approx(
        100 * seg.results_overall_metrics()["f_measure"]["f_measure"]
    )
    assert scores.event_f_micro == pytest.approx(
        100 * ev.results_overall_metrics()["f_measure"]["f_measure"]
    )
    for c in CLASSES:
        for kind, metrics in (("segment", seg), ("event", ev)):
            ref = metrics.results_class_wise_metrics()[c]["f_measure"]
            for key in ("f_measure", "precision", "recall"):
                mine = scores.per_class[c][f"{kind}_{key.split('_')[0]}"]
                assert mine == pytest.approx(100 * ref[key]), (c, kind, key)
    assert scores.evaluated_s == pytest.approx(seg.evaluated_length_seconds)


def test_parity_case_hand_checked_event_scores():
    scores = score_samples(parity_samples(), PostProcessing(0.5, 1), classes=CLASSES)
    pc = scores.per_class
    # A: refs s1 x2 + s7; sys s1 x2 + s7 x2; hits: s1 (1.16 onset), s7 -> P 2/4, R 2/3
    assert (pc["A"]["n_ref_events"], pc["A"]["n_sys_events"]) == (3, 4)
    assert pc["A"]["event_precision"] == pytest.approx(50.0)
    assert pc["A"]["event_recall"] == pytest.approx(200 / 3)
    # B: s2 hit, s6 hit (onset 40 ms late; padding ignored), s8 miss -> P = R = 2/3
    assert (pc["B"]["n_ref_events"], pc["B"]["n_sys_events"]) == (3, 3)
    assert pc["B"]["event_f"] == pytest.approx(200 / 3)
    # C: the only detection is the negative sample's false positive -> F = 0
    assert (pc["C"]["n_ref_events"], pc["C"]["n_sys_events"]) == (1, 1)
    assert pc["C"]["event_f"] == 0.0
    f_a = 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)
    assert scores.event_f == pytest.approx(100 * (f_a + 2 / 3 + 0.0) / 3)
    assert scores.n_classes_scored == 3
    assert scores.n_samples == 8
    assert pc["C"]["n_samples"] == 2 and pc["A"]["n_samples"] == 3
    # full durations: 7 clips of 10 s + one of 6 s
    assert scores.evaluated_s == pytest.approx(76.0)


def test_negative_sample_adds_only_a_false_positive_of_its_target():
    base = [ScoredSample("p", "A", probs_with([(1.0, 2.0)]), (Event(1.0, 2.0, "A"),))]
    neg = ScoredSample("n", "A", probs_with([(5.0, 6.0)]), (Event(5.0, 6.0, "B"),))
    quiet = ScoredSample("q", "A", probs_with([]), (Event(5.0, 6.0, "B"),))
    kw = {"classes": ["A", "B"]}
    assert score_samples(base + [quiet], PostProcessing(), **kw).event_f == 100.0
    with_fp = score_samples(base + [neg], PostProcessing(), **kw)
    assert with_fp.per_class["A"]["event_precision"] == 50.0
    assert with_fp.per_class["B"]["n_ref_events"] == 0  # the mixture's B event is no reference
    assert math.isnan(with_fp.per_class["B"]["event_f"])


# ------------------------------------------------------------------ trivial cases, quirks


def _perfect_and_missed(detect: bool):
    samples = []
    for i, c in enumerate(["A", "B"] * 3):
        spans = [(1.0 + i, 2.5 + i)]
        events = tuple(Event(a, b, c) for a, b in spans)
        samples.append(ScoredSample(f"s{i}", c, probs_with(spans if detect else []), events))
    samples.append(ScoredSample("neg", "A", probs_with([]), ()))
    return samples


def test_perfect_prediction_scores_100():
    s = score_samples(_perfect_and_missed(True), PostProcessing(), classes=["A", "B"])
    assert (s.segment_f, s.event_f, s.segment_f_micro, s.event_f_micro) == (100, 100, 100, 100)


def test_all_missed_scores_0_not_nan():
    # Plain sed_eval would give NaN here (precision of an empty output is NaN) and drop the
    # classes from the macro average; we score a class with no output as 0.
    s = score_samples(_perfect_and_missed(False), PostProcessing(), classes=["A", "B"])
    assert (s.segment_f, s.event_f, s.segment_f_micro, s.event_f_micro) == (0, 0, 0, 0)
    assert s.n_classes_scored == 2


def test_class_never_detected_counts_as_zero_in_macro():
    samples = _perfect_and_missed(True)
    # class B: its positives now get no detection at all
    samples = [
        ScoredSample(s.sample_id, s.target, probs_with([]), s.events) if s.target == "B" else s
        for s in samples
    ]
    s = score_samples(samples, PostProcessing(), classes=["A", "B"])
    assert s.per_class["B"]["event_f"] == 0.0
    assert s.event_f == pytest.approx(50.0)  # plain sed_eval: nanmean -> 100


def test_class_without_references_is_nan_and_left_out_of_macro():
    samples = _perfect_and_missed(True) + [ScoredSample("negC", "C", probs_with([(1, 2)]), ())]
    s = score_samples(samples, PostProcessing(), classes=["A", "B", "C"])
    assert math.isnan(s.per_class["C"]["event_f"])
    assert s.per_class["C"]["n_sys_events"] == 1
    assert s.event_f == 100.0  # C is not averaged over ...
    assert s.event_f_micro < 100.0  # ... but its false positive counts in the micro score
    assert s.n_classes_scored == 2


def _random_files(seed: int, classes: list[str], n: int, one_label: bool):
    """Random sed_eval files: multi-label ones, or one-label ones shaped like TSD samples (events
    of the target only, some near-misses of the collars, empty files, events past the end)."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        if one_label:
            c = str(rng.choice(classes))
            ref = []
            for _ in range(int(rng.integers(0, 3))):
                on = round(float(rng.uniform(0, 9)), 6)
                ref.append({"filename": f"f{i}", "event_label": c, "onset": on,
                            "offset": round(on + float(rng.uniform(0.1, 3.0)), 6)})
            est = []
            for r in ref[: int(rng.integers(0, len(ref) + 1))]:  # estimates near references ...
                est.append({**r, "onset": round(r["onset"] + float(rng.choice([0, 0.2, -0.2, 0.21, 0.1])), 6),
                            "offset": round(r["offset"] + float(rng.choice([0, 0.2, 0.5, -0.3])), 6)})
            for _ in range(int(rng.integers(0, 3))):  # ... and elsewhere
                on = round(float(rng.uniform(0, 10)), 6)
                est.append({"filename": f"f{i}", "event_label": c, "onset": on,
                            "offset": round(on + float(rng.uniform(0.04, 2.0)), 6)})
            est = [e for e in est if e["offset"] > e["onset"]]
            files.append((f"f{i}", ref, est, 10.0 - (i % 3) * 0.52))
            continue
        labels = rng.choice(classes, size=rng.integers(0, 3), replace=False)

        def events(labels, i=i):
            out = []
            for c in labels:
                on = float(rng.uniform(0, 8))
                out.append(
                    {"filename": f"f{i}", "event_label": str(c), "onset": on, "offset": on + 1.5}
                )
            return out

        extra = rng.choice(classes, size=rng.integers(0, 2), replace=False)
        files.append((f"f{i}", events(labels), events(list(labels) + list(extra)), 10.0 - i % 3))
    return files


def _same_counters(a, b, classes):
    for p, g in zip(a, b, strict=True):
        assert {k: float(v) for k, v in p.overall.items()} == {
            k: float(v) for k, v in g.overall.items()
        }
        for c in classes:
            assert {k: float(v) for k, v in p.class_wise[c].items()} == {
                k: float(v) for k, v in g.class_wise[c].items()
            }
        assert p.evaluated_files == g.evaluated_files
    assert a[0].evaluated_length_seconds == pytest.approx(b[0].evaluated_length_seconds)
    assert a[1].evaluated_length == pytest.approx(b[1].evaluated_length)


@pytest.mark.parametrize("one_label", [False, True])
def test_grouped_and_direct_sed_eval_counters_equal_plain_sed_eval(one_label):
    classes = ["A", "B", "C", "D"]
    files = _random_files(1, classes, 300 if one_label else 40, one_label)
    plain = sed_eval_metrics(files, classes=classes, method="plain")
    for method in ("grouped", "direct"):
        _same_counters(plain, sed_eval_metrics(files, classes=classes, method=method), classes)
    assert plain[0].overall["Ntn"] > 0  # the true-negative correction was exercised
    if one_label:  # the random files reach every branch of the direct count
        ev = plain[1]
        assert 0 < ev.overall["Ntp"] < min(ev.overall["Nref"], ev.overall["Nsys"])
        assert any(not f[1] and not f[2] for f in files) and any(len(f[1]) == 2 for f in files)


def test_maximum_matching_beats_a_greedy_one():
    from tsd_ray.metrics.counts import _max_matching

    # Reference 0 hits estimates 0 and 1, reference 1 only estimate 0: greedy in order takes
    # (0, 0) and leaves reference 1 unmatched; the maximum matching pairs both.
    assert _max_matching(np.array([[True, True], [True, False]])) == 2
    assert _max_matching(np.array([[True, True, True], [True, False, False], [True, False, False]])) == 2
    assert _max_matching(np.zeros((3, 0), dtype=bool)) == 0


def test_score_event_lists_segment_length_setting():
    ref = {"f": [Event(0.0, 1.0, "A")]}
    est = {"f": [Event(0.0, 1.4, "A")]}
    one_s = score_event_lists(ref, est, {"f": 10.0}, classes=["A"], segment_s=1.0)
    assert one_s.segment_f == pytest.approx(100 * 2 * 0.5 / 1.5)  # P 1/2, R 1
    fine = score_event_lists(ref, est, {"f": 10.0}, classes=["A"], segment_s=0.2)
    assert fine.segment_f == pytest.approx(100 * 2 * (5 / 7) / (5 / 7 + 1))
    assert fine.settings()["segment_s"] == 0.2


def test_scoring_errors_name_the_sample():
    s = ScoredSample("bad", "Z", probs_with([]), ())
    with pytest.raises(ValueError, match="'bad'.*'Z'.*not in classes"):
        score_samples([s], PostProcessing(), classes=["A"])
    ok = ScoredSample("dup", "A", probs_with([]), ())
    with pytest.raises(ValueError, match="duplicate sample_id 'dup'"):
        score_samples([ok, ok], PostProcessing(), classes=["A"])
    nan = ScoredSample("nan", "A", np.full(10, np.nan), ())
    with pytest.raises(ValueError, match="'nan'.*non-finite"):
        score_samples([nan], PostProcessing(), classes=["A"])
    with pytest.raises(ValueError, match="'x'.*n_valid=11"):
        ScoredSample("x", "A", np.zeros(10), (), n_valid=11)
    with pytest.raises(ValueError, match="'y'.*1-D"):
        ScoredSample("y", "A", np.zeros((2, 10)), ())


# ------------------------------------------------------------------ tuning


def tuning_samples():
    """True events at 0.7 with single-frame dropouts; background 0.2 with single-frame spikes.

    A 3-frame median repairs both, so (0.5, 3) is perfect; without it events fragment and
    spikes add false positives; at threshold 0.8 nothing is detected.
    """
    out = []
    for i in range(8):
        c = "AB"[i % 2]
        if i < 6:
            onset = 1.0 + 0.4 * i
            events = (Event(onset, onset + 2.0, c),)
            p = probs_with([(onset, onset + 2.0)], on=0.7, off=0.2)
            start = round(onset / HOP)
            p[start + 10 : start + 50 : 12] = 0.2  # dropouts
        else:
            events = ()
            p = np.full(T, 0.2)
        p[200 + i] = 0.95  # spike
        out.append(ScoredSample(f"t{i}", c, p, events))
    return out


def test_tune_postprocessing_finds_the_known_best():
    best, table = tune_postprocessing(
        tuning_samples(), classes=["A", "B"], thresholds=[0.5, 0.8], median_windows=[1, 3, 5]
    )
    assert best == PostProcessing(threshold=0.5, median_frames=3)
    rows = {(r["threshold"], r["median_frames"]): r for r in table["rows"]}
    assert len(rows) == 6 and table["metric"] == "event_f"
    assert rows[(0.5, 3)]["event_f"] == 100.0
    assert rows[(0.5, 5)]["event_f"] == 100.0  # a tie: the first in grid order wins
    assert rows[(0.5, 1)]["event_f"] < 20.0
    assert rows[(0.8, 1)]["event_f"] == 0.0
    assert table["best"]["median_frames"] == 3


def test_tune_postprocessing_parallel_equals_serial():
    kw = {"classes": ["A", "B"], "thresholds": [0.5, 0.8], "median_windows": [1, 3]}
    serial = tune_postprocessing(tuning_samples(), num_jobs=1, **kw)
    parallel = tune_postprocessing(tuning_samples(), num_jobs=2, **kw)
    assert serial == parallel


def test_tune_postprocessing_rejects_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        tune_postprocessing(
            tuning_samples(), classes=["A", "B"], thresholds=[0.5], median_windows=[1], metric="x"
        )
    with pytest.raises(TypeError, match="collar"):
        tune_postprocessing(
            tuning_samples(), classes=["A", "B"], thresholds=[0.5], median_windows=[1], collar=1
        )


@settings(deadline=None, max_examples=20)
@given(st.integers(0, 2**31 - 1))
def test_scores_are_percentages(seed):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(6):
        c = "AB"[i % 2]
        on = float(rng.integers(0, 200)) * HOP
        events = (Event(on, on + 1.0, c),) if i < 4 else ()
        samples.append(ScoredSample(f"r{i}", c, rng.uniform(size=T), events))
    s = score_samples(samples, PostProcessing(0.5, 5), classes=["A", "B"])
    for v in (s.segment_f, s.event_f, s.segment_f_micro, s.event_f_micro):
        assert 0.0 <= v <= 100.0


def test_float32_probs_are_kept_and_score_the_same():
    s64 = parity_samples()
    s32 = [
        ScoredSample(s.sample_id, s.target, s.probs.astype(np.float32), s.events, s.n_valid)
        for s in s64
    ]
    assert s32[0].probs.dtype == np.float32
    a = score_samples(s64, PostProcessing(0.5, 3), classes=CLASSES)
    b = score_samples(s32, PostProcessing(0.5, 3), classes=CLASSES)
    assert (a.segment_f, a.event_f) == (b.segment_f, b.event_f)


# ---------------------------------------------------------------------------- jobs/evaluate.py


def _evaluate_job():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "jobs" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("jobs_evaluate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "split, val_split, message",
    [
        ("target_test", "target_test", "--val-split target_test is the --split being scored"),
        ("target_val", "target_val", "--val-split target_val is the --split being scored"),
        ("target_test", "source_val", "--val-split source_val is a source-domain split"),
        ("source_val", "target_val", "--val-split target_val is a target-domain split"),
        ("target_test", "target_tset", "--val-split 'target_tset' is not a split"),
        ("target_val", None, "--val-split (default target_val) is the --split being scored"),
    ],
)
def test_evaluate_job_refuses_tuning_on_the_scored_split_or_the_other_domain(tmp_path, split, val_split, message):
    """Refused before anything is loaded: the checkpoint does not even exist."""
    job = _evaluate_job()
    missing = str(tmp_path / "no_such_run" / "model.pt")
    with pytest.raises(SystemExit) as err:
        job.main(["--checkpoint", missing, "--split", split] + (["--val-split", val_split] if val_split else []))
    text = str(err.value.code)
    assert text.startswith("error: ") and message in text, text
    assert "--split" in text and "--val-split" in text
    assert "no_such_run" not in text  # the checkpoint was never opened
    assert job.choose_val_split("target_test", None) == ("target_val", None)
    assert job.choose_val_split("source_val", "source_train") == ("source_train", None)
