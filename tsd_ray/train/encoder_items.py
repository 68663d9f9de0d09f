"""What the reference encoder learns from: every labelled clip of the training splits.

A reference pool alone (a few hundred clips) is far too little on real sound: an encoder
trained on it barely separates real classes. So with ``encoder.train_on`` = ``all`` (the
default) the encoder also learns from the training mixtures' features, never from validation
or test audio:

- **reference clips** (``references``), each with its class;
- **source-domain events** (``source_train``, strong labels) cut at their onsets/offsets from
  the mixture's log-mel: an event longer than the reference length is cut to a random window
  of it (a new one every epoch), a shorter one is placed at the start of a reference-length
  item and padded with the front end's log floor (as reference clips are). Other classes
  whose events cover at least half of the cut join its labels (multi-label);
- **weak clips** (``target_train`` with clip labels, and ``source_train`` mixtures with the
  set of their event labels): the whole mixture with its clip labels (multi-label), a second
  stream of batches because its length differs.

Every item carries a multi-hot label vector over all classes of the build; the encoder trains
with a softmax cross-entropy against the labels spread evenly over their classes
(:func:`tsd_ray.train.encoder.soft_target_cross_entropy`). Pure numpy / torch functions: Ray
Data maps them (see :mod:`tsd_ray.train.encoder`), tests call them directly.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from tsd_ray.train.augment import bin_shift, gain_eq

#: A class joins a cut event's labels when its events cover at least this share of the cut.
OVERLAP_SHARE = 0.5


def multi_hot(labels: Sequence[str], class_index: Mapping[str, int]) -> np.ndarray:
    """(K,) float32 vector with 1 at every class of ``labels`` (unknown labels are an error)."""
    y = np.zeros(len(class_index), dtype=np.float32)
    for lab in labels:
        if lab not in class_index:
            raise KeyError(f"label {lab!r} is not a class of this build ({len(class_index)} classes)")
        y[class_index[lab]] = 1.0
    return y


def cut_events(
    mel: np.ndarray,
    onsets: Sequence[float],
    offsets: Sequence[float],
    labels: Sequence[str],
    *,
    n_frames_out: int,
    frame_rate: float,
    floor: float,
    class_index: Mapping[str, int],
    rng: np.random.Generator,
    n_valid: int | None = None,
) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """Each strong event of one mixture as an encoder item ``(mel (n_frames_out, F), n_frames, labels (K,))``.

    Args:
        mel: (T, F) log-mel of the mixture.
        onsets, offsets: event times in seconds; ``labels``: their classes.
        n_frames_out: frames of an item (the reference length).
        frame_rate: input frames per second (sample_rate / hop_length).
        floor: value of padded frames (``log(frontend.log_offset)``, what silence gives).
        n_valid: frames of ``mel`` holding signal (default all).
    """
    T = mel.shape[0] if n_valid is None else min(mel.shape[0], int(n_valid))
    onsets = np.asarray(onsets, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.float64)
    labels = np.asarray(labels, dtype=object)
    items = []
    for on, off, lab in zip(onsets, offsets, labels):
        a = max(0, int(math.floor(on * frame_rate)))
        b = min(T, int(math.ceil(off * frame_rate)))
        if b - a < 1:
            continue  # the event lies in the cropped tail of the clip
        if b - a > n_frames_out:  # a random window of a long event
            a = a + int(rng.integers(0, b - a - n_frames_out + 1))
            b = a + n_frames_out
        cut_s = (a / frame_rate, b / frame_rate)
        span = cut_s[1] - cut_s[0]
        names = {str(lab)}
        for o_on, o_off, o_lab in zip(onsets, offsets, labels):
            cover = min(o_off, cut_s[1]) - max(o_on, cut_s[0])
            if cover >= OVERLAP_SHARE * span:
                names.add(str(o_lab))
        out = np.full((n_frames_out, mel.shape[1]), floor, dtype=np.float32)
        out[: b - a] = mel[a:b]
        items.append((out, b - a, multi_hot(sorted(names), class_index)))
    return items


def event_items(batch: Mapping[str, np.ndarray], *, n_frames_out: int, frame_rate: float, floor: float,
                class_index: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
    """Mixture rows with strong labels -> one encoder item per event (a Ray Data ``map_batches``)."""
    mels, ns, ys = [], [], []
    for i in range(len(batch["mixture_id"])):
        if not bool(batch["has_strong"][i]):
            continue
        rng = np.random.default_rng([seed, zlib.crc32(str(batch["mixture_id"][i]).encode())])
        for m, n, y in cut_events(np.asarray(batch["mel"][i], dtype=np.float32), batch["event_onsets"][i],
                                  batch["event_offsets"][i], batch["event_labels"][i], n_frames_out=n_frames_out,
                                  frame_rate=frame_rate, floor=floor, class_index=class_index, rng=rng,
                                  n_valid=int(batch["n_frames"][i])):
            mels.append(m.astype(np.float16))
            ns.append(n)
            ys.append(y)
    return _items(mels, ns, ys, n_frames_out, batch["mel"].shape[-1] if len(batch["mel"]) else 0, len(class_index))


def weak_items(batch: Mapping[str, np.ndarray], *, class_index: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Mixture rows -> whole-clip items labelled with their clip labels (weak, or the strong events' set)."""
    mels, ns, ys = [], [], []
    for i in range(len(batch["mixture_id"])):
        if bool(batch["has_weak"][i]):
            names = list(batch["weak_labels"][i])
        elif bool(batch["has_strong"][i]):
            names = sorted({str(x) for x in batch["event_labels"][i]})
        else:
            continue
        if not names:
            continue  # a clip with no labelled sound says nothing about a class
        mels.append(np.asarray(batch["mel"][i], dtype=np.float16))
        ns.append(int(batch["n_frames"][i]))
        ys.append(multi_hot([str(x) for x in names], class_index))
    T, F = batch["mel"].shape[1:] if len(batch["mel"]) else (0, 0)
    return _items(mels, ns, ys, T, F, len(class_index))


