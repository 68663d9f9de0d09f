"""Augmentation keeps frame labels aligned with the features."""

from __future__ import annotations

import math

import pytest
import torch

from tsd_ray.common.config import AugmentConfig
from tsd_ray.train.augment import (
    augment_batch,
    bin_shift,
    freq_mask,
    gain_eq,
    mix_mixtures,
    time_mask,
    time_shift,
)


def _impulse_batch(b: int, t_in: int, starts: list[int], f: int = 8):
    """Rows with an 'event' (value 10) at input frames [2k, 2k+2) and its label at frame k."""
    t_out = t_in // 2
    mel = torch.zeros(b, t_in, f)
    labels = torch.zeros(b, t_out)
    for row, k in enumerate(starts):
        mel[row, 2 * k : 2 * k + 2] = 10.0
        labels[row, k] = 1.0
    return mel, labels


def _assert_aligned(mel: torch.Tensor, labels: torch.Tensor):
    t_out = labels.shape[1]
    active_in = mel[:, : 2 * t_out].amax(dim=2) > 5  # (B, 2T')
    active_out = active_in.reshape(mel.shape[0], t_out, 2)
    # every labelled frame covers exactly the two event frames, and nothing else is active
    assert torch.equal(active_out.all(dim=2), labels > 0.5)
    assert torch.equal(active_out.any(dim=2), labels > 0.5)


@pytest.mark.parametrize("t_in", [501, 201, 20])
def test_time_shift_moves_labels_with_features(t_in):
    t_out = t_in // 2
    starts = [0, t_out - 1, t_out // 2, 3, 1, t_out - 2]
    mel, labels = _impulse_batch(len(starts), t_in, starts)
    g = torch.Generator().manual_seed(0)
    moved = 0
    for _ in range(10):
        new_mel, new_labels = time_shift(mel, labels, max_shift_out_frames=7, generator=g)
        assert new_mel.shape == mel.shape and new_labels.shape == labels.shape
        _assert_aligned(new_mel, new_labels)
        assert torch.equal(new_labels.sum(1), labels.sum(1))  # circular: nothing lost
        moved += int(not torch.equal(new_labels, labels))
    assert moved > 0  # the shift really moves things


def test_grouped_time_shift_moves_each_samples_labels_with_its_mixture():
    """Packed batches: mel rows are mixtures, label rows samples (groups: sample -> mixture)."""
    t_in, starts = 60, [4, 20, 27]
    mel, labels = _impulse_batch(3, t_in, starts)
    groups = torch.tensor([0, 1, 1, 2, 0])
    sample_labels = labels[groups].clone()
    sample_labels[2] = 0.0  # another target in mixture 1: no event of its own
    mask = torch.arange(30)[None, :] < torch.tensor([30, 30, 25])[:, None]
    g = torch.Generator().manual_seed(3)
    moved = 0
    for _ in range(10):
        new_mel, new_labels = time_shift(mel, sample_labels, 6, g, mask, groups)
        assert new_labels.shape == (5, 30)
        _assert_aligned(new_mel[groups[[0, 1, 3, 4]]], new_labels[[0, 1, 3, 4]])
        assert new_labels[2].sum() == 0
        moved += int(not torch.equal(new_labels, sample_labels))
    assert moved > 0
    with pytest.raises(ValueError, match="frame labels"):
        time_shift(mel, labels, 6, g, mask, groups)  # 3 label rows for 5 samples


def test_time_shift_odd_last_frame_stays_and_is_not_wrapped():
    mel, labels = _impulse_batch(1, 11, [4])
    mel[0, 10] = -3.0  # the 11th input frame is not covered by any label
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        new_mel, new_labels = time_shift(mel, labels, 3, g)
        assert torch.all(new_mel[0, 10] == -3.0)
        _assert_aligned(new_mel, new_labels)


def test_time_shift_respects_frame_mask():
    mel, labels = _impulse_batch(2, 40, [2, 9])
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 12:] = False  # row 1 valid for 12 output frames (24 input frames)
    mel[1, 24:] = -7.0  # padding
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        new_mel, new_labels = time_shift(mel, labels, 5, g, frame_mask=mask)
        _assert_aligned(new_mel.clamp_min(0), new_labels)
        assert torch.all(new_mel[1, 24:] == -7.0)  # padding stays put ...
        assert torch.all(new_mel[1, :24] >= 0)  # ... and never wraps into the valid part
        assert new_labels[1, 12:].sum() == 0


