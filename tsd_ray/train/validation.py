"""Validation of a student on a split: the reference table, batched prediction, the split of
the forward passes among the workers, and the epoch's scores.

Used by the training worker (every epoch, :func:`tsd_ray.train.worker.validate`) and by
:mod:`tsd_ray.evaluate.predict` (a trained student over a split). Every worker reads the
whole split but predicts only the rows it owns (:func:`owner_rank`); rank 0 gathers the
predictions and scores them (:func:`validation_scores`).
"""

from __future__ import annotations

import math
import zlib
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from tsd_ray.common import storage
from tsd_ray.metrics.postprocess import PostProcessing
from tsd_ray.metrics.scoring import (
    ScoredSample,
    score_samples,
    scored_samples_from_batch,
    tune_postprocessing,
)


class ReferenceTable:
    """Embedding table (N_ref, E) with per-class index ranges for drawing references."""

    def __init__(self, embeddings: torch.Tensor, ref_class: torch.Tensor, n_classes: int):
        order = torch.argsort(ref_class, stable=True)
        self.embeddings = embeddings  # (N, E) in table order (ref_idx indexes it)
        self.ref_class = ref_class
        self.n_classes = n_classes
        self.sorted_rows = order  # rows grouped by class
        counts = torch.bincount(ref_class, minlength=n_classes)
        self.count = counts
        self.start = torch.cumsum(counts, 0) - counts

    def to(self, device) -> ReferenceTable:
        for k in ("embeddings", "ref_class", "sorted_rows", "count", "start"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def with_embeddings(self, embeddings: torch.Tensor) -> ReferenceTable:
        """The same pool with other embeddings (N, E) of its rows (a fine-tuned encoder's)."""
        return ReferenceTable(embeddings, self.ref_class.to(embeddings.device), self.n_classes)

    def lookup(self, ref_idx: torch.Tensor, target_idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Embeddings (B, E) of :meth:`rows`."""
        return self.embeddings[self.rows(ref_idx, target_idx, gen)]

    def rows(self, ref_idx: torch.Tensor, target_idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Table rows (B,): the fixed reference where ref_idx >= 0, else a random one of the
        target's class (re-drawn every time: a new reference each epoch)."""
        count = self.count[target_idx]
        if bool((count == 0).any()):
            raise ValueError("a target class has no reference embedding; rebuild the embedding table")
        u = torch.rand(target_idx.shape, generator=gen, device="cpu").to(count.device)
        drawn = self.sorted_rows[self.start[target_idx] + (u * count).long().clamp(max=count - 1)]
        return torch.where(ref_idx >= 0, ref_idx, drawn)


def load_reference_table(uri: str, n_classes: int) -> ReferenceTable:
    import pyarrow.parquet as pq

    fs, path = storage.resolve(uri)
    t = pq.read_table(path, filesystem=fs)
    emb = torch.from_numpy(np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32))
    cls = torch.from_numpy(t.column("class_idx").to_numpy().astype(np.int64))  # a writable copy
    return ReferenceTable(emb, cls, n_classes)


def valid_mask(n_valid: torch.Tensor, n_out: int) -> torch.Tensor:
    return torch.arange(n_out, device=n_valid.device)[None, :] < n_valid[:, None]  # (B, T')


@torch.no_grad()
def predict_batches(student: nn.Module, refs: ReferenceTable, batches, device, autocast=nullcontext):
    """Yield (numpy batch, frame probs (B, T')) for evaluation batches with ids."""
    student.eval()
    for b in batches:
        mel = torch.as_tensor(np.asarray(b["mel"]), device=device).float()
        n_valid = torch.as_tensor(np.asarray(b["n_valid"]), device=device)
        mask = valid_mask(n_valid, b["frame_labels"].shape[1])
        emb = refs.lookup(
            torch.as_tensor(np.asarray(b["ref_idx"]), device=device),
            torch.as_tensor(np.asarray(b["target_idx"]), device=device),
            None,
        )
        with autocast():
            out = student(mel, emb, mask)
        yield b, out.frame_probs.float().cpu().numpy()


def scored_samples(pairs) -> list[ScoredSample]:
    """ScoredSamples of (batch, frame probs) pairs from :func:`predict_batches`."""
    return [sample for b, probs in pairs for sample in scored_samples_from_batch(b, probs)]


def owner_rank(sample_id: str, world: int) -> int:
    """The worker that validates a sample: a stable hash of its id, so every sample has exactly
    one owner whatever order the rows arrive in on each worker."""
    return zlib.crc32(sample_id.encode()) % world


def own_rows(batches, rank: int, world: int):
    """The rows of each numpy batch that ``rank`` of ``world`` validates (all with one worker)."""
    for b in batches:
        if world == 1:
            yield b
            continue
        keep = np.nonzero([owner_rank(str(s), world) == rank for s in b["sample_id"]])[0]
        if len(keep):
            yield {k: np.asarray(v)[keep] for k, v in b.items()}


_OBJECT_GROUP: list = []


def _object_group():
    """A gloo process group for Python objects: the default group when it is gloo; under NCCL
    a gloo twin, so the gathered predictions never have to pass through a GPU."""
    import torch.distributed as dist

    if not _OBJECT_GROUP:
        _OBJECT_GROUP.append(None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo"))
    return _OBJECT_GROUP[0]


def gather_samples(samples: list, rank: int, world: int) -> list | None:
    """Every worker's scored samples on rank 0 (None elsewhere); the list itself with one worker."""
    if world == 1:
        return samples
    import torch.distributed as dist

    parts = [None] * world if rank == 0 else None
    dist.gather_object(samples, parts, dst=0, group=_object_group())
    return [x for part in parts for x in part] if rank == 0 else None


def validation_scores(samples: list, classes: list[str], frame_hop_s: float, ev) -> dict[str, float]:
    """An epoch's validation scores from its predictions (``ev``: the ``eval`` config).

    ``ev.selection`` "fixed": scored at ``ev.threshold`` / ``ev.median_frames``; "tuned": the
    best of the grid ``selection_thresholds`` x ``selection_median_windows`` by
    ``selection_metric`` (the predictions are made once and post-processed at each point).
    ``val_score`` is what selects the best epoch, stops a phase early and chooses students.
    """

    kw = {"classes": classes, "frame_hop_s": frame_hop_s, "segment_s": ev.segment_s,
          "t_collar_s": ev.t_collar_s, "percentage_of_length": ev.percentage_of_length}
    extra = {}
    if ev.selection == "tuned":
        pp, table = tune_postprocessing(samples, thresholds=ev.selection_thresholds,
                                        median_windows=ev.selection_median_windows, metric=ev.selection_metric, **kw)
        event_f, segment_f = _nz(table["best"]["event_f"]), _nz(table["best"]["segment_f"])
        extra = {"val_threshold": pp.threshold, "val_median_frames": pp.median_frames}
    else:
        scores = score_samples(samples, fixed_postprocessing(ev), **kw)
        event_f, segment_f = _nz(scores.event_f), _nz(scores.segment_f)
    return {
        "val_event_f": event_f,
        "val_segment_f": segment_f,
        "val_score": event_f if ev.selection_metric == "event_f" else segment_f,
        "val_samples": len(samples),
        **extra,
    }


def fixed_postprocessing(ev) -> PostProcessing:
    """The ``eval`` section's fixed post-processing (before any is tuned on validation)."""
    return PostProcessing(threshold=ev.threshold, median_frames=ev.median_frames,
                          fill_gap_frames=ev.fill_gap_frames, min_event_frames=ev.min_event_frames)


def broadcast_scores(result: dict | None) -> dict:
    import torch.distributed as dist

    box = [result]
    dist.broadcast_object_list(box, src=0, group=_object_group())
    return box[0]


def _nz(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else float(x)
