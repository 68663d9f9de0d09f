"""The one training function every phase runs in (Ray Train workers, Tune trials too).

``train_loop_per_worker(config)`` is assembled from small helpers: :func:`setup` (models,
teachers, optimisers, resume), :func:`train_epoch` (one pass over the streamed shard),
:func:`validate` (scores on the validation split, :mod:`tsd_ray.train.validation`) and :func:`report_epoch` (metrics +
checkpoint). ``config`` is a JSON-safe dict built by :func:`tsd_ray.train.driver.loop_config`.

Checkpoints: every epoch reports a directory with ``state.pt`` (everything needed to resume:
student, discriminator, projector, optimisers, epoch, best score, patience counter) and
``model.pt`` (the best-by-validation student so far, self-describing). Ray keeps the latest
one; ``model.pt`` inside it is what the next phase starts from.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from tsd_ray.common import storage
from tsd_ray.common.config import Config, config_from_dict
from tsd_ray.common.progress import epoch_line, say
from tsd_ray.common.ray_env import quiet_worker_process, shuffle_seed
from tsd_ray.data.shards import Manifest, packed_collate_fn, reference_mels
from tsd_ray.models import checkpoint as ckpt
from tsd_ray.models.detector import Detector
from tsd_ray.models.discriminator import Discriminator
from tsd_ray.models.encoder import freeze
from tsd_ray.train import augment, joint, losses
from tsd_ray.train.losses import KDProjector, domain_logits
from tsd_ray.train.phase import PhaseSpec
from tsd_ray.train.validation import (
    ReferenceTable,
    broadcast_scores,
    gather_samples,
    load_reference_table,
    own_rows,
    predict_batches,
    scored_samples,
    valid_mask,
    validation_scores,
)

# --------------------------------------------------------------------------------------------
# Models of one phase
# --------------------------------------------------------------------------------------------


class PhaseModel(nn.Module):
    """Student plus what trains with it (discriminator, KD projections, the jointly fine-tuned
    encoder): one DDP module."""

    def __init__(self, student: nn.Module, discriminator: nn.Module | None, projector: nn.Module | None,
                 references: joint.LiveReferences | None = None):
        super().__init__()
        self.student = student
        self.discriminator = discriminator
        self.projector = projector
        self.references = references

    def forward(
        self, mel, embedding, frame_mask, *, groups=None, lambda_d: float = 0.0, teacher_gru=None, main=None,
        domain_mask=None, ref_rows=None,
    ):
        """Student outputs, domain logits through gradient reversal (or None), KD loss (or None).

        Everything trainable runs inside this one forward so DDP's reducer sees every
        parameter's gradient in the same step. With ``groups`` (packed mixtures, see
        :meth:`Detector.forward`) the domain logits are per ``mel`` row: one per mixture.
        ``domain_mask`` (U, T'): the valid frames of each ``mel`` row, so the discriminator
        ignores padding; default ``frame_mask`` when samples are not packed (then U == B).
        With joint fine-tuning (``references`` set) ``embedding`` is None and the encoder
        embeds the reference-pool rows ``ref_rows`` (B,) here, inside the DDP forward.
        """

        if self.references is not None:
            embedding = self.references(ref_rows)
        out = self.student(mel, embedding, frame_mask, groups)
        domain_logit = None
        if self.discriminator is not None:
            if domain_mask is None and groups is None:
                domain_mask = frame_mask
            domain_logit = domain_logits(out.z, self.discriminator, lambda_d, domain_mask)  # (U,)
        kd = None
        if self.projector is not None and teacher_gru is not None:
            kd = self.projector(teacher_gru, out.gru[main], frame_mask[main])
        return out, domain_logit, kd


@dataclass
class Context:
    cfg: Config
    phase: PhaseSpec
    manifest: dict
    sources: dict  # {"features": URI, "embeddings": URI}: where the data of this phase lives
    device: torch.device
    model: nn.Module  # PhaseModel, possibly DDP-wrapped
    core: PhaseModel  # unwrapped
    optimizer: torch.optim.Optimizer
    refs: ReferenceTable
    kd_teacher: nn.Module | None
    pseudo_teacher: nn.Module | None
    gen: torch.Generator
    # joint fine-tuning (tsd_ray/train/joint.py): the trained encoder, the payload it started
    # from (config, classes: what its model-file entry keeps), and the teachers' own tables
    live: joint.LiveReferences | None = None
    encoder_base: dict | None = None
    teacher_tables: dict = field(default_factory=dict)  # "kd" / "pseudo" -> (N, E), or absent
    best_encoder: dict | None = None
    start_epoch: int = 0
    best_score: float = -math.inf
    best_state: dict | None = None
    best_metrics: dict = field(default_factory=dict)
    bad_epochs: int = 0
    history: list = field(default_factory=list)


def _autocast(ctx: Context):
    if ctx.device.type == "cuda" and ctx.cfg.train.mixed_precision:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _load_teacher(uri: str | None, kind: str, device, pool) -> tuple[nn.Module | None, torch.Tensor | None]:
    """A frozen teacher and its own reference table (None: it reads the run's table).
    ``pool()``: the reference pool's log-mels, read when a teacher carries an encoder."""
    if not uri:
        return None, None
    payload = ckpt.load_payload(uri)
    model = ckpt.build_student(payload, kind).to(device)
    table = None
    if ckpt.own_encoder(payload):
        mels, n_valid = pool()
        table = joint.teacher_embeddings(payload, mels, device, n_valid)
    return freeze(model), table  # eval mode + no grad: dropout off, BN statistics fixed


class _Pool:
    """The reference pool's log-mels (N, T_ref, F) and valid frames (N,), read once on first use."""

    def __init__(self, features_uri: str, manifest: dict):
        self.manifest, self.pool = Manifest(features_uri, manifest), None

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool is None:
            _, mels, n_frames = reference_mels(self.manifest)
            self.pool = torch.from_numpy(mels), torch.from_numpy(n_frames)
        return self.pool


def setup(config: dict) -> Context:
    """Models, teachers, optimiser and reference table for this worker; resume if possible."""
    import ray.train
    from ray.train.torch import get_device, prepare_model

    cfg = config_from_dict(config["cfg"])
    phase = PhaseSpec(**config["phase"])
    manifest = config["manifest"]
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.train.seed + 7919 * rank)
    device = get_device()
    n_mels = int(manifest["frontend"]["n_mels"])

    student = Detector(cfg.detector, n_mels, ckpt.STUDENT_POOLING[phase.student])
    if phase.init:
        payload = ckpt.load_payload(phase.init)
        student.load_state_dict(payload["state_dict"])
    discriminator = None
    if phase.adversarial:
        discriminator = Discriminator(cfg.discriminator, student.out_channels)
    projector = None
    if phase.kd_teacher:
        projector = KDProjector(student.gru_dim, student.gru_dim, cfg.detector.projection_dim)
    pool = _Pool(config.get("features"), manifest)
    live = encoder_base = None
    if cfg.encoder.joint != "off":
        enc = joint.encoder_payload(payload if phase.init else None, config.get("encoder"), phase.name)
        encoder_base = {k: v for k, v in enc.items() if k != "state_dict"}
        mels, n_valid = pool()
        live = joint.LiveReferences(ckpt.build_encoder(enc), mels, cfg.encoder.joint, n_valid)
    core = PhaseModel(student, discriminator, projector, live)
    groups = [{"params": student.parameters(), "lr": phase.lr}]
    if discriminator is not None:
        groups.append({"params": discriminator.parameters(), "lr": phase.lr})
    if projector is not None:
        groups.append({"params": projector.parameters(), "lr": phase.lr})
    if live is not None:  # lr_scale: train_epoch's schedule keeps the ratio
        scale = cfg.encoder.joint_lr_scale
        groups.append({"params": live.trainable(), "lr": phase.lr * scale, "lr_scale": scale})
    optimizer = torch.optim.Adam(groups, lr=phase.lr, weight_decay=cfg.train.weight_decay)
    kd_teacher, kd_table = _load_teacher(phase.kd_teacher, "f", device, pool)
    pseudo_teacher, pseudo_table = _load_teacher(phase.pseudo_teacher, "w", device, pool)

    ctx = Context(
        cfg=cfg,
        phase=phase,
        manifest=manifest,
        sources={"features": config.get("features"), "embeddings": config["embeddings"]},
        device=device,
        model=core,
        core=core,
        optimizer=optimizer,
        refs=load_reference_table(config["embeddings"], len(manifest["classes"])).to(device),
        kd_teacher=kd_teacher,
        pseudo_teacher=pseudo_teacher,
        gen=torch.Generator().manual_seed(cfg.train.seed * 1009 + rank),
        live=live,
        encoder_base=encoder_base,
        teacher_tables={k: v for k, v in (("kd", kd_table), ("pseudo", pseudo_table)) if v is not None},
    )
    if live is not None:  # the starting encoder is the best so far until an epoch beats it
        ctx.best_encoder = {k: v.detach().cpu().clone() for k, v in live.encoder.state_dict().items()}
    resume_from = ray.train.get_checkpoint()
    if resume_from is not None:
        with resume_from.as_directory() as d:
            _restore(ctx, os.path.join(d, "state.pt"), f"{resume_from.path.rstrip('/')}/state.pt")
    ctx.core.to(device)
    for state in optimizer.state.values():  # optimiser tensors follow the model's device
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)
    ctx.model = prepare_model(core, move_to_device=True, parallel_strategy_kwargs={"find_unused_parameters": False})
    return ctx


