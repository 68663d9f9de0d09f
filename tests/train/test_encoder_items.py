"""The encoder's training items (events cut from mixtures, weak clips), augmentation, LOO accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsd_ray.train.encoder_items import (
    augment_items,
    cut_events,
    event_items,
    loo_centroid_accuracy,
    multi_hot,
    weak_items,
)

CLASSES = {"a": 0, "b": 1, "c": 2}
FLOOR = float(np.log(1e-6))


def _mel(T=500, F=8):
    return np.arange(T * F, dtype=np.float32).reshape(T, F) / 100.0


def test_an_event_is_cut_at_its_onset_and_offset_and_padded_with_the_floor():
    mel = _mel()
    (item,) = cut_events(mel, [1.0], [2.0], ["a"], n_frames_out=200, frame_rate=50.0, floor=FLOOR,
                         class_index=CLASSES, rng=np.random.default_rng(0))
    cut, n, y = item
    assert n == 50 and cut.shape == (200, 8)
    np.testing.assert_array_equal(cut[:50], mel[50:100])
    assert (cut[50:] == FLOOR).all()
    np.testing.assert_array_equal(y, [1, 0, 0])


def test_overlapping_events_join_the_labels_only_when_they_cover_half_the_cut():
    mel = _mel()
    items = cut_events(mel, [1.0, 1.2, 1.9], [2.0, 2.5, 3.0], ["a", "b", "c"], n_frames_out=200,
                       frame_rate=50.0, floor=FLOOR, class_index=CLASSES, rng=np.random.default_rng(0))
    # a (1-2 s): b covers 0.8 s of it (joins), c 0.1 s (does not)
    np.testing.assert_array_equal(items[0][2], [1, 1, 0])
    # c (1.9-3 s): b covers 0.6 s of 1.1 s (joins), a 0.1 s (does not)
    np.testing.assert_array_equal(items[2][2], [0, 1, 1])


def test_a_long_event_becomes_a_window_and_one_in_the_cropped_tail_is_skipped():
    mel = _mel()
    items = cut_events(mel, [0.0, 9.5], [9.0, 11.0], ["a", "b"], n_frames_out=100, frame_rate=50.0,
                       floor=FLOOR, class_index=CLASSES, rng=np.random.default_rng(1), n_valid=450)
    assert len(items) == 1  # b starts at frame 475, past the 450 valid frames
    cut, n, _ = items[0]
    assert n == 100
    start = int(np.argmax((mel == cut[0]).all(axis=1)))
    np.testing.assert_array_equal(cut, mel[start:start + 100])


def _batch(rows):
    out = {}
    for key in rows[0]:
        col = np.empty(len(rows), dtype=object)
        col[:] = [r[key] for r in rows]
        out[key] = col
    out["mel"] = np.stack([r["mel"] for r in rows])
    return out


def test_event_and_weak_items_of_a_batch():
    rows = [
        {"mixture_id": "s0", "mel": _mel().astype(np.float16), "n_frames": 500, "has_strong": True,
         "event_onsets": [1.0, 4.0], "event_offsets": [2.0, 5.0], "event_labels": ["a", "b"],
         "has_weak": False, "weak_labels": None},
        {"mixture_id": "t0", "mel": _mel().astype(np.float16), "n_frames": 500, "has_strong": False,
         "event_onsets": [], "event_offsets": [], "event_labels": [], "has_weak": True, "weak_labels": ["c", "a"]},
        {"mixture_id": "t1", "mel": _mel().astype(np.float16), "n_frames": 500, "has_strong": False,
         "event_onsets": [], "event_offsets": [], "event_labels": [], "has_weak": True, "weak_labels": []},
    ]
    ev = event_items(_batch(rows), n_frames_out=200, frame_rate=50.0, floor=FLOOR, class_index=CLASSES, seed=0)
    assert ev["mel"].shape == (2, 200, 8) and ev["mel"].dtype == np.float16
    np.testing.assert_array_equal(ev["labels"], [[1, 0, 0], [0, 1, 0]])
    wk = weak_items(_batch(rows), class_index=CLASSES)
    # the strong mixture as a clip with its events' labels; the weak one with its clip labels;
    # the clip with no label says nothing about a class and is left out
    np.testing.assert_array_equal(wk["labels"], [[1, 1, 0], [1, 0, 1]])
    assert wk["mel"].shape == (2, 500, 8) and list(wk["n_frames"]) == [500, 500]


def test_unknown_label_is_named():
    with pytest.raises(KeyError, match="'zebra'"):
        multi_hot(["zebra"], CLASSES)


def test_augmentation_keeps_shapes_unions_labels_when_mixing_and_repeats_under_a_seed():
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(8, 100, 16)
    labels = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])]
    n = torch.full((8,), 60)
    out, n_out, y = augment_items(mel, n, labels, g, floor=FLOOR, mix_prob=1.0)
    assert out.shape == mel.shape and y.shape == labels.shape
    assert ((n_out >= 50) & (n_out <= 100)).all()  # 60 frames stretched by at most 15 %, or a partner's
    assert (y >= labels).all()  # labels only gain the partner's classes
    assert (y.sum(1) > 1).any()  # some items were mixed with another class
    out2, _, y2 = augment_items(mel, n, labels, torch.Generator().manual_seed(0), floor=FLOOR, mix_prob=1.0)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(y, y2)
    out3, n3, y3 = augment_items(mel, n, labels, torch.Generator().manual_seed(0), floor=FLOOR, mix_prob=0.0)
    torch.testing.assert_close(y3, labels)  # no mixing: labels unchanged
    assert not torch.allclose(out3, mel)
    assert ((n3 >= 51) & (n3 <= 69)).all()  # stretched by 1 +- 0.15 only


def test_loo_centroid_accuracy():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 5
    labels = ["a"] * 5 + ["b"] * 5 + ["c"] * 5 + ["d"]
    emb = np.concatenate([centres[i] + rng.normal(size=(5, 16)) for i in range(3)] + [rng.normal(size=(1, 16))])
    q = loo_centroid_accuracy(emb, labels)
    assert q["accuracy"] == 1.0 and q["n"] == 15 and q["unscored"] == ["d"]
    assert q["per_class"] == {"a": 1.0, "b": 1.0, "c": 1.0, "d": None}
    noise = loo_centroid_accuracy(rng.normal(size=(300, 16)), [str(i % 3) for i in range(300)])
    assert 0.15 < noise["accuracy"] < 0.5  # chance is 1/3; leaving one out biases it lower
    # the left-out item is not part of its own centroid: two far-apart pairs per class fail
    q2 = loo_centroid_accuracy(np.array([[1.0, 0], [0, 1.0], [0.9, 0.1], [0.1, 0.9]]), ["a", "a", "b", "b"])
    assert q2["accuracy"] == 0.0


def test_soft_target_cross_entropy_is_cross_entropy_for_one_label_and_splits_several():
    import torch.nn.functional as F

    from tsd_ray.train.encoder import soft_target_cross_entropy

    logits = torch.randn(4, 3)
    one = torch.eye(3)[torch.tensor([0, 2, 1, 1])]
    torch.testing.assert_close(soft_target_cross_entropy(logits, one), F.cross_entropy(logits, torch.tensor([0, 2, 1, 1])))
    two = torch.tensor([[1.0, 1.0, 0.0]])
    expected = -0.5 * (F.log_softmax(logits[:1], 1)[0, 0] + F.log_softmax(logits[:1], 1)[0, 1])
    torch.testing.assert_close(soft_target_cross_entropy(logits[:1], two), expected)
