"""Driver side of a phase: datasets, scaling, ``TorchTrainer.fit()``, the result's files.

``run_phase`` runs one :class:`~tsd_ray.train.phase.PhaseSpec` as a Ray Train run named
``<run>-<phase>`` under the run's storage path. Started again with the same names it resumes
from the last reported checkpoint (Ray Train V2 semantics), and a finished run returns its
old result at once.
"""

from __future__ import annotations

import signal
import threading
import zlib
from dataclasses import dataclass

from tsd_ray.common import storage
from tsd_ray.common.config import Config, TrainConfig
from tsd_ray.common.ray_env import cluster_cpus, ensure_ray, keep_order, ray_log_level, shuffle_seed
from tsd_ray.data.shards import NUMERIC_KEYS, Manifest, read_samples
from tsd_ray.models.checkpoint import load_payload
from tsd_ray.train.phase import PhaseSpec
from tsd_ray.train.worker import train_loop_per_worker


@dataclass(frozen=True)
class PhaseResult:
    name: str
    model_uri: str  # best-by-validation student (model.pt), self-describing
    checkpoint_uri: str  # the Ray checkpoint directory it lives in
    best_val_score: float
    best_metrics: dict
    history: list


def checkpoint_uri(checkpoint) -> str:
    """A Ray ``Checkpoint`` -> path/URI usable by :mod:`tsd_ray.common.storage`."""
    import pyarrow.fs as pafs

    fs = checkpoint.filesystem
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return checkpoint.path
    return f"{fs.type_name}://{checkpoint.path}"


def scaling_config(tc: TrainConfig):
    """Workers sized so Ray Data keeps CPUs on a small machine (docs/architecture.md, "Ray Data and Train on a small machine")."""
    from ray.train import ScalingConfig

    if tc.use_gpu:
        res = {"CPU": tc.cpus_per_worker, "GPU": tc.gpus_per_worker}
    else:
        free = max(0.1, cluster_cpus() - tc.reserve_cpus_for_data)
        res = {"CPU": round(min(tc.cpus_per_worker, free / tc.num_workers), 2)}
    return ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=res)


def run_config(name: str, storage_path: str, max_failures: int, callbacks=None):
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    fs, path = storage.resolve(storage_path)
    return RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=fs,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=1),  # latest holds best model.pt too
        callbacks=callbacks,
        logging_config=ray.LoggingConfig(log_level=ray_log_level()),  # quiet unless --verbose
    )


def loop_config(cfg: Config, phase: PhaseSpec, manifest: Manifest, embeddings_uri: str, fault_marker: str | None = None,
                encoder_uri: str | None = None) -> dict:
    return {
        "cfg": cfg.to_dict(),
        "phase": phase.to_dict(),
        "manifest": manifest.data,
        "features": manifest.uri,
        "embeddings": embeddings_uri,
        "encoder": encoder_uri,  # the pretrained encoder (read with encoder.joint on)
        "fault_marker": fault_marker,
    }


def cached_dataset(ds, n_samples: int, limit: int, shuffle: bool, order_seed: int | None = None):
    """Small splits: expand once and keep in the object store (``shuffle``: block order drawn
    from ``order_seed``, else afresh at every pass); big ones: stream every epoch."""
    if n_samples > limit:
        return ds
    if order_seed is not None:  # blocks listed in input order: the seed alone decides theirs
        ds = keep_order(ds)
    ds = ds.materialize()
    return ds.randomize_block_order(seed=order_seed) if shuffle else ds


#: Materialised splits of this driver, shared by the phases that read them: a run's nine
#: phases read three splits, and expanding one took 3-4 s per phase on 2 cores. Keyed by the
#: Ray job (a new ray.init drops the old object store), the build and what was read.
_SPLITS: dict[tuple, object] = {}