def test_time_shift_multiple_label_tensors_move_together():
    mel, labels = _impulse_batch(3, 50, [1, 10, 20])
    soft = labels * 0.7
    g = torch.Generator().manual_seed(5)
    new_mel, (a, b) = time_shift(mel, (labels, soft), 6, g)
    assert torch.allclose(b, a * 0.7)
    _assert_aligned(new_mel, a)


def test_time_shift_zero_is_identity_and_bad_shapes_raise():
    mel, labels = _impulse_batch(2, 20, [1, 2])
    g = torch.Generator().manual_seed(0)
    m2, l2 = time_shift(mel, labels, 0, g)
    assert torch.equal(m2, mel) and torch.equal(l2, labels)
    with pytest.raises(ValueError, match="frame labels"):
        time_shift(mel, labels[:, :5], 2, g)
    with pytest.raises(ValueError, match="frame labels"):
        time_shift(mel[:, :15], labels, 2, g)


def test_masks_change_features_not_time_or_labels():
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(4, 60, 16)
    fm = freq_mask(mel, 6, g)
    tm = time_mask(mel, 10, g)
    assert fm.shape == mel.shape and tm.shape == mel.shape
    # freq mask: whole mel bins replaced for all frames; time mask: whole frames
    changed_f = (fm != mel).any(dim=1)  # (B, F)
    assert changed_f.sum(1).max() <= 6 and changed_f.any()
    changed_t = (tm != mel).any(dim=2)  # (B, T)
    assert changed_t.sum(1).max() <= 10 and changed_t.any()
    # unmasked values untouched
    assert torch.equal(fm[~(fm != mel)], mel[~(fm != mel)])


def test_augment_batch_keeps_alignment_and_passes_other_keys():
    mel, labels = _impulse_batch(4, 101, [0, 10, 25, 49])
    batch = {
        "mel": mel,
        "frame_labels": labels,
        "clip_label": torch.ones(4),
        "id": ["a", "b", "c", "d"],
    }
    cfg = AugmentConfig(time_shift_frames=8, freq_mask_bins=0, time_mask_frames=0)
    out = augment_batch(batch, cfg, torch.Generator().manual_seed(0))
    _assert_aligned(out["mel"], out["frame_labels"])
    assert out["id"] is batch["id"] and torch.equal(out["clip_label"], batch["clip_label"])
    assert batch["mel"] is mel and torch.equal(batch["frame_labels"], labels)  # input untouched
    full = AugmentConfig(time_shift_frames=8, freq_mask_bins=3, time_mask_frames=4)
    out = augment_batch(batch, full, torch.Generator().manual_seed(0))
    assert out["mel"].shape == mel.shape and torch.equal(out["frame_labels"].sum(1), labels.sum(1))


def test_augment_batch_is_reproducible_from_generator():
    mel = torch.randn(3, 41, 8)
    labels = (torch.rand(3, 20) > 0.5).float()
    cfg = AugmentConfig(time_shift_frames=5, freq_mask_bins=2, time_mask_frames=3)
    a = augment_batch({"mel": mel, "frame_labels": labels}, cfg, torch.Generator().manual_seed(9))
    b = augment_batch({"mel": mel, "frame_labels": labels}, cfg, torch.Generator().manual_seed(9))
    assert torch.equal(a["mel"], b["mel"]) and torch.equal(a["frame_labels"], b["frame_labels"])


def test_gain_eq_changes_each_row_by_one_curve_over_the_mel_bins():
    mel = torch.randn(4, 30, 16)
    out = gain_eq(mel, 6.0, 6.0, torch.Generator().manual_seed(1))
    offset = out - mel  # (B, T, F): the same curve at every frame of a row, another per row
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-6)
    assert not torch.allclose(offset[0, 0], offset[1, 0])
    limit = (6.0 + 6.0 + 3.0) * math.log(10.0) / 10.0  # gain + both cosine terms, in log-mel units
    assert offset.abs().max() <= limit + 1e-6 and offset.abs().max() > 0.1


def test_bin_shift_moves_a_tone_along_the_mel_axis():
    mel = torch.zeros(20, 10, 16)
    mel[:, :, 8] = 5.0  # a tone in bin 8 in every row
    out = bin_shift(mel, 2, torch.Generator().manual_seed(0))
    peaks = out.argmax(dim=2)  # (B, T)
    assert torch.equal(peaks, peaks[:, :1].expand_as(peaks))  # every frame of a row moves alike
    moves = (peaks[:, 0] - 8).tolist()
    assert set(moves) <= {-2, -1, 0, 1, 2} and len(set(moves)) > 2
    edge = torch.arange(16.0).expand(1, 1, 16).clone()
    assert bin_shift(edge, 3, torch.Generator().manual_seed(5))[0, 0].tolist() in (
        [min(max(f - s, 0), 15) for f in range(16)] for s in range(-3, 4))  # the edge bin fills the gap