def reference_items(batch: Mapping[str, np.ndarray], *, class_index: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Reference rows -> encoder items (one class each)."""
    return {
        "mel": np.asarray(batch["mel"]),
        "n_frames": np.asarray(batch["n_frames"], dtype=np.int64),
        "labels": np.stack([multi_hot([str(c)], class_index) for c in batch["label"]]).astype(np.float32)
        if len(batch["label"]) else np.zeros((0, len(class_index)), dtype=np.float32),
    }


def _items(mels, ns, ys, T: int, F: int, K: int) -> dict[str, np.ndarray]:
    if not mels:
        return {"mel": np.zeros((0, T, F), dtype=np.float16), "n_frames": np.zeros((0,), dtype=np.int64),
                "labels": np.zeros((0, K), dtype=np.float32)}
    return {"mel": np.stack(mels), "n_frames": np.asarray(ns, dtype=np.int64), "labels": np.stack(ys)}


# --------------------------------------------------------------------------------------------
# Augmentation (torch, on a batch): robustness to new recordings of a class
# --------------------------------------------------------------------------------------------


def augment_items(mel: torch.Tensor, n_frames: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, *,
                  floor: float, mix_prob: float = 0.5, gain_db: float = 6.0, eq_db: float = 6.0,
                  max_bin_shift: int = 2, stretch: float = 0.15, freq_masks: int = 2, freq_mask_bins: int = 8,
                  time_masks: int = 2, time_mask_share: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a batch of log-mel items; returns ``(mel (B, T, F), n_frames (B,), labels (B, K))``.

    In this order: a time stretch (``1 ± stretch``, resampling frames) and a random circular
    shift of each item's valid part; a gain (± ``gain_db``) and a smooth random EQ curve over
    the mel bins (± ``eq_db`` at its extremes); a shift of ± ``max_bin_shift`` mel bins (a pitch
    change of about a semitone per bin in the mid range); mixing with another item of the batch
    (probability ``mix_prob``, the other at -12..0 dB in power, labels = the union, as a sound
    heard over another recording's background); SpecAugment masks (set to ``floor``).
    Natural-log mels: ``dB / 10 * ln(10)`` converts a dB change to an additive offset.
    """
    B, T, F = mel.shape
    out = mel.float().clone()
    y = labels.float().clone()
    n_out = n_frames.clone().long().clamp(1, T)
    db = math.log(10.0) / 10.0
    for i in range(B):
        n = int(n_frames[i].clamp(min=1, max=T))
        seg = out[i, :n]
        if stretch > 0 and n > 4:
            factor = 1.0 + (float(torch.rand(1, generator=gen)) * 2 - 1) * stretch
            m = max(2, min(T, int(round(n * factor))))
            seg = torch.nn.functional.interpolate(seg.T[None], size=m, mode="linear", align_corners=False)[0].T
            n = m
        k = int(torch.randint(0, n, (1,), generator=gen))
        row = torch.full((T, F), floor)
        row[:n] = torch.roll(seg, shifts=k, dims=0)
        out[i] = row
        n_out[i] = n
    out = bin_shift(gain_eq(out, gain_db, eq_db, gen), max_bin_shift, gen)
    if mix_prob > 0 and B > 1:
        partner = torch.randperm(B, generator=gen)
        mix = torch.rand(B, generator=gen) < mix_prob
        level = -12.0 * torch.rand(B, generator=gen)  # dB of the partner
        for i in torch.nonzero(mix).flatten().tolist():
            j = int(partner[i])
            if j == i:
                continue
            other = mel[j].float()
            out[i] = torch.logaddexp(out[i], other + float(level[i]) * db)
            y[i] = torch.maximum(y[i], labels[j].float())
            n_out[i] = max(int(n_out[i]), int(n_frames[j].clamp(1, T)))
    for _ in range(freq_masks):
        w = torch.randint(0, freq_mask_bins + 1, (B,), generator=gen)
        s = (torch.rand(B, generator=gen) * (F - w).clamp(min=1)).long()
        idx = torch.arange(F)[None]
        hit = (idx >= s[:, None]) & (idx < (s + w)[:, None])  # (B, F)
        out = torch.where(hit[:, None, :], torch.full_like(out, floor), out)
    for _ in range(time_masks):
        w = (torch.rand(B, generator=gen) * time_mask_share * T).long()
        s = (torch.rand(B, generator=gen) * (T - w).clamp(min=1)).long()
        idx = torch.arange(T)[None]
        hit = (idx >= s[:, None]) & (idx < (s + w)[:, None])  # (B, T)
        out = torch.where(hit[:, :, None], torch.full_like(out, floor), out)
    return out, n_out, y


# --------------------------------------------------------------------------------------------
# How well the embeddings separate the classes
# --------------------------------------------------------------------------------------------


def loo_centroid_accuracy(embeddings: np.ndarray, labels: Sequence[str]) -> dict:
    """Leave-one-out nearest-centroid accuracy of reference embeddings (cosine similarity).

    Each reference is assigned to the class whose centroid (mean of that class's *other*
    unit-normalised embeddings) is most similar. Classes with a single reference cannot be
    scored (their own centroid would be empty): they are listed under ``unscored`` and left out
    of ``accuracy``. Returns ``{"accuracy", "per_class": {class: accuracy}, "n", "unscored"}``.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    labels = np.asarray([str(x) for x in labels], dtype=object)
    classes = sorted(set(labels))
    idx = np.array([classes.index(c) for c in labels])
    sums = np.stack([e[idx == k].sum(axis=0) for k in range(len(classes))])  # (K, E)
    counts = np.bincount(idx, minlength=len(classes)).astype(np.float64)
    correct: dict[str, list[bool]] = {c: [] for c in classes}
    for i in range(len(e)):
        k = idx[i]
        if counts[k] < 2:
            continue
        cent = sums.copy()
        cnt = counts.copy()
        cent[k] -= e[i]
        cnt[k] -= 1
        cent = cent / cnt[:, None]
        cent = cent / np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        correct[classes[k]].append(int(np.argmax(cent @ e[i])) == k)
    per_class = {c: (float(np.mean(v)) if v else None) for c, v in correct.items()}
    scored = [x for v in correct.values() for x in v]
    return {
        "accuracy": float(np.mean(scored)) if scored else None,
        "per_class": per_class,
        "n": len(scored),
        "unscored": [c for c, v in correct.items() if not v],
    }
