"""Build sharded log-mel features of a corpus (dataset spec) on Ray Data.

    python jobs/build_dataset.py --spec CORPUS/dataset.yaml --out ~/tsd_runs/_features/mycorpus
"""

from __future__ import annotations

import argparse
import os
import sys

from tsd_ray.apps.cli import add_config_args, config_from_args, setup_logging
from tsd_ray.data.build import BuildError, build_features
from tsd_ray.data.corpora import SpecError, load_spec, read_corpus


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="dataset spec YAML (see docs/dataset_spec.md)")
    p.add_argument("--out", required=True, help="output folder or s3:// URI")
    p.add_argument("--serial", action="store_true", help="no Ray: extract in this process")
    add_config_args(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    cfg = config_from_args(args)

    try:
        spec = load_spec(args.spec)
        corpus = read_corpus(spec)
        res = build_features(
            corpus, args.out, frontend=cfg.frontend, samples_cfg=cfg.samples, build_cfg=cfg.build,
            use_ray=not args.serial, spec_path=os.path.abspath(args.spec),
        )
    except (SpecError, BuildError) as exc:
        sys.exit(f"error: {exc}")
    print(f"{res.out}: {res.shards_total} shards ({res.shards_written} written now) in {res.seconds:.1f} s")
    for split, s in res.summary.items():
        print(f"  {split:13s} {s['mixtures']:6d} mixtures {s['samples']:7d} samples ({s['positives']} pos / {s['negatives']} neg)")
    if res.quarantined:
        print(f"  {len(res.quarantined)} items quarantined: see {res.out}/quarantine.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
