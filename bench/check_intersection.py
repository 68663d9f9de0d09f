"""Check tsd_ray's PSDS and intersection-based F against sed_scores_eval on seeded fixtures.

sed_scores_eval (the implementation the DCASE task-4 baseline reports with) is not a
dependency of tsd_ray: its only release on PyPI (0.0.4) is a source package that compiles
Cython at install and pulls in the PyPI ``pathlib`` backport. Install it in a scratch venv and
run this from the repository root with that venv's Python (tsd_ray's metrics need only numpy):

    python3 -m venv /tmp/ssev && /tmp/ssev/bin/pip install sed_scores_eval==0.0.4 pyyaml
    /tmp/ssev/bin/python -m bench.check_intersection            # prints a table of differences
    /tmp/ssev/bin/python -m bench.check_intersection --golden   # the values tests/metrics pins

In TSD each sample asks about one class, so sed_scores_eval is run class by class (the
samples of that class, one score column) and its per-class PSD-ROCs are combined with its own
multi-class function; that is the TSD reading of PSDS that tsd_ray.metrics.intersection
documents. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sed_scores_eval import intersection_based
from sed_scores_eval.base_modules.scores import create_score_dataframe
from sed_scores_eval.intersection_based.psds import (
    multi_class_psd_roc_from_single_class_psd_rocs,
    psds_from_psd_roc,
)

from tsd_ray.metrics.intersection import INTERSECTION_F, PSDS1, intersection_f, psds
from tsd_ray.metrics.postprocess import median_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factory import random_scored_samples  # noqa: E402  (the tests' fixture factory)


def _sse_inputs(samples, cls, hop, median_frames):
    scores, truth, durations = {}, {}, {}
    for s in samples:
        if s.target != cls:
            continue
        n = s.num_frames
        x = median_filter(np.asarray(s.probs[:n], dtype=np.float64), median_frames)
        scores[s.sample_id] = create_score_dataframe(x[:, None], np.arange(n + 1) * hop, [cls])
        truth[s.sample_id] = [(e.onset, min(e.offset, n * hop), cls) for e in s.reference_events()
                              if e.onset < n * hop]
        durations[s.sample_id] = n * hop
    return scores, truth, durations


def sse_psds(samples, classes, hop, median_frames=1, **crit):
    rocs = {}
    for c in classes:
        scores, truth, durations = _sse_inputs(samples, c, hop, median_frames)
        _, single = intersection_based.psd_roc(
            scores, truth, durations, dtc_threshold=crit["dtc"], gtc_threshold=crit["gtc"],
            alpha_st=0.0, max_efpr=crit["max_efpr"])
        rocs[c] = single[c]
    tpr, efpr = multi_class_psd_roc_from_single_class_psd_rocs(rocs, alpha_st=crit["alpha_st"],
                                                               max_efpr=crit["max_efpr"])
    return psds_from_psd_roc(tpr, efpr, crit["max_efpr"])


def sse_intersection_f(samples, classes, hop, threshold, median_frames=1, **crit):
    fs = []
    for c in classes:
        scores, truth, _ = _sse_inputs(samples, c, hop, median_frames)
        f, *_ = intersection_based.fscore(scores, truth, threshold, dtc_threshold=crit["dtc"],
                                          gtc_threshold=crit["gtc"])
        fs.append(100.0 * f[c])
    return float(np.mean(fs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--per-class", type=int, default=30, help="samples per class (3 classes)")
    p.add_argument("--frames", type=int, default=250, help="frames per sample")
    p.add_argument("--decimals", type=int, default=2, help="scores rounded to this many places; -1: not rounded")
    p.add_argument("--median", type=int, default=1, help="median window (frames) before both")
    p.add_argument("--golden", action="store_true", help="print the values tests/metrics/test_intersection.py pins")
    args = p.parse_args()
    hop = 0.04
    if args.golden:
        samples = random_scored_samples(2, per_class=12, decimals=None)
        classes = sorted({s.target for s in samples})
        print("psds1", repr(float(sse_psds(samples, classes, hop, **PSDS1))))
        print("psds1, median 5", repr(float(sse_psds(samples, classes, hop, median_frames=5, **PSDS1))))
        print("psds alpha_st 0", repr(float(sse_psds(samples, classes, hop, **{**PSDS1, "alpha_st": 0.0}))))
        print("intersection_f t=0.4", repr(sse_intersection_f(samples, classes, hop, 0.4, **INTERSECTION_F)))
        print("intersection_f t=0.5, median 5",
              repr(sse_intersection_f(samples, classes, hop, 0.5, median_frames=5, **INTERSECTION_F)))
        return
    print("| seed | samples | PSDS1 tsd_ray | PSDS1 sed_scores_eval | diff | inter-F@0.4 tsd_ray | sed_scores_eval | diff | s tsd_ray | s sse |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for seed in range(args.seeds):
        samples = random_scored_samples(seed, per_class=args.per_class, frames=args.frames,
                                        decimals=None if args.decimals < 0 else args.decimals)
        classes = sorted({s.target for s in samples})
        m = args.median
        t0 = time.perf_counter()
        mine = psds(samples, classes=classes, frame_hop_s=hop, median_frames=m).value
        f_mine = intersection_f(samples, classes=classes, frame_hop_s=hop, threshold=0.4, median_frames=m)["f"]
        t1 = time.perf_counter()
        ref = sse_psds(samples, classes, hop, median_frames=m, **PSDS1)
        f_ref = sse_intersection_f(samples, classes, hop, 0.4, median_frames=m, **INTERSECTION_F)
        t2 = time.perf_counter()
        print(f"| {seed} | {len(samples)} | {mine:.6f} | {ref:.6f} | {mine - ref:+.2e} | {f_mine:.4f} | "
              f"{f_ref:.4f} | {f_mine - f_ref:+.2e} | {t1 - t0:.2f} | {t2 - t1:.2f} |")


if __name__ == "__main__":
    main()
