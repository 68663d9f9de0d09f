"""Training-time augmentation that keeps frame labels aligned with the features.

Resolution: ``mel`` has ``T`` input frames (20 ms); frame labels have ``T' = T // 2`` output
frames (40 ms); output frame ``j`` covers input frames ``[2j, 2j + 2)``.

* :func:`time_shift` moves features *and* labels (the public reference code moved only the
  features). A shift of ``k`` output frames is a shift of ``2k`` input frames. The shift is
  circular within the labelled region of each row: input frames ``[0, 2L')`` roll by ``2k`` and
  labels ``[0, L')`` roll by ``k`` (``L'`` = valid output frames of the row, all of ``T'`` without
  a mask). Input frames past ``2L'`` (the odd last frame of a 501-frame clip, padding) stay where
  they are, so content never wraps into padding and the label of every moved frame is exactly
  the label it had. A clip label is unchanged by a circular shift (nothing leaves the clip).
* :func:`freq_mask` and :func:`time_mask` (SpecAugment-style) overwrite a band with the clip's
  mean level; they do not move time, so labels are unchanged (an event under a time mask keeps
  its label: the model must infer it from context, as in SpecAugment).
* :func:`mix_mixtures` adds another training mixture of the batch (same domain, same kind of
  labels) at -``max_db``..0 dB: the targets are heard over other recordings' events and
  backgrounds. Labels become the union: a sample of class c gets the partner's labels of c
  (its frame labels and clip label, maxed in), taken from the partner's own sample of c. That
  is exact only when a batch holds whole mixtures: every class present in a mixture has a
  positive sample (``tsd_ray.data.samples``), so a partner without a sample of c has no c.
* :func:`gain_eq` (a level change and a smooth random EQ curve) and :func:`bin_shift` (a shift
  along the mel axis, about a semitone per bin in the mid range) change how a recording sounds,
  not when: labels are unchanged. They are what the reference encoder trains with too
  (``tsd_ray.train.encoder_items.augment_items``): a new recording of a class differs from the
  training ones in level, colouration and pitch.

All draws come from the ``generator`` passed in (a CPU ``torch.Generator``): reproducible and
independent per worker when each worker seeds its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from tsd_ray.common.config import AugmentConfig

__all__ = ["augment_batch", "bin_shift", "freq_mask", "gain_eq", "mix_mixtures", "time_mask", "time_shift"]


def _randint(low: int, high: int, size: int, generator: torch.Generator) -> Tensor:
    """Integers uniform in [low, high] (inclusive), drawn on CPU."""
    return torch.randint(low, high + 1, (size,), generator=generator)


def time_shift(
    mel: Tensor,
    frame_labels: Tensor | Sequence[Tensor] | None,
    max_shift_out_frames: int,
    generator: torch.Generator,
    frame_mask: Tensor | None = None,
    groups: Tensor | None = None,
) -> tuple[Tensor, Any]:
    """Circularly shift each row by ``k ~ U{-max, .., max}`` output frames, labels included.

    Args:
        mel: (B, T, F) features.
        frame_labels: (B, T') labels at the output resolution, a sequence of such tensors
            (all shifted identically), or None (features only).
        max_shift_out_frames: maximum |k| in output frames (40 ms each).
        generator: CPU generator for the shifts.
        frame_mask: optional (B, T') bool, valid frames as a prefix of each row; rows shift
            within their valid part only.
        groups: optional (N,) long: label row ``n`` belongs to ``mel`` row ``groups[n]`` (the
            samples of one mixture, packed) and moves with it. Labels are then (N, T').

    Returns:
        ``(mel, frame_labels)`` new tensors of the same shapes (labels in the form given).
    """
    b, t_in, _ = mel.shape
    t_out = t_in // 2  # the detector's output frames (tsd_ray.models.output_frames)
    labels_seq = [frame_labels] if isinstance(frame_labels, Tensor) else list(frame_labels or [])
    n_lab = b if groups is None else groups.shape[0]
    for lab in labels_seq:
        if lab.shape != (n_lab, t_out):
            raise ValueError(
                f"time_shift: frame labels {tuple(lab.shape)} do not match {t_in} input frames "
                f"(expected {(n_lab, t_out)}: T' = T // 2)"
            )
    if max_shift_out_frames <= 0:
        return mel, frame_labels
    device = mel.device
    if frame_mask is not None:
        if frame_mask.shape != (b, t_out):
            raise ValueError(f"time_shift: frame_mask {tuple(frame_mask.shape)} vs {(b, t_out)}")
        valid = frame_mask.to(torch.bool).sum(dim=1).to(device)  # (B,)
    else:
        valid = torch.full((b,), t_out, device=device, dtype=torch.long)
    k = _randint(-max_shift_out_frames, max_shift_out_frames, b, generator).to(device)  # (B,)
    length = valid.clamp_min(1)[:, None]  # (B, 1)

    j = torch.arange(t_out, device=device)[None, :]  # (1, T')
    out_idx = torch.where(j < valid[:, None], torch.remainder(j - k[:, None], length), j)  # (B, T')
    i = torch.arange(t_in, device=device)[None, :]  # (1, T)
    in_idx = torch.where(
        i < 2 * valid[:, None], torch.remainder(i - 2 * k[:, None], 2 * length), i
    )  # (B, T)

    new_mel = mel.gather(1, in_idx[:, :, None].expand_as(mel))  # (B, T, F)
    if groups is not None:
        out_idx = out_idx.index_select(0, groups.to(device))  # (N, T'): each label row's mel row
    new_labels = [lab.gather(1, out_idx.to(lab.device)) for lab in labels_seq]
    if frame_labels is None:
        return new_mel, None
    if isinstance(frame_labels, Tensor):
        return new_mel, new_labels[0]
    return new_mel, type(frame_labels)(new_labels) if isinstance(
        frame_labels, tuple
    ) else new_labels


def _band_mask(mel: Tensor, axis: int, max_width: int, generator: torch.Generator) -> Tensor:
    """Fill one random band of width U{0..max_width} along ``axis`` with each row's mean."""
    if max_width <= 0:
        return mel
    b, size = mel.shape[0], mel.shape[axis]
    max_width = min(max_width, size)
    width = _randint(0, max_width, b, generator)  # (B,)
    start = (torch.rand(b, generator=generator) * (size - width + 1)).long()  # (B,)
    pos = torch.arange(size)[None, :]  # (1, size)
    band = ((pos >= start[:, None]) & (pos < (start + width)[:, None])).to(mel.device)  # (B, size)
    band = band[:, None, :] if axis == 2 else band[:, :, None]  # broadcast over the other axis
    fill = mel.float().mean(dim=(1, 2), keepdim=True).to(mel.dtype)  # (B, 1, 1)
    return torch.where(band, fill, mel)


def freq_mask(mel: Tensor, max_width_bins: int, generator: torch.Generator) -> Tensor:
    """Mask one band of 0..``max_width_bins`` mel bins per row (labels unchanged). (B, T, F)."""
    return _band_mask(mel, 2, max_width_bins, generator)


def time_mask(mel: Tensor, max_width_frames: int, generator: torch.Generator) -> Tensor:
    """Mask one span of 0..``max_width_frames`` *input* frames per row (labels unchanged)."""
    return _band_mask(mel, 1, max_width_frames, generator)


def mix_mixtures(
    mel: Tensor,
    frame_labels: Tensor,
    clip_label: Tensor,
    target_idx: Tensor,
    groups: Tensor,
    pair_key: Tensor,
    n_valid: Tensor,
    prob: float,
    max_db: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mix each mixture row, with probability ``prob``, with another row of the same ``pair_key``.

    Args:
        mel: (U, T, F) one row per mixture (natural-log mel).
        frame_labels, clip_label, target_idx: (N, T'), (N,), (N,) per sample.
        groups: (N,) the mixture row of each sample.
        pair_key: (U,) rows mix only with rows of the same key (domain and label kind).
        n_valid: (U,) valid output frames of each row; only the frames valid in both are mixed.
        prob, max_db: mixing probability; the partner's level, uniform in -max_db..0 dB.

    Returns ``(mel, frame_labels, clip_label)``, new tensors; the inputs are not changed.
    Draws nothing when ``prob`` is 0 or there is one row.
    """
    u = mel.shape[0]
    if prob <= 0 or u < 2:
        return mel, frame_labels, clip_label
    draw = torch.rand(u, generator=generator)
    level = -max_db * torch.rand(u, generator=generator)  # dB
    pick = torch.rand(u, generator=generator)
    keys = pair_key.tolist()
    partner = [-1] * u
    for i in range(u):
        others = [j for j in range(u) if j != i and keys[j] == keys[i]]
        if float(draw[i]) < prob and others:
            partner[i] = others[min(int(float(pick[i]) * len(others)), len(others) - 1)]
    new_mel = mel.clone()
    to_log = math.log(10.0) / 10.0
    for i, j in enumerate(partner):
        if j >= 0:
            t = 2 * int(min(n_valid[i], n_valid[j]))  # input frames valid in both
            mixed = torch.logaddexp(mel[i, :t].float(), mel[j, :t].float() + float(level[i]) * to_log)
            new_mel[i, :t] = mixed.to(mel.dtype)
    owner = groups.tolist()
    sample_of = {(g, int(c)): n for n, (g, c) in enumerate(zip(owner, target_idx.tolist(), strict=True))}
    frames, clips = frame_labels.clone(), clip_label.clone()
    for n, (g, c) in enumerate(zip(owner, target_idx.tolist(), strict=True)):
        m = sample_of.get((partner[g], int(c))) if partner[g] >= 0 else None
        if m is not None:
            frames[n] = torch.maximum(frames[n], frame_labels[m])
            clips[n] = torch.maximum(clips[n], clip_label[m])
    return new_mel, frames, clips


def gain_eq(mel: Tensor, gain_db: float, eq_db: float, generator: torch.Generator) -> Tensor:
    """Per row, a gain of ``± gain_db`` and a smooth EQ curve over the mel bins (two cosine
    terms, ``± eq_db`` at its extremes). Mels are natural-log: ``dB / 10 * ln(10)`` is the
    additive offset. (B, T, F); labels unchanged; draws nothing when both are 0."""
    if gain_db <= 0 and eq_db <= 0:
        return mel
    b, _, f = mel.shape
    u = torch.rand(b, 3, generator=generator) * 2 - 1  # (B, 3)
    x = torch.linspace(0, math.pi, f)
    curve = (u[:, :1] * gain_db + u[:, 1:2] * eq_db * torch.cos(x)[None]
             + u[:, 2:3] * eq_db * 0.5 * torch.cos(2 * x)[None])  # (B, F) dB
    return mel + (curve * (math.log(10.0) / 10.0)).to(device=mel.device, dtype=mel.dtype)[:, None, :]


def bin_shift(mel: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each row by ``s ~ U{-max_shift..max_shift}`` mel bins, the edge bin repeated into the
    gap. (B, T, F); labels unchanged; draws nothing when ``max_shift`` is 0."""
    if max_shift <= 0:
        return mel
    b, _, f = mel.shape
    s = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator)  # (B,)
    src = (torch.arange(f)[None, :] - s[:, None]).clamp(0, f - 1).to(mel.device)  # (B, F)
    return mel.gather(2, src[:, None, :].expand_as(mel))


def augment_batch(
    batch: Mapping[str, Any],
    cfg: AugmentConfig,
    generator: torch.Generator,
    frame_keys: Sequence[str] = ("frame_labels",),
    groups: Tensor | None = None,
) -> dict[str, Any]:
    """Augment a training batch; returns a new dict (the input is not modified).

    Keys used: ``mel`` (B, T, F); per-output-frame tensors named in ``frame_keys`` that are
    present (B, T') move with the time shift; ``frame_mask`` (B, T') bool, optional, bounds the
    shift. Every other key passes through unchanged (clip labels, ids, domains...).
    ``groups`` (N,): the frame tensors hold N rows, row ``n`` belonging to ``mel`` row
    ``groups[n]`` (a packed batch: each mixture once, its samples moved with it).
    Mixing (``cfg.mix_prob`` > 0) needs ``groups`` and the keys ``clip_label``,
    ``target_idx`` (per sample) and ``pair_key`` (per mixture row); it mixes ``frame_labels``.
    Order: time shift, mixing, frequency mask, time mask, gain + EQ, mel-bin shift.
    """
    if "mel" not in batch:
        raise KeyError(f"augment_batch: batch has no 'mel' (keys: {sorted(batch)})")
    out = dict(batch)
    mel = batch["mel"]
    keys = [k for k in frame_keys if batch.get(k) is not None]
    if cfg.time_shift_frames > 0:
        mel, moved = time_shift(
            mel, [batch[k] for k in keys], cfg.time_shift_frames, generator, batch.get("frame_mask"), groups
        )
        out.update(zip(keys, moved, strict=True))
    if cfg.mix_prob > 0:
        if groups is None:
            raise ValueError("augment.mix_prob needs batches of whole mixtures (train.group_by_mixture: true): "
                             "a lone sample does not say which classes its mixture holds")
        missing = [k for k in ("clip_label", "target_idx", "pair_key", "frame_mask") if batch.get(k) is None]
        if missing:
            raise KeyError(f"augment_batch: mixing needs {missing}")
        mel, out["frame_labels"], out["clip_label"] = mix_mixtures(
            mel, out["frame_labels"], batch["clip_label"], batch["target_idx"], groups, batch["pair_key"],
            batch["frame_mask"].sum(dim=1), cfg.mix_prob, cfg.mix_max_db, generator)
    mel = freq_mask(mel, cfg.freq_mask_bins, generator)
    mel = time_mask(mel, cfg.time_mask_frames, generator)
    mel = gain_eq(mel, cfg.gain_db, cfg.eq_db, generator)
    mel = bin_shift(mel, cfg.max_bin_shift, generator)
    out["mel"] = mel
    return out
