"""Shared helpers of the data benchmarks: synthetic audio, a tiny corpus, Ray start-up, timing,
memory sampling and table printing.

Benchmarks are scripts that print numbers (not timed tests). Run them from the repository root
as modules, e.g. ``python -m bench.bench_features --n 200``. Generated data goes under a work
directory outside the repo (``/tmp/tsd_bench`` by default).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = "/tmp/tsd_bench"
SOURCE_CLASSES = ("s1", "s2")
TARGET_CLASSES = ("t1", "t2")


def repo_on_path() -> None:
    """Make ``tsd_ray`` importable here and in Ray worker processes (they inherit PYTHONPATH)."""
    root = str(REPO)
    if root not in sys.path:
        sys.path.insert(0, root)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])


def workdir(path: str) -> Path:
    """The benchmark's scratch folder; refuses a folder inside the repository."""
    p = Path(path).expanduser().resolve()
    if p == REPO or REPO in p.parents:
        raise SystemExit(f"--workdir {p} is inside the repository {REPO}; pick a folder outside it")
    p.mkdir(parents=True, exist_ok=True)
    return p


# ----------------------------------------------------------------------------------------------
# Synthetic audio and corpus
# ----------------------------------------------------------------------------------------------


def make_wavs(folder: Path, n: int, *, sr: int, seconds: float = 10.0, seed: int = 0) -> list[str]:
    """``n`` mono 16-bit WAV files of ``seconds`` at ``sr`` Hz (noise + a tone burst each).

    Files already present (same name) are kept, so re-runs do not rewrite gigabytes.
    Returns the absolute paths, sorted by index.
    """
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_samples = int(round(seconds * sr))
    t = np.arange(n_samples, dtype=np.float32) / sr
    paths = []
    for i in range(n):
        path = folder / f"clip{i:06d}.wav"
        paths.append(str(path))
        if path.exists():
            continue
        wave = 0.05 * rng.standard_normal(n_samples).astype(np.float32)
        on = int(rng.uniform(0.5, 7.0) * sr)
        off = on + int(1.5 * sr)
        wave[on:off] += 0.3 * np.sin(2 * np.pi * (300.0 + 20.0 * (i % 97)) * t[on:off])
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, wave, sr, subtype="PCM_16")
        os.replace(tmp, path)
    return paths


def make_corpus(paths: Sequence[str], split: str = "source_train", *, n_references: int = 0):
    """A Corpus with one mixture per path in ``split``, one event each (-> 2 TSD samples:
    1 positive + 1 negative, since the domain has 2 classes).

    With ``n_references`` the first files double as reference clips, spread over the 4 classes
    (cropped to ``reference_s`` by the build): :func:`tsd_ray.data.shards.read_samples` needs a
    reference table.
    """
    from tsd_ray.common.types import SPLIT_DOMAIN, Corpus, Event, MixtureRecord, ReferenceRecord

    domain = SPLIT_DOMAIN[split]
    classes = SOURCE_CLASSES if domain == "source" else TARGET_CLASSES
    recs = []
    for i, p in enumerate(paths):
        on = 1.0 + (i % 7)
        ev = Event(on, on + 1.5, classes[i % 2])
        recs.append(MixtureRecord(Path(p).name, p, split, domain, (ev,)))
    labels = SOURCE_CLASSES + TARGET_CLASSES
    refs = tuple(
        ReferenceRecord(f"ref{i}", paths[i % len(paths)], labels[i % len(labels)])
        for i in range(n_references)
    )
    return Corpus(
        mixtures={split: tuple(recs)},
        references=refs,
        source_classes=SOURCE_CLASSES,
        target_classes=TARGET_CLASSES,
    )


def build(corpus, out: Path, *, rows_per_shard: int, workers: int, use_ray: bool):
    """tsd_ray's feature build of ``corpus`` into ``out`` (CPU mels); returns the BuildResult."""
    from tsd_ray.common.config import BuildConfig, FrontendConfig, SamplesConfig
    from tsd_ray.data.build import build_features

    return build_features(
        corpus,
        str(out),
        frontend=FrontendConfig(device="cpu"),
        samples_cfg=SamplesConfig(seed=0),
        build_cfg=BuildConfig(rows_per_shard=rows_per_shard, num_workers=workers),
        use_ray=use_ray,
    )


# ----------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------


def init_ray(num_cpus: int, tmp: Path) -> float:
    """Start a local Ray like the tests do (no dashboard, quiet); returns the seconds it took."""
    repo_on_path()
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    import ray

    from tsd_ray.common.ray_env import quiet_data_context

    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=str(tmp),
        logging_level="ERROR",
        log_to_driver=False,
    )
    quiet_data_context()
    return time.perf_counter() - t0


