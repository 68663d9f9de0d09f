"""The conditional network: pretrain (or load PANNs), freeze, embed every reference once.

Default (``encoder.train_on: references``): a Ray Train phase trains the Cnn14-style encoder
as a classifier over the labelled reference pool (single-label, crop/gain augmentation).
``train_on: all`` trains it as a multi-label classifier over every labelled clip of the
training splits: the reference pool, the source-domain events cut at their onsets/offsets and
the weak clips (:mod:`tsd_ray.train.encoder_items`), with augmentation aimed at new recordings.
With ``encoder.panns_checkpoint`` the public PANNs Cnn14 weights are loaded first (and with
``encoder.finetune_trunk: false`` only the embedding head trains). Then
:func:`embed_references` writes the embedding table with Ray Data batch inference, and
:func:`embedding_quality` scores how well it separates the classes (leave-one-out
nearest-centroid accuracy of the reference embeddings).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from tsd_ray.common import storage
from tsd_ray.common.config import Config, config_from_dict
from tsd_ray.common.progress import epoch_line
from tsd_ray.common.ray_env import (
    cluster_gpus,
    ensure_ray,
    map_with_actors,
    quiet_worker_process,
    shuffle_seed,
)
from tsd_ray.data.shards import (
    Manifest,
    open_shard,
    read_mixture_items,
    read_mixture_table,
    read_references,
    reference_ids,
)
from tsd_ray.models import checkpoint as ckpt
from tsd_ray.models.encoder import Cnn14Encoder, freeze, load_panns_cnn14, normalise_embedding
from tsd_ray.train.driver import (
    block_order_seed,
    cached_dataset,
    checkpoint_uri,
    fit_trainer,
)
from tsd_ray.train.encoder_items import (
    augment_items,
    event_items,
    loo_centroid_accuracy,
    reference_items,
    weak_items,
)
from tsd_ray.train.worker import lr_factor, steps_per_epoch


def _augment_refs(mel: torch.Tensor, n_frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random circular shift within the valid part, gain in log domain, light noise floor."""
    B, T, _ = mel.shape
    out = mel.clone()
    for i in range(B):
        n = int(n_frames[i].clamp(min=1, max=T))
        k = int(torch.randint(0, n, (1,), generator=gen))
        out[i, :n] = torch.roll(mel[i, :n], shifts=k, dims=0)
    gain = (torch.rand(B, 1, 1, generator=gen) - 0.5) * 2.0  # +-1 in log-power (~ +-4.3 dB)
    return out + gain.to(out.device)


def encoder_loop_per_worker(config: dict) -> dict:
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    quiet_worker_process()
    cfg = config_from_dict(config["cfg"])
    manifest = config["manifest"]
    classes = manifest["classes"]
    class_index = {c: i for i, c in enumerate(classes)}
    ec = cfg.encoder
    device = get_device()
    torch.manual_seed(cfg.train.seed)
    model = Cnn14Encoder(ec, int(manifest["frontend"]["n_mels"]), len(classes))
    if ec.panns_checkpoint:
        load_panns_cnn14(model, ec.panns_checkpoint)
    if not ec.finetune_trunk:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(("fc_embedding", "fc_classifier"))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=ec.lr)
    start = 0
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            st = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start = int(st["epoch"]) + 1
    model = prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    gen = torch.Generator().manual_seed(cfg.train.seed)
    shard = ray.train.get_dataset_shard("train")
    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()
    multi = ec.train_on == "all"
    floor = math.log(float(manifest["frontend"]["log_offset"]))
    spe = steps_per_epoch(int(config.get("n_train_items") or manifest["references"].get("mixtures", 0)),
                          world, ec.batch_size)
    started = time.monotonic()
    for epoch in range(start, ec.epochs):
        model.train()
        step = 0
        tot = correct = n = 0.0
        batches = shard.iter_batches(batch_size=ec.batch_size, batch_format="numpy", local_shuffle_buffer_size=256,
                                     local_shuffle_seed=shuffle_seed(cfg.train.seed, epoch, rank))
        if multi:
            batches = _with_weak_batches(batches, config, ec, epoch, rank, spe)
        for b in batches:
            mel = torch.as_tensor(b["mel"]).float()
            n_frames = torch.as_tensor(b["n_frames"]).long()
            if multi:  # multi-label items (encoder_data): soft-target cross-entropy
                mel, n_frames, y = augment_items(mel, n_frames, torch.as_tensor(b["labels"]), gen,
                                                 floor=floor, mix_prob=ec.mix_prob)
                mel, y = mel.to(device), y.to(device)
            else:
                y = torch.as_tensor([class_index[str(c)] for c in b["label"]], device=device)
                mel = _augment_refs(mel, n_frames, gen).to(device)
            for group in opt.param_groups:
                group["lr"] = ec.lr * lr_factor(cfg.train.lr_schedule, epoch, step, spe, ec.epochs)
            step += 1
            out = model(mel, n_frames.to(device))
            if multi:
                loss = soft_target_cross_entropy(out.logits, y)
                hit = y.gather(1, out.logits.argmax(1, keepdim=True)).squeeze(1) > 0.5  # top class is a true one
            else:
                loss = F.cross_entropy(out.logits, y)
                hit = out.logits.argmax(1) == y
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(y)
            correct += float(hit.sum())
            n += len(y)
        metrics = {"epoch": epoch, "loss": tot / max(n, 1), "train_acc": correct / max(n, 1)}
        if rank == 0:
            per_epoch = (time.monotonic() - started) / (epoch - start + 1)
            print(epoch_line("encoder", epoch, ec.epochs, per_epoch,
                             f"loss {metrics['loss']:.3f} acc {metrics['train_acc']:.2f}"), flush=True)
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": core.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}, os.path.join(d, "state.pt"))
                payload = ckpt.model_payload(
                    "encoder", ec, core, n_mels=int(manifest["frontend"]["n_mels"]), classes=classes,
                    meta={"metrics": metrics, "frontend": manifest["frontend"]},
                )
                buf = io.BytesIO()
                torch.save(payload, buf)
                with open(os.path.join(d, "model.pt"), "wb") as f:
                    f.write(buf.getvalue())
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
    return {}


