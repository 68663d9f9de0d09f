"""Detection on one recording: the reference embedding, windowed inference over a recording of
any length, events. See :mod:`tsd_ray.apps.detect` for the steps."""

from __future__ import annotations

import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tsd_ray.apps.detect_model import DEFAULT_LABEL, DetectError, LoadedDetector
from tsd_ray.common.types import Event
from tsd_ray.data.audio import SILENCE_RMS, load_audio
from tsd_ray.data.features import TIME_POOL, LogMel
from tsd_ray.metrics.postprocess import PostProcessing, postprocess
from tsd_ray.models.encoder import normalise_embedding


@dataclass(frozen=True, eq=False)
class Reference:
    """The conditioning embedding of one target, from one or more reference clips."""

    embedding: np.ndarray  # (E,) float32, norm sqrt(E)
    paths: tuple[str, ...]
    guess: str | None  # the encoder's pretraining class closest to the reference
    guess_prob: float  # its softmax probability (averaged over clips)


def as_stored(mel: np.ndarray) -> np.ndarray:
    """Round through float16 as the build stores features, so the model sees what it trained on."""
    return mel.astype(np.float16).astype(np.float32)


def embed_reference(det: LoadedDetector, paths: Sequence[str], *, logmel: LogMel | None = None) -> Reference:
    """Embed reference clips of one class: per-clip normalised embeddings, averaged, normalised."""

    if not paths:
        raise DetectError("no reference clip given: pass --reference REF.wav (repeatable)")
    logmel = logmel or LogMel(det.frontend, det.device)
    mels, n_valid = [], []
    for p in paths:
        wave, sr = load_audio(p)
        rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
        if rms < SILENCE_RMS:
            raise DetectError(
                f"{p}: reference clip is silent (RMS {rms:.1e} < {SILENCE_RMS:g}); give a clip in which "
                "the target sound is audible"
            )
        feats, n = logmel(wave, sr, seconds=det.frontend.reference_s)
        mels.append(as_stored(feats))
        n_valid.append(n)
    x = torch.as_tensor(np.stack(mels), device=det.device)  # (R, T, F)
    with torch.no_grad():
        out = det.encoder(x, torch.as_tensor(n_valid, device=det.device))
    e = normalise_embedding(out.embedding.float())  # (R, E)
    e = normalise_embedding(e.mean(dim=0, keepdim=True))[0]  # (E,)
    guess, prob = None, 0.0
    if det.encoder_classes and out.logits.shape[1] == len(det.encoder_classes):
        probs = torch.softmax(out.logits.float(), dim=-1).mean(dim=0)  # (K,)
        k = int(probs.argmax())
        guess, prob = det.encoder_classes[k], float(probs[k])
    return Reference(e.cpu().numpy().astype(np.float32), tuple(paths), guess, prob)


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
    return as_stored(mel), len(wave) / sr


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
