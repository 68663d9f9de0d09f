"""Starting or joining Ray the same way on a laptop and on a cluster."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from tsd_ray.common.progress import verbose

log = logging.getLogger(__name__)

#: Ray Data's logging config with a warnings-only console (used unless --verbose).
RAY_DATA_QUIET_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")


def ray_log_level() -> str:
    """Level of Ray's own log lines on the console: INFO with ``--verbose``, else WARNING
    (Ray Train's report and checkpoint notices, worker-group start-up messages)."""
    return "INFO" if verbose() else "WARNING"


def quiet_data_context() -> None:
    """No progress-bar floods in logs (set in every process that builds datasets;
    docs/architecture.md, "Quiet Ray logs"); without ``--verbose`` also no per-dataset notices
    of Ray Data on this process's console, nor its warning that the bars are off."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if not verbose():
        log_once("ray_data_progress_manager_disabled")  # the warning is logged once per process
        for handler in logging.getLogger("ray.data").handlers:
            if type(handler).__name__ == "PlainRayHandler":  # the console, not ray-data.log
                handler.setLevel(logging.WARNING)


def shuffle_seed(seed: int, epoch: int, rank: int, stream: int = 0) -> int:
    """Seed of one epoch's local shuffle on one worker: a fresh order every epoch, rank and
    stream, the same order for the same ``train.seed`` (Ray's default draws it from the OS).

    A phase with several workers repeats only if each worker also gets the same blocks in the
    same order: ``train.reproducible`` (:func:`keep_order`, :func:`tsd_ray.train.driver.data_config`).
    """
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


def keep_order(ds):
    """``ds`` (returned) keeps its blocks in input order when it runs or is materialised.

    Ray Data otherwise lists a materialised dataset's blocks in the order its tasks finished,
    which varies run to run, so a seeded block shuffle of them would not repeat. The option
    lives in the dataset's own copy of the DataContext, taken when it was created.
    """
    ds.context.execution_options.preserve_order = True
    return ds


def ensure_ray(num_cpus: int | None = None, *, include_dashboard: bool | None = None) -> None:
    """Join the cluster a job was submitted to (RAY_ADDRESS), or start a local Ray.

    A local Ray binds its dashboard to 127.0.0.1 only. Environment tweaks (docs/architecture.md, "Ray settings applied at start-up") are
    applied before start-up: few Parquet footer actors, no doubled prints, a shorter poll of
    Ray Train's workers.
    """
    import ray

    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # Ray Train's controller polls its workers every 2 s by default, and a fit's start and end
    # each wait for a poll; 0.5 s took about 3 s off every fit on 2 cores. Ray Train passes this
    # variable from the driver to the controller and workers at fit(), so it holds on a
    # cluster too; a value set in the environment wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if not verbose():
        # Ray Data processes (e.g. Ray Train's split coordinator) read this at start-up; it
        # reaches every process of a Ray this call starts (on a cluster, set it in the job's
        # runtime_env env_vars to get the same)
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_QUIET_LOGGING))
    if ray.is_initialized():
        quiet_data_context()
        return
    kwargs: dict = {"log_to_driver": True, "configure_logging": True, "logging_level": logging.WARNING,
                    "logging_config": ray.LoggingConfig(log_level=ray_log_level())}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        if num_cpus is None and os.environ.get("TSD_RAY_NUM_CPUS"):
            num_cpus = int(os.environ["TSD_RAY_NUM_CPUS"])
        ray.init(
            num_cpus=num_cpus,
            dashboard_host="127.0.0.1",
            include_dashboard=include_dashboard,
            **kwargs,
        )
    _tighten_token_file()
    quiet_data_context()


def _tighten_token_file() -> None:
    """Ray 2.60 writes ~/.ray/auth_token world-readable (0644); make it 0600."""
    path = os.path.expanduser("~/.ray/auth_token")
    try:
        if os.path.exists(path) and (os.stat(path).st_mode & 0o077):
            os.chmod(path, 0o600)
    except OSError as exc:  # pragma: no cover - permissions of another user's file
        log.warning("could not restrict %s: %s", path, exc)


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def map_with_actors(ds, actor, *, kwargs: dict, size: int, batch_size: int | None,
                    num_gpus: float = 0, batch_format: str = "numpy"):
    """``ds.map_batches`` over a pool of ``size`` actors of the class ``actor`` (each built once
    with ``kwargs``, holding 1 CPU and ``num_gpus``): how tsd_ray runs a model or a writer over
    a Ray Dataset (feature build, reference embedding, prediction, detection)."""
    import ray

    return ds.map_batches(
        actor,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size,
        batch_format=batch_format,
        compute=ray.data.ActorPoolStrategy(size=size),
        num_gpus=num_gpus,
        num_cpus=1,
    )


def quiet_worker_process() -> None:
    """Keep a training worker's or model actor's console to tsd_ray's own lines (unless
    ``--verbose``); call it first thing in the process.

    - Ray Train 2.60 logs "Reporting training result ..." through a logger named by its file
      path, not ``ray.train``, so ``RunConfig.logging_config`` does not filter it.
    - Batches from Ray Data are read-only numpy arrays; torch warns once per process that a
      tensor made from one must not be written to. tsd_ray never writes into its inputs.
    """
    import warnings

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
    if verbose():
        return
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