def soft_target_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy against the multi-hot ``labels`` spread evenly over their classes.

    For a single-label item this is the usual cross-entropy; an item with k classes asks for
    probability 1/k on each. Softmax (not per-class BCE) makes the classes compete for the
    embedding (on the real dev corpus, seed 0, per-class BCE gave a leave-one-out accuracy of
    0.208 against 0.238: no better, within one seed's noise).
    """
    target = labels.float() / labels.float().sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, K)
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def _with_weak_batches(batches, config: dict, ec, epoch: int, rank: int, spe: int):
    """The item batches with this epoch's weak-clip batches spread evenly among them.

    Every weak batch of the worker's shard is read (a streaming split waits for all workers
    to finish their shards), and a seeded ``encoder.weak_fraction`` of them is trained on;
    the split gives every worker the same number of rows, and the draws are the same on every
    rank, so all ranks take the same number of steps.
    """
    import ray.train

    weak = ray.train.get_dataset_shard("weak") if config.get("n_weak_items") else None
    if weak is None:
        yield from batches
        return
    # the same draws on every rank: each must take the same number of steps (DDP syncs every one)
    rng = np.random.default_rng([int(config["cfg"]["train"]["seed"]), epoch, 17])
    wb = max(1, ec.batch_size // 4)  # whole clips are longer than items: smaller batches
    weak_it = iter(weak.iter_batches(batch_size=wb, batch_format="numpy", local_shuffle_buffer_size=64,
                                     local_shuffle_seed=shuffle_seed(int(config["cfg"]["train"]["seed"]), epoch, rank)))
    n_weak = math.ceil(int(config["n_weak_items"]) / max(1, ray.train.get_context().get_world_size()) / wb)
    due = 0.0
    ratio = n_weak / max(1, spe)  # weak batches read per item batch

    def next_used():
        for b in weak_it:
            if rng.random() < ec.weak_fraction:
                return b
        return None

    for b in batches:
        yield b
        due += ratio
        while due >= 1.0:
            due -= 1.0
            w = next_used()
            if w is not None:
                yield w
    while (w := next_used()) is not None:  # drain: every worker reads its whole shard
        yield w


def encoder_datasets(cfg: Config, manifest: Manifest) -> tuple[dict, dict[str, int]]:
    """The encoder's Ray Datasets (``train``, and ``weak`` with ``train_on: all``) and their sizes.

    ``references``: the reference pool. ``all``: references + source events cut from
    ``source_train`` (``train``, reference-length items) and whole weak clips of
    ``source_train`` and ``target_train`` (``weak``). Validation and test splits are never read.
    """
    # The reference table is stored class by class. Split across workers as stored, each worker
    # would hold the same half of the classes in every epoch: its batches, and so its batch-norm
    # statistics, would be those of its classes, and the checkpoint keeps rank 0's running
    # statistics, which then misnormalise the other half (on the real dev corpus, seed 0, the six
    # classes wholly in the table's second half scored 0.0-0.58 leave-one-out, the seven wholly
    # in the first half 0.67-1.0). A seeded row shuffle gives every worker a mix of the classes.
    refs = read_references(manifest).random_shuffle(seed=shuffle_seed(cfg.train.seed, 0, 0, _REFERENCE_STREAM))
    n_refs = int(manifest.data["references"].get("mixtures", 0))
    if cfg.encoder.train_on == "references":
        return {"train": refs}, {"n_train_items": n_refs}
    fe = manifest.data["frontend"]
    class_index = {c: i for i, c in enumerate(manifest.classes)}
    n_ref_frames = _reference_frames(manifest)
    train = refs.map_batches(partial(reference_items, class_index=class_index), batch_format="numpy")
    sizes = {"n_train_items": n_refs, "n_weak_items": 0}
    if manifest.has_split("source_train"):
        events = read_mixture_items(manifest, ["source_train"], partial(
            event_items, n_frames_out=n_ref_frames, frame_rate=float(fe["sample_rate"]) / float(fe["hop_length"]),
            floor=math.log(float(fe["log_offset"])), class_index=class_index, seed=cfg.train.seed))
        train = train.union(events)
        sizes["n_train_items"] += _count_events(manifest, "source_train")
    weak_splits = [s for s in ("source_train", "target_train") if manifest.has_split(s)]
    datasets = {"train": train}
    if weak_splits:
        datasets["weak"] = read_mixture_items(manifest, weak_splits, partial(weak_items, class_index=class_index),
                                              extra_columns=("has_weak", "weak_labels"))
        sizes["n_weak_items"] = sum(manifest.count(s)[0] for s in weak_splits)
    return datasets, sizes


_REFERENCE_STREAM = 0x5EF  # shuffle_seed stream of the reference pool's row order


def _reference_frames(manifest: Manifest) -> int:
    return int(open_shard(manifest.files("references")[0]).schema_arrow.field("mel").type.shape[0])


def _count_events(manifest: Manifest, split: str) -> int:
    t = read_mixture_table(manifest, split, columns=["event_labels"])
    return int(sum(len(x) for x in t.column("event_labels").to_pylist()))


def training_datasets(cfg: Config, manifest: Manifest) -> tuple[dict, dict[str, int]]:
    """:func:`encoder_datasets` as the encoder's Ray Train run reads them (``train`` split among
    the workers): small sets are read once and kept in the object store (re-reading the
    reference pool every epoch took longer than the epoch's training on 2 cores, demo: 3-4 s
    of 8 s)."""
    datasets, sizes = encoder_datasets(cfg, manifest)
    tc = cfg.train
    names = {"train": "references" if cfg.encoder.train_on == "references" else "items", "weak": "weak"}
    return {
        k: cached_dataset(ds, sizes["n_train_items" if k == "train" else "n_weak_items"], tc.cache_max_samples,
                          shuffle=True,
                          order_seed=block_order_seed(tc.seed, "encoder", names[k]) if tc.reproducible else None)
        for k, ds in datasets.items()
    }, sizes


def pretrain_encoder(cfg: Config, manifest: Manifest, *, storage_path: str, run_name: str) -> str:
    """Train the encoder as a Ray Train run; returns the URI of its model file."""

    ensure_ray()
    datasets, sizes = training_datasets(cfg, manifest)
    tc = cfg.train
    result = fit_trainer(encoder_loop_per_worker, {"cfg": cfg.to_dict(), "manifest": manifest.data, **sizes}, tc,
                         name=f"{run_name}-encoder", storage_path=storage_path, datasets=datasets,
                         split=tuple(datasets))
    return storage.join(checkpoint_uri(result.checkpoint), "model.pt")


class _Embedder:
    """Ray Data actor: frozen encoder on the best device, one batch of references at a time."""

    def __init__(self, encoder_uri: str, class_index: dict):
        quiet_worker_process()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = freeze(ckpt.load_encoder(encoder_uri).to(self.device))
        self.class_index = class_index

    @torch.no_grad()
    def __call__(self, b: dict) -> dict:
        mel = torch.as_tensor(b["mel"], device=self.device).float()
        e = self.model(mel, torch.as_tensor(b["n_frames"], device=self.device)).embedding.float()
        e = normalise_embedding(e)
        return {
            "reference_id": b["reference_id"],
            "label": b["label"],
            "class_idx": np.asarray([self.class_index[str(c)] for c in b["label"]], dtype=np.int64),
            "embedding": e.cpu().numpy().astype(np.float32),
        }


def embed_references(encoder_uri: str, manifest: Manifest, out_uri: str) -> str:
    """Embedding table (reference_id, label, class_idx, embedding) in reference-table order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ensure_ray()
    class_index = {c: i for i, c in enumerate(manifest.classes)}
    ds = map_with_actors(read_references(manifest), _Embedder,
                         kwargs={"encoder_uri": encoder_uri, "class_index": class_index},
                         size=1, batch_size=64, num_gpus=1 if cluster_gpus() > 0 else 0)
    rows = ds.take_all()

    order = {r: i for i, r in enumerate(reference_ids(manifest))}
    rows.sort(key=lambda r: order[str(r["reference_id"])])
    emb = np.stack([r["embedding"] for r in rows]).astype(np.float32)
    table = pa.table(
        {
            "reference_id": [str(r["reference_id"]) for r in rows],
            "label": [str(r["label"]) for r in rows],
            "class_idx": pa.array([int(r["class_idx"]) for r in rows], pa.int64()),
            "embedding": pa.array(list(emb), pa.list_(pa.float32(), emb.shape[1])),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes_atomic(out_uri, buf.getvalue())
    return out_uri


def embedding_quality(embeddings_uri: str) -> dict:
    """Leave-one-out nearest-centroid accuracy of the reference embeddings (overall, per class).

    How well the frozen encoder separates the classes, measured on the references it embeds
    (see :func:`tsd_ray.train.encoder_items.loo_centroid_accuracy`).
    """
    import pyarrow.parquet as pq

    fs, path = storage.resolve(embeddings_uri)
    t = pq.read_table(path, filesystem=fs, columns=["label", "embedding"])
    emb = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    return loo_centroid_accuracy(emb, t.column("label").to_pylist())
