"""How well the reference encoder separates the classes, by what it learns from.

For one corpus (a dataset spec) and one config, trains the encoder once per ``--train-on``
value in the same run (``references``: the reference pool alone; ``all``: + source events cut
at their onsets/offsets + weak clips) and prints, for each, the leave-one-out nearest-centroid
accuracy of the reference embeddings (overall and per class) and the wall time of the encoder
fit, beside a baseline with no training (each mel band's mean and standard deviation).
Features are built (or reused) under ``--storage``.

    python -m bench.bench_encoder --spec ~/realsounds_dev0/dataset.yaml --config real \\
        --storage /tmp/tsd_bench/enc [--set encoder.epochs=8] [--train-on references all]

This is what decides whether the detector can tell real classes apart: on real sound an
encoder trained on the reference pool alone separates them barely (issue tracker: 0.24 over 29
classes), and the detector conditioned on it cannot do better.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import repo_on_path


def stats_baseline(manifest) -> dict:
    """LOO accuracy of an embedding with no training: each mel band's mean and standard
    deviation over the reference's signal frames (centred over the pool). A learnt encoder
    should beat it; on the real dev corpus (seed 0) it did not."""
    import numpy as np

    from tsd_ray.data.shards import open_shard
    from tsd_ray.train.encoder_items import loo_centroid_accuracy

    feats, labels = [], []
    for f in manifest.files("references"):
        t = open_shard(f).read(columns=["label", "mel", "n_frames"])
        mel = t.column("mel").combine_chunks().to_numpy_ndarray()
        for x, n, label in zip(mel, t.column("n_frames").to_pylist(), t.column("label").to_pylist()):
            x = x[: max(1, int(n))].astype(np.float32)
            feats.append(np.concatenate([x.mean(0), x.std(0)]))
            labels.append(label)
    feats = np.asarray(feats)
    return loo_centroid_accuracy(feats - feats.mean(0), labels)


def main(argv: list[str] | None = None) -> int:
    repo_on_path()
    from tsd_ray.apps.cli import add_config_args, config_from_args, setup_logging

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--spec", required=True, help="dataset spec YAML of the corpus")
    p.add_argument("--storage", default="/tmp/tsd_bench/encoder", help="features and encoder runs go here")
    p.add_argument("--train-on", nargs="+", default=["references", "all"], choices=["references", "all"])
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    cfg = config_from_args(args, [f"data.spec={args.spec}"])

    from tsd_ray.common.ray_env import ensure_ray
    from tsd_ray.experiments.pipeline import prepare_features
    from tsd_ray.train.driver import embeddings_file
    from tsd_ray.train.encoder import embed_references, embedding_quality, pretrain_encoder

    ensure_ray()
    manifest = prepare_features(cfg, args.storage)
    rows = {"log-mel stats": {"fit_s": 0.0, **stats_baseline(manifest)}}
    print(f"[bench_encoder] baseline (mean + std of each mel band, no training): LOO accuracy "
          f"{rows['log-mel stats']['accuracy']:.3f}", flush=True)
    for train_on in args.train_on:
        c = config_from_args(args, [f"data.spec={args.spec}", f"encoder.train_on={train_on}"])
        name = f"bench-encoder-{train_on}-seed{c.train.seed}-{int(time.time())}"
        t0 = time.time()
        enc = pretrain_encoder(c, manifest, storage_path=args.storage, run_name=name)
        fit_s = time.time() - t0
        q = embedding_quality(embed_references(enc, manifest, embeddings_file(args.storage, name)))
        rows[train_on] = {"fit_s": round(fit_s, 1), **q}
        print(f"[bench_encoder] train_on={train_on}: LOO accuracy {q['accuracy']:.3f} over {q['n']} references, "
              f"fit {fit_s:.0f} s", flush=True)
    classes = sorted({c for r in rows.values() for c in r["per_class"]})
    print("\n| class | " + " | ".join(rows) + " |\n| --- |" + " ---: |" * len(rows))
    for c in classes:
        vals = [rows[k]["per_class"].get(c) for k in rows]
        print(f"| {c} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in vals) + " |")
    print("| **all** | " + " | ".join(f"**{r['accuracy']:.3f}**" for r in rows.values()) + " |")
    print("| fit (s) | " + " | ".join(f"{r['fit_s']:.0f}" for r in rows.values()) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
