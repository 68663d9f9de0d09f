"""Detection on many recordings: listing audio, a Ray Data actor pool (one detector per
actor, a GPU per actor when there are GPUs), failures reported as rows, never raised."""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tsd_ray.apps.detect_inference import Detection, Reference, detect_file
from tsd_ray.apps.detect_model import DEFAULT_LABEL, DetectError, LoadedDetector, load_detector
from tsd_ray.common import storage
from tsd_ray.common.ray_env import cluster_cpus, cluster_gpus, ensure_ray, map_with_actors
from tsd_ray.common.types import Event
from tsd_ray.data.audio import AUDIO_EXTENSIONS
from tsd_ray.data.features import LogMel
from tsd_ray.metrics.postprocess import PostProcessing


def list_audio(spec: str, *, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[tuple[str, str]]:
    """``(path, name)`` of the recordings named by ``spec``, in a stable order.

    ``spec`` is an audio file, a folder (searched recursively for ``extensions``; name = path
    relative to the folder) or a text list (one path per line; blank and ``#`` lines skipped;
    relative paths are relative to the list's folder; name = the line as written).
    """
    import pyarrow.fs as pafs

    fs, root = storage.resolve(spec)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DetectError(f"{spec}: no such file or folder")
    exts = tuple(e.lower() for e in extensions)
    if info.type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        rels = sorted(
            posixpath.relpath(i.path, root) if storage.is_uri(spec) else os.path.relpath(i.path, root)
            for i in found
            if i.type == pafs.FileType.File and i.path.lower().endswith(exts)
        )
        if not rels:
            raise DetectError(f"{spec}: no audio files ({', '.join(exts)}) in this folder")
        return [(storage.join(spec, r), r) for r in rels]
    if str(spec).lower().endswith(exts):
        return [(str(spec), posixpath.basename(str(spec)))]
    try:
        text = storage.read_bytes(spec).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DetectError(f"{spec}: neither audio ({', '.join(exts)}) nor a UTF-8 list of audio paths") from exc
    base = posixpath.dirname(str(spec)) if storage.is_uri(spec) else os.path.dirname(storage.expand(spec))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = line if (storage.is_uri(line) or os.path.isabs(line)) else storage.join(base, line)
        out.append((p, line))
    if not out:
        raise DetectError(f"{spec}: the list names no audio file (one path per line)")
    return out


class DetectActor:
    """Ray Data actor: one detector per actor; a failing file becomes a row with its error."""

    def __init__(
        self,
        detector_uri: str,
        embedding: list[float],
        label: str,
        overlap: float = 0.5,
        encoder_uri: str | None = None,
        postprocessing: dict | None = None,
        keep_probs: bool = False,
        threads: int = 1,
        device: str = "auto",
    ):
        if threads > 0:
            torch.set_num_threads(threads)
        pp = PostProcessing.from_dict(postprocessing) if postprocessing else None
        self.det = load_detector(detector_uri, encoder_uri=encoder_uri, postprocessing=pp, device=device)
        self.logmel = LogMel(self.det.frontend, self.det.device)
        self.embedding = np.asarray(embedding, dtype=np.float32)
        self.label = label
        self.overlap = overlap
        self.keep_probs = keep_probs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: dict[str, list] = {k: [] for k in ("index", "name", "path", "error", "duration_s", "events", "probs")}
        for index, path, name in zip(batch["index"], batch["path"], batch["name"]):
            error, duration, events, probs = "", 0.0, "[]", b""
            try:
                d = detect_file(self.det, self.embedding, str(path), name=str(name), label=self.label,
                                overlap=self.overlap, logmel=self.logmel)
                duration = d.duration_s
                events = json.dumps([[e.onset, e.offset] for e in d.events])
                probs = d.probs.astype(np.float32).tobytes() if self.keep_probs else b""
            except Exception as exc:  # noqa: BLE001 - every failure becomes a reported row
                msg = str(exc)
                error = msg if str(path) in msg else f"{path}: {type(exc).__name__}: {msg}"
            rows["index"].append(int(index))
            rows["name"].append(str(name))
            rows["path"].append(str(path))
            rows["error"].append(error)
            rows["duration_s"].append(float(duration))
            rows["events"].append(events)
            rows["probs"].append(probs)
        out = {k: np.asarray(v) for k, v in rows.items() if k != "probs"}
        out["probs"] = np.asarray(rows["probs"], dtype=object)
        return out


@dataclass(frozen=True)
class Failure:
    name: str
    path: str
    reason: str


@dataclass
class BatchResult:
    """Outcome of :func:`detect_many`: detections in input order, failures, throughput.

    ``seconds`` is the whole call, start-up included; ``settings["first_result_s"]`` says how
    much of it passed before the first files came back (Ray, actor start, model loading).
    """

    detections: list[Detection]
    failures: list[Failure]
    seconds: float
    n_files: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def files_per_s(self) -> float:
        return self.n_files / max(self.seconds, 1e-9)


def detect_many(
    det: LoadedDetector,
    reference: Reference | np.ndarray,
    items: Sequence[tuple[str, str]],
    *,
    label: str = DEFAULT_LABEL,
    overlap: float = 0.5,
    keep_probs: bool = False,
    use_ray: bool = True,
    num_actors: int | None = None,
    batch_size: int = 4,
    progress_every: int = 100,
    progress: Callable[[str], None] | None = print,
) -> BatchResult:
    """Detect in many recordings ``items = [(path, name), ...]``; failures are collected, not raised.

    ``det`` is the loaded detector (its file, encoder file and post-processing are what the
    actors load). With ``use_ray`` a Ray Data pipeline: ``from_items`` ->
    ``map_batches(DetectActor)`` on an actor pool of ``num_actors`` (default: one per GPU, else
    CPUs - 1, at least 1: the spare CPU keeps Ray Data's own tasks running), each actor
    loading the detector once, ``batch_size`` files per call. Without ``use_ray`` the same
    actor runs in this process; both give identical results. ``progress`` gets a line every
    ``progress_every`` files. ``keep_probs`` brings the frame probabilities back too.
    """
    emb = reference.embedding if isinstance(reference, Reference) else np.asarray(reference, np.float32)
    pp = det.postprocessing
    kwargs = {
        "detector_uri": det.uri,
        "embedding": [float(x) for x in emb],
        "label": label,
        "overlap": overlap,
        "encoder_uri": det.encoder_uri,
        "postprocessing": pp.to_dict(),
        "keep_probs": keep_probs,
    }
    rows = [{"index": i, "path": p, "name": n} for i, (p, n) in enumerate(items)]
    t0 = time.time()
    first: list[float] = []  # time the first results arrived (start-up: Ray, actors, model load)
    done: list[dict] = []
    n_failed = 0

    def take(batch: dict) -> None:
        nonlocal n_failed
        if not first:
            first.append(time.time() - t0)
        before = len(done)
        for i in range(len(batch["index"])):
            row = {k: batch[k][i] for k in batch}
            n_failed += bool(row["error"])
            done.append(row)
        crossed = len(done) // max(progress_every, 1) > before // max(progress_every, 1)
        if progress and progress_every > 0 and (crossed or len(done) == len(rows)):
            rate = len(done) / max(time.time() - t0, 1e-9)
            progress(f"detect: {len(done)}/{len(rows)} files, {n_failed} failed, {rate:.2f} files/s")

    if use_ray:
        import ray

        ensure_ray()
        gpus = cluster_gpus()
        n = num_actors or (int(gpus) if gpus >= 1 else max(1, int(cluster_cpus()) - 1))
        ds = map_with_actors(ray.data.from_items(rows), DetectActor, kwargs=kwargs, size=n,
                             batch_size=batch_size, num_gpus=1 if gpus >= 1 else 0)
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            take(b)
        settings = {"engine": "ray", "actors": n, "gpus_per_actor": 1 if gpus >= 1 else 0}
    else:
        actor = DetectActor(**kwargs, threads=0, device=str(det.device))
        for b0 in range(0, len(rows), batch_size):
            chunk = rows[b0 : b0 + batch_size]
            take(actor({k: np.asarray([r[k] for r in chunk]) for k in ("index", "path", "name")}))
        settings = {"engine": "serial"}
    seconds = time.time() - t0

    done.sort(key=lambda r: int(r["index"]))
    detections, failures = [], []
    for r in done:
        if r["error"]:
            failures.append(Failure(str(r["name"]), str(r["path"]), str(r["error"])))
            continue
        probs = np.frombuffer(r["probs"], dtype=np.float32).copy() if keep_probs else np.zeros(0, np.float32)
        detections.append(
            Detection(
                name=str(r["name"]),
                path=str(r["path"]),
                label=label,
                duration_s=float(r["duration_s"]),
                frame_hop_s=det.output_hop_s,
                probs=probs,
                events=tuple(Event(float(a), float(b), label) for a, b in json.loads(str(r["events"]))),
                postprocessing=pp,
            )
        )
    settings.update(batch_size=batch_size, first_result_s=round(first[0], 2) if first else None)
    return BatchResult(detections, failures, seconds, len(rows), settings)
