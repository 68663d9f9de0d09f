"""Ray Tune over the two-student method's knobs (one trial = one MS run of Algorithm 1).

    python jobs/tune.py --space tune_spaces/paper.yaml --config demo --num-samples 16
    python jobs/tune.py --space tune_spaces/smoke.yaml            # the space's base_config
    ray job submit --working-dir . -- python jobs/tune.py --space tune_spaces/paper.yaml \\
        --config paper --storage s3://bucket/runs

The space is checked before Ray starts (unknown keys, wrong types, bad distributions).
Started again with the same --name under the same storage, the search resumes. Outputs in
<storage>/<name>/: tune_summary.md/.json, best_config.yaml (for jobs/iterate.py --config),
TensorBoard logs (tensorboard --logdir <storage>/<name>). See docs/tune.md.
"""

from __future__ import annotations

import argparse
import sys

from tsd_ray.apps.cli import add_config_args, setup_logging
from tsd_ray.common.config import ConfigError
from tsd_ray.experiments.tune import run_search
from tsd_ray.experiments.tune_space import validate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True, help="search space YAML (tune_spaces/*.yaml)")
    add_config_args(p, default=None)
    p.add_argument("--num-samples", type=int, help="trials to sample (default: the space's budget.num_samples)")
    p.add_argument("--max-concurrent-trials", type=int, help="default: the space's budget (capped to what the cluster holds)")
    p.add_argument("--storage", help="storage root, local folder or s3:// URI (default: run.storage of the config)")
    p.add_argument("--name", help="experiment name (default: tune-<space file stem>); same name = resume")
    p.add_argument("--check", action="store_true", help="only check the space against the config, then exit")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    try:
        space, base, _ = validate(args.space, args.config, args.overrides)
    except ConfigError as exc:
        sys.exit(f"search space error: {exc}")
    if args.num_samples is not None and args.num_samples < 1:
        sys.exit("error: --num-samples must be >= 1")
    if args.check:
        print(f"{args.space}: OK ({len(space.params)} params: {', '.join(space.keys)})")
        return 0
    try:
        out = run_search(space, base, storage_root=args.storage, name=args.name, num_samples=args.num_samples,
                         max_concurrent_trials=args.max_concurrent_trials)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    return 0 if out.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