def _restore(ctx: Context, path: str, name: str | None = None) -> None:
    """Resume state from a local ``state.pt``; ``name``: where it lives in storage (for errors)."""
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        where = name or path
        raise ckpt.CheckpointError(
            f"{where}: cannot resume phase {ctx.phase.name} from this checkpoint "
            f"({type(exc).__name__}: {exc}); it is corrupt. Nothing was overwritten: delete the "
            "phase's run folder (the parent of this checkpoint folder) to train the phase again "
            "from its start"
        ) from exc
    ctx.core.load_state_dict(st["model"])
    ctx.optimizer.load_state_dict(st["optimizer"])
    ctx.start_epoch = int(st["epoch"]) + 1
    ctx.best_score = float(st["best_score"])
    ctx.best_state = st["best_state"]
    ctx.best_metrics = dict(st["best_metrics"])
    ctx.bad_epochs = int(st["bad_epochs"])
    ctx.history = list(st["history"])
    ctx.gen.set_state(st["gen"])
    if st.get("best_encoder") is not None:
        ctx.best_encoder = st["best_encoder"]
    say(f"{ctx.phase.name}: resumed after epoch {ctx.start_epoch}")


# --------------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------------


def compute_losses(ctx: Context, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one batch and its parts (floats, for logging).

    Rows with ``is_main`` are the phase's task rows; the others (other domain) feed the
    discriminator and, with ``phase.replay``, their own strong-label frame loss (eq. 2). The
    discriminator sees every row through gradient reversal, so it learns to tell the domains
    apart while the feature extractor learns to confuse it (eq. 9).
    """

    phase = ctx.phase
    mel = batch["mel"].float()  # (U, T, F): one row per mixture when packed, else per sample
    n_out = batch["frame_labels"].shape[1]
    if "mix" in batch:  # packed: samples (B) index their mixture's row of mel
        groups, mix_mask, mix_domain = batch["mix"], valid_mask(batch["mix_n_valid"], n_out), batch["mix_domain"]
    else:
        groups, mix_mask, mix_domain = None, valid_mask(batch["n_valid"], n_out), batch["domain"]
    mask = mix_mask if groups is None else mix_mask[groups]  # (B, T')
    parts_in = {"mel": mel, "frame_labels": batch["frame_labels"], "frame_mask": mix_mask}
    if ctx.cfg.augment.mix_prob > 0 and groups is not None:
        # mixtures mix within their domain and kind of labels: strong with strong, weak with weak
        kind = torch.zeros(mel.shape[0], dtype=torch.long, device=mel.device)
        kind[groups] = batch["has_strong"].long()
        parts_in.update(clip_label=batch["clip_label"], target_idx=batch["target_idx"],
                        pair_key=mix_domain.long() * 2 + kind)
    aug = augment.augment_batch(parts_in, ctx.cfg.augment, ctx.gen, groups=groups)
    mel, labels = aug["mel"], aug["frame_labels"]
    clip_label = aug.get("clip_label", batch["clip_label"])
    rows = ctx.refs.rows(batch["ref_idx"], batch["target_idx"], ctx.gen)  # (B,) reference-pool rows
    emb = None if ctx.live is not None else ctx.refs.embeddings[rows]  # (B, E); joint: in the forward
    main = batch["is_main"].bool()
    m = main
    parts: dict[str, torch.Tensor] = {}

    def teacher(net, role):  # a frozen teacher on the main rows (their mixtures only), own table
        e = ctx.teacher_tables.get(role, ctx.refs.embeddings)[rows[m]]
        if groups is None:
            return net(mel[m], e, mask[m])
        mix_rows, inverse = torch.unique(groups[m], return_inverse=True)
        return net(mel[mix_rows], e, mask[m], inverse)

    with _autocast(ctx):
        teacher_gru = None
        if ctx.kd_teacher is not None and bool(m.any()):
            with torch.no_grad():
                teacher_gru = teacher(ctx.kd_teacher, "kd").gru
        out, domain_logit, kd = ctx.model(
            mel, emb, mask, groups=groups, lambda_d=phase.lambda_d, teacher_gru=teacher_gru, main=m,
            domain_mask=mix_mask, ref_rows=rows,
        )
        if bool(m.any()):
            if phase.loss == "frame":
                strong = m & batch["has_strong"].bool()
                if not bool(strong.any()):
                    raise ValueError(f"phase {phase.name}: frame loss on rows without strong labels")
                parts["frame"] = losses.frame_bce(out.frame_logits[strong], labels[strong], mask[strong])
            elif phase.loss == "clip":
                if ctx.core.student.clip_pooling == "linsoft":  # the w student (eq. 3)
                    # LinSoft BCE from the frame logits in the log domain: no clamp, so a
                    # saturated clip keeps its gradient
                    parts["clip"] = losses.clip_bce_from_logits(
                        out.frame_logits[m], clip_label[m], mask[m]
                    )
                else:  # an f student's clip_prob is the max over frames
                    parts["clip"] = losses.clip_bce(out.clip_prob[m], clip_label[m])
            elif phase.loss == "pseudo":
                with torch.no_grad():
                    t = teacher(ctx.pseudo_teacher, "pseudo")
                targets = losses.pseudo_labels(t.frame_probs, clip_label[m])
                parts["pseudo"] = losses.frame_bce(out.frame_logits[m], targets, mask[m])
            if kd is not None:
                parts["kd"] = phase.alpha_kd * kd
        if phase.replay:  # source rows keep their strong labels (eq. 2) in a target phase
            r = ~m & batch["has_strong"].bool()
            if bool(r.any()):
                parts["replay"] = phase.replay_weight * losses.frame_bce(out.frame_logits[r], labels[r], mask[r])
        if domain_logit is not None:
            # D minimises L_d (eq. 8); the reversal makes the extractor maximise lambda_d * L_d
            parts["domain"] = losses.domain_loss(domain_logit, mix_domain.float())
    if not parts:  # a batch of auxiliary rows only
        zero = sum(p.sum() * 0.0 for p in ctx.model.parameters())
        return zero, {}
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def lr_factor(schedule: str, epoch: int, step: int, epoch_steps: int, epochs: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``epoch`` (both from 0).

    ``cosine``: half a cosine from 1 at the first step to 0 after the last epoch's last step.
    ``epoch_steps`` is an estimate (streamed shards vary by a batch); steps past it hold
    the epoch's end value.
    """
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"train.lr_schedule: expected 'constant' or 'cosine', got {schedule!r}")
    spe = max(1, epoch_steps)
    progress = (epoch + min(step, spe) / spe) / max(1, epochs)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def steps_per_epoch(n_rows: int, world: int, batch_size: int) -> int:
    """Optimizer steps one worker takes per epoch over ``n_rows`` split ``world`` ways."""
    return max(1, math.ceil(n_rows / max(1, world) / max(1, batch_size)))


