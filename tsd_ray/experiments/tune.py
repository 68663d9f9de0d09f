"""Ray Tune over the two-student method's knobs: search spaces as YAML, one trial per run.

A search space (``tune_spaces/*.yaml``) names the same dotted config keys as ``--set`` and
the config files (``method.lambda_d``, ``phases.f_source.lr``, ``eval.threshold``…)::

    metric: val_score            # the only metric a trial reports for selection (F-score, %)
    mode: max
    scheduler: asha              # asha (early stopping) | fifo (every trial runs to the end)
    seed: 0                      # optional: seed of the random sampler
    base_config: tiny            # optional: used when the job gets no --config
    budget: {num_samples: 8, max_concurrent_trials: 1, grace_period: 1, reduction_factor: 2}
    params:
      method.lambda_d: {type: loguniform, low: 0.01, high: 1.0}
      method.max_iterations: {type: randint, low: 1, high: 4}      # both ends included
      phases.w_target.lr: {type: choice, values: [0.001, 0.003]}
      eval.threshold: {type: grid, values: [0.4, 0.5]}              # every value, x num_samples

Everything is checked before Ray starts (:func:`tsd_ray.experiments.tune_space.load_space`, :func:`~tsd_ray.experiments.tune_space.check_params`): unknown
space fields, unknown or section-valued config keys, malformed distributions, and values of
the wrong type for their key (each distribution's extreme/choice values are pushed through
the config loader, so ``ConfigError`` speaks for the key), each error naming the key.

A trial (:func:`tsd_ray.experiments.tune_trial.trial_main`) is one run of Algorithm 1 (the MS recipe, the very code of
``jobs/iterate.py``: :class:`tsd_ray.experiments.pipeline.Run` + :func:`tsd_ray.experiments.pipeline.run_ms`); every
phase is its own Ray Train ``TorchTrainer`` run inside the trial, and the trial reports to
Tune after every finished phase (:class:`tsd_ray.experiments.tune_trial.ScoreTracker` says what ``val_score`` is), so ASHA
can stop weak trials after their first phases. ``training_iteration`` counts phases.

Resources: a trial's driver takes no CPU (a small ``memory`` reservation only) so Ray Data
and Ray Train keep the cores (docs/architecture.md, "Ray Tune trial resources": a 1-CPU trial driver starves them on a small
machine); the Train workers of each phase come from the trial config's ``train`` section, and
:func:`tsd_ray.experiments.tune_trial.concurrency_cap` keeps concurrent trials within the cluster's CPUs/GPUs.

Sharing and resuming: features are built once by the driver; the reference encoder is
pretrained once (per encoder/train/feature settings) and handed to every trial whose
settings match. Each trial has its own run folder ``<storage>/<name>-trial-<trial id>``
and ledger, so a restored experiment (``Tuner.restore``) re-runs only unfinished phases.

Modules: :mod:`~tsd_ray.experiments.tune_space` (the YAML space and its checks),
:mod:`~tsd_ray.experiments.tune_trial` (one trial), :mod:`~tsd_ray.experiments.tune_summary`
(rows, best trial, summary); this module drives the search (:func:`run_search`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

from tsd_ray.common import storage
from tsd_ray.common.digest import digest
from tsd_ray.common.progress import say
from tsd_ray.common.ray_env import cluster_cpus, cluster_gpus, ensure_ray
from tsd_ray.experiments.pipeline import prepare_features
from tsd_ray.experiments.tune_space import PATH_KEYS, SearchSpace, SpaceError, check_params
from tsd_ray.experiments.tune_summary import (
    SearchOutcome,
    best_config_yaml,
    format_summary,
    pick_best,
    trial_row,
)
from tsd_ray.experiments.tune_trial import (
    TRIAL_DRIVER_RESOURCES,
    TrialSetup,
    concurrency_cap,
    data_key,
    max_reports,
    shared_encoder,
    trial_main,
)

#: Written into the experiment folder: what the search was started with (restore checks it).
SETUP_FILE = "tsd_tune_setup.json"


def _absolute_paths(base: dict) -> dict:
    out = copy.deepcopy(base)
    for section, key in PATH_KEYS:
        v = (out.get(section) or {}).get(key)
        if isinstance(v, str) and v and not storage.is_uri(v) and not os.path.isabs(os.path.expanduser(v)):
            out[section][key] = str(Path(v).expanduser().resolve())
    return out


def _setup_record(space: SearchSpace, base: dict, num_samples: int) -> dict:
    """What a restore must match: the space's content (not its path), base config, samples."""
    sp = {k: v for k, v in space.to_dict().items() if k not in ("path", "description")}
    return json.loads(json.dumps({"space": sp, "base_config_digest": digest(base), "num_samples": num_samples}))


