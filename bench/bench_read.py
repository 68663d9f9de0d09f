"""Streaming read throughput of training batches: tsd_ray's Ray Data reader vs per-file pickles.

Same rows, same run:

* tsd ray data : ``tsd_ray.data.shards.read_samples(features, "source_train")`` (the numeric training
                 keys only: mel (501, 64) float16, frame_labels (250,) float32 and 6 scalars)
                 through ``iter_torch_batches(batch_size=32)`` on ``ray.init(num_cpus=2)``.
                 The pass includes ``read_samples`` itself (manifest, reference table) and Ray
                 Data's start-up, as every training epoch pays them.
* per-file     : a plain PyTorch ``DataLoader(num_workers=2, batch_size=32)`` over one pickle
                 file per sample holding the same keys (the reference implementation's layout).
                 The pickles are written from the built rows (via ``tsd_ray.data.shards.iter_local``).

Features are built once from synthetic 10-s clips (content does not matter; build time is not
measured; a re-run reuses them). Each path runs ``--epochs`` passes: epoch 1 after trying to
drop the OS page cache ("cold"), later epochs read from the page cache ("warm"). Checksums of
the rows (count, sum of frame labels, sum of target ids) must agree between the paths.
"CPU ms/sample" is the CPU time of this process and all its descendants (Ray's processes,
DataLoader workers) during the pass, per sample: less sensitive to other load than seconds.

Run from the repo root: ``python -m bench.bench_read --n 2000``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
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
    read_dataset,
    repo_on_path,
    try_drop_caches,
    workdir,
)

SPLIT = "source_train"


class PickleDataset:
    """torch Dataset over one pickle per sample (dict of numpy arrays / numpy scalars)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        with open(self.paths[i], "rb") as f:
            return pickle.load(f)


def prepare(root: Path, n_samples: int, rows_per_shard: int, workers: int) -> tuple[str, list[str]]:
    """Built features for ``n_samples`` TSD samples (2 per mixture) and one pickle per sample."""
    from tsd_ray.data import shards as data

    n_mix = (n_samples + 1) // 2
    wavs = make_wavs(root / "wav22k", n_mix, sr=22050)
    base = root / f"read_n{n_samples}_rps{rows_per_shard}"
    feats = base / "features"
    res = build(make_corpus(wavs, SPLIT, n_references=8), feats, rows_per_shard=rows_per_shard,
                workers=workers, use_ray=True)
    assert res.quarantined == (), res.quarantined
    pkl_dir = base / "pickles"
    done = pkl_dir / "_complete.json"
    if done.exists():
        paths = json.loads(done.read_text())["paths"]
    else:
        pkl_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for batch in data.iter_local(str(feats), SPLIT, with_ids=False):
            for j in range(len(batch["mel"])):
                path = pkl_dir / f"sample{len(paths):07d}.pkl"
                row = {k: batch[k][j] for k in data.NUMERIC_KEYS}  # numpy arrays / scalars
                row["mel"] = row["mel"].copy()  # (T, F) float16, its own buffer
                with open(path, "wb") as f:
                    pickle.dump(row, f, protocol=pickle.HIGHEST_PROTOCOL)
                paths.append(str(path))
        done.write_text(json.dumps({"paths": paths}))
    return str(feats), paths


def _checksum(batch, acc: dict) -> None:
    acc["rows"] += int(batch["mel"].shape[0])
    acc["labels"] += float(batch["frame_labels"].sum())
    acc["targets"] += int(batch["target_idx"].sum())


def ray_pass(features: str, batch_size: int, shuffle_buffer: int | None) -> dict:
    from tsd_ray.data import shards as data

    acc = {"rows": 0, "labels": 0.0, "targets": 0}
    t0 = time.perf_counter()
    first = None
    ds = data.read_samples(features, SPLIT)
    for batch in ds.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=shuffle_buffer):
        if first is None:
            first = time.perf_counter() - t0
        _checksum(batch, acc)
    return {**acc, "seconds": time.perf_counter() - t0, "first_batch_s": first}


def variant_pass(kind: str, features: str, batch_size: int, shuffle_buffer: int | None) -> dict:
    """An alternative Ray reader (``v1`` or ``per_file``, see ``bench.common.read_dataset``)."""
    from ray.data import DataContext

    acc = {"rows": 0, "labels": 0.0, "targets": 0}
    ctx = DataContext.get_current()
    saved = ctx.use_datasource_v2
    t0 = time.perf_counter()
    first = None
    try:
        ds = read_dataset(features, SPLIT, kind)
        for batch in ds.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=shuffle_buffer):
            if first is None:
                first = time.perf_counter() - t0
            _checksum(batch, acc)
    finally:
        ctx.use_datasource_v2 = saved
    return {**acc, "seconds": time.perf_counter() - t0, "first_batch_s": first}


