"""Score a trained student on a split: post-processing tuned on validation, sed_eval F-scores.

    python jobs/evaluate.py --checkpoint ~/tsd_runs/tiny/tiny-MS-it1_f/checkpoint_.../model.pt --split target_test
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tsd_ray.apps.cli import add_config_args, config_from_args, setup_logging
from tsd_ray.common import environment, storage
from tsd_ray.common.types import SPLIT_DOMAIN
from tsd_ray.data.shards import load_manifest
from tsd_ray.evaluate.predict import evaluate_model
from tsd_ray.evaluate.report import write_evaluation
from tsd_ray.models.checkpoint import CheckpointError, load_payload


def choose_val_split(split: str, val_split: str | None) -> tuple[str, str | None]:
    """The split to tune post-processing on, and why it cannot be used (None: it can).

    Default: the validation split of ``split``'s domain. Refused: a val split equal to
    ``split`` (the threshold and median filter would be tuned on the very scores they report;
    also the default when ``split`` is itself the domain's val split) and a split of the other
    domain (its samples hold the other domain's classes, so nothing on it says how the scored
    classes should be post-processed).
    """

    known = ", ".join(SPLIT_DOMAIN)
    if split not in SPLIT_DOMAIN:
        return "", f"--split {split!r} is not a split (one of {known}); fix --split (and --val-split)"
    domain = SPLIT_DOMAIN[split]
    default = f"{domain}_val"
    if val_split is not None and val_split not in SPLIT_DOMAIN:
        return "", (f"--val-split {val_split!r} is not a split (one of {known}); fix --val-split "
                    f"(or leave it out for {default}) for --split {split}")
    chosen = val_split or default
    other = default if split != default else f"{domain}_train"
    if chosen == split:
        given = f"--val-split {chosen}" if val_split else f"--val-split (default {chosen})"
        return "", (f"{given} is the --split being scored: the post-processing would be tuned on the "
                    f"scores it reports; pass --val-split {other}, or score another --split")
    if SPLIT_DOMAIN[chosen] != domain:
        return "", (f"--val-split {chosen} is a {SPLIT_DOMAIN[chosen]}-domain split but --split {split} is "
                    f"{domain}-domain: its classes are not the scored ones; pass --val-split {other} "
                    "(or leave it out)")
    return chosen, None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="student model file (model.pt) or its checkpoint folder")
    p.add_argument("--split", default="target_test", help="split to score (default target_test)")
    p.add_argument("--val-split", default=None, help="split post-processing is tuned on (default: the domain's val)")
    p.add_argument("--features", help="features URI (default: the one recorded in the checkpoint)")
    p.add_argument("--embeddings", help="reference embedding table (default: recorded in the checkpoint)")
    p.add_argument("--out", help="folder for evaluation.json / evaluation.md (default: beside the checkpoint)")
    add_config_args(p)
    args = p.parse_args(argv)
    val_split, problem = choose_val_split(args.split, args.val_split)
    if problem:  # before anything is loaded: no checkpoint or features needed to refuse
        sys.exit(f"error: {problem}")
    setup_logging(args.verbose)
    cfg = config_from_args(args)

    model = args.checkpoint
    if not model.endswith(".pt"):
        model = storage.join(model, "model.pt")
    try:
        meta = load_payload(model)["meta"]
    except CheckpointError as exc:
        sys.exit(f"error: {exc}")
    features = args.features or meta.get("features")
    embeddings = args.embeddings or meta.get("embeddings")
    if not features or not embeddings:
        sys.exit("error: the checkpoint does not record its features/embeddings; pass --features and --embeddings")
    res = evaluate_model(model, load_manifest(features), embeddings, cfg.eval, split=args.split, val_split=val_split)
    out = args.out or os.path.dirname(storage.expand(model))
    res["environment"] = environment.describe()
    write_evaluation(res, out)
    print(json.dumps({k: res[k] for k in ("split", "segment_f", "event_f", "postprocessing")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