def test_new_augmentations_at_zero_draw_nothing_and_keep_old_batches():
    mel = torch.randn(3, 41, 8)
    labels = (torch.rand(3, 20) > 0.5).float()
    old = AugmentConfig(time_shift_frames=5, freq_mask_bins=2, time_mask_frames=3)
    g = torch.Generator().manual_seed(9)
    a = augment_batch({"mel": mel, "frame_labels": labels}, old, g)
    state = g.get_state()
    assert gain_eq(mel, 0.0, 0.0, g) is mel and bin_shift(mel, 0, g) is mel
    assert torch.equal(g.get_state(), state)
    b = augment_batch({"mel": mel, "frame_labels": labels}, AugmentConfig(time_shift_frames=5, freq_mask_bins=2,
                      time_mask_frames=3, gain_db=6.0, eq_db=6.0, max_bin_shift=2), torch.Generator().manual_seed(9))
    assert torch.equal(b["frame_labels"], a["frame_labels"])  # labels as before: they draw after the shift
    assert not torch.equal(b["mel"], a["mel"])


def _two_mixtures():
    """Mixture 0: class 1 present (frames 2-4), class 2 absent (a negative sample). Mixture 1:
    class 2 present (frames 6-8) and class 3 present (frames 0-1)."""
    mel = torch.stack([torch.full((20, 4), -5.0), torch.full((20, 4), -3.0)])
    frames = torch.zeros(4, 10)
    frames[0, 2:5] = 1
    frames[2, 6:9] = 1
    frames[3, 0:2] = 1
    clip = torch.tensor([1.0, 0.0, 1.0, 1.0])
    target = torch.tensor([1, 2, 2, 3])
    groups = torch.tensor([0, 0, 1, 1])
    return mel, frames, clip, target, groups


def test_mixing_joins_the_partners_labels_of_each_class():
    mel, frames, clip, target, groups = _two_mixtures()
    out, f, c = mix_mixtures(mel, frames, clip, target, groups, torch.tensor([0, 0]), torch.tensor([10, 10]),
                             1.0, 12.0, torch.Generator().manual_seed(0))
    # mixture 0's negative of class 2 now holds mixture 1's class-2 event; class 1 is unchanged
    assert torch.equal(f[1], frames[2]) and c[1] == 1.0
    assert torch.equal(f[0], frames[0]) and c[0] == 1.0
    # mixture 1 got mixture 0 too: its class-2 and class-3 samples keep their labels (0 has neither)
    assert torch.equal(f[2:], frames[2:]) and torch.equal(c[2:], clip[2:])
    # each row is louder than before, by the partner's power at -12..0 dB
    assert bool((out > mel).all()) and bool((out <= torch.logaddexp(mel, mel.flip(0))).all())
    assert torch.equal(frames[1], torch.zeros(10)) and mel[0, 0, 0] == -5.0  # inputs unchanged


def test_mixing_keeps_to_its_kind_and_to_frames_valid_in_both():
    mel, frames, clip, target, groups = _two_mixtures()
    g = torch.Generator().manual_seed(0)
    out, f, c = mix_mixtures(mel, frames, clip, target, groups, torch.tensor([0, 1]), torch.tensor([10, 10]),
                             1.0, 12.0, g)
    assert torch.equal(out, mel) and torch.equal(f, frames)  # a strong and a weak mixture never mix
    out, _, _ = mix_mixtures(mel, frames, clip, target, groups, torch.tensor([0, 0]), torch.tensor([10, 4]),
                             1.0, 12.0, torch.Generator().manual_seed(0))
    assert bool((out[:, :8] > mel[:, :8]).all()) and torch.equal(out[:, 8:], mel[:, 8:])
    state = g.get_state()
    assert mix_mixtures(mel, frames, clip, target, groups, torch.tensor([0, 0]), torch.tensor([10, 10]),
                        0.0, 12.0, g)[0] is mel and torch.equal(g.get_state(), state)


def test_mixing_needs_whole_mixtures():
    mel, frames, clip, target, _ = _two_mixtures()
    cfg = AugmentConfig(mix_prob=0.5)
    with pytest.raises(ValueError, match="group_by_mixture"):
        augment_batch({"mel": mel, "frame_labels": frames[:2], "clip_label": clip[:2]}, cfg,
                      torch.Generator().manual_seed(0))
