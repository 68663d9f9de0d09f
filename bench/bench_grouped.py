"""Training step on batches of whole mixtures (the CNN once per mixture) vs one row per sample.

A TSD sample is (mixture, target class); a mixture with N classes gives N positives and about
N/2 negatives, all with the same features. ``train.group_by_mixture`` packs each mixture's
samples into one row, and the detector's CNN (which does not see the reference) runs once per
mixture. This prints the time of one full training step (augmentation, student, discriminator
through gradient reversal, source replay, backward, Adam) on CPU with one torch thread, for the
same samples fed both ways, and the ratio measured in the same run.

    .venv/bin/python -m bench.bench_grouped --config demo --per-mixture 3.3
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from tsd_ray.common.config import load_config
from tsd_ray.models.detector import Detector
from tsd_ray.models.discriminator import Discriminator
from tsd_ray.train.phase import PhaseSpec
from tsd_ray.train.validation import ReferenceTable
from tsd_ray.train.worker import Context, PhaseModel, compute_losses, concat_batches


def _batch(n_mix: int, per_mixture: float, t_in: int, n_mels: int, main: bool, g: torch.Generator) -> dict:
    """``n_mix`` mixtures with ``per_mixture`` samples each on average (a packed batch)."""
    counts = torch.full((n_mix,), math.floor(per_mixture), dtype=torch.long)
    counts[: round((per_mixture - math.floor(per_mixture)) * n_mix)] += 1
    mix = torch.repeat_interleave(torch.arange(n_mix), counts)
    k, t_out = len(mix), t_in // 2
    return {
        "mel": torch.randn(n_mix, t_in, n_mels, generator=g),
        "mix": mix,
        "mix_domain": torch.full((n_mix,), int(main)),
        "mix_n_valid": torch.full((n_mix,), t_out),
        "frame_labels": (torch.rand(k, t_out, generator=g) > 0.7).float(),
        "ref_idx": torch.full((k,), -1),
        "target_idx": torch.randint(0, 8, (k,), generator=g),
        "clip_label": (torch.rand(k, generator=g) > 0.4).float(),
        "has_strong": torch.full((k,), not main),
        "domain": torch.full((k,), int(main)),
        "n_valid": torch.full((k,), t_out),
        "is_main": torch.full((k,), int(main)),
    }


def _unpacked(batch: dict) -> dict:
    out = {k: v for k, v in batch.items() if k not in ("mix", "mix_domain", "mix_n_valid")}
    out["mel"] = batch["mel"][batch["mix"]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--per-mixture", type=float, default=3.3, help="samples per mixture (demo corpus: 3.3)")
    ap.add_argument("--batch", type=int, default=32, help="main samples per step (+ half as many source rows)")
    ap.add_argument("--seconds", type=float, default=5.0, help="clip length (50 input frames/s)")
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    n_mels, t_in = 64, int(args.seconds * 50) + 1
    torch.manual_seed(0)
    student = Detector(cfg.detector, n_mels, "linsoft")
    core = PhaseModel(student, Discriminator(cfg.discriminator, student.out_channels), None).train()
    phase = PhaseSpec(name="w_target", student="w", train_split="target_train", val_split="target_val",
                      loss="clip", epochs=1, lr=1e-3, patience=1, adversarial=True, replay=True)
    ctx = Context(
        cfg=cfg, phase=phase, manifest={}, sources={}, device=torch.device("cpu"), model=core, core=core,
        optimizer=torch.optim.Adam(core.parameters(), lr=1e-3), kd_teacher=None, pseudo_teacher=None,
        refs=ReferenceTable(torch.randn(64, cfg.detector.embedding_dim), torch.arange(64) % 8, n_classes=8),
        gen=torch.Generator().manual_seed(0),
    )
    g = torch.Generator().manual_seed(1)
    n_main = max(1, round(args.batch / args.per_mixture))
    n_aux = max(1, round(args.batch / 2 / args.per_mixture))
    batches = [concat_batches(_batch(n_main, args.per_mixture, t_in, n_mels, True, g),
                              _batch(n_aux, args.per_mixture, t_in, n_mels, False, g)) for _ in range(4)]

    def step(b):
        loss, _ = compute_losses(ctx, b)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.optimizer.step()

    def timed(feed) -> float:
        step(feed[0])  # warm-up
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(feed[i % len(feed)])
        return (time.perf_counter() - t0) / args.steps

    rows = [_unpacked(b) for b in batches]
    t_rows, t_grouped = timed(rows), timed(batches)
    n = int(batches[0]["mix"].shape[0])
    print(f"config {args.config}, {args.seconds:g}-s clips, {n} samples per step from "
          f"{n_main + n_aux} mixtures ({args.per_mixture:g} per mixture), 1 thread, CPU")
    print(f"  one row per sample  : {1000 * t_rows:7.1f} ms/step  {n / t_rows:6.0f} samples/s")
    print(f"  one row per mixture : {1000 * t_grouped:7.1f} ms/step  {n / t_grouped:6.0f} samples/s")
    print(f"  ratio               : {t_rows / t_grouped:.2f}x")


if __name__ == "__main__":
    main()