def loader_pass(paths: list[str], batch_size: int, workers: int, shuffle: bool) -> dict:
    from torch.utils.data import DataLoader

    acc = {"rows": 0, "labels": 0.0, "targets": 0}
    t0 = time.perf_counter()
    first = None
    loader = DataLoader(PickleDataset(paths), batch_size=batch_size, num_workers=workers, shuffle=shuffle)
    for batch in loader:
        if first is None:
            first = time.perf_counter() - t0
        _checksum(batch, acc)
    return {**acc, "seconds": time.perf_counter() - t0, "first_batch_s": first}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="TSD samples (2 per mixture)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...); DataLoader workers")
    ap.add_argument("--epochs", type=int, default=2, help="passes per path (1st cold, rest warm)")
    ap.add_argument("--rows-per-shard", type=int, default=256, help="mixtures per Parquet shard (BuildConfig default 256)")
    ap.add_argument("--shuffle", action="store_true",
                    help="shuffle both: Ray local buffer of 256 rows (TrainConfig default), DataLoader shuffle=True")
    ap.add_argument("--variants", action="store_true",
                    help="also time two alternative Ray readers (not tsd_ray's): Ray Data's V1 Parquet "
                         "datasource, and one task per file streaming 16-mixture batches")
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--no-drop-caches", action="store_true")
    args = ap.parse_args(argv)
    repo_on_path()
    import torch

    root = workdir(args.workdir)
    init_ray(args.cpus, root / "ray_tmp")
    t0 = time.perf_counter()
    features, paths = prepare(root, args.n, args.rows_per_shard, args.cpus)
    prep_s = time.perf_counter() - t0
    size = lambda files: sum(os.path.getsize(f) for f in files) / 2**20  # noqa: E731
    from tsd_ray.data import shards as data

    parquet_mb = size(data.load_manifest(features).files(SPLIT))
    print(f"# bench_read: {len(paths)} samples, batch {args.batch_size}, {args.cpus} cpus, "
          f"shuffle={args.shuffle}, torch threads={torch.get_num_threads()}, {load_note()}")
    print(f"data ready in {prep_s:.1f} s (build + pickles, untimed): Parquet {parquet_mb:.0f} MB "
          f"({len(data.load_manifest(features).files(SPLIT))} files), pickles {size(paths):.0f} MB "
          f"({len(paths)} files)")

    drop = (lambda: "not tried") if args.no_drop_caches else try_drop_caches
    rows, results = [], {}
    buf = 256 if args.shuffle else None
    paths_to_time = [
        ("tsd ray data", lambda: ray_pass(features, args.batch_size, buf)),
        (f"per-file DataLoader x{args.cpus}", lambda: loader_pass(paths, args.batch_size, args.cpus, args.shuffle)),
    ]
    if args.variants:
        paths_to_time += [
            ("alt: V1 parquet datasource", lambda: variant_pass("v1", features, args.batch_size, buf)),
            ("alt: one Ray task per file", lambda: variant_pass("per_file", features, args.batch_size, buf)),
        ]
    for name, fn in paths_to_time:
        cache = drop()
        for epoch in range(1, args.epochs + 1):
            cpu = TreeSampler(os.getpid(), interval_s=0.1, memory=False).start()
            r = fn()
            cpu.stop()
            results[(name, epoch)] = r
            rows.append((name, epoch, "cold" if epoch == 1 else "warm", r["seconds"], r["first_batch_s"],
                         r["rows"] / r["seconds"], 1e3 * cpu.cpu_seconds / r["rows"]))
    print(f"page cache before each path's epoch 1: {cache}")
    print_table(("path", "epoch", "cache", "seconds", "1st batch s", "samples/s", "CPU ms/sample"), rows)
    sums = {(r["rows"], round(r["labels"]), r["targets"]) for r in results.values()}
    assert len(sums) == 1, f"the two paths read different rows: {sums}"
    base = paths_to_time[1][0]
    for name, _ in [p for i, p in enumerate(paths_to_time) if i != 1]:
        ratios = []
        for epoch in range(1, args.epochs + 1):
            a, b = results[(name, epoch)], results[(base, epoch)]
            ratios.append(f"epoch {epoch} ({'cold' if epoch == 1 else 'warm'}) {b['seconds'] / a['seconds']:.2f}x")
        label = "RATIOS" if name == "tsd ray data" else " "
        print(f"{label} {name} / per-file samples/s: {', '.join(ratios)} (target >= 2x)")
    print(load_note())
    import ray

    ray.shutdown()


if __name__ == "__main__":
    main()
