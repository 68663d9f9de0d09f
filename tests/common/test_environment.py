"""The install lock and the environment record.

The first tests fail within seconds of CI's start when the installed audio stack is broken
(e.g. a torchaudio wheel built against another torch), instead of deep inside a Ray job; the
lock tests fail when pyproject.toml and requirements/*.lock disagree.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tsd_ray.common import environment
from tsd_ray.evaluate.report import format_report

REPO = Path(__file__).resolve().parents[2]
LOCKS = {"dev.lock": None, "runtime.lock": ("cluster",)}  # lock -> extras it covers (None: all)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


# --------------------------------------------------------------------------------------------
# The audio stack loads and computes (a broken wheel pair fails here, first)
# --------------------------------------------------------------------------------------------


def test_audio_stack_imports_and_computes_a_log_mel_on_cpu():
    try:
        import torch
        import torchaudio
    except (ImportError, OSError) as e:  # an undefined symbol surfaces as ImportError / OSError
        pytest.fail(
            f"the audio stack does not load ({e}); torch and torchaudio must be a matching pair: "
            "reinstall with `make clean install` (installs requirements/dev.lock exactly)"
        )
    from tsd_ray.common.config import FrontendConfig
    from tsd_ray.data.features import LogMel

    fe = FrontendConfig()
    sr = 44100  # a common file rate: exercises torchaudio's resampler as well as the mel
    t = np.arange(sr) / sr
    wave = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)  # 1 s of 1 kHz
    mel, n_valid = LogMel(fe)(wave, sr)
    assert mel.shape == (1 + fe.sample_rate // fe.hop_length, fe.n_mels) and n_valid == mel.shape[0]
    assert np.isfinite(mel).all()
    # the tone's energy sits in a few mel bands around 1 kHz, far above the others
    bands = mel.mean(axis=0)
    assert bands.max() - np.median(bands) > 5.0
    assert abs(int(np.argmax(bands)) - 19) <= 3  # 1 kHz = 1000 mel (HTK): band ~19 of 64 up to 11 kHz
    # a matching pair: torchaudio X.Y.* is built for torch X.Y.*
    assert torchaudio.__version__.split(".")[:2] == torch.__version__.split(".")[:2]


def test_ray_and_sed_eval_import():
    import ray
    import sed_eval

    assert ray.__version__.startswith("2.60")
    assert hasattr(sed_eval.sound_event, "EventBasedMetrics")


# --------------------------------------------------------------------------------------------
# Lock <-> pyproject.toml
# --------------------------------------------------------------------------------------------


def _pyproject_requirements(extras: tuple[str, ...] | None) -> dict[str, Requirement]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(data["dependencies"])
    optional = data.get("optional-dependencies", {})
    for extra in optional if extras is None else extras:
        reqs += optional[extra]
    build = [ln for ln in (REPO / "requirements" / "build.in").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    return {canonicalize_name(r.name): r for r in map(Requirement, reqs + build)}


def _lock_entries(path: Path) -> list[tuple[str, str, str | None, list[str]]]:
    """``(name, version, marker, via)`` per pinned entry, with the lock's ``# via`` sources."""
    entries: list[tuple[str, str, str | None, list[str]]] = []
    pin = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")
    for line in path.read_text().splitlines():
        m = pin.match(line)
        if m:
            entries.append((canonicalize_name(m.group(1)), m.group(2), m.group(3), []))
        elif entries and line.strip().startswith("#"):
            text = line.strip().lstrip("#").strip()
            text = text[len("via"):].strip() if text.startswith("via") else text
            if text:
                entries[-1][3].append(text)
    return entries


def _direct(entries) -> set[str]:
    return {name for name, _, _, via in entries
            if any(v.startswith("tsd-ray") or v.endswith("build.in") for v in via)}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_names_exactly_the_dependencies_of_pyproject(lock):
    entries = _lock_entries(REPO / "requirements" / lock)
    assert entries, f"requirements/{lock} pins nothing"
    wanted = set(_pyproject_requirements(LOCKS[lock]))
    direct = _direct(entries)
    assert wanted - direct == set(), (
        f"pyproject.toml / build.in require {sorted(wanted - direct)} but requirements/{lock} does not "
        "lock them: run `make lock`")
    assert direct - wanted == set(), (
        f"requirements/{lock} locks {sorted(direct - wanted)} as direct dependencies that pyproject.toml "
        "no longer has: run `make lock`")


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_locked_version_fits_pyproject_and_is_hashed(lock):
    path = REPO / "requirements" / lock
    reqs = _pyproject_requirements(LOCKS[lock])
    for name, version, _, _ in _lock_entries(path):
        if name in reqs:
            assert reqs[name].specifier.contains(version, prereleases=True), (
                f"requirements/{lock} pins {name}=={version}, outside pyproject.toml's "
                f"'{reqs[name].specifier}': run `make lock`")
    text = path.read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    unhashed = [b.split("==")[0] for b in blocks if "==" in b.split("\n")[0] and "--hash=sha256:" not in b]
    assert unhashed == [], f"entries without hashes in requirements/{lock}: {unhashed}"