def _split_dataset(manifest: Manifest, split: str, n_samples: int, limit: int, *, with_ids: bool = False,
                   fraction: float = 1.0, seed: int = 0, packed: bool = False, order_seed: int | None = None):
    """A split as one phase reads it: training rows (numeric columns, block order shuffled,
    from ``order_seed`` when given, else afresh at every pass; ``packed``: one row per mixture,
    see :func:`tsd_ray.data.shards.pack_batch`) or, ``with_ids``, evaluation rows in file order. Up to
    ``limit`` samples it is expanded once per job and held in the object store
    (:func:`cached_dataset`'s rule; with ``order_seed`` the held blocks are listed in file
    order, not in the order Ray's tasks finished); beyond, streamed in file order."""
    import ray

    packed = packed and not with_ids

    def make():
        ds = read_samples(manifest, split, with_ids=with_ids, fraction=fraction, seed=seed, packed=packed)
        return ds if with_ids or packed else ds.select_columns(list(NUMERIC_KEYS))

    if n_samples > limit:
        return make()
    job = ray.get_runtime_context().get_job_id()
    key = (job, manifest.uri, manifest.data.get("build_key"), split, with_ids, packed, fraction,
           seed if fraction < 1.0 else 0, order_seed is not None)
    if key not in _SPLITS:  # a hit builds nothing: the held blocks are the split
        for stale in [k for k in _SPLITS if k[0] != job]:  # blocks of an earlier Ray job are gone
            del _SPLITS[stale]
        ds = make()
        _SPLITS[key] = (keep_order(ds) if order_seed is not None else ds).materialize()
    return _SPLITS[key] if with_ids else _SPLITS[key].randomize_block_order(seed=order_seed)


def block_order_seed(seed: int, phase_name: str, split: str) -> int:
    """Seed of one phase's block order over one split: fixed by ``train.seed`` and the names,
    so the same phase of another run (or a restarted one) deals out the same blocks."""
    return shuffle_seed(seed, 0, 0, zlib.crc32(f"{phase_name}/{split}".encode()))


def phase_datasets(manifest: Manifest, phase: PhaseSpec, seed: int = 0, cache_max_samples: int = 0,
                   packed: bool = False, reproducible: bool = False) -> dict:
    """Train (split across workers), validation (whole, with ids) and the other domain's rows;
    ``packed``: training rows are whole mixtures (``train.group_by_mixture``); ``reproducible``:
    block orders drawn from ``seed`` (``train.reproducible``), else afresh at every pass."""
    _, n_main = manifest.count(phase.train_split)
    _, n_val = manifest.count(phase.val_split)

    def order(split: str) -> int | None:
        return block_order_seed(seed, phase.name, split) if reproducible else None

    datasets = {
        "train": _split_dataset(manifest, phase.train_split, n_main, cache_max_samples, packed=packed,
                                order_seed=order(phase.train_split)),
        "val": _split_dataset(manifest, phase.val_split, n_val, cache_max_samples, with_ids=True),
    }
    aux = phase.aux_split
    if aux is not None:
        _, n_aux = manifest.count(aux)
        frac = min(1.0, n_main / max(1, n_aux))
        datasets["aux"] = _split_dataset(manifest, aux, int(n_aux * frac), cache_max_samples, fraction=frac,
                                         seed=seed, packed=packed, order_seed=order(aux))
    return datasets


def data_config(datasets: dict, reproducible: bool, split: tuple[str, ...] = ("train",)):
    """Ray Train's ingest: the ``split`` datasets' rows split across the workers (the others
    read whole by every worker); ``reproducible``: every dataset fed in order, so the split
    deals each worker the same blocks run after run (Ray's output splitter then ignores
    locality and gives each block to the worker with fewest rows).

    The options are built here rather than by ``DataConfig.default_ingest_options()``, which
    copies the deprecated ``exclude_resources`` and so warns on every phase (Ray 2.60); the
    values are the same (nothing excluded)."""
    from ray.data import ExecutionOptions
    from ray.data.context import DataContext
    from ray.train import DataConfig

    current = DataContext.get_current().execution_options
    options = {
        name: ExecutionOptions(resource_limits=current.resource_limits,
                               preserve_order=True if reproducible else current.preserve_order,
                               verbose_progress=current.verbose_progress)
        for name in datasets
    }
    return DataConfig(datasets_to_split=list(split), execution_options=options)


