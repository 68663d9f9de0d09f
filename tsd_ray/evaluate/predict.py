"""Batch inference of a student over a split with Ray Data, and scoring with sed_eval."""

from __future__ import annotations

import numpy as np
import torch

from tsd_ray.common.config import EvalConfig
from tsd_ray.common.ray_env import cluster_gpus, ensure_ray, map_with_actors, quiet_worker_process
from tsd_ray.data.shards import Manifest, read_samples
from tsd_ray.metrics.intersection import INTERSECTION_F, PSDS1, intersection_scores
from tsd_ray.metrics.scoring import score_samples, scored_samples_from_batch, tune_postprocessing
from tsd_ray.models import checkpoint as ckpt
from tsd_ray.train.encoder import embed_references, embedding_quality
from tsd_ray.train.validation import load_reference_table, predict_batches


class _Predictor:
    """Ray Data actor: a frozen student + reference table on the best device."""

    def __init__(self, model_uri: str, embeddings_uri: str, n_classes: int):
        quiet_worker_process()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = ckpt.load_student(model_uri).to(self.device).eval()
        self.refs = load_reference_table(embeddings_uri, n_classes).to(self.device)

    def __call__(self, b: dict) -> dict:
        (_, probs), = list(predict_batches(self.model, self.refs, [b], self.device))
        keep = ("sample_id", "target", "n_valid", "event_onsets", "event_offsets")
        out = {k: b[k] for k in keep}
        out["probs"] = probs.astype(np.float32)
        return out


def predict_split(model_uri: str, manifest: Manifest, embeddings_uri: str, split: str, *, batch_size: int = 64):
    """ScoredSamples of ``split`` for a student model file (Ray Data actor pool, GPU if any)."""

    ensure_ray()
    ds = map_with_actors(read_samples(manifest, split, with_ids=True), _Predictor,
                         kwargs={"model_uri": model_uri, "embeddings_uri": embeddings_uri,
                                 "n_classes": len(manifest.classes)},
                         size=1, batch_size=batch_size, num_gpus=1 if cluster_gpus() > 0 else 0)
    samples = [sample for b in ds.iter_batches(batch_size=256, batch_format="numpy")
               for sample in scored_samples_from_batch(b, [np.asarray(p, dtype=np.float32) for p in b["probs"]])]
    samples.sort(key=lambda s: s.sample_id)
    return samples


def score_kwargs(ev: EvalConfig, hop_s: float) -> dict:
    return {
        "frame_hop_s": hop_s,
        "segment_s": ev.segment_s,
        "t_collar_s": ev.t_collar_s,
        "percentage_of_length": ev.percentage_of_length,
    }


def evaluate_model(model_uri: str, manifest: Manifest, embeddings_uri: str, ev: EvalConfig, *, split: str = "target_test", val_split: str = "target_val") -> dict:
    """Tune threshold + median window on ``val_split`` only, then score ``split``.

    Returns the sed_eval scores ({"segment_f", "event_f", ..._micro, "postprocessing",
    "per_class", "settings"}) and the intersection-based ones the DCASE task-4 baseline reports:
    "psds1" (0-1, on the scores after the tuned median filter: the threshold is what it
    sweeps) and "intersection_f" (%, dtc = gtc = 0.5, at the tuned post-processing); each
    class's entry in "per_class" gets its "psds1" and "intersection_f" too.

    A student trained with joint fine-tuning carries its encoder: the reference pool is then
    embedded by it (``<model_uri>.embeddings.parquet``, in place of ``embeddings_uri``) and
    "encoder_loo" records that table's leave-one-out nearest-centroid accuracy.
    """
    own_encoder = ckpt.own_encoder(ckpt.load_payload(model_uri)) is not None
    if own_encoder:
        embeddings_uri = embed_references(model_uri, manifest, f"{model_uri}.embeddings.parquet")
    classes = manifest.target_classes if split.startswith("target") else manifest.source_classes
    kw = score_kwargs(ev, manifest.output_hop_s)
    val = predict_split(model_uri, manifest, embeddings_uri, val_split)
    pp, grid = tune_postprocessing(
        val, classes=classes, thresholds=list(ev.thresholds), median_windows=list(ev.median_windows),
        fill_gaps=list(ev.fill_gaps), min_event_lengths=list(ev.min_event_lengths), metric=ev.selection_metric, **kw,
    )
    test = predict_split(model_uri, manifest, embeddings_uri, split)
    scores = score_samples(test, pp, classes=classes, **kw)
    psds1, inter = intersection_scores(test, classes=classes, frame_hop_s=manifest.output_hop_s,
                                       threshold=pp.threshold, median_frames=pp.median_frames,
                                       fill_gap_frames=pp.fill_gap_frames, min_event_frames=pp.min_event_frames)
    per_class = {c: {**v, "psds1": psds1.per_class[c]["psds"], "intersection_f": inter["per_class"][c]["f"]}
                 for c, v in scores.per_class.items()}
    extra = {"encoder_loo": embedding_quality(embeddings_uri)["accuracy"]} if own_encoder else {}
    return {
        **extra,
        "split": split,
        "segment_f": float(scores.segment_f),
        "event_f": float(scores.event_f),
        "segment_f_micro": float(scores.segment_f_micro),
        "event_f_micro": float(scores.event_f_micro),
        "postprocessing": pp.to_dict(),
        "psds1": psds1.value,
        "intersection_f": inter["f"],
        "per_class": per_class,
        "n_samples": scores.n_samples,
        "settings": {"segment_s": ev.segment_s, "t_collar_s": ev.t_collar_s, "percentage_of_length": ev.percentage_of_length,
                     "psds1": dict(PSDS1), "intersection_f": dict(INTERSECTION_F)},
    }
