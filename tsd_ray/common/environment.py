"""What produced a number: the lock, the versions that matter, the CPU and the GPU.

Scores move with the software stack (a torch, numpy or oneDNN release changes kernels and
rounding) and with the processor (vector extensions pick different kernels). Every run
records :func:`describe` in its folder (``environment.json``) and in ``report.json`` /
``report.md``, so a difference between two runs can be told apart from a bug.

The lock is found in two ways:
- ``make install`` writes ``<venv>/tsd_ray-lock.json`` (the lock file it installed and its
  sha256): that names the lock that *installed* this environment;
- otherwise the repository's ``requirements/dev.lock`` beside an editable checkout.
Either way the installed versions are compared with the lock's pins for this Python, and
every difference is listed (``lock.mismatches``): an environment changed by hand after
``make install`` shows up here.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from tsd_ray.common import storage

#: The packages whose versions every run reports by name (the lock covers the rest).
KEY_PACKAGES: tuple[str, ...] = ("torch", "torchaudio", "ray", "numpy", "pyarrow", "sed_eval", "soundfile")

#: x86 / ARM vector extensions worth naming (they decide which kernels torch and numpy run).
VECTOR_FLAGS: tuple[str, ...] = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "asimd", "sve", "sve2",
)

#: Where ``make install`` records the lock it installed (relative to ``sys.prefix``).
INSTALLED_LOCK_FILE = "tsd_ray-lock.json"

_REPO_LOCK = Path(__file__).resolve().parents[2] / "requirements" / "dev.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_for_this_python(path: str | os.PathLike) -> dict[str, str]:
    """``{normalised name: version}`` of the lock's pins whose markers hold for this interpreter.

    A universal lock may pin one package several times under exclusive markers (one per
    Python version); only the entry whose marker holds here is kept.
    """
    from packaging.markers import Marker

    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        m = _PIN.match(line.strip())
        if not m:
            continue
        marker = m.group(3)
        if marker is None or Marker(marker).evaluate():
            out[_norm(m.group(1))] = m.group(2)
    return out


def sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def lock_info(prefix: str | os.PathLike | None = None, repo_lock: str | os.PathLike | None = None) -> dict[str, Any]:
    """The lock behind this environment and how the installed versions compare with it.

    ``prefix``: the environment (default ``sys.prefix``); ``repo_lock``: the fallback lock file
    (default the checkout's ``requirements/dev.lock``).
    """
    prefix = Path(prefix or sys.prefix)
    stamp = prefix / INSTALLED_LOCK_FILE
    info: dict[str, Any] = {"installed_by": None, "file": None, "sha256": None}
    lock_path: Path | None = None
    if stamp.exists():
        rec = json.loads(stamp.read_text())
        info.update(installed_by="make install", file=rec.get("file"), sha256=rec.get("sha256"))
        candidate = Path(repo_lock or _REPO_LOCK).parent / Path(rec.get("file", "")).name
        lock_path = candidate if candidate.exists() else None
    else:
        candidate = Path(repo_lock or _REPO_LOCK)
        if candidate.exists():
            lock_path = candidate
            info.update(file=f"requirements/{candidate.name}", sha256=sha256_file(candidate))
    if lock_path is None:
        info["mismatches"] = None  # nothing to compare with: not installed from the lock
        return info
    if info["installed_by"] and sha256_file(lock_path) != info["sha256"]:
        info["lock_changed_since_install"] = True  # the checkout's lock moved on: `make install`
    mismatches = []
    for name, version in sorted(pins_for_this_python(lock_path).items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != version:
            mismatches.append(f"{name}: installed {have or 'nothing'}, lock {version}")
    info["mismatches"] = mismatches
    return info


def cpu_info() -> dict[str, Any]:
    """CPU model, logical cores and the vector extensions that decide numeric kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "cpu model") and value.strip():
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    elif sys.platform == "darwin" and shutil.which("sysctl"):
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        model = out.stdout.strip() or model
    info: dict[str, Any] = {
        "model": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
    }
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
    except (ImportError, AttributeError):
        pass
    return info


def gpu_info() -> list[dict[str, Any]]:
    """Each visible CUDA GPU (model, memory) with the driver and CUDA versions; ``[]`` on CPU."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    driver = None
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"model": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                     "driver": driver, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
    return gpus


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe() -> dict[str, Any]:
    """The environment of this process: lock, key versions, Python, OS, CPU, GPUs."""
    return {
        "lock": lock_info(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "gpus": gpu_info(),
    }


def digest(env: Mapping[str, Any]) -> str:
    """Short digest of what can move results: lock, versions, CPU model + extensions, GPUs."""
    key = {
        "lock": env.get("lock", {}).get("sha256"),
        "mismatches": env.get("lock", {}).get("mismatches"),
        "packages": env.get("packages"),
        "python": env.get("python"),
        "cpu": {k: env.get("cpu", {}).get(k) for k in ("model", "vector_extensions", "torch_cpu_capability")},
        "gpus": [{k: g.get(k) for k in ("model", "driver", "cuda")} for g in env.get("gpus", [])],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def format_markdown(env: Mapping[str, Any]) -> str:
    """The report's "Environment" section: a few lines a reader compares between runs."""
    lock = env.get("lock", {})
    if lock.get("sha256"):
        how = "installed by `make install`" if lock.get("installed_by") else "not installed by `make install`"
        lock_line = f"`{lock.get('file')}` sha256 `{lock['sha256'][:16]}…` ({how})"
    else:
        lock_line = "none (not installed from a tsd_ray lock)"
    mism = lock.get("mismatches")
    if mism:
        lock_line += f"; **{len(mism)} installed versions differ from it**: " + "; ".join(mism[:5])
        lock_line += " …" if len(mism) > 5 else ""
    pk = env.get("packages", {})
    cpu = env.get("cpu", {})
    lines = [
        f"- Lock: {lock_line}",
        "- Versions: " + ", ".join(f"{k} {v or '–'}" for k, v in pk.items()) + f", Python {env.get('python')}",
        f"- CPU: {cpu.get('model')} ({cpu.get('logical_cores')} logical cores; "
        f"{' '.join(cpu.get('vector_extensions') or []) or 'no vector extensions listed'}; "
        f"torch kernels {cpu.get('torch_cpu_capability', '–')})",
        "- GPU: " + ("; ".join(f"{g['model']} ({g['memory_gib']} GiB, driver {g.get('driver') or '–'}, "
                              f"CUDA {g.get('cuda')})" for g in env.get("gpus", [])) or "none"),
        f"- Environment digest: `{digest(env)}` ({env.get('platform')})",
    ]
    return "\n".join(lines)


def record(run_dir: str, env: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``environment.json`` in the run folder: this start's environment and every earlier one.

    A run resumed on another machine or after ``make lock`` keeps the history, so its report
    can say that its steps come from more than one environment.
    """

    uri = storage.join(run_dir, "environment.json")
    old = storage.read_json(uri) if storage.exists(uri) else {}
    starts = list(old.get("starts", []))
    starts.append({"digest": digest(env), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    data = {"current": dict(env), "digest": digest(env), "starts": starts,
            "earlier": {**old.get("earlier", {}), **({old["digest"]: old["current"]} if old.get("digest") else {})}}
    data["earlier"].pop(data["digest"], None)
    storage.write_json_atomic(uri, data)
    return data
