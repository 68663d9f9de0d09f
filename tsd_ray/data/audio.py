"""Audio decoding with soundfile (torchaudio 2.11 has no I/O of its own)."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from tsd_ray.common import storage

#: Extensions of the audio files tsd_ray reads (what soundfile/libsndfile decodes).
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")

#: A clip whose RMS is below this (full scale 1.0) is silent: refused as a reference.
SILENCE_RMS = 1e-5


class AudioError(ValueError):
    """An audio file cannot be used; the message names the file and the fix."""


def load_audio(path: str, *, max_channels: int = 2) -> tuple[np.ndarray, int]:
    """Decode ``path`` (local path or URI) to mono float32 in [-1, 1].

    Returns (samples (N,), sample_rate). Raises :class:`AudioError` for unreadable, empty,
    non-finite or too-many-channel audio, naming the file.
    """
    try:
        if storage.is_uri(path):
            data, sr = sf.read(io.BytesIO(storage.read_bytes(path)), dtype="float32", always_2d=True)
        else:
            data, sr = sf.read(path, dtype="float32", always_2d=True)
    except FileNotFoundError as exc:
        raise AudioError(f"{path}: file not found") from exc
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError for bad files
        raise AudioError(
            f"{path}: unreadable audio ({type(exc).__name__}: {exc}); re-encode it as WAV/FLAC"
        ) from exc
    n, channels = data.shape
    if n == 0:
        raise AudioError(f"{path}: empty audio (0 samples); remove it or fix the export")
    if channels > max_channels:
        raise AudioError(
            f"{path}: {channels} channels; tsd_ray expects mono or stereo: downmix it first"
        )
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: audio contains NaN/Inf samples; the file is corrupt")
    mono = data.mean(axis=1) if channels > 1 else data[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)
