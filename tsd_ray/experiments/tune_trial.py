"""One Ray Tune trial: a run of Algorithm 1 with the trial's config values, reporting after
every phase (:class:`ScoreTracker`), with the reference encoder shared among the trials whose
settings match (:func:`shared_encoder`). Driven by :func:`tsd_ray.experiments.tune.run_search`."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tsd_ray.common import storage
from tsd_ray.common.config import (
    Config,
    config_from_dict,
    set_dotted,
    to_dict,
)
from tsd_ray.common.digest import digest, without_neutral_keys
from tsd_ray.common.progress import say
from tsd_ray.common.ray_env import quiet_data_context
from tsd_ray.data.shards import load_manifest
from tsd_ray.experiments.final_model import Outcome, final_model
from tsd_ray.experiments.ledger import Ledger
from tsd_ray.experiments.pipeline import Run, prepare_features, run_ms
from tsd_ray.experiments.tune_space import SearchSpace, plain
from tsd_ray.train.driver import embeddings_file
from tsd_ray.train.encoder import embed_references, pretrain_encoder
from tsd_ray.train.joint import JOINT_KEYS

#: Trial drivers hold no CPU: only this much of Ray's ``memory`` resource (a bundle needs one
#: non-zero resource; ``{"CPU": 0}`` alone is rejected by Tune).
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 128 * 1024**2}


#: Ledger step a trial records when Algorithm 1 ran to its end (not stopped by the scheduler).
TRIAL_DONE_STEP = "tune-trial-complete"


def phases_of(method) -> int:
    """Reports (= phases) one MS run makes at most: p1-p3 (+ p4 + 2 per loop iteration)."""
    return 3 + (1 + 2 * method.max_iterations if method.pseudo else 0)


def max_reports(space: SearchSpace, cfg: Config) -> int:
    """The longest trial's phase count (ASHA's default horizon)."""
    iters = cfg.method.max_iterations
    pseudo = cfg.method.pseudo
    for p in space.params:
        if p.key == "method.max_iterations" and p.max_value() is not None:
            iters = max(iters, int(p.max_value()))
        if p.key == "method.pseudo":
            pseudo = True
    return phases_of(dataclasses.replace(cfg.method, max_iterations=iters, pseudo=pseudo))


def trial_config(base: dict, params: Mapping[str, Any], *, run_name: str, root: str) -> Config:
    """A trial's config: base mapping + sampled params (dotted keys), its own run name."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, plain(value))
    set_dotted(data, "run.name", run_name)
    set_dotted(data, "run.storage", root)
    return config_from_dict(data)


def trial_run_name(name: str, trial_id: str) -> str:
    return f"{name}-trial-{trial_id}"


class ScoreTracker:
    """What a trial reports after each phase.

    ``val_score`` is the validation score of the model MS would report if the run ended now
    (:func:`tsd_ray.experiments.final_model.final_model`, the rule ``run_ms`` uses): once a
    target-domain student qualifies (phase 3's w when ``method.pseudo`` is off or
    ``method.final_student=best``, else phase 4's f), its score; before that, the best f score
    on the source validation split (phase 1). So the last value equals the final MS model's
    score, and ASHA, which compares trials at equal ``training_iteration`` (after the same
    phase), never compares values from different splits.
    """

    def __init__(self, pseudo: bool = True, either: bool = False):
        self.pseudo = pseudo
        self.final_student = "best" if either else "f"
        self.outcomes: list[Outcome] = []
        self.val_score = math.nan
        self.val_split = ""

    @property
    def phases_done(self) -> int:
        return len(self.outcomes)

    def update(self, phase: str, student: str, val_split: str, score: float) -> dict[str, Any]:
        """Metrics to report after ``phase`` (``student`` f/w, scored ``score`` on ``val_split``)."""
        score = float(score)
        self.outcomes.append(Outcome(phase, student, val_split, score))
        chosen = final_model(self.outcomes, pseudo=self.pseudo, final_student=self.final_student)
        if chosen is None:  # no target-domain model yet: the source-domain f (or the first phase)
            source_f = [o for o in self.outcomes if o.student == "f" and not o.on_target]
            chosen = max(source_f, key=lambda o: o.score) if source_f else self.outcomes[0]
        self.val_score, self.val_split = chosen.score, chosen.val_split
        return {
            "val_score": self.val_score,
            "val_split": self.val_split,
            "phase": phase,
            "phase_student": student,
            "phase_val_score": score,
            "phases_done": self.phases_done,
        }


@dataclass(frozen=True)
class TrialSetup:
    """What every trial gets from the driver (small, picklable)."""

    name: str  # experiment name
    root: str  # storage root (absolute path or URI)
    base: dict  # base config mapping (paths absolute)
    features: str  # manifest URI the driver prepared
    data_key: str  # data_key() of the base config: trials with the same key reuse `features`
    encoder_key: str = ""  # encoder_key() of the shared encoder ("" when none)
    encoder_uri: str = ""
    embeddings_uri: str = ""


def data_key(cfg: Config) -> str:
    """Digest of what decides the features (corpus, front end, samples, build)."""
    d = to_dict(cfg)
    return digest({k: d[k] for k in ("data", "frontend", "samples", "build")} | {"overlap": cfg.method.overlap_classes})


