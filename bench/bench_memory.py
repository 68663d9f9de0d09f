"""Peak memory of a full streaming pass over N and 10 x N TSD samples (target: <= 1.3x growth).

Two feature sets are built from synthetic 10-s clips (N and 10N samples, 2 samples per mixture,
``--rows-per-shard`` mixtures per Parquet file; build time is not measured, re-runs reuse them).
Each pass runs in a fresh subprocess that starts ``ray.init(num_cpus=2)`` and iterates
``tsd_ray.data.shards.read_samples(features, "source_train").iter_torch_batches(batch_size=32)`` to the
end. Measured:

* driver peak RSS : ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` inside the subprocess (exact
                    peak of the process that consumes the batches). "driver base" is the same
                    number after ``ray.init`` and ``import torch``, before the pass.
* Ray processes   : the subprocess's descendants (gcs_server, raylet with the object store,
                    agents, Ray Data worker processes), sampled every ``--interval`` s by the
                    parent from /proc/PID/smaps_rollup: peak of the summed RSS and of the summed
                    PSS (PSS splits shared pages, e.g. object-store pages mapped by several
                    processes, among them, so it does not count them twice; RSS does).
* whole tree      : driver + Ray processes, summed per sample, peak over samples.

Sampled peaks can miss spikes shorter than the interval. Run from the repo root:
``python -m bench.bench_memory --n 500``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    DEFAULT_WORKDIR,
    REPO,
    TreeSampler,
    build,
    init_ray,
    load_note,
    make_corpus,
    make_wavs,
    peak_rss_mb,
    print_table,
    read_dataset,
    repo_on_path,
    workdir,
)

SPLIT = "source_train"


def child(features: str, batch_size: int, cpus: int, tmp: str, reader: str) -> None:
    """One full pass in this (fresh) process; prints one JSON line."""
    rss_start = peak_rss_mb()
    for attempt in range(3):  # on a crowded machine the raylet can time out starting
        try:
            init_ray(cpus, Path(tmp))
            break
        except Exception as exc:  # ray raises a bare Exception for a start-up timeout
            if attempt == 2:
                raise
            print(f"ray.init failed ({exc}); retrying", file=sys.stderr, flush=True)
            import ray

            ray.shutdown()
    import torch  # noqa: F401  (iter_torch_batches imports it: ~500 MB of RSS on its own)

    rss_after_init = peak_rss_mb()
    t0 = time.perf_counter()
    rows = 0
    for batch in read_dataset(features, SPLIT, reader).iter_torch_batches(batch_size=batch_size):
        rows += int(batch["mel"].shape[0])
    seconds = time.perf_counter() - t0
    out = {
        "rows": rows,
        "seconds": seconds,
        "driver_peak_rss_mb": peak_rss_mb(),
        "driver_rss_after_imports_mb": rss_start,
        "driver_peak_rss_after_init_mb": rss_after_init,
    }
    import ray

    ray.shutdown()
    print("RESULT " + json.dumps(out), flush=True)


def build_set(root: Path, n_samples: int, rows_per_shard: int, cpus: int) -> str:
    n_mix = (n_samples + 1) // 2
    wavs = make_wavs(root / "wav22k", n_mix, sr=22050)
    out = root / f"memory_n{n_samples}_rps{rows_per_shard}" / "features"
    res = build(make_corpus(wavs, SPLIT, n_references=8), out, rows_per_shard=rows_per_shard,
                workers=cpus, use_ray=True)
    assert res.quarantined == (), res.quarantined
    return str(out)


def measure(features: str, args) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_memory", "--child", features,
           "--batch-size", str(args.batch_size), "--cpus", str(args.cpus), "--workdir", args.workdir, "--reader", args.reader]
    proc = subprocess.Popen(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid, interval_s=args.interval).start()
    stdout, stderr = proc.communicate()
    peaks = sampler.stop()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"pass over {features} failed (rc {proc.returncode}):\n{stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), **peaks, "samples": sampler.samples,
            "procs": sampler.max_procs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="samples of the small pass; the large one has 10x")
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--rows-per-shard", type=int, default=64,
                    help="mixtures per Parquet file (64: the N pass already spans several files)")
    ap.add_argument("--interval", type=float, default=0.2, help="memory sampling interval (s)")
    ap.add_argument("--reader", choices=("tsd", "v1", "per_file"), default="tsd",
                    help="tsd: tsd_ray.data.shards.read_samples (what is benchmarked); v1 / per_file: "
                         "alternative readers for comparison (see bench/common.py read_dataset)")
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--child", metavar="FEATURES", help=argparse.SUPPRESS)
    ap.add_argument("--build-only", type=int, nargs="+", metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    repo_on_path()
    root = workdir(args.workdir)
    if args.child:
        child(args.child, args.batch_size, args.cpus, str(root / "ray_tmp_child"), args.reader)
        return
    if args.build_only:
        init_ray(args.cpus, root / "ray_tmp")
        sets = {n: build_set(root, n, args.rows_per_shard, args.cpus) for n in args.build_only}
        print("SETS " + json.dumps(sets), flush=True)
        import ray

        ray.shutdown()
        return

    # Builds run in a subprocess: the passes are forked from this process, and Linux carries
    # ru_maxrss across fork + exec, so this process must stay small (no Ray, no torch here).
    t0 = time.perf_counter()
    sizes = [args.n, args.n * args.factor]
    cmd = [sys.executable, "-m", "bench.bench_memory", "--build-only", *map(str, sizes),
           "--rows-per-shard", str(args.rows_per_shard), "--cpus", str(args.cpus), "--workdir", args.workdir]
    done = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SETS ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"feature build failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    sets = {int(k): v for k, v in json.loads(lines[-1][len("SETS "):]).items()}
    print(f"# bench_memory: passes over {args.n} and {args.n * args.factor} samples, batch "
          f"{args.batch_size}, {args.cpus} cpus, rows_per_shard={args.rows_per_shard}, reader={args.reader}; "
          f"features ready in {time.perf_counter() - t0:.1f} s (untimed); this process {peak_rss_mb():.0f} MB; "
          f"{load_note()}")
    results = {n: measure(f, args) for n, f in sets.items()}
    rows = []
    for n, r in results.items():
        rows.append((n, r["rows"], r["seconds"], r["driver_peak_rss_after_init_mb"],
                     r["driver_peak_rss_mb"], r["others_rss"], r["others_pss"],
                     r["tree_rss"], r["tree_pss"], r["procs"], r["samples"]))
    print_table(("N", "rows", "pass s", "driver base MB", "driver peak RSS MB", "ray RSS MB", "ray PSS MB",
                 "tree RSS MB", "tree PSS MB", "procs", "samples"), rows)
    small, large = (results[n] for n in (args.n, args.n * args.factor))
    assert small["rows"] == args.n and large["rows"] == args.n * args.factor, (small["rows"], large["rows"])
    g = lambda k: large[k] / small[k] if small[k] else float("nan")  # noqa: E731
    for r in (small, large):
        r["driver_pass_mb"] = r["driver_peak_rss_mb"] - r["driver_peak_rss_after_init_mb"]
    print(f"driver peak above its base: {small['driver_pass_mb']:.0f} MB for N, "
          f"{large['driver_pass_mb']:.0f} MB for {args.factor}N")
    print(f"RATIOS {args.factor}N/N peak: driver RSS {g('driver_peak_rss_mb'):.2f}x, Ray PSS "
          f"{g('others_pss'):.2f}x, tree PSS {g('tree_pss'):.2f}x, tree RSS {g('tree_rss'):.2f}x "
          f"(target <= 1.3x); {load_note()}")


if __name__ == "__main__":
    main()