def fit_trainer(loop, loop_config: dict, tc: TrainConfig, *, name: str, storage_path: str, datasets: dict,
                split: tuple[str, ...] = ("train",), callbacks=None):
    """The one place a ``TorchTrainer`` is built and run (phases and encoder pretraining).

    DDP over ``tc.num_workers`` (gloo on CPU, nccl with ``tc.use_gpu``), the run folder
    ``<storage_path>/<name>`` (resumed when it exists), Ray Data ingest of ``datasets`` (those in
    ``split`` are split among the workers). Returns Ray's ``Result``; a failed run raises its
    error, and a run without a checkpoint raises ``RuntimeError``.
    """
    from ray.train.torch import TorchConfig, TorchTrainer

    ensure_ray()
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=scaling_config(tc),
        run_config=run_config(name, storage_path, tc.max_failures, callbacks),
        datasets=datasets,
        dataset_config=data_config(datasets, tc.reproducible, split=split),
    )
    result = _fit_releasing_controller(trainer)
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: finished without a checkpoint")
    return result


def _fit_releasing_controller(trainer):
    """``trainer.fit()``, then the SIGINT handler restored.

    Ray Train 2.60's ``fit`` installs a SIGINT handler (a Ctrl-C aborts the run gracefully)
    whose closure holds the run's controller actor, and leaves it installed: the controller,
    a ~0.5 GB process, then lives on until the next ``fit`` replaces the handler, and the last
    one until the job ends. Restoring the handler releases it when its run is over.
    """
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()  # fit installs no handler off the main thread
    before = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        signal.signal(signal.SIGINT, before)


def run_phase(
    cfg: Config,
    phase: PhaseSpec,
    manifest: Manifest,
    embeddings_uri: str,
    *,
    storage_path: str,
    run_name: str,
    callbacks=None,
    encoder_uri: str | None = None,
) -> PhaseResult:
    """Train one phase with Ray Train (DDP over ``cfg.train.num_workers``).

    ``embeddings_uri``: the run's reference table; ``encoder_uri``: the pretrained encoder that
    made it, which a phase fine-tunes from when ``encoder.joint`` is on and its init student
    carries no encoder of its own (:mod:`tsd_ray.train.joint`).
    """

    name = f"{run_name}-{phase.name}"
    marker = storage.join(storage.expand(storage_path), name, "_fault_injected") if cfg.train.fail_at_epoch >= 0 else None
    tc = cfg.train
    ensure_ray()
    datasets = phase_datasets(manifest, phase, tc.seed, tc.cache_max_samples, tc.group_by_mixture, tc.reproducible)
    result = fit_trainer(train_loop_per_worker, loop_config(cfg, phase, manifest, embeddings_uri, marker, encoder_uri), tc,
                         name=name, storage_path=storage_path, datasets=datasets, callbacks=callbacks)
    ck = checkpoint_uri(result.checkpoint)
    ret = getattr(result, "return_value", None) or {}
    model_uri = storage.join(ck, "model.pt")
    if not ret:  # a re-run of a finished run: read the numbers back from the model file

        meta = load_payload(model_uri)["meta"]
        ret = {"best_val_score": meta["metrics"].get("val_score", float("nan")), "best_metrics": meta["metrics"], "history": []}
    return PhaseResult(
        name=phase.name,
        model_uri=model_uri,
        checkpoint_uri=ck,
        best_val_score=float(ret["best_val_score"]),
        best_metrics=dict(ret["best_metrics"]),
        history=list(ret.get("history", [])),
    )


def encoder_file(storage_path: str, run_name: str) -> str:
    return storage.join(storage.expand(storage_path), run_name, "encoder", "encoder.pt")


def embeddings_file(storage_path: str, run_name: str) -> str:
    return storage.join(storage.expand(storage_path), run_name, "encoder", "embeddings.parquet")
