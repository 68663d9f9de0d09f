"""Training throughput of one phase: Ray Train (1 and 2 workers) vs a bare PyTorch loop.

Same run, same model, same batch size, same rows:

* bare     : ``tsd_ray.train.worker.train_epoch`` (the training step every phase runs: augmentation,
             reference lookup, forward, loss, backward, clip, Adam) called directly in this
             process over the split's rows held in memory as tensors (shuffled per epoch).
             No Ray, no DDP, no data streaming: the upper bound.
* ray w=N  : ``tsd_ray.train.driver.run_phase`` — a real ``TorchTrainer`` fit with N workers, rows
             streamed from the Parquet shards by Ray Data (``iter_torch_batches``; by default
             with ``train.cache_max_samples=0``, the streaming path every L-TSD-size split takes), DDP
             (gloo on CPU, NCCL on GPU), validation and a checkpoint every epoch.

Throughput is training samples per second inside the epoch loop (``train_epoch``'s own
clock: data wait + compute), median over the epochs after the first (warm-up). For N workers
the global rate is the split's samples / rank 0's epoch time (DDP keeps the ranks in step).
Ray overhead = 1 - ray(w=1) / bare, with bare the mean of a run before and one after the
Ray fits (the load of a shared machine drifts). ``fit wall`` is the whole ``run_phase`` call (worker start,
dataset set-up, validation, checkpoints) and is reported beside it, not mixed in.

Threads: a Train worker with ``{"CPU": k}`` runs torch with OMP_NUM_THREADS=max(1, floor k)
(Ray's default), so the bare loop uses ``--threads`` (default 1) to compare like with like.

On a shared machine wall-clock rates follow the other jobs' load (and a multi-process Ray run
gets a bigger share of an oversubscribed CPU than one bare process). So the table also gives
samples per CPU-second of the training process itself (``time.process_time`` inside
``train_epoch``: rank 0 / the bare loop), which does not depend on how busy
the machine is, and ``fit CPU-ms/sample``: CPU of the whole process tree (driver, raylet, Train
workers, Ray Data tasks) over the whole fit per trained sample — Ray's full bill, start-up and
validation included.

CPU (any machine):  python -m bench.bench_train --n 128 --epochs 4
GPU node:           python -m bench.bench_train --gpu --config paper --n 2000 --workers 1
                    (``paper``/``default`` = the paper-size detector; ``--workers 1 2`` needs 2 GPUs)
Results are printed and written to ``<workdir>/bench_train.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``bench`` importable
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    DEFAULT_WORKDIR,
    TreeSampler,
    build,
    init_ray,
    load_note,
    make_corpus,
    make_wavs,
    print_table,
    repo_on_path,
    workdir,
)

SPLIT, VAL = "source_train", "source_val"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=128, help="training mixtures (2 samples each)")
    p.add_argument("--n-val", type=int, default=8, help="validation mixtures")
    p.add_argument("--epochs", type=int, default=4, help="epochs per measurement (first = warm-up)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Train worker counts")
    p.add_argument("--config", default="tiny", help="tsd_ray config name/path, or 'default' (paper-size)")
    p.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    p.add_argument("--gpu", action="store_true", help="train on GPUs (NCCL, bf16 autocast); bare loop on cuda")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the bare loop (CPU)")
    p.add_argument("--cache-max-samples", type=int, default=0,
                   help="train.cache_max_samples; 0 (default): stream from Parquet every epoch, as "
                        "paper-scale splits do; a larger value measures the in-object-store cache")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="logical CPUs for ray.init")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR + "/train")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def prepare(args, wd: Path):
    """Features of ``--n`` training + ``--n-val`` validation mixtures and an embedding table
    (from an untrained encoder: content does not matter for throughput)."""
    from tsd_ray.common.types import Corpus
    from tsd_ray.data.shards import load_manifest
    from tsd_ray.models import checkpoint as ckpt
    from tsd_ray.models.encoder import Cnn14Encoder
    from tsd_ray.train.encoder import embed_references

    sr = 22050
    paths = make_wavs(wd / "wav", args.n + args.n_val, sr=sr)
    train = make_corpus(paths[: args.n], SPLIT, n_references=8)
    val = make_corpus(paths[args.n :], VAL)
    corpus = Corpus(mixtures={**train.mixtures, **val.mixtures}, references=train.references,
                    source_classes=train.source_classes, target_classes=train.target_classes)
    out = wd / f"features-{args.n}-{args.n_val}"
    build(corpus, out, rows_per_shard=32, workers=0, use_ray=False)
    manifest = load_manifest(str(out))
    cfg = config(args)
    enc_uri = str(wd / "encoder" / f"encoder-{cfg.digest('encoder')[:8]}.pt")
    if not os.path.exists(enc_uri):
        enc = Cnn14Encoder(cfg.encoder, manifest.n_mels, len(manifest.classes))
        ckpt.save_payload(ckpt.model_payload("encoder", cfg.encoder, enc, n_mels=manifest.n_mels,
                                             classes=manifest.classes), enc_uri)
    emb = embed_references(enc_uri, manifest, enc_uri.replace(".pt", "-embeddings.parquet"))
    return manifest, emb


def config(args, **train):
    from tsd_ray.common.config import load_config

    over = ["frontend.device=cpu", f"train.cache_max_samples={args.cache_max_samples}"]
    if args.batch_size:
        over.append(f"train.batch_size={args.batch_size}")
    if args.gpu:
        over += ["train.use_gpu=true", "train.gpus_per_worker=1", "train.cpus_per_worker=1"]
    else:  # e.g. --config paper (GPU settings) measured on CPU
        over += ["train.use_gpu=false"]
    over += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None if args.config == "default" else args.config, over)


def phase_spec(cfg, epochs: int):
    from tsd_ray.train.phase import make_phase

    # the first phase of Algorithm 1 without the adversary: f student, frame loss
    return make_phase(cfg, "f_source", "bench_f", student="f", train_split=SPLIT, val_split=VAL,
                      loss="frame", adversarial=False).with_(epochs=epochs, patience=epochs + 1)


# --------------------------------------------------------------------------------------------
# Bare PyTorch loop
# --------------------------------------------------------------------------------------------


def bare_loop(args, manifest, emb_uri: str) -> dict:
    import numpy as np
    import torch

    from tsd_ray.data.shards import NUMERIC_KEYS, iter_local
    from tsd_ray.models import checkpoint as ckpt
    from tsd_ray.models.detector import Detector
    from tsd_ray.train.validation import load_reference_table
    from tsd_ray.train.worker import Context, PhaseModel, train_epoch

    torch.set_num_threads(args.threads)
    cfg = config(args)
    spec = phase_spec(cfg, args.epochs)
    device = torch.device("cuda" if args.gpu else "cpu")
    batches = list(iter_local(manifest, SPLIT, with_ids=False))
    rows = {k: torch.from_numpy(np.concatenate([b[k] for b in batches])) for k in NUMERIC_KEYS}
    n = len(rows["mel"])
    torch.manual_seed(cfg.train.seed)
    student = Detector(cfg.detector, manifest.n_mels, ckpt.STUDENT_POOLING["f"])
    core = PhaseModel(student, None, None).to(device)
    ctx = Context(
        cfg=cfg, phase=spec, manifest=manifest.data, sources={}, device=device, model=core, core=core,
        optimizer=torch.optim.Adam(core.parameters(), lr=spec.lr, weight_decay=cfg.train.weight_decay),
        refs=load_reference_table(emb_uri, len(manifest.classes)).to(device),
        kd_teacher=None, pseudo_teacher=None, gen=torch.Generator().manual_seed(cfg.train.seed),
    )
    bs = cfg.train.batch_size
    per_epoch = []
    for _ in range(args.epochs):
        order = torch.randperm(n, generator=ctx.gen)

        def it(order=order):
            for s in range(0, n, bs):
                idx = order[s : s + bs]
                yield {k: v[idx] for k, v in rows.items()}

        stats = train_epoch(ctx, it(), None, len(per_epoch), math.ceil(n / bs))
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_epoch.append({"samples_per_s": stats["samples_per_s"], "epoch_s": stats["epoch_s"],
                          "cpu_seconds": stats["epoch_cpu_s"], "step_samples": n, "loss": stats["loss"]})
    return {"samples": n, "threads": torch.get_num_threads(), "epochs": per_epoch}


# --------------------------------------------------------------------------------------------
# Ray Train
# --------------------------------------------------------------------------------------------


def ray_phase(args, manifest, emb_uri: str, workers: int, wd: Path) -> dict:
    from tsd_ray.train.driver import run_phase

    cfg = config(args, num_workers=workers, max_failures=0)
    spec = phase_spec(cfg, args.epochs)
    runs = wd / "runs"
    name = f"bench-w{workers}"
    shutil.rmtree(runs / f"{name}-{spec.name}", ignore_errors=True)  # a fresh run, not a resume
    tree = TreeSampler(os.getpid(), interval_s=0.5, memory=False).start()
    t0 = time.perf_counter()
    res = run_phase(cfg, spec, manifest, emb_uri, storage_path=str(runs), run_name=name)
    wall = time.perf_counter() - t0
    tree.stop()
    _, n = manifest.count(SPLIT)
    epochs = [{"samples_per_s": n / h["epoch_s"], "epoch_s": h["epoch_s"],
               "cpu_seconds": h["epoch_cpu_s"], "step_samples": h["train_samples"],
               "loss": h["loss"]} for h in res.history]
    return {"workers": workers, "samples": n, "fit_wall_s": wall, "fit_tree_cpu_s": tree.cpu_seconds,
            "epochs": epochs}


def worker_threads(cpus: float, gpu: bool) -> int:
    """torch threads inside a Ray task with ``cpus`` CPUs (what a Train worker gets)."""
    import ray

    @ray.remote(num_cpus=cpus, num_gpus=1 if gpu else 0)
    def threads() -> int:
        import torch

        return torch.get_num_threads()

    return ray.get(threads.remote())


def steady(epochs: list[dict], key: str = "samples_per_s") -> float:
    """Median of the epochs after the first (warm-up); the only one if just one."""
    return statistics.median([e[key] for e in (epochs[1:] or epochs)])


def per_cpu(epochs: list[dict]) -> list[dict]:
    """Add samples per CPU-second of the training process (rank 0 / the bare loop)."""
    return [{**e, "samples_per_cpu_s": e["step_samples"] / max(e["cpu_seconds"], 1e-9)} for e in epochs]


def main(argv=None) -> dict:
    args = parse_args(argv)
    wd = workdir(args.workdir)
    repo_on_path()
    init_ray(args.cpus, wd / "ray")
    import ray
    import torch

    from tsd_ray.train.driver import scaling_config

    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device visible here")
    print(f"[bench_train] {load_note()}; torch {torch.__version__}; "
          f"device {'cuda: ' + torch.cuda.get_device_name(0) if args.gpu else 'cpu'}", flush=True)
    manifest, emb = prepare(args, wd)
    res: dict = {"args": vars(args), "load_before": load_note(), "cluster": ray.cluster_resources()}

    one = scaling_config(config(args, num_workers=1).train).resources_per_worker
    res["ray_worker_resources"] = one
    res["ray_worker_threads"] = worker_threads(one["CPU"], args.gpu)
    # the bare loop runs before and after the Ray fits: on a shared machine the load drifts,
    # and the mean of the two brackets the Ray runs
    res["bare"] = bare_loop(args, manifest, emb)
    res["ray"] = [ray_phase(args, manifest, emb, w, wd) for w in args.workers]
    res["bare_after"] = bare_loop(args, manifest, emb)
    res["load_after"] = load_note()

    for key in ("bare", "bare_after"):
        res[key]["epochs"] = per_cpu(res[key]["epochs"])
    for r in res["ray"]:
        r["epochs"] = per_cpu(r["epochs"])
    bare_runs = [steady(res[k]["epochs"]) for k in ("bare", "bare_after")]
    bare = statistics.mean(bare_runs)
    bare_cpu = statistics.mean(steady(res[k]["epochs"], "samples_per_cpu_s") for k in ("bare", "bare_after"))
    res["bare_steady_samples_per_s"] = bare
    res["bare_steady_samples_per_cpu_s"] = bare_cpu
    rows = [["bare torch (before/after)", 1, f"{bare:.1f} ({bare_runs[0]:.1f}/{bare_runs[1]:.1f})", "-",
             f"{bare_cpu:.1f}", "-", "-", "-", "-"]]
    base = None
    for r in res["ray"]:
        sps = steady(r["epochs"])
        wcps = steady(r["epochs"], "samples_per_cpu_s")  # rank 0's rows per its own CPU-second
        base = base or (sps if r["workers"] == 1 else None)
        r.update(steady_samples_per_s=sps, steady_samples_per_worker_cpu_s=wcps,
                 overhead_vs_bare_pct=100.0 * (1.0 - sps / bare),
                 cpu_overhead_vs_bare_pct=100.0 * (1.0 - wcps / bare_cpu),
                 speedup_vs_1_worker=sps / base if base else None)
        n_total = r["samples"] * len(r["epochs"])
        rows.append([f"ray train w={r['workers']}", r["workers"], f"{sps:.1f}",
                     f"{r['overhead_vs_bare_pct']:+.1f}%", f"{wcps:.1f}",
                     f"{r['cpu_overhead_vs_bare_pct']:+.1f}%",
                     f"{r['speedup_vs_1_worker']:.2f}x" if base else "-", f"{r['fit_wall_s']:.1f}",
                     f"{1000 * r['fit_tree_cpu_s'] / n_total:.0f}"])
    print()
    print_table(["path", "workers", "samples/s (wall)", "overhead", "samples/CPU-s per worker",
                 "CPU overhead", "vs 1 worker", "fit wall s", "fit CPU-ms/sample"], rows)
    print(f"\n{res['bare']['samples']} training samples, batch {config(args).train.batch_size}, "
          f"{args.epochs} epochs (median of epochs 2..{args.epochs}); {res['load_before']} -> {res['load_after']}")
    out = wd / "bench_train.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {out}")
    ray.shutdown()
    return res


if __name__ == "__main__":
    main()
