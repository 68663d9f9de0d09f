"""End-to-end: jobs/iterate.py through Algorithm 1 on the tiny corpus, kill + resume, and the
same job submitted to a local head node with `ray job submit`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "tests" / "configs" / "e2e.yaml")


def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    # as in an activated venv: `python` in a submitted entrypoint is this interpreter
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["TSD_RAY_NUM_CPUS"] = "2"
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="tsdr", dir="/tmp")
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _ledger(storage: Path, run: str) -> dict:
    p = storage / run / "ledger.json"
    return json.loads(p.read_text())["steps"] if p.exists() else {}


def test_iterate_killed_after_phase_two_resumes_and_reports(tmp_path):
    storage = tmp_path / "runs"
    cmd = [sys.executable, str(REPO / "jobs" / "iterate.py"), "--config", CONFIG,
           "--storage", str(storage), "--run-name", "e2e", "--iterations-table"]
    log1 = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=REPO, env=_env(tmp_path), stdout=log1, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 900
    try:
        while "MS-p2_w_source" not in _ledger(storage, "e2e"):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            assert time.time() < deadline, "phase 2 never finished"
            time.sleep(1)
    finally:
        _kill_group(first)  # the driver and the local Ray it started die together
    steps = _ledger(storage, "e2e")
    assert "MS-p3_w_target" not in steps and "MS-p1_f_source" in steps

    second = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=1500)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-5000:]
    assert "skip MS-p1_f_source: finished earlier (ledger)" in out
    assert "skip MS-p2_w_source: finished earlier (ledger)" in out
    assert "start MS-p1_f_source" not in out and "start MS-p3_w_target" in out
    steps = _ledger(storage, "e2e")
    for name in ["encoder", "embeddings", "MS-p1_f_source", "MS-p2_w_source", "MS-p3_w_target",
                 "MS-p4_f_target", "MS-it1_w", "MS-it1_f", "MS-eval"]:
        assert name in steps, name
    assert steps["MS-p1_f_source"]["model_uri"].endswith("model.pt")
    report = json.loads((storage / "e2e" / "report.json").read_text())
    # the evaluation records the model it scored: the final student that report.json names
    final = report["MS"]["final_student"]
    scored = [n for n in ("MS-p3_w_target", "MS-p4_f_target", "MS-it1_w", "MS-it1_f")
              if steps[n]["model_uri"] == steps["MS-eval"]["model_uri"]]
    assert len(scored) == 1 and scored[0].split("_")[1] == final, (scored, final)
    assert set(report["MS"]) >= {"segment_f", "event_f", "psds1", "intersection_f"}
    assert 0 <= report["MS"]["event_f"] <= 100
    assert [r["iteration"] for r in report["iterations"]] == [0, 1]
    assert "| MS" in (storage / "e2e" / "report.md").read_text()

    # a changed config under the same run name is refused, --new-run starts a fresh name
    changed = subprocess.run(cmd + ["--set", "method.lambda_d=0.5"], cwd=REPO, env=_env(tmp_path),
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode != 0 and "different config" in changed.stderr


def test_ray_job_submit_to_a_local_head(tmp_path):
    import secrets

    env = _env(tmp_path)
    # Token authentication on, with a token of this test's own (never the user's ~/.ray one):
    # the head requires it, the `ray job submit` CLI sends it (docs/architecture.md, "Token authentication").
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    ray_bin = str(Path(sys.executable).parent / "ray")
    # Every port of this head its own: the session's local Ray (ray_local) already holds the
    # defaults, e.g. the dashboard agent's HTTP port 52365; a second node on the same port
    # starts "successfully" but its agent never serves, and every submit is answered
    # "No available agent to submit job" (CI, and reproduced here).
    port, dash, agent_http, agent_grpc, env_agent, metrics, client = _free_ports(7)
    tmp = Path(tempfile.mkdtemp(prefix="tsdh", dir="/tmp"))  # short: Ray socket paths <= 107 chars
    start = subprocess.run(
        [ray_bin, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
         f"--ray-client-server-port={client}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
         f"--temp-dir={tmp}"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        storage = tmp_path / "runs"
        address = f"http://127.0.0.1:{dash}"
        _wait_for_job_agent(ray_bin, address, env)
        sub = subprocess.run(
            [ray_bin, "job", "submit", "--address", address, "--working-dir", str(REPO),
             "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "*.parquet"]}),
             "--", "python", "jobs/iterate.py", "--config", "tests/configs/e2e.yaml",
             "--set", "method.recipes=[WS]", "--storage", str(storage), "--run-name", "submitted"],
            env=env,
            capture_output=True, text=True, timeout=1200,
        )
        out = sub.stdout + sub.stderr
        assert sub.returncode == 0, out[-5000:]
        assert "succeeded" in out.lower()
        report = json.loads((storage / "submitted" / "report.json").read_text())
        assert set(report["WS"]) >= {"segment_f", "event_f"}
    finally:
        _stop_head(tmp)  # only the head we started (`ray stop` would stop every Ray here)


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on this machine now (bound to port 0, then released)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_for_job_agent(ray_bin: str, address: str, env: dict, timeout_s: float = 120.0) -> None:
    """`ray start --head` returns before the node's dashboard agent has registered; a job
    submitted in that window is refused with "No available agent to submit job". Submit a
    no-op job until the head takes one, as a user would retry."""
    deadline = time.time() + timeout_s
    while True:
        r = subprocess.run([ray_bin, "job", "submit", "--address", address, "--", "true"],
                           env=env, capture_output=True, text=True, timeout=300)
        out = r.stdout + r.stderr
        if r.returncode == 0:
            return
        assert "No available agent" in out, out[-3000:]  # any other refusal is a real failure
        assert time.time() < deadline, f"the head's job agent did not come up in {timeout_s:.0f} s:\n{out[-2000:]}"
        time.sleep(3)


def _stop_head(temp_dir: Path) -> None:
    """Kill the processes of the head node started with --temp-dir=temp_dir (not `ray stop`,
    which would stop every Ray of the machine)."""
    import psutil

    victims = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if str(temp_dir) in cmd:
            victims.append(p)
    for p in victims:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(victims, timeout=20)
    for p in alive:
        p.kill()