def batch_rows(split: dict, batch_size: int, packed: bool) -> int:
    """Rows per batch for about ``batch_size`` samples: mixtures when ``packed`` (each holds
    all its samples; ``split`` is the manifest's entry with both counts), else samples."""
    if not packed:
        return batch_size
    per_mixture = int(split["samples"]) / max(1, int(split["mixtures"]))
    return max(1, round(batch_size / max(1.0, per_mixture)))


def concat_batches(a: dict, b: dict) -> dict:
    """Rows of ``b`` after those of ``a``; packed batches keep each sample's ``mix`` pointing
    at its own mixture."""
    if "mix" in a:
        b = {**b, "mix": b["mix"] + a["mel"].shape[0]}
    return {k: torch.cat([a[k], b[k]]) for k in a}


def train_epoch(ctx: Context, train_it, aux_it_factory, epoch: int, spe: int) -> dict[str, float]:
    """One pass over this worker's shard; ``spe``: estimated steps per epoch (lr schedule)."""
    ctx.model.train()
    if ctx.kd_teacher is not None:
        ctx.kd_teacher.eval()
    if ctx.pseudo_teacher is not None:
        ctx.pseudo_teacher.eval()
    sums: dict[str, float] = {}
    n_batches = n_rows = 0
    t0, cpu0 = time.time(), time.process_time()
    aux_it = aux_it_factory() if aux_it_factory else None
    for batch in train_it:
        batch["is_main"] = torch.ones_like(batch["clip_label"])
        if aux_it is not None:
            try:
                aux = next(aux_it)
            except StopIteration:
                aux_it = aux_it_factory()
                aux = next(aux_it, None)
                if aux is None:
                    raise ValueError(
                        f"phase {ctx.phase.name}: the auxiliary split '{ctx.phase.aux_split}' gave "
                        "this worker no rows; build more data for it, or turn off what reads it "
                        "(method.adversarial=false, method.source_replay=false)"
                    ) from None
            aux["is_main"] = torch.zeros_like(aux["clip_label"])
            batch = concat_batches(batch, aux)
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
        lr = ctx.phase.lr * lr_factor(ctx.cfg.train.lr_schedule, epoch, n_batches, spe, ctx.phase.epochs)
        for group in ctx.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss, parts = compute_losses(ctx, batch)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ctx.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), ctx.cfg.train.grad_clip)
        ctx.optimizer.step()
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        for k, v in parts.items():
            sums[f"loss_{k}"] = sums.get(f"loss_{k}", 0.0) + v
        n_batches += 1
        n_rows += int(batch["is_main"].sum())
    dt = max(time.time() - t0, 1e-9)
    stats = {k: v / max(1, n_batches) for k, v in sums.items()}
    stats.update(train_batches=n_batches, train_samples=n_rows, samples_per_s=n_rows / dt, epoch_s=dt,
                 epoch_cpu_s=time.process_time() - cpu0,  # this process, all threads
                 lr_last=float(ctx.optimizer.param_groups[0]["lr"]))
    return stats


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validate(ctx: Context, val_batches, rank: int = 0, world: int = 1) -> dict[str, float]:
    """Scores on the whole validation split, the forward passes shared among the workers.

    Every worker reads the whole split but runs the student on its own rows only (see
    :func:`tsd_ray.train.validation.owner_rank`); rank 0 gathers the predictions, scores them and sends the scores to
    every worker, so all ranks take the same early-stopping and best-model decisions.
    """
    student = ctx.core.student
    refs = ctx.refs if ctx.live is None else ctx.refs.with_embeddings(ctx.live.table())
    pairs = predict_batches(student, refs, own_rows(val_batches, rank, world), ctx.device, lambda: _autocast(ctx))
    samples = gather_samples(scored_samples(pairs), rank, world)
    if samples is None:  # not rank 0: wait for its scores
        return broadcast_scores(None)
    classes = ctx.manifest["source_classes" if ctx.phase.val_split.startswith("source") else "target_classes"]
    result = validation_scores(samples, classes, float(ctx.manifest["output_hop_s"]), ctx.cfg.eval)
    return broadcast_scores(result) if world > 1 else result


