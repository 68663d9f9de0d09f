"""Feature extraction throughput: tsd_ray's build vs the reference implementation's extractor.

Same N synthetic 10-s WAV files at 32 kHz (so every path resamples to 22,050 Hz), same run:

* naive      : a Python loop of ``librosa.load(path, sr=22050)`` + ``melspectrogram(n_fft=2048,
               hop_length=441, n_mels=64)`` + log, one ``.npy`` per file (the reference
               implementation's extractor; librosa's default resampler).
* naive x P  : the same function in a ``multiprocessing`` pool of P processes (context only:
               the naive loop itself uses about one core).
* tsd serial : ``build_features(use_ray=False)``: decode + torchaudio mel in the driver, Parquet.
* tsd ray    : ``build_features(use_ray=True)`` on ``ray.init(num_cpus=C)``: Ray Data
               ``map_batches`` over an actor pool of ``--workers`` shard writers.

``ray.init`` is excluded from the timing; Ray Data start-up (planning, actor start with torch
import, streaming executor) is included, and measured on its own by running the same
pipeline on empty shards afterwards. An untimed warm-up call of librosa and of the torch mel
on one file comes first, so import/JIT costs do not land on either side.

Run from the repo root: ``python -m bench.bench_features --n 200 --workers 2``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import threading
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
    try_drop_caches,
    workdir,
)

SR_OUT = 22050


def naive_extract(path: str, out_dir: str) -> str:
    """The reference extractor: librosa load (resample) + mel + log, one .npy per file."""
    import librosa
    import numpy as np

    y, sr = librosa.load(path, sr=SR_OUT)
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=441, n_mels=64)
    logmel = np.log(mel + 1e-6).T.astype(np.float16)  # (T, F)
    out = os.path.join(out_dir, Path(path).stem + ".npy")
    np.save(out, logmel)
    return out


def _naive_star(args: tuple[str, str]) -> str:
    return naive_extract(*args)


def _watch_first_record(folder: Path, t0: float, result: dict, stop: threading.Event) -> None:
    """Seconds from t0 until the first shard completion record appears (Ray start-up + 1 shard)."""
    while not stop.is_set():
        if folder.exists() and any(p.suffix == ".json" for p in folder.iterdir()):
            result["first_shard_s"] = time.perf_counter() - t0
            return
        stop.wait(0.02)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="number of 10-s clips")
    ap.add_argument("--workers", type=int, default=2, help="Ray Data shard-writer actors")
    ap.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    ap.add_argument("--rows-per-shard", type=int, default=0,
                    help="mixtures per Parquet shard; 0: n / (4 * workers), so every actor gets work")
    ap.add_argument("--pool", type=int, default=2, help="processes of the 'naive x P' row; 0 skips it")
    ap.add_argument("--sr", type=int, default=32000, help="sample rate of the input files (Hz)")
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--no-drop-caches", action="store_true", help="do not try to drop the page cache")
    args = ap.parse_args(argv)
    repo_on_path()

    import librosa  # noqa: F401  (import cost excluded)
    import numpy as np
    import soundfile as sf
    import torch

    from tsd_ray.common.config import BuildConfig, FrontendConfig
    from tsd_ray.data.build import ShardPlan, _run_on_ray_data
    from tsd_ray.data.features import LogMel

    root = workdir(args.workdir)
    wavs = make_wavs(root / f"wav{args.sr // 1000}k", args.n, sr=args.sr)
    corpus = make_corpus(wavs)
    run = root / "features_run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    rps = args.rows_per_shard or max(1, math.ceil(args.n / (4 * args.workers)))
    drop = (lambda: "not tried") if args.no_drop_caches else try_drop_caches
    print(f"# bench_features: n={args.n} clips of 10 s at {args.sr} Hz, workers={args.workers}, "
          f"ray cpus={args.cpus}, rows_per_shard={rps}, {load_note()}")

    # Untimed warm-up: librosa's first call and the torch mel's kernels.
    (run / "warm").mkdir()
    naive_extract(wavs[0], str(run / "warm"))
    w, sr = sf.read(wavs[0], dtype="float32")
    LogMel(FrontendConfig(device="cpu"))(w, sr, seconds=10.0)

    rows = []
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def sampler() -> TreeSampler:  # CPU seconds of this process and all its descendants
        return TreeSampler(os.getpid(), interval_s=0.1, memory=False).start()

    cache = drop()
    (run / "naive").mkdir()
    cpu_s = sampler()
    t0 = time.perf_counter()
    for p in wavs:
        naive_extract(p, str(run / "naive"))
    timings["naive"] = time.perf_counter() - t0
    cpu_s.stop()
    cpu["naive"] = cpu_s.cpu_seconds
    rows.append(("naive librosa loop", 1, timings["naive"], args.n / timings["naive"], 1e3 * cpu["naive"] / args.n))

    if args.pool:
        import multiprocessing as mp

        drop()
        (run / "naive_pool").mkdir()
        ctx = mp.get_context("fork")
        cpu_s = sampler()
        t0 = time.perf_counter()
        with ctx.Pool(args.pool) as pool:
            pool.map(_naive_star, [(p, str(run / "naive_pool")) for p in wavs], chunksize=4)
        timings["pool"] = time.perf_counter() - t0
        cpu_s.stop()
        cpu["pool"] = cpu_s.cpu_seconds
        rows.append((f"naive librosa x{args.pool} procs", args.pool, timings["pool"], args.n / timings["pool"],
                     1e3 * cpu["pool"] / args.n))

    drop()
    cpu_s = sampler()
    t0 = time.perf_counter()
    res = build(corpus, run / "serial", rows_per_shard=rps, workers=args.workers, use_ray=False)
    timings["serial"] = time.perf_counter() - t0
    cpu_s.stop()
    cpu["serial"] = cpu_s.cpu_seconds
    assert res.quarantined == () and res.shards_written == res.shards_total
    rows.append((f"tsd_ray build, serial ({torch.get_num_threads()} torch threads)", 1, timings["serial"],
                 args.n / timings["serial"], 1e3 * cpu["serial"] / args.n))

    # The same serial build with torch limited to one thread (what each Ray actor does).
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
        drop()
        cpu_s = sampler()
        t0 = time.perf_counter()
        build(corpus, run / "serial1", rows_per_shard=rps, workers=args.workers, use_ray=False)
        timings["serial1"] = time.perf_counter() - t0
        cpu_s.stop()
        torch.set_num_threads(threads)
        rows.append(("  same, torch.set_num_threads(1)", 1, timings["serial1"], args.n / timings["serial1"],
                     1e3 * cpu_s.cpu_seconds / args.n))

    ray_init_s = init_ray(args.cpus, root / "ray_tmp")
    drop()
    watch: dict = {}
    stop = threading.Event()
    t0 = time.perf_counter()
    watcher = threading.Thread(target=_watch_first_record, args=(run / "ray" / "_shards", t0, watch, stop))
    watcher.start()
    cpu_s = sampler()
    res = build(corpus, run / "ray", rows_per_shard=rps, workers=args.workers, use_ray=True)
    timings["ray"] = time.perf_counter() - t0
    cpu_s.stop()
    cpu["ray"] = cpu_s.cpu_seconds
    stop.set()
    watcher.join()
    assert res.quarantined == () and res.shards_written == res.shards_total

    # Ray Data's fixed cost: the same pipeline (actor pool of shard writers) on empty shards.
    frontend = FrontendConfig(device="cpu")
    t0 = time.perf_counter()
    _run_on_ray_data(
        str(run / "empty"),
        [ShardPlan("source_train", i, ()) for i in range(args.workers)],
        frontend,
        BuildConfig(rows_per_shard=rps, num_workers=args.workers),
    )
    timings["ray_fixed"] = time.perf_counter() - t0
    import ray

    ray.shutdown()
    rows.append((f"tsd_ray build, Ray Data x{args.workers}", args.workers, timings["ray"], args.n / timings["ray"],
                 1e3 * cpu["ray"] / args.n))
    steady = timings["ray"] - timings["ray_fixed"]
    if steady > 0:
        rows.append(("  same, minus fixed start-up", args.workers, steady, args.n / steady, "-"))

    n_mels = np.load(next((run / "naive").glob("*.npy"))).shape
    print(f"page cache before each timed step: {cache}")
    print(f"ray.init (excluded): {ray_init_s:.2f} s; Ray Data fixed start-up (empty shards): "
          f"{timings['ray_fixed']:.2f} s; first shard finished {watch.get('first_shard_s', float('nan')):.2f} s "
          f"after the build call; naive .npy shape {n_mels}")
    print_table(("path", "cores", "seconds", "clips/s", "CPU ms/clip"), rows)
    naive = args.n / timings["naive"]
    parts = [
        f"ray/naive {args.n / timings['ray'] / naive:.2f}x",
        f"serial/naive {args.n / timings['serial'] / naive:.2f}x",
    ]
    if args.pool:
        parts.append(f"ray/naive_x{args.pool} {timings['pool'] / timings['ray']:.2f}x")
    print(f"RATIOS (clips/s): {', '.join(parts)}; {load_note()}")
    print(f"CPU per clip (load-robust): naive/ray {cpu['naive'] / cpu['ray']:.2f}x, "
          f"naive/serial {cpu['naive'] / cpu['serial']:.2f}x (> 1: tsd_ray spends less CPU per clip)")


if __name__ == "__main__":
    main()
