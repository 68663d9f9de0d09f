"""Detection on a user's own recordings with a trained model (``jobs/detect.py``).

A *detector* file (``kind == "detector"``, written by :func:`tsd_ray.models.checkpoint.export_detector`
or :func:`export_from_run`) holds everything detection needs: the student (f or w), the frozen
encoder, the front end and the post-processing tuned on validation. A plain student file plus
its run's encoder file works too (default post-processing unless given).

Steps, for a recording of any length and sample rate:

1. **Reference**: each reference clip is decoded, padded/cropped to
   ``frontend.reference_seconds`` (as the feature build does), embedded by the encoder and
   normalised (:func:`tsd_ray.models.encoder.normalise_embedding`); several clips of one class
   are averaged and normalised again.
2. **Features**: the whole recording is resampled and turned into a log-mel ``(T, F)`` by the
   front end the model was trained with (:class:`tsd_ray.data.features.LogMel`), rounded through
   float16 like the stored training features.
3. **Windows**: the mel is cut into ``clip_seconds`` windows (10 s = 501 input frames) that
   start every ``hop`` input frames (even, so a window starting at input frame ``s`` maps its
   output frame ``i`` to global output frame ``s // 2 + i``); the last window is padded with
   the log-mel of silence and its padded frames are masked out, exactly as short training
   clips were. Probabilities of frames covered by several windows are averaged with weights
   that favour the window in which the frame sits centrally (a plain mean split events at
   window boundaries: a window's edge frames are less reliable), see
   :func:`frame_probabilities`.
4. **Events**: median filter + threshold + merge (:func:`tsd_ray.metrics.scoring.postprocess`) with
   the detector's post-processing; 40 ms output frames.

Many files (a folder or a list) run as a Ray Data batch-inference pipeline
(:func:`detect_many`): an actor pool, one detector per actor, a GPU per actor when the cluster
has GPUs. A file that fails comes back as a row with its error, never an exception: the run
goes on and reports the failures at the end.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tsd_ray.common import storage
from tsd_ray.common.config import EvalConfig, FrontendConfig, from_dict
from tsd_ray.common.ray_env import cluster_cpus, cluster_gpus, ensure_ray, map_with_actors
from tsd_ray.common.types import Event
from tsd_ray.data.audio import AUDIO_EXTENSIONS, SILENCE_RMS, load_audio
from tsd_ray.data.features import TIME_POOL, LogMel, n_input_frames, output_hop_seconds, pick_device
from tsd_ray.experiments.final_model import Outcome, final_model
from tsd_ray.metrics.scoring import PostProcessing, postprocess
from tsd_ray.models import checkpoint as ckpt
from tsd_ray.models.encoder import freeze, normalise_embedding

#: Audio files picked up when a folder is given.
EVENTS_HEADER = ("filename", "onset", "offset", "event_label")
DEFAULT_LABEL = "target"


class DetectError(ValueError):
    """A detection input (model, reference, recording, list) cannot be used; names the file."""


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedDetector:
    """A ready-to-run detector: frozen student + encoder on ``device``, in eval mode."""

    student: torch.nn.Module
    encoder: torch.nn.Module
    frontend: FrontendConfig
    postprocessing: PostProcessing
    classes: tuple[str, ...]  # classes the model was trained with (student file)
    encoder_classes: tuple[str, ...]  # classes of the encoder's pretraining head
    student_kind: str  # "f" or "w"
    uri: str
    device: torch.device
    encoder_uri: str | None = None  # separate encoder file (plain student), None when bundled

    @property
    def output_hop_s(self) -> float:
        """Seconds per output frame (0.04 with the default front end)."""
        return output_hop_seconds(self.frontend)

    @property
    def window_frames(self) -> int:
        """Input frames of one window: ``clip_seconds`` of audio (10 s -> 501)."""
        return n_input_frames(self.frontend.clip_seconds, self.frontend)


def load_detector(
    uri: str,
    *,
    encoder_uri: str | None = None,
    postprocessing: PostProcessing | None = None,
    device: str | torch.device = "auto",
) -> LoadedDetector:
    """Load a detector file, or a plain f/w student file plus ``encoder_uri``.

    ``postprocessing`` overrides the one stored in the detector file; a plain student gets
    the :class:`~tsd_ray.common.config.EvalConfig` defaults (threshold 0.5, no median filter) unless
    given. Raises :class:`~tsd_ray.models.checkpoint.CheckpointError` (a missing, corrupt or
    other-version file, naming it) or :class:`DetectError`.
    """

    payload = ckpt.load_payload(uri)
    kind = payload.get("kind")
    if kind == "detector":
        student = ckpt.build_student({**payload, "kind": payload["student_kind"]})
        enc_payload = payload["encoder"]
        if encoder_uri:
            enc_payload = ckpt.load_payload(encoder_uri)
        pp = postprocessing or PostProcessing(
            threshold=float(payload["postprocessing"]["threshold"]),
            median_frames=int(payload["postprocessing"]["median_frames"]),
        )
        student_kind = str(payload["student_kind"])
    elif kind in ckpt.STUDENT_POOLING:
        if not encoder_uri:
            raise DetectError(
                f"{uri}: a plain {kind} student model file has no encoder inside; pass the encoder "
                "of its run (--encoder <run>-encoder/checkpoint_*/model.pt) or export a detector "
                "first (python jobs/detect.py export --run RUN_DIR --out detector.pt)"
            )
        student = ckpt.build_student(payload)
        enc_payload = ckpt.load_payload(encoder_uri)
        ev = EvalConfig()
        pp = postprocessing or PostProcessing(threshold=ev.threshold, median_frames=ev.median_frames)
        student_kind = str(kind)
    else:
        raise DetectError(
            f"{uri}: a '{kind}' model file cannot detect; give a detector file (jobs/detect.py export) "
            "or an f/w student model file with --encoder"
        )
    encoder = ckpt.build_encoder(enc_payload)
    if int(encoder.cfg.embedding_dim) != int(student.cfg.embedding_dim):
        raise DetectError(
            f"{uri}: the student expects {student.cfg.embedding_dim}-d embeddings but the encoder gives "
            f"{encoder.cfg.embedding_dim}-d ones; use the encoder of the student's own run"
        )
    front = (payload.get("meta") or {}).get("frontend")
    if not front:
        raise DetectError(f"{uri}: the model file records no front end (meta.frontend); re-export it")
    frontend = from_dict(FrontendConfig, front, "frontend")
    dev = pick_device(device) if isinstance(device, str) else device
    return LoadedDetector(
        student=freeze(student.to(dev)),
        encoder=freeze(encoder.to(dev)),
        frontend=frontend,
        postprocessing=pp,
        classes=tuple(payload.get("classes", ())),
        encoder_classes=tuple(enc_payload.get("classes", ())),
        student_kind=student_kind,
        uri=uri,
        device=dev,
        encoder_uri=encoder_uri,
    )


def export_from_run(run_dir: str, out_uri: str, *, recipe: str = "MS") -> str:
    """Export the final model of ``recipe`` (SS, WS, MS or an ablation name) of a finished run.

    Reads ``<run_dir>/ledger.json``: the encoder, the recipe's evaluation (its post-processing,
    tuned on validation) and its final student: the model that evaluation scored (recorded in
    the ledger, so the w student when ``method.final_student=best`` chose it). Ledgers written
    before evaluations recorded their model fall back to the best f by validation score among
    phase 4 and the loop iterations (the phase-3 w student when pseudo supervision was off).
    Returns ``out_uri``.
    """
    steps = read_ledger_steps(run_dir)
    if "encoder" not in steps:
        raise DetectError(f"{run_dir}: the ledger has no finished encoder step; finish the run first")
    ev_name = f"{recipe}-eval"
    if ev_name not in steps:
        have = sorted(k[: -len("-eval")] for k in steps if k.endswith("-eval") and "-eval-" not in k)
        raise DetectError(
            f"{run_dir}: no finished evaluation '{ev_name}' in the ledger (recipes evaluated: {have}); "
            "pick one with --recipe"
        )
    ev = steps[ev_name]
    model = ev.get("model_uri") or _final_model(steps, recipe, run_dir)
    return ckpt.export_detector(model, steps["encoder"]["model_uri"], ev["postprocessing"], out_uri)


def _final_model(steps: dict[str, dict], recipe: str, run_dir: str) -> str:
    """The final model of an older ledger whose evaluation did not record it: Algorithm 1's
    rule (:func:`tsd_ray.experiments.final_model.final_model`, f student) over its phases."""
    if recipe in steps and "model_uri" in steps[recipe]:  # SS, WS: one phase
        return steps[recipe]["model_uri"]
    phases = [(f"{recipe}-p3_w_target", "w"), (f"{recipe}-p4_f_target", "f")]
    for k in range(1, 1000):
        if f"{recipe}-it{k}_w" not in steps and f"{recipe}-it{k}_f" not in steps:
            break
        phases += [(f"{recipe}-it{k}_w", "w"), (f"{recipe}-it{k}_f", "f")]
    outcomes = [Outcome(n, student, "target_val", float(steps[n]["best_val_score"]), steps[n]["model_uri"])
                for n, student in phases if n in steps]
    chosen = final_model(outcomes, pseudo=any(o.student == "f" for o in outcomes), final_student="f")
    if chosen is None:
        raise DetectError(f"{run_dir}: cannot find the final model of recipe '{recipe}' in the ledger")
    return chosen.model_uri


def read_ledger_steps(run_dir: str) -> dict[str, dict]:
    """The ``steps`` of ``<run_dir>/ledger.json`` (``run_dir`` may also be the ledger file)."""
    uri = run_dir if str(run_dir).endswith(".json") else storage.join(run_dir, "ledger.json")
    try:
        data = storage.read_json(uri)
    except (FileNotFoundError, OSError) as exc:
        raise DetectError(f"{uri}: no run ledger here ({exc}); give the run's folder (<storage>/<run name>)") from exc
    except json.JSONDecodeError as exc:
        raise DetectError(f"{uri}: the ledger is not valid JSON ({exc})") from exc
    return dict(data.get("steps", {}))


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Reference:
    """The conditioning embedding of one target, from one or more reference clips."""

    embedding: np.ndarray  # (E,) float32, norm sqrt(E)
    paths: tuple[str, ...]
    guess: str | None  # the encoder's pretraining class closest to the reference
    guess_prob: float  # its softmax probability (averaged over clips)


def _as_stored(mel: np.ndarray) -> np.ndarray:
    """Round through float16 as the build stores features, so the model sees what it trained on."""
    return mel.astype(np.float16).astype(np.float32)


def embed_reference(det: LoadedDetector, paths: Sequence[str], *, logmel: LogMel | None = None) -> Reference:
    """Embed reference clips of one class: per-clip normalised embeddings, averaged, normalised."""

    if not paths:
        raise DetectError("no reference clip given: pass --reference REF.wav (repeatable)")
    logmel = logmel or LogMel(det.frontend, det.device)
    mels = []
    for p in paths:
        wave, sr = load_audio(p)
        rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
        if rms < SILENCE_RMS:
            raise DetectError(
                f"{p}: reference clip is silent (RMS {rms:.1e} < {SILENCE_RMS:g}); give a clip in which "
                "the target sound is audible"
            )
        feats, _ = logmel(wave, sr, seconds=det.frontend.reference_seconds)
        mels.append(_as_stored(feats))
    x = torch.as_tensor(np.stack(mels), device=det.device)  # (R, T, F)
    with torch.no_grad():
        out = det.encoder(x)
    e = normalise_embedding(out.embedding.float())  # (R, E)
    e = normalise_embedding(e.mean(dim=0, keepdim=True))[0]  # (E,)
    guess, prob = None, 0.0
    if det.encoder_classes and out.logits.shape[1] == len(det.encoder_classes):
        probs = torch.softmax(out.logits.float(), dim=-1).mean(dim=0)  # (K,)
        k = int(probs.argmax())
        guess, prob = det.encoder_classes[k], float(probs[k])
    return Reference(e.cpu().numpy().astype(np.float32), tuple(paths), guess, prob)


# --------------------------------------------------------------------------------------------
# One recording
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Detection:
    """Detection result of one recording. ``probs[i]`` covers ``[i * hop, (i + 1) * hop)`` s."""

    name: str  # file name written to the TSVs (relative to the folder/list given)
    path: str  # where the audio was read
    label: str
    duration_s: float
    frame_hop_s: float
    probs: np.ndarray  # (T',) float32 target probability per output frame
    events: tuple[Event, ...]
    postprocessing: PostProcessing
    mel: np.ndarray | None = None  # (T, F) log-mel, only when asked for (plots)


def window_starts(n_frames: int, window: int, hop: int) -> list[int]:
    """Start frames of windows of ``window`` frames every ``hop`` (even) frames covering
    ``n_frames``; the last window may run past the end (it is padded)."""
    if hop < TIME_POOL or hop % TIME_POOL or hop > window:
        raise ValueError(f"window hop must be an even number of frames in [2, {window}], got {hop}")
    starts = [0]
    while starts[-1] + window < n_frames:
        starts.append(starts[-1] + hop)
    return starts


def window_hop(window: int, overlap: float) -> int:
    """Even hop in input frames for a window overlap fraction in [0, 1)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    hop = int(window * (1.0 - overlap)) // TIME_POOL * TIME_POOL
    return max(TIME_POOL, min(hop, window // TIME_POOL * TIME_POOL))


@torch.no_grad()
def frame_probabilities(
    det: LoadedDetector,
    mel: np.ndarray,
    embedding: np.ndarray,
    *,
    overlap: float = 0.5,
    batch_size: int = 16,
    weighting: str = "hann",
) -> np.ndarray:
    """Target probability per output frame ``(T // 2,)`` for a log-mel ``(T, F)`` of any length.

    Windows of ``det.window_frames`` input frames, ``overlap`` apart, run in batches of
    ``batch_size``. Frames covered by several windows get a weighted average: ``"hann"``
    weights each window's frame ``i`` by ``sin(pi (i + 1/2) / W')^2``, so a frame is decided by
    the window in which it sits centrally (a window's first and last frames see the clip edge
    and are less reliable); ``"mean"`` is the plain average. Where one window alone covers a
    frame (the recording's ends), its value is used either way.
    """
    if weighting not in ("hann", "mean"):
        raise ValueError(f"weighting must be 'hann' or 'mean', got {weighting!r}")
    n_in, n_mels = mel.shape
    n_out = n_in // TIME_POOL
    if n_out < 1:
        raise DetectError(f"recording too short: {n_in} frame(s), need at least {TIME_POOL}")
    W = det.window_frames
    W_out = W // TIME_POOL
    starts = window_starts(n_in, W, window_hop(W, overlap))
    silence = math.log(det.frontend.log_offset)  # log-mel of zero signal: what padding looked like
    padded = np.full((starts[-1] + W, n_mels), silence, dtype=np.float32)  # (T_pad, F)
    padded[:n_in] = mel
    total = np.zeros(n_out, dtype=np.float64)
    count = np.zeros(n_out, dtype=np.float64)  # sum of weights
    if weighting == "hann":
        weight = np.sin(np.pi * (np.arange(W_out) + 0.5) / W_out) ** 2  # (W',) > 0
    else:
        weight = np.ones(W_out)
    emb = torch.as_tensor(embedding, dtype=torch.float32, device=det.device)  # (E,)
    for b0 in range(0, len(starts), batch_size):
        chunk = starts[b0 : b0 + batch_size]
        x = torch.as_tensor(np.stack([padded[s : s + W] for s in chunk]), device=det.device)  # (B, W, F)
        n_valid = torch.as_tensor([min(W, n_in - s) // TIME_POOL for s in chunk], device=det.device)  # (B,)
        mask = torch.arange(W_out, device=det.device)[None, :] < n_valid[:, None]  # (B, W')
        out = det.student(x, emb.expand(len(chunk), -1), mask)
        probs = out.frame_probs.float().cpu().numpy()  # (B, W')
        for s, nv, p in zip(chunk, n_valid.tolist(), probs):
            g = s // TIME_POOL
            total[g : g + nv] += weight[:nv] * p[:nv]
            count[g : g + nv] += weight[:nv]
    if not np.all(count > 0):  # cannot happen with hop <= window; guards the arithmetic above
        raise AssertionError("some output frames were not covered by any window")
    return (total / count).astype(np.float32)


def compute_mel(det: LoadedDetector, path: str, *, logmel: LogMel | None = None) -> tuple[np.ndarray, float]:
    """Log-mel ``(T, F)`` of a whole recording (any length/sample rate) and its duration (s)."""
    wave, sr = load_audio(path)
    fc = det.frontend
    # The STFT pads n_fft/2 samples by reflection, which needs more samples than that.
    min_s = (max(fc.n_fft // 2, TIME_POOL * fc.hop_length) + 1) / fc.sample_rate
    if len(wave) / sr < min_s:
        raise DetectError(f"{path}: recording too short ({len(wave) / sr:.3f} s); need at least {min_s:.3f} s")
    logmel = logmel or LogMel(fc, det.device)
    mel, _ = logmel(wave, sr)
    return _as_stored(mel), len(wave) / sr


def detect_file(
    det: LoadedDetector,
    reference: Reference | np.ndarray,
    path: str,
    *,
    name: str | None = None,
    label: str = DEFAULT_LABEL,
    overlap: float = 0.5,
    batch_size: int = 16,
    keep_mel: bool = False,
    logmel: LogMel | None = None,
) -> Detection:
    """Detect the reference's sound in one recording. Raises AudioError/DetectError naming it."""
    emb = reference.embedding if isinstance(reference, Reference) else np.asarray(reference, np.float32)
    mel, duration = compute_mel(det, path, logmel=logmel)
    try:
        probs = frame_probabilities(det, mel, emb, overlap=overlap, batch_size=batch_size)
    except DetectError as exc:
        raise DetectError(f"{path}: {exc}") from None
    hop = det.output_hop_s
    events = postprocess(probs, det.postprocessing, frame_hop_s=hop, label=label)
    return Detection(
        name=name or posixpath.basename(str(path)),
        path=str(path),
        label=label,
        duration_s=float(duration),
        frame_hop_s=hop,
        probs=probs,
        events=tuple(events),
        postprocessing=det.postprocessing,
        mel=mel if keep_mel else None,
    )


# --------------------------------------------------------------------------------------------
# Many recordings
# --------------------------------------------------------------------------------------------


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
        pp = PostProcessing(**postprocessing) if postprocessing else None
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
        "postprocessing": {"threshold": pp.threshold, "median_frames": pp.median_frames},
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


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def format_events_tsv(detections: Sequence[Detection]) -> str:
    """DCASE TSV ``filename onset offset event_label`` (seconds, 3 decimals), one row per event."""
    lines = ["\t".join(EVENTS_HEADER)]
    for d in detections:
        for e in d.events:
            lines.append(f"{d.name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}")
    return "\n".join(lines) + "\n"


def format_frames_tsv(detections: Sequence[Detection]) -> str:
    """``filename time prob``: every output frame's start time (s, 3 decimals) and probability."""
    lines = ["filename\ttime\tprob"]
    for d in detections:
        for i, p in enumerate(d.probs):
            lines.append(f"{d.name}\t{i * d.frame_hop_s:.3f}\t{float(p):.4f}")
    return "\n".join(lines) + "\n"


def format_failures_tsv(failures: Sequence[Failure]) -> str:
    lines = ["filename\tpath\treason"]
    for f in failures:
        reason = " ".join(f.reason.split())  # one line per file
        lines.append(f"{f.name}\t{f.path}\t{reason}")
    return "\n".join(lines) + "\n"


def write_text(uri: str, text: str) -> str:
    storage.write_bytes_atomic(uri, text.encode())
    return uri


def read_events_tsv(uri: str, *, filename: str | None = None) -> list[tuple[str, Event]]:
    """Rows ``(filename, Event)`` of a DCASE strong TSV (header ``filename onset offset
    event_label``); rows with empty times (files without events) are skipped. With ``filename``
    only rows of that file (compared by full name or base name) are returned."""
    try:
        text = storage.read_bytes(uri).decode("utf-8-sig")
    except (FileNotFoundError, OSError) as exc:
        raise DetectError(f"{uri}: label file not found ({exc})") from exc
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [[f.strip() for f in r] for r in rows if any(f.strip() for f in r)]
    if not rows or any(c not in rows[0] for c in EVENTS_HEADER):
        raise DetectError(f"{uri}: the first line must be the header '{chr(9).join(EVENTS_HEADER)}' (tab-separated)")
    idx = [rows[0].index(c) for c in EVENTS_HEADER]
    out = []
    for n, r in enumerate(rows[1:], start=2):
        if len(r) < len(rows[0]):
            if len(r) == 1:
                continue  # a file listed without events
            raise DetectError(f"{uri} line {n}: expected {len(rows[0])} tab-separated columns, got {len(r)}")
        name, on, off, lab = (r[i] for i in idx)
        if not on and not off:
            continue
        if filename is not None and name not in (filename, posixpath.basename(filename)) and \
                posixpath.basename(name) != posixpath.basename(filename):
            continue
        try:
            ev = Event(float(on), float(off), lab)
        except ValueError as exc:
            raise DetectError(f"{uri} line {n}: onset/offset must be numbers in seconds ({exc})") from None
        out.append((name, ev))
    return out
