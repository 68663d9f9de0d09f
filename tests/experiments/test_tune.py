"""Ray Tune searches: space checking (fast, no Ray) and one end-to-end smoke search (slow).

The end-to-end test runs jobs/tune.py on a 2-CPU local Ray (two tiny trials, ASHA), then
trains the exported best config again with jobs/iterate.py and compares validation scores.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tsd_ray.common.config import ConfigError, load_config
from tsd_ray.experiments.tune_space import (
    SpaceError,
    check_params,
    load_space,
    parse_space,
    resolve_base,
    validate,
)
from tsd_ray.experiments.tune_summary import TrialRow, pick_best
from tsd_ray.experiments.tune_trial import ScoreTracker, concurrency_cap, max_reports, trial_config

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "tune_spaces" / "smoke.yaml"
PAPER = REPO / "tune_spaces" / "paper.yaml"
E2E = str(REPO / "tests" / "configs" / "e2e.yaml")


def _space(tmp_path: Path, params: dict, **extra) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump({"metric": "val_score", "mode": "max", "base_config": E2E, "params": params, **extra}))
    return p


# --------------------------------------------------------------------------------------------
# Space checking: fails fast, naming the key (no Ray)
# --------------------------------------------------------------------------------------------


def test_shipped_spaces_check_against_their_configs():
    space, base, cfg = validate(SMOKE)
    assert space.keys == ["method.lambda_d", "phases.w_target.lr"]
    assert space.scheduler == "asha" and space.budget.grace_period == 1
    assert cfg.phases.f_source.epochs == 1  # the base_config is resolved relative to the space
    paper, _, _ = validate(PAPER, "tiny")
    assert set(paper.keys) == {"method.lambda_d", "method.alpha_kd", "method.replay_weight", "method.max_iterations"}
    dists = {p.key: p.type for p in paper.params}
    assert dists == {"method.lambda_d": "loguniform", "method.alpha_kd": "loguniform",
                     "method.replay_weight": "loguniform", "method.max_iterations": "randint"}


def test_param_space_maps_to_tune_distributions():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = parse_space({"params": {
        "method.lambda_d": {"type": "loguniform", "low": 0.01, "high": 1.0},
        "method.alpha_kd": {"type": "uniform", "low": 0.5, "high": 2.0},
        "method.max_iterations": {"type": "randint", "low": 1, "high": 4},
        "phases.f_source.lr": {"type": "choice", "values": [0.001, 0.003]},
        "eval.threshold": {"type": "grid", "values": [0.4, 0.5]},
    }})
    ps = space.param_space()
    assert isinstance(ps["method.lambda_d"], Float) and isinstance(ps["method.alpha_kd"], Float)
    assert isinstance(ps["phases.f_source.lr"], Categorical)
    assert ps["eval.threshold"] == {"grid_search": [0.4, 0.5]}
    it = ps["method.max_iterations"]
    assert isinstance(it, Integer) and (it.lower, it.upper) == (1, 5)  # YAML high is included
    draws = {int(v) for v in it.sample(size=400)}
    assert draws == {1, 2, 3, 4}
    lam = ps["method.lambda_d"].sample(size=400)
    assert min(lam) >= 0.01 and max(lam) <= 1.0


@pytest.mark.parametrize(
    "params, key, words",
    [
        ({"method.lamda_d": {"type": "choice", "values": [0.1]}}, "method.lamda_d", ["unknown config key", "method.lambda_d"]),
        ({"phases.f_source.learning_rate": {"type": "uniform", "low": 0.001, "high": 0.01}}, "phases.f_source.learning_rate", ["unknown config key"]),
        ({"method": {"type": "choice", "values": [1]}}, "method", ["section"]),
        ({"run.name": {"type": "choice", "values": ["a"]}}, "run.name", ["run.*"]),
        # wrong type for the key: the config loader's own check speaks
        ({"method.max_iterations": {"type": "uniform", "low": 1, "high": 4}}, "method.max_iterations", ["expected an integer"]),
        ({"method.kd": {"type": "choice", "values": [True, "yes"]}}, "method.kd", ["expected true/false"]),
        ({"eval.selection_metric": {"type": "choice", "values": ["event_f", "auc"]}}, "eval.selection_metric", ["expected one of"]),
        ({"phases.w_target.lr": {"type": "choice", "values": ["fast"]}}, "phases.w_target.lr", ["expected a number"]),
        # malformed distributions
        ({"method.lambda_d": {"type": "normal", "low": 0, "high": 1}}, "method.lambda_d", ["'type' must be one of"]),
        ({"method.lambda_d": {"type": "loguniform", "low": 0.0, "high": 1.0}}, "method.lambda_d", ["low > 0"]),
        ({"method.lambda_d": {"type": "uniform", "low": 1.0, "high": 0.5}}, "method.lambda_d", ["low < high"]),
        ({"method.lambda_d": {"type": "uniform", "low": "a", "high": 1.0}}, "method.lambda_d", ["needs numbers"]),
        ({"method.max_iterations": {"type": "randint", "low": 1.5, "high": 4}}, "method.max_iterations", ["integer 'low'"]),
        ({"method.lambda_d": {"type": "choice", "values": []}}, "method.lambda_d", ["non-empty list"]),
        ({"method.lambda_d": {"type": "choice", "value": [0.1]}}, "method.lambda_d", ["unknown field"]),
        ({"method.lambda_d": [0.1, 0.2]}, "method.lambda_d", ["expected a mapping"]),
    ],
)
def test_bad_space_fails_fast_naming_the_key(tmp_path, params, key, words):
    path = _space(tmp_path, params)
    with pytest.raises(SpaceError) as exc:
        validate(path)
    msg = str(exc.value)
    assert f"param '{key}'" in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"metric": "loss"}, ["metric must be one of"]),
        ({"mode": "min"}, ["mode must be max"]),
        ({"scheduler": "pbt"}, ["scheduler must be one of"]),
        ({"budget": {"num_samples": 0}}, ["budget.num_samples"]),
        ({"budget": {"reduction_factor": 1}}, ["budget.reduction_factor"]),
        ({"budget": {"grace_period": 3, "max_t": 2}}, ["budget.max_t"]),
        ({"budget": {"samples": 3}}, ["unknown budget field"]),
        ({"searcher": "optuna"}, ["unknown field(s) ['searcher']"]),
    ],
)
def test_bad_space_fields_fail_fast(tmp_path, extra, words):
    path = _space(tmp_path, {"method.lambda_d": {"type": "choice", "values": [0.1]}}, **extra)
    with pytest.raises(SpaceError) as exc:
        load_space(path)
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_space_without_params_or_base_config_is_refused(tmp_path):
    with pytest.raises(SpaceError, match="'params' must be a non-empty mapping"):
        parse_space({"metric": "val_score"})
    space = parse_space({"params": {"method.lambda_d": {"type": "choice", "values": [0.1]}}})
    with pytest.raises(SpaceError, match="no --config given"):
        resolve_base(space, None)
    with pytest.raises(ConfigError, match="unknown config key 'method.nope'"):  # a bad --set is the config's error
        check_params(space, resolve_base(space, "tiny", ["method.nope=1"]))


def test_jobs_tune_check_rejects_a_bad_space_before_ray(tmp_path):
    path = _space(tmp_path, {"method.alpha": {"type": "choice", "values": [1.0]}})
    t0 = time.time()
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "tune.py"), "--space", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "param 'method.alpha'" in r.stderr and "did you mean 'method.alpha_kd'" in r.stderr, r.stderr
    assert "ray" not in r.stdout.lower()
    assert time.time() - t0 < 60


# --------------------------------------------------------------------------------------------
# Pieces of a trial (no Ray)
# --------------------------------------------------------------------------------------------


def test_trial_config_applies_sampled_values_with_python_types():
    import numpy as np

    base = resolve_base(load_space(SMOKE), None)
    cfg = trial_config(base, {"method.max_iterations": np.int64(3), "method.lambda_d": np.float64(0.05)},
                       run_name="x-trial-1", root="/tmp/r")
    assert cfg.method.max_iterations == 3 and type(cfg.method.max_iterations) is int
    assert cfg.method.lambda_d == 0.05 and cfg.run.name == "x-trial-1" and cfg.run.storage == "/tmp/r"
    assert cfg.phases.f_source.epochs == 1  # the rest is the base config


def test_score_tracker_reports_the_final_candidates_best_and_target_supersedes_source():
    t = ScoreTracker(pseudo=True)
    assert t.update("MS-p1_f_source", "f", "source_val", 40.0)["val_score"] == 40.0
    m = t.update("MS-p2_w_source", "w", "source_val", 55.0)
    assert (m["val_score"], m["phase_val_score"], m["phases_done"]) == (40.0, 55.0, 2)  # w does not count
    assert t.update("MS-p3_w_target", "w", "target_val", 30.0)["val_score"] == 40.0
    m = t.update("MS-p4_f_target", "f", "target_val", 20.0)
    assert (m["val_score"], m["val_split"]) == (20.0, "target_val")  # other split: replaces, not max
    t.update("MS-it1_w", "w", "target_val", 33.0)
    assert t.update("MS-it1_f", "f", "target_val", 25.0)["val_score"] == 25.0
    t.update("MS-it2_w", "w", "target_val", 33.0)
    assert t.update("MS-it2_f", "f", "target_val", 22.0)["val_score"] == 25.0  # best so far
    either = ScoreTracker(pseudo=True, either=True)  # final_student=best: target w scores count too
    either.update("MS-p1_f_source", "f", "source_val", 40.0)
    assert either.update("MS-p2_w_source", "w", "source_val", 55.0)["val_score"] == 40.0  # source w: no
    m = either.update("MS-p3_w_target", "w", "target_val", 30.0)
    assert (m["val_score"], m["val_split"]) == (30.0, "target_val")
    assert either.update("MS-p4_f_target", "f", "target_val", 20.0)["val_score"] == 30.0
    assert either.update("MS-it1_w", "w", "target_val", 33.0)["val_score"] == 33.0
    assert either.update("MS-it1_f", "f", "target_val", 35.0)["val_score"] == 35.0
    no_ps = ScoreTracker(pseudo=False)  # without pseudo labels the final model is the w student
    no_ps.update("p1", "f", "source_val", 40.0)
    no_ps.update("p2", "w", "source_val", 50.0)
    assert no_ps.update("p3", "w", "target_val", 12.0)["val_score"] == 12.0


def test_max_reports_and_concurrency_cap():
    cfg = load_config("tiny")  # max_iterations 1: p1-p4 + 2 = 6 phases
    space = load_space(SMOKE)
    assert max_reports(space, cfg) == 6
    paper = load_space(PAPER)  # max_iterations up to 4
    assert max_reports(paper, cfg) == 4 + 2 * 4
    # 2 CPUs, 1 kept for Ray Data: one 1-CPU trial at a time; 8 CPUs: 7
    assert concurrency_cap(cfg, 2.0, 0.0) == 1
    assert concurrency_cap(cfg, 8.0, 0.0) == 7
    gpu = load_config("tiny", ["train.use_gpu=true", "train.num_workers=2", "train.cpus_per_worker=2"])
    assert concurrency_cap(gpu, 16.0, 4.0) == 2


def test_trial_driver_holds_no_cpu():
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    from tsd_ray.experiments.tune_summary import trial_id_from_dir
    from tsd_ray.experiments.tune_trial import TRIAL_DRIVER_RESOURCES

    pgf = resource_dict_to_pg_factory(dict(TRIAL_DRIVER_RESOURCES))
    assert pgf.head_cpus == 0 and "CPU" not in pgf.required_resources
    assert pgf.required_resources.get("memory", 0) > 0
    assert trial_id_from_dir("/s/smoke/trial_main_9254e_00001_1_eval_threshold=1.0000_2026") == "9254e_00001"


def test_pick_best_ignores_trials_stopped_early():
    rows = [
        TrialRow("a_00000", "r0", "completed", 30.0, "target_val", 6, "MS-it1_f", {}),
        TrialRow("a_00001", "r1", "stopped early", 80.0, "source_val", 1, "MS-p1_f_source", {}),
        TrialRow("a_00002", "r2", "completed", 35.0, "target_val", 6, "MS-it1_f", {}),
        TrialRow("a_00003", "r3", "error", None, "", 0, "", {}, error="boom"),
    ]
    assert pick_best(rows).trial_id == "a_00002"
    assert pick_best(rows[1:2]) is None


# --------------------------------------------------------------------------------------------
# End to end (slow): smoke search on a 2-CPU Ray, ASHA stops a trial, best config reproduces
# --------------------------------------------------------------------------------------------


def _env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["TSD_RAY_NUM_CPUS"] = "2"
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="tsdt", dir="/tmp")  # short: socket paths <= 107 chars
    return env


RAY_START_TIMEOUT = "The current node timed out during startup"


def _run_job(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    """Run a job in its own 2-CPU local Ray. Ray waits only 30 s for its own raylet to come up;
    on a machine overloaded by other work that start-up can time out before any of our code
    runs: only then the job is started once more (any other failure is returned as is)."""
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 and RAY_START_TIMEOUT in r.stderr:
        r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    return r


def _steps(ledger_path: Path) -> dict:
    return json.loads(ledger_path.read_text())["steps"]


def _f_best(steps: dict) -> float:
    """The f student's best target-validation score in a run's ledger (run_ms's final model)."""
    f_steps = [v for k, v in steps.items() if k == "MS-p4_f_target" or (k.startswith("MS-it") and k.endswith("_f"))]
    assert f_steps, sorted(steps)
    return max(float(v["best_val_score"]) for v in f_steps)


MS_PHASES = ["MS-p1_f_source", "MS-p2_w_source", "MS-p3_w_target", "MS-p4_f_target", "MS-it1_w", "MS-it1_f"]


@pytest.mark.slow
def test_smoke_search_end_to_end(tmp_path):
    storage = tmp_path / "runs"
    # The smoke space (its grid turned into a choice) plus a grid over the post-processing
    # threshold whose two values bracket every possible output, so both trials' scores are
    # known in advance whatever the tiny one-epoch models learn: threshold 0.0 marks every
    # frame active and scores the segment-F of "always on" (> 0: validation has positives),
    # threshold 1.0 marks nothing and scores exactly 0. Trials run one at a time in grid
    # order, so with grace_period 1 ASHA must stop the second trial at its first rung.
    space = yaml.safe_load(SMOKE.read_text())
    space["base_config"] = E2E
    space["params"]["phases.w_target.lr"] = {"type": "choice", "values": [0.003, 0.001]}
    space["params"]["eval.threshold"] = {"type": "grid", "values": [0.0, 1.0]}
    space_path = tmp_path / "smoke_asha.yaml"
    space_path.write_text(yaml.safe_dump(space))

    cmd = [sys.executable, str(REPO / "jobs" / "tune.py"), "--space", str(space_path),
           "--set", "eval.selection_metric=segment_f", "--storage", str(storage), "--name", "smoke"]
    t0 = time.time()
    r = _run_job(cmd, timeout=2400)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    t_tune = time.time() - t0
    exp = storage / "smoke"
    summary = json.loads((exp / "tune_summary.json").read_text())
    trials = {t["params"]["eval.threshold"]: t for t in summary["trials"]}
    assert set(trials) == {0.0, 1.0}
    good, blind = trials[0.0], trials[1.0]
    assert good["status"] == "completed" and good["phases"] == 6, good
    assert good["val_split"] == "target_val" and good["val_score"] > 0
    # ASHA stopped the blind trial after its first phase (f on the source domain)
    assert blind["status"] == "stopped early", blind
    assert blind["phases"] == 1 and blind["last_phase"] == "MS-p1_f_source" and blind["val_score"] == 0.0
    blind_steps = _steps(storage / blind["run"] / "ledger.json")
    assert "MS-p1_f_source" in blind_steps and "MS-p2_w_source" not in blind_steps
    # Tune's own records agree: one result per reported phase
    from ray.tune import ExperimentAnalysis

    ea = ExperimentAnalysis(str(exp))
    iters = {float(t.config["eval.threshold"]): int(t.last_result["training_iteration"]) for t in ea.trials}
    assert iters == {0.0: 6, 1.0: 1}, iters
    # trial drivers held no CPU: on this 2-CPU Ray, Ray Data and the 1-CPU Train worker of
    # each phase had the cores (a 1-CPU driver would leave Ray Data none and hang)
    assert {float(t.last_result["driver_cpus"]) for t in ea.trials} == {0.0}
    assert summary["best"]["trial_id"] == good["trial_id"]
    # TensorBoard logs and the summary table
    assert list(exp.glob("*/events.out.tfevents.*")), "no TensorBoard event files"
    md = (exp / "tune_summary.md").read_text()
    assert "stopped early" in md and "completed" in md and "| eval.threshold |" in md
    # features built once by the driver; the encoder pretrained once and shared by both trials
    assert out.count("building features") == 1 and out.count("pretraining the shared encoder") == 1
    for t in summary["trials"]:
        assert _steps(storage / t["run"] / "ledger.json")["encoder"].get("shared") is True

    # best_config.yaml: a full config with the sampled values, accepted by iterate.py unchanged
    best_cfg = exp / "best_config.yaml"
    cfg = load_config(str(best_cfg))
    assert cfg.eval.threshold == 0.0 and cfg.eval.selection_metric == "segment_f"
    assert cfg.method.lambda_d == good["params"]["method.lambda_d"]
    assert cfg.phases.w_target.lr == good["params"]["phases.w_target.lr"]
    assert cfg.run.storage == str(storage) and cfg.run.name == "smoke-best"
    # ... and it is the best trial's config exactly: iterate.py under the trial's run name opens
    # that run's ledger (a different config would be refused there), skips every phase the
    # trial trained and only adds the test evaluation and report (a fresh run of the same
    # config would retrain every phase to get there).
    r2 = _run_job([sys.executable, str(REPO / "jobs" / "iterate.py"), "--config", str(best_cfg),
                   "--run-name", good["run"]], timeout=1200)
    out2 = r2.stdout + r2.stderr
    assert r2.returncode == 0, out2[-6000:]
    assert "building features" not in out2  # same storage: the search's features are reused
    for k in MS_PHASES:
        assert f"skip {k}: finished earlier (ledger)" in out2, (k, out2[-4000:])
    assert not re.search(r"start MS-(p\d|it\d)", out2), out2[-4000:]  # no phase trained again
    trial_steps = _steps(storage / good["run"] / "ledger.json")
    assert math.isclose(_f_best(trial_steps), good["val_score"], abs_tol=1e-3)  # what Tune saw = the ledger
    report = json.loads((storage / good["run"] / "report.json").read_text())
    assert 0 <= report["MS"]["event_f"] <= 100 and 0 <= report["MS"]["segment_f"] <= 100
    print(f"tune {t_tune:.0f} s")

    # started again with the same name the experiment is restored: nothing re-trains
    r3 = _run_job(cmd, timeout=900)
    out3 = r3.stdout + r3.stderr
    assert r3.returncode == 0, out3[-4000:]
    assert "restoring Tune experiment" in out3 and "start MS-" not in out3
    again = json.loads((exp / "tune_summary.json").read_text())
    assert {t["trial_id"]: t["status"] for t in again["trials"]} == {t["trial_id"]: t["status"] for t in summary["trials"]}