def run_search(
    space: SearchSpace,
    base: dict,
    *,
    storage_root: str | None = None,
    name: str | None = None,
    num_samples: int | None = None,
    max_concurrent_trials: int | None = None,
    verbose: int = 1,
) -> SearchOutcome:
    """Run (or resume) a search and write its outputs into the experiment folder.

    ``base`` is the checked base config mapping (:func:`validate`). Started again with the same
    ``name`` under the same storage the experiment is restored (``Tuner.restore``): finished
    trials stay, unfinished ones re-run only their unfinished phases. A changed space or base
    config under the same name is refused.
    """
    from ray import tune as rtune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    base = _absolute_paths(base)
    cfg = check_params(space, base)
    root = storage.expand(storage_root or cfg.run.storage)
    name = name or f"tune-{Path(space.path).stem}"
    n = num_samples or space.budget.num_samples
    exp = storage.join(root, name)
    setup_uri = storage.join(exp, SETUP_FILE)
    record = _setup_record(space, base, n)
    fs, exp_path = storage.resolve(exp)

    ensure_ray()
    manifest = prepare_features(cfg, root)  # once, before any trial: trials never race to build it
    enc_key, enc_uri, emb_uri = shared_encoder(cfg, root, manifest)
    setup = TrialSetup(name=name, root=root, base=base, features=manifest.uri, data_key=data_key(cfg),
                       encoder_key=enc_key, encoder_uri=enc_uri, embeddings_uri=emb_uri)
    trainable = rtune.with_resources(rtune.with_parameters(trial_main, setup=setup), dict(TRIAL_DRIVER_RESOURCES))

    restored = rtune.Tuner.can_restore(exp_path, storage_filesystem=fs)
    if restored:
        if storage.exists(setup_uri):
            old = storage.read_json(setup_uri)
            if old != record:
                raise SpaceError(
                    f"experiment {exp} was started with another space/base config/num_samples; "
                    "restore it with the same ones, or pass another --name for a new search")
        say(f"restoring Tune experiment {exp}: finished trials are kept, unfinished ones resume")
        tuner = rtune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True,
                                    storage_filesystem=fs)
    else:
        cap = concurrency_cap(cfg, cluster_cpus(), cluster_gpus())
        want = max_concurrent_trials or space.budget.max_concurrent_trials
        if want > cap:
            say(f"max_concurrent_trials {want} -> {cap}: more concurrent trials would starve Ray Data/Train "
                f"on this cluster ({cluster_cpus():.0f} CPUs, {cluster_gpus():.0f} GPUs)")
        concurrent = min(want, cap)
        if space.scheduler == "asha":
            horizon = space.budget.max_t or max_reports(space, cfg)
            scheduler = ASHAScheduler(
                time_attr="training_iteration", max_t=max(horizon, space.budget.grace_period),
                grace_period=space.budget.grace_period, reduction_factor=space.budget.reduction_factor,
                stop_last_trials=False,  # a trial is never cut just for reaching the horizon
            )
        else:
            scheduler = FIFOScheduler()
        storage.write_json_atomic(setup_uri, record)
        tuner = rtune.Tuner(
            trainable,
            param_space=space.param_space(),
            tune_config=rtune.TuneConfig(
                metric=space.metric, mode=space.mode, num_samples=n, scheduler=scheduler,
                # the limit goes to the generator: with an explicit search_alg Tune ignores
                # TuneConfig.max_concurrent_trials for BasicVariantGenerator
                search_alg=BasicVariantGenerator(random_state=space.seed, max_concurrent=concurrent),
            ),
            run_config=rtune.RunConfig(
                name=name, storage_path=storage.resolve(root)[1], storage_filesystem=fs,
                failure_config=rtune.FailureConfig(max_failures=1), verbose=verbose,
            ),
        )
    say(f"Tune search '{name}': {len(space.params)} params, {n} sample(s), scheduler {space.scheduler}; "
        f"experiment folder {exp}")
    grid = tuner.fit()
    return write_outputs(grid, space, base, name=name, root=root, restored=restored)


def write_outputs(grid, space: SearchSpace, base: dict, *, name: str, root: str, restored: bool = False) -> SearchOutcome:
    """Summary table (Markdown + JSON) and ``best_config.yaml`` into the experiment folder."""

    exp = storage.join(root, name)
    rows = [trial_row(r, name, root, space.keys) for r in grid]
    order = {"completed": 0, "stopped early": 1, "error": 2}
    sign = -1.0 if space.mode == "max" else 1.0
    rows.sort(key=lambda r: (order[r.status], r.val_score is None, sign * (r.val_score or 0.0), r.trial_id))
    best = pick_best(rows, space.mode)
    md = format_summary(rows, space, best, exp)
    md_uri, js_uri = storage.join(exp, "tune_summary.md"), storage.join(exp, "tune_summary.json")
    storage.write_bytes_atomic(md_uri, md.encode())
    best_uri = None
    if best is not None:
        best_uri = storage.join(exp, "best_config.yaml")
        storage.write_bytes_atomic(best_uri, best_config_yaml(base, best, name=name, root=root, space=space).encode())
    storage.write_json_atomic(js_uri, {
        "experiment": exp, "space": space.path, "metric": space.metric, "mode": space.mode,
        "scheduler": space.scheduler, "best": None if best is None else dataclasses.asdict(best),
        "best_config": best_uri, "trials": [dataclasses.asdict(r) for r in rows],
    })
    print(md, flush=True)
    say(f"summary: {md_uri}" + (f"; best config: {best_uri}" if best_uri else ""))
    return SearchOutcome(experiment=exp, rows=tuple(rows), best=best, best_config=best_uri,
                         summary_md=md_uri, summary_json=js_uri, restored=restored)
