"""Shared fixtures. Ray clusters started here are stopped by the fixture that started them."""

from __future__ import annotations

import os
import tempfile

import pytest

# Keep Ray's session/log dirs out of the repo and quiet.
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# One BLAS/OpenMP thread in the test process: Ray workers run beside it on 2 cores, and
# oversubscribed torch threads slow small ops 10-40x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A local 2-CPU Ray for the whole session (started once: ray.init costs 4-6 s)."""
    import ray

    from tsd_ray.common.ray_env import quiet_data_context

    if ray.is_initialized():
        yield ray
        return
    tmp = tempfile.mkdtemp(prefix="tsd-ray-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=tmp,
        logging_level="ERROR",
        log_to_driver=False,
    )
    quiet_data_context()
    try:
        yield ray
    finally:
        ray.shutdown()
