import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsd_ray.common.types import Event, MixtureRecord
from tsd_ray.data.samples import build_samples, frame_labels, summarize

HOP = 0.04


@settings(max_examples=200, deadline=None)
@given(
    onset=st.floats(min_value=0.0, max_value=9.5),
    length=st.floats(min_value=0.01, max_value=5.0),
)
def test_frame_labels_match_event_within_one_frame(onset, length):
    offset = min(10.0, onset + length)
    y = frame_labels([Event(onset, offset, "a")], n_frames=250, hop_s=HOP)
    active = np.flatnonzero(y)
    assert active.size > 0
    first_t, last_t = active[0] * HOP, (active[-1] + 1) * HOP
    assert abs(first_t - onset) <= HOP + 1e-9
    assert abs(last_t - offset) <= HOP + 1e-9
    # contiguous, and every frame whose centre lies inside the event is active
    assert active[-1] - active[0] + 1 == active.size
    centres = (np.arange(250) + 0.5) * HOP
    assert np.all(y[(centres > onset) & (centres < offset)] == 1)


def test_frame_labels_union_of_events_and_clip_end():
    y = frame_labels([Event(0.0, 0.08, "a"), Event(9.9, 12.0, "a")], n_frames=250, hop_s=HOP)
    assert y[:2].tolist() == [1, 1] and y[2] == 0
    assert y[-3:].tolist() == [1, 1, 1] and y.sum() == 5


def _mix(i, labels, split="source_train"):
    return MixtureRecord(
        mixture_id=f"m{i:03d}.wav",
        audio_path=f"/x/m{i:03d}.wav",
        split=split,
        domain="source",
        events=tuple(Event(1.0, 2.0, c) for c in labels),
    )


def test_positive_and_negative_counts_follow_the_paper():
    classes = [f"c{k}" for k in range(6)]
    mixes = [_mix(0, ["c0"]), _mix(1, ["c0", "c1"]), _mix(2, ["c0", "c1", "c2"]), _mix(3, ["c5", "c4", "c3", "c2", "c0"])]
    by_mix = build_samples(mixes, classes, seed=1)
    for m in mixes:
        rows = by_mix[m.mixture_id]
        n = len(set(m.clip_classes()))
        pos = [r for r in rows if r.clip_label == 1]
        neg = [r for r in rows if r.clip_label == 0]
        assert len(pos) == n
        assert len(neg) == min(math.ceil(n / 2), len(classes) - n)
        assert {r.target for r in pos} == set(m.clip_classes())
        assert not ({r.target for r in neg} & set(m.clip_classes()))
        assert len({r.sample_id for r in rows}) == len(rows)


def test_negatives_are_balanced_across_classes():
    classes = [f"c{k}" for k in range(8)]
    mixes = [_mix(i, [classes[i % 8], classes[(i + 3) % 8]]) for i in range(80)]
    by_mix = build_samples(mixes, classes, seed=0)
    neg = summarize({"source_train": by_mix})["source_train"]["per_class"]
    counts = [neg[c]["neg"] for c in classes]
    assert max(counts) - min(counts) <= 1


def test_other_domain_labels_are_background_and_empty_clip_gets_one_negative():
    mixes = [_mix(0, ["x_other"]), _mix(1, [])]
    by_mix = build_samples(mixes, ["a", "b"], seed=0)
    for m in mixes:
        rows = by_mix[m.mixture_id]
        assert len(rows) == 1 and rows[0].clip_label == 0


def test_fixed_references_are_deterministic_and_of_the_target_class():
    classes = ["a", "b", "c"]
    refs = {"a": ["ra1", "ra2"], "b": ["rb1"], "c": ["rc1", "rc2", "rc3"]}
    mixes = [_mix(i, [classes[i % 3]], split="source_val") for i in range(12)]
    one = build_samples(mixes, classes, references=refs, fixed_references=True, seed=3)
    two = build_samples(mixes, classes, references=refs, fixed_references=True, seed=3)
    assert one == two
    for rows in one.values():
        for r in rows:
            assert r.reference_id in refs[r.target]
    train = build_samples(mixes, classes, references=refs, fixed_references=False, seed=3)
    assert all(r.reference_id is None for rows in train.values() for r in rows)


def test_clip_label_after_crop_follows_the_events_left_in_the_kept_part():
    from tsd_ray.data.samples import clip_label_after_crop

    events = (Event(2.0, 3.0, "a"), Event(10.1, 10.4, "b"), Event(9.8, 10.3, "c"))
    kept = [e for e in (ev.clipped(10.0) for ev in events) if e is not None]
    assert [e.label for e in kept] == ["a", "c"]
    assert clip_label_after_crop("a", 1, events, kept) == 1
    assert clip_label_after_crop("b", 1, events, kept) == 0  # its only event was cropped away
    assert clip_label_after_crop("c", 1, events, kept) == 1  # partly kept: still a positive
    assert clip_label_after_crop("d", 0, events, kept) == 0  # negatives stay negatives
    # weak labels only (no events, or none of this class): nothing tells where it was, kept as is
    assert clip_label_after_crop("b", 1, None, []) == 1
    assert clip_label_after_crop("w", 1, events, kept) == 1


def test_a_fixed_reference_left_out_by_the_build_is_redrawn_and_nothing_else_moves():
    classes = ["a", "b", "c"]
    refs = {"a": ["ra1", "ra2"], "b": ["rb1", "rb2"], "c": ["rc1", "rc2", "rc3"]}
    mixes = [_mix(i, [classes[i % 3]], split="source_val") for i in range(30)]
    before = build_samples(mixes, classes, references=refs, fixed_references=True, seed=3)
    after = build_samples(mixes, classes, references=refs, fixed_references=True, seed=3,
                          unusable_references={"rc2": "reference clip is silent; replace it"})
    assert build_samples(mixes, classes, references=refs, fixed_references=True, seed=3,
                         unusable_references={"rc2": "silent"}) == after  # deterministic
    moved = 0
    for mid, rows in before.items():
        for old, new in zip(rows, after[mid]):
            assert (old.target, old.clip_label) == (new.target, new.clip_label)  # negatives unchanged
            if old.reference_id == "rc2":
                assert new.reference_id in ("rc1", "rc3")
                moved += 1
            else:
                assert new.reference_id == old.reference_id
    assert moved > 0
    with pytest.raises(ValueError, match="every reference clip of class 'b'.*rb1: x; rb2: y"):
        build_samples(mixes, classes, references=refs, fixed_references=True, seed=3,
                      unusable_references={"rb1": "x", "rb2": "y"})
