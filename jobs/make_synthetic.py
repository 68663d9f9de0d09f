"""Write the deterministic synthetic TSD corpus (see docs/synthetic.md).

    python jobs/make_synthetic.py --out data/synthetic_tiny --preset tiny --seed 0
    python jobs/make_synthetic.py --out data/synthetic_demo --preset demo --overlap-classes

Prints the path of the corpus's dataset.yaml. Re-running with the same arguments is a no-op.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from tsd_ray.data.synthetic import PRESETS, CorpusDirError, corpus_size_bytes, make_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", required=True, help="output folder (created; must be empty or hold this corpus)"
    )
    parser.add_argument(
        "--preset", default="tiny", choices=sorted(PRESETS), help="corpus size (default tiny)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--overlap-classes",
        action="store_true",
        help="target classes include half of the source classes (URBAN-TSD-like variant)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default: one per CPU)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    try:
        spec = make_corpus(
            args.out, args.preset, args.seed, args.overlap_classes, num_workers=args.workers
        )
    except (CorpusDirError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size_mb = corpus_size_bytes(spec.parent) / 1e6
    print(f"{spec}  ({time.perf_counter() - t0:.1f} s, {size_mb:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