def test_runtime_lock_agrees_with_dev_lock():
    """The cluster's lock pins each package at the version the tests ran with."""
    dev = {(n, m): v for n, v, m, _ in _lock_entries(REPO / "requirements" / "dev.lock")}
    for name, version, marker, _ in _lock_entries(REPO / "requirements" / "runtime.lock"):
        assert dev.get((name, marker)) == version, (
            f"runtime.lock pins {name}=={version} ({marker}), dev.lock {dev.get((name, marker))}: run `make lock`")


def test_known_broken_pair_is_excluded_by_pyproject():
    reqs = _pyproject_requirements(())
    assert not reqs["torchaudio"].specifier.contains("2.11.1")  # does not load with torch 2.11.0
    assert reqs["torchaudio"].specifier.contains("2.11.0")


# --------------------------------------------------------------------------------------------
# The environment record
# --------------------------------------------------------------------------------------------


def _write_lock(path: Path, pins: dict[str, str]) -> None:
    lines = ["# lock", "#    make lock"]
    for name, version in pins.items():
        lines += [f"{name}=={version} \\", "    --hash=sha256:" + "0" * 64, "    # via tsd-ray"]
    lines.append("nonexistent-pkg==1.0 ; python_full_version < '3.0' \\")
    lines += ["    --hash=sha256:" + "0" * 64]
    path.write_text("\n".join(lines) + "\n")


def test_lock_info_lists_every_installed_version_that_differs(tmp_path):
    import numpy

    lock = tmp_path / "dev.lock"
    _write_lock(lock, {"numpy": numpy.__version__, "pyyaml": "0.0.1", "not-installed-anywhere": "1.0"})
    info = environment.lock_info(prefix=tmp_path / "venv", repo_lock=lock)
    assert info["installed_by"] is None and info["sha256"] == environment.sha256_file(lock)
    assert info["mismatches"] == [  # numpy agrees; the marker entry is for another Python
        "not-installed-anywhere: installed nothing, lock 1.0",
        f"pyyaml: installed {__import__('yaml').__version__}, lock 0.0.1",
    ]


def test_lock_info_names_the_lock_that_make_install_installed(tmp_path):
    lock = tmp_path / "dev.lock"
    _write_lock(lock, {})
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / environment.INSTALLED_LOCK_FILE).write_text(
        json.dumps({"file": "requirements/dev.lock", "sha256": "ab" * 32}))
    info = environment.lock_info(prefix=venv, repo_lock=lock)
    assert info["installed_by"] == "make install" and info["sha256"] == "ab" * 32
    assert info["lock_changed_since_install"] is True  # the checkout's lock is not that one
    assert info["mismatches"] == []


def test_describe_records_versions_cpu_and_digest_changes_with_them():
    env = environment.describe()
    assert env["packages"]["torch"] and env["packages"]["ray"] and env["packages"]["numpy"]
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["cpu"]["model"] and env["cpu"]["logical_cores"] >= 1
    if sys.platform == "linux" and env["cpu"]["machine"] == "x86_64":
        assert "avx" in env["cpu"]["vector_extensions"] or "sse4_2" in env["cpu"]["vector_extensions"]
    assert isinstance(env["gpus"], list)
    other = json.loads(json.dumps(env))
    other["packages"]["torch"] = "0.0.0"
    assert environment.digest(other) != environment.digest(env)
    other = json.loads(json.dumps(env))
    other["platform"] = "elsewhere"  # not something that moves results
    assert environment.digest(other) == environment.digest(env)


def test_record_keeps_earlier_environments_of_a_resumed_run(tmp_path):
    env = environment.describe()
    first = environment.record(str(tmp_path), env)
    moved = json.loads(json.dumps(env))
    moved["packages"]["numpy"] = "9.9.9"
    second = environment.record(str(tmp_path), moved)
    assert len(second["starts"]) == 2 and second["digest"] != first["digest"]
    assert list(second["earlier"]) == [first["digest"]]
    on_disk = json.loads((tmp_path / "environment.json").read_text())
    assert on_disk["current"]["packages"]["numpy"] == "9.9.9"


def test_report_has_an_environment_section_and_warns_about_mixed_runs():
    env = environment.describe()
    results = {
        "SS": {"segment_f": 60.0, "event_f": 50.0},
        "settings": {"segment_s": 1.0, "t_collar_s": 0.2, "percentage_of_length": 0.2},
        "environment": {**env, "steps_by_environment": {"aaa": ["encoder"], "bbb": ["SS"]}},
    }
    md = format_report(results, title="t")
    assert "## Environment" in md and f"torch {env['packages']['torch']}" in md
    assert "made in 2 environments" in md
    results["environment"]["steps_by_environment"] = {"aaa": ["encoder", "SS"]}
    assert "environments**" not in format_report(results, title="t")
