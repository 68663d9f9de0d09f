"""Secure defaults of local use: dashboard on localhost, no unpickling of arbitrary objects from
checkpoints, the Ray auth token file not readable by others."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tsd_ray.common import ray_env as ray_utils
from tsd_ray.models import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Dashboard host
# --------------------------------------------------------------------------------------------


def test_local_ray_binds_dashboard_to_localhost(monkeypatch, tmp_path):
    """ensure_ray() starting a local Ray asks for the dashboard on 127.0.0.1 only."""
    import ray

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray_utils, "quiet_data_context", lambda: None)
    ray_utils.ensure_ray(num_cpus=1, include_dashboard=True)
    assert len(calls) == 1
    assert calls[0]["dashboard_host"] == "127.0.0.1"
    assert calls[0]["include_dashboard"] is True


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux /proc/net/tcp")
def test_real_local_ray_listens_on_localhost_and_token_file_is_private(tmp_path):
    """A real ensure_ray() in a fresh process (own HOME, own Ray): the dashboard URL and every
    listening socket of the dashboard process are on 127.0.0.1, and the auth token file Ray
    wrote is mode 0600."""
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent(
        """
        import json, os, socket, ray
        from tsd_ray.common.ray_env import ensure_ray
        ensure_ray(num_cpus=1, include_dashboard=True)
        node = ray._private.worker.global_worker.node
        url = node.address_info["webui_url"]
        port = int(url.rsplit(":", 1)[1])

        def listeners(table, family):  # local addresses listening on `port` (Linux /proc)
            out = []
            for line in open(table).read().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                ip_hex, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:
                    raw = bytes.fromhex(ip_hex)
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    out.append(socket.inet_ntop(family, raw))
            return out

        hosts = listeners("/proc/net/tcp", socket.AF_INET)
        if os.path.exists("/proc/net/tcp6"):
            hosts += listeners("/proc/net/tcp6", socket.AF_INET6)
        token = os.path.expanduser("~/.ray/auth_token")
        mode = oct(os.stat(token).st_mode & 0o777) if os.path.exists(token) else None
        print("RESULT " + json.dumps({"url": url, "hosts": hosts, "mode": mode}), flush=True)
        ray.shutdown()
        """
    )
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    assert res["url"].startswith("127.0.0.1:"), res
    assert res["hosts"] and set(res["hosts"]) == {"127.0.0.1"}, res
    assert res["mode"] == "0o600", res  # Ray 2.60 writes it 0644; ensure_ray tightens it


# --------------------------------------------------------------------------------------------
# Checkpoints: weights only
# --------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``exec`` on attacker-chosen code (the classic pickle attack)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_checkpoint_with_code_in_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "run" / "model.pt"
    bad.parent.mkdir()
    payload = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "kind": "f", "config": {},
               "n_mels": 64, "classes": [], "state_dict": {"w": torch.zeros(2)},
               "meta": {"note": _Payload(marker)}}
    buf = io.BytesIO()
    torch.save(payload, buf)  # saving only records the __reduce__ tuple; nothing runs
    bad.write_bytes(buf.getvalue())
    assert not marker.exists()

    with pytest.raises(ckpt.CheckpointError, match="model.pt"):
        ckpt.load_payload(str(bad))
    assert not marker.exists(), "loading the checkpoint executed code from it"

    # control: the file really is malicious — a full unpickle runs the code
    torch.load(str(bad), weights_only=False)
    assert marker.read_text() == "pwned"


def test_plain_checkpoint_still_loads(tmp_path):
    """weights_only=True keeps tsd_ray's own files loadable (dicts, lists, tensors, numbers)."""
    from tsd_ray.common.config import DetectorConfig
    from tsd_ray.models.detector import Detector

    cfg = DetectorConfig(channels=(4, 4, 4, 4, 4), gru_hidden=4, fc_hidden=4, embedding_dim=4,
                         projection_dim=4)
    model = Detector(cfg, 64, "none")
    uri = str(tmp_path / "model.pt")
    ckpt.save_payload(ckpt.model_payload("f", cfg, model, n_mels=64, classes=["a"],
                                         meta={"m": [1, 2.5]}), uri)
    rebuilt = ckpt.load_student(uri)
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k


# --------------------------------------------------------------------------------------------
# Auth token file
# --------------------------------------------------------------------------------------------


def test_token_file_is_tightened_to_owner_only(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("secret")
    token.chmod(0o644)  # what Ray 2.60 writes
    ray_utils._tighten_token_file()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert token.read_text() == "secret"


def test_token_tightening_leaves_private_file_and_absent_file_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    ray_utils._tighten_token_file()  # no ~/.ray at all: nothing to do, no error
    assert not (tmp_path / ".ray").exists()
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("secret")
    token.chmod(0o400)
    ray_utils._tighten_token_file()
    assert stat.S_IMODE(token.stat().st_mode) == 0o400
