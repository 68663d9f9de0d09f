"""Argument helpers shared by the thin scripts in ``jobs/``."""

from __future__ import annotations

import argparse
import logging
import sys

from tsd_ray.common.config import Config, ConfigError, load_config
from tsd_ray.common.progress import set_verbose


def add_config_args(p: argparse.ArgumentParser, default: str | None = "tiny") -> None:
    p.add_argument("--config", default=default, help="shipped config name (tiny, demo, paper) or YAML path")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set method.lambda_d=0.1 (repeatable)",
    )
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's own log lines (reports, checkpoints, dataset notices)")


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    try:
        return load_config(args.config, list(args.overrides) + list(extra or []))
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")


def setup_logging(verbose: bool = False) -> None:
    """Warnings and errors on the console (progress lines are printed, not logged); with
    ``verbose`` also INFO, and Ray's own chatter (:func:`tsd_ray.common.progress.set_verbose`)."""
    set_verbose(verbose)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