def read_dataset(features: str, split: str, reader: str = "tsd"):
    """The Ray Dataset of a split's training samples. ``tsd``: :func:`tsd_ray.data.shards.read_samples`
    as it is; ``v1``: the same with Ray Data's V1 Parquet datasource (sets the driver's
    DataContext); ``per_file``: :func:`per_file_reader` (an alternative, not tsd_ray's)."""
    from ray.data import DataContext

    from tsd_ray.data import shards as data

    if reader == "per_file":
        return per_file_reader(features, split)
    DataContext.get_current().use_datasource_v2 = reader != "v1"
    return data.read_samples(features, split)


def per_file_reader(features: str, split: str):
    """Alternative reader (not tsd_ray's): one Ray task per Parquet file, streaming 16-mixture
    record batches through tsd_ray's own ``expand_batch`` (no footer actors, small blocks)."""
    import numpy as np
    import pyarrow.parquet as pq
    import ray

    from tsd_ray.common import storage
    from tsd_ray.data import shards as data

    manifest = data.load_manifest(features)
    expand = data._expander(manifest, None, False)
    files = manifest.files(split)

    def read(batch):
        for uri in batch["path"]:
            fs, path = storage.resolve(str(uri))
            pf = pq.ParquetFile(fs.open_input_file(path))
            for rb in pf.iter_batches(batch_size=16, columns=data._MIXTURE_COLUMNS):
                cols = {}
                for name in rb.schema.names:
                    col = rb.column(name)
                    cols[name] = col.to_numpy_ndarray() if name == "mel" else np.asarray(col.to_pylist(), dtype=object)
                yield expand(cols)

    items = [{"path": f} for f in files]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(read, batch_size=1)


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size (MB) so far (getrusage: ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def try_drop_caches() -> str:
    """Try to drop the OS page cache; returns what happened (benchmarks print it)."""
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "dropped (sync; echo 3 > /proc/sys/vm/drop_caches)"
    except OSError as exc:
        return f"NOT dropped ({type(exc).__name__}: {exc.strerror or exc})"


def load_note() -> str:
    """1-minute load average vs cores: other work on the machine skews timings."""
    return f"load avg {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """(parent pid -> child pids, pid -> CPU seconds used (user + system)) from /proc/PID/stat."""
    kids: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        kids.setdefault(int(fields[1]), []).append(int(entry))
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    return kids, cpu


def _rss_pss_mb(pid: int) -> tuple[float, float] | None:
    """(RSS, PSS) of a process in MB from /proc/PID/smaps_rollup; None if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            vals[key] = int(rest.split()[0]) / 1024.0  # kB -> MB
    if "Rss" not in vals:
        return None
    return vals["Rss"], vals.get("Pss", 0.0)


@dataclass
class TreeSampler:
    """Samples the memory and CPU time of a process and all its descendants.

    Reads /proc directly (Linux; no psutil needed). ``cpu_seconds`` is the CPU time (user +
    system) the tree used while sampling ran, per process from first to last sighting (a
    process's last ``interval_s`` before it exits is missed). With ``memory`` it also tracks,
    as the maximum over samples: the total RSS of the tree (over-counts pages shared between
    processes, e.g. Ray's object store mapped by several workers), the total PSS (shared pages
    divided among the processes mapping them: the honest "memory the tree uses"), and the same
    two numbers for the root alone (``root_*``) and for the tree without the root
    (``others_*``). Numbers in MB.
    """

    pid: int
    interval_s: float = 0.2
    memory: bool = True
    peak: dict[str, float] = field(default_factory=dict)
    _cpu_first: dict[int, float] = field(default_factory=dict)
    _cpu_last: dict[int, float] = field(default_factory=dict)
    samples: int = 0
    max_procs: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()  # last CPU reading of the processes still alive
        return dict(self.peak)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu_last[p] - self._cpu_first[p] for p in self._cpu_last)

    def sample(self) -> dict[str, float] | None:
        """One sample of the tree (None when the root is gone)."""
        kids, cpu = _proc_table()
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += kids.get(pid, [])
        if self.pid not in cpu:
            return None
        for pid in tree:
            if pid in cpu:
                self._cpu_first.setdefault(pid, cpu[pid])
                self._cpu_last[pid] = cpu[pid]
        if not self.memory:
            return {}
        totals = {"root_rss": 0.0, "root_pss": 0.0, "others_rss": 0.0, "others_pss": 0.0}
        seen = 0
        for pid in tree:
            mem = _rss_pss_mb(pid)
            if mem is None:
                if pid == self.pid:
                    return None
                continue
            who = "root" if pid == self.pid else "others"
            totals[f"{who}_rss"] += mem[0]
            totals[f"{who}_pss"] += mem[1]
            seen += 1
        totals["tree_rss"] = totals["root_rss"] + totals["others_rss"]
        totals["tree_pss"] = totals["root_pss"] + totals["others_pss"]
        self.max_procs = max(self.max_procs, seen)
        return totals

    def _run(self) -> None:
        while not self._stop.is_set():
            totals = self.sample()
            if totals is None:
                return
            for k, v in totals.items():
                self.peak[k] = max(self.peak.get(k, 0.0), v)
            self.samples += 1
            self._stop.wait(self.interval_s)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A compact fixed-width table on stdout."""
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