# --------------------------------------------------------------------------------------------
# Report / checkpoint
# --------------------------------------------------------------------------------------------


def _student_payload(ctx: Context, state: dict, metrics: dict) -> dict:
    student = ctx.core.student
    payload = ckpt.model_payload(
        ctx.phase.student,
        ctx.cfg.detector,
        student,
        n_mels=int(ctx.manifest["frontend"]["n_mels"]),
        classes=ctx.manifest["classes"],
        meta={"phase": ctx.phase.name, "metrics": metrics, "frontend": ctx.manifest["frontend"], **ctx.sources},
    )
    payload["state_dict"] = state
    if ctx.live is not None:  # the encoder it was trained with, at the same epoch
        payload["encoder"] = {**ctx.encoder_base, "state_dict": ctx.best_encoder,
                              "meta": {**ctx.encoder_base.get("meta", {}), "joint": ctx.cfg.encoder.joint,
                                       "fine_tuned_in": ctx.phase.name}}
    return payload


def report_epoch(ctx: Context, epoch: int, metrics: dict[str, Any]) -> None:
    import ray.train
    from ray.train import Checkpoint

    rank = ray.train.get_context().get_world_rank()
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(
            {
                "model": ctx.core.state_dict(),
                "optimizer": ctx.optimizer.state_dict(),
                "epoch": epoch,
                "best_score": ctx.best_score,
                "best_state": ctx.best_state,
                "best_metrics": ctx.best_metrics,
                "bad_epochs": ctx.bad_epochs,
                "history": ctx.history,
                "gen": ctx.gen.get_state(),
                "best_encoder": ctx.best_encoder,
            },
            os.path.join(d, "state.pt"),
        )
        buf = io.BytesIO()
        torch.save(_student_payload(ctx, ctx.best_state, ctx.best_metrics), buf)
        with open(os.path.join(d, "model.pt"), "wb") as f:
            f.write(buf.getvalue())
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))


