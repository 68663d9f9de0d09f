"""Algorithm 1 end to end (+ SS/WS baselines, ablations): the main job.

    python jobs/iterate.py --config demo
    ray job submit --working-dir . -- python jobs/iterate.py --config demo --storage s3://bucket/runs
"""

from __future__ import annotations

import argparse
import sys

from tsd_ray.apps.cli import add_config_args, config_from_args, setup_logging
from tsd_ray.experiments.ledger import LedgerError
from tsd_ray.experiments.pipeline import run_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--run-name", help="run name (default: run.name of the config); same name = resume")
    p.add_argument("--storage", help="storage root, local folder or s3:// URI (default: run.storage)")
    p.add_argument("--new-run", action="store_true", help="if the run name exists with another config, use a fresh name")
    p.add_argument("--ablations", action="store_true", help="also run Table 2 (KD / PS / AD switched off)")
    p.add_argument("--iterations-table", action="store_true", help="also score every iteration's students (Table 3)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    extra = [f"run.name={args.run_name}"] if args.run_name else []
    cfg = config_from_args(args, extra)

    try:
        run_all(cfg, storage_override=args.storage, ablations=args.ablations,
                iteration_table=args.iterations_table, new_run=args.new_run)
    except LedgerError as exc:
        sys.exit(f"error: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