def encoder_key(cfg: Config, features_uri: str) -> str:
    """Digest of what decides the pretrained encoder: its section (but the joint fine-tuning
    keys, which act after pretraining), train settings, features."""
    tr = without_neutral_keys({"train": to_dict(cfg.train)})["train"]
    enc = {k: v for k, v in to_dict(cfg.encoder).items() if k not in JOINT_KEYS}
    return digest({"encoder": enc, "train": tr, "features": features_uri})


def shared_encoder(cfg: Config, root: str, manifest) -> tuple[str, str, str]:
    """Pretrain (or find) the encoder + embedding table once for all matching trials.

    Lives in the run folder ``_encoder-<key>`` with a ledger pinned to the key, so a second
    search with the same encoder settings reuses it. Returns (key, encoder URI, embeddings URI).
    """

    key = encoder_key(cfg, manifest.uri)
    run_name = f"_encoder-{key}"
    led = Ledger.open(storage.join(root, run_name), key)
    if not led.done("encoder"):
        say(f"pretraining the shared encoder ({run_name})")
        led.record("encoder", model_uri=pretrain_encoder(cfg, manifest, storage_path=root, run_name=run_name))
    if not led.done("embeddings"):
        uri = embed_references(led.get("encoder")["model_uri"], manifest, embeddings_file(root, run_name))
        led.record("embeddings", uri=uri)
    return key, led.get("encoder")["model_uri"], led.get("embeddings")["uri"]


def reporting_run_class():
    class ReportingRun(Run):
        """A pipeline Run that calls ``on_phase(spec, record)`` after every phase (done or skipped)."""

        def __init__(self, cfg, root, manifest, on_phase: Callable[[Any, Any], None]):
            super().__init__(cfg, root, manifest)
            self._on_phase = on_phase

        def phase(self, spec):
            entry = super().phase(spec)
            self._on_phase(spec, entry)
            return entry

    return ReportingRun


def run_trial(setup: TrialSetup, params: Mapping[str, Any], trial_id: str,
              report: Callable[[dict], None]) -> dict[str, Any]:
    """One trial: Algorithm 1 (MS) with the sampled params, ``report`` after every phase."""

    cfg = trial_config(setup.base, params, run_name=trial_run_name(setup.name, trial_id), root=setup.root)
    if data_key(cfg) == setup.data_key:
        manifest = load_manifest(setup.features)
    else:  # the search changes the features themselves: build (or find) this trial's own
        manifest = prepare_features(cfg, setup.root)
    tracker = ScoreTracker(pseudo=cfg.method.pseudo, either=cfg.method.final_student == "best")

    def on_phase(spec, entry):
        report({**tracker.update(spec.name, spec.student, spec.val_split, entry.best_val_score), "run": cfg.run.name})

    run = reporting_run_class()(cfg, setup.root, manifest, on_phase)
    if (setup.encoder_uri and not run.ledger.done("encoder")
            and encoder_key(cfg, manifest.uri) == setup.encoder_key):
        run.ledger.record("encoder", model_uri=setup.encoder_uri, shared=True)
        run.ledger.record("embeddings", uri=setup.embeddings_uri, shared=True)
    say(f"trial {trial_id}: {dict(params)} -> run {cfg.run.name}")
    run.prepare_encoder()
    ms = run_ms(run, cfg.method)
    info = {"val_score": tracker.val_score, "val_split": tracker.val_split,
            "final_student": ms.final_student, "final_model_uri": ms.final.model_uri,
            "phases": tracker.phases_done, "params": plain(dict(params))}
    if not run.ledger.done(TRIAL_DONE_STEP):
        run.ledger.record(TRIAL_DONE_STEP, **info)
    return info


def trial_main(config: dict, setup: TrialSetup) -> None:
    """Tune function trainable (wrapped with ``tune.with_parameters(trial_main, setup=...)``)."""
    import ray
    from ray import tune as rtune

    quiet_data_context()
    trial_id = rtune.get_context().get_trial_id()
    # what this trial's driver holds (0 CPUs: the cores stay with Ray Data and Ray Train)
    held = {"driver_cpus": float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))}
    run_trial(setup, config, trial_id, lambda metrics: rtune.report({**metrics, **held}))


def concurrency_cap(cfg: Config, cluster_cpus: float, cluster_gpus: float) -> int:
    """How many trials fit at once so Train workers never take the CPUs Ray Data needs.

    Mirrors :func:`tsd_ray.train.driver.scaling_config`: a CPU trial's workers take up to
    ``cluster_cpus - reserve_cpus_for_data``; a GPU trial's take ``gpus_per_worker`` each.
    """
    tc = cfg.train
    free = max(0.0, cluster_cpus - tc.reserve_cpus_for_data)
    if tc.use_gpu:
        by_gpu = int(cluster_gpus // max(1e-9, tc.num_workers * tc.gpus_per_worker))
        by_cpu = int(free // max(1e-9, tc.num_workers * tc.cpus_per_worker))
        return max(1, min(by_gpu, by_cpu))
    per_worker = round(min(tc.cpus_per_worker, max(0.1, free) / tc.num_workers), 2)
    return max(1, int((free + 1e-9) // (per_worker * tc.num_workers)))