def _maybe_fail(ctx: Context, epoch: int, config: dict) -> None:
    """Fault injection for tests (train.fail_at_epoch): rank 0 dies once at that epoch."""
    import ray.train

    if ctx.cfg.train.fail_at_epoch != epoch or ray.train.get_context().get_world_rank() != 0:
        return
    marker = config.get("fault_marker")
    if marker and not storage.exists(marker):
        storage.write_bytes_atomic(marker, b"failed once\n")
        os._exit(1)  # a hard worker death, as when a node is lost


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict) -> dict:
    """Run one phase on this worker (see module docstring)."""
    import ray.train

    quiet_worker_process()
    ctx = setup(config)
    phase = ctx.phase
    world_rank = ray.train.get_context().get_world_rank()
    world_size = ray.train.get_context().get_world_size()
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    aux_shard = ray.train.get_dataset_shard("aux") if phase.aux_split is not None else None
    tc = ctx.cfg.train
    splits = ctx.manifest["splits"]
    bs = batch_rows(splits[phase.train_split], tc.batch_size, tc.group_by_mixture)
    collate = {"collate_fn": packed_collate_fn()} if tc.group_by_mixture else {}

    aux_passes = [0]

    def aux_factory():
        aux_passes[0] += 1
        return iter(aux_shard.iter_torch_batches(
            batch_size=batch_rows(splits[phase.aux_split], max(1, tc.batch_size // 2), tc.group_by_mixture),
            local_shuffle_buffer_size=tc.shuffle_buffer or None,
            local_shuffle_seed=shuffle_seed(tc.seed, epoch, world_rank, aux_passes[0]) if tc.shuffle_buffer else None,
            **collate,
        ))

    n_train = int(splits[phase.train_split]["mixtures" if tc.group_by_mixture else "samples"])
    spe = steps_per_epoch(n_train, world_size, bs)
    started = time.monotonic()
    for epoch in range(ctx.start_epoch, phase.epochs):
        _maybe_fail(ctx, epoch, config)
        train_it = train_shard.iter_torch_batches(
            batch_size=bs, local_shuffle_buffer_size=tc.shuffle_buffer or None,
            local_shuffle_seed=shuffle_seed(tc.seed, epoch, world_rank) if tc.shuffle_buffer else None,
            **collate,
        )
        stats = train_epoch(ctx, train_it, aux_factory if aux_shard is not None else None, epoch, spe)
        val = validate(ctx, val_shard.iter_batches(batch_size=64, batch_format="numpy"), world_rank, world_size)
        improved = val["val_score"] > ctx.best_score + 1e-9 or ctx.best_state is None
        if improved:
            ctx.best_score = val["val_score"]
            ctx.best_state = {k: v.detach().cpu().clone() for k, v in ctx.core.student.state_dict().items()}
            ctx.best_metrics = {**val, "epoch": epoch}
            ctx.bad_epochs = 0
            if ctx.live is not None:
                ctx.best_encoder = {k: v.detach().cpu().clone() for k, v in ctx.live.encoder.state_dict().items()}
        else:
            ctx.bad_epochs += 1
        metrics = {
            "phase": phase.name,
            "epoch": epoch,
            **stats,
            **val,
            "best_val_score": ctx.best_score,
            "best_epoch": ctx.best_metrics.get("epoch", epoch),
        }
        ctx.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        if world_rank == 0:
            per_epoch = (time.monotonic() - started) / (epoch - ctx.start_epoch + 1)
            print(epoch_line(phase.name, epoch, phase.epochs, per_epoch,
                             f"loss {stats.get('loss', float('nan')):.4f} val event-F {val['val_event_f']:.1f} "
                             f"seg-F {val['val_segment_f']:.1f} (score {val['val_score']:.1f}, best "
                             f"{ctx.best_score:.1f}) {stats['samples_per_s']:.0f} samples/s"), flush=True)
        stop = ctx.bad_epochs >= phase.patience
        report_epoch(ctx, epoch, metrics)
        if stop:
            if world_rank == 0:
                print(f"[{phase.name}] early stop: no improvement for {phase.patience} epochs", flush=True)
            break
    return {"best_val_score": ctx.best_score, "best_metrics": ctx.best_metrics, "history": ctx.history}
