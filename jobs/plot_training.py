"""Plot a run's training curves (loss and validation F per epoch, phase after phase) as a PNG.

    python jobs/plot_training.py ~/tsd_runs/tiny --out curves.png [--steps MS-]

RUN_DIR is the run's folder under the storage path (it holds ledger.json).
"""

from __future__ import annotations

import argparse
import sys

from tsd_ray.apps.detect import DetectError
from tsd_ray.apps.plots import plot_training
from tsd_ray.common import storage


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run folder (<storage>/<run name>) or its ledger.json")
    p.add_argument("--out", help="PNG to write (default: <run_dir>/training_curves.png)")
    p.add_argument("--steps", action="append", help="only ledger steps whose name starts with this (repeatable)")
    args = p.parse_args(argv)

    run_dir = args.run_dir[: -len("/ledger.json")] if args.run_dir.endswith("/ledger.json") else args.run_dir
    out = args.out or storage.join(run_dir, "training_curves.png")
    try:
        plot_training(run_dir, out, steps=args.steps)
    except DetectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"training curves: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
