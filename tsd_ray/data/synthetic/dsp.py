"""Small signal helpers of the synthetic corpus: fast random-phase noise and biquads."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import fft as sfft


def unit_rms(y: np.ndarray) -> np.ndarray:
    """``y`` scaled to unit RMS, float32."""
    return (y / np.float32(np.sqrt(np.mean(np.square(y, dtype=np.float64))) + 1e-12)).astype(
        np.float32
    )


def fft_len(n: int) -> int:
    """Smallest length >= n of the form 2^a * {1, 3, 5, 9} (fast for pocketfft)."""
    best = None
    for m in (1, 3, 5, 9):
        k = m
        while k < n:
            k *= 2
        best = k if best is None else min(best, k)
    return int(best)


@lru_cache(maxsize=16)
def log_freqs(length: int, sr: int) -> np.ndarray:
    """log(f / 1 Hz) of the rfft bins of a length-``length`` signal; bin 0 set to log(1) = 0."""
    f = sfft.rfftfreq(length, 1.0 / sr).astype(np.float32)
    f[0] = 1.0
    out = np.log(f)
    out.flags.writeable = False
    return out


def noise_from_log_gain(
    n: int, length: int, log_gain: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Random-phase noise with spectral amplitude exp(log_gain) (rfft bins of ``length``).

    The first n samples, (n,) float32, unit RMS. Bin 0 (DC) is always zeroed.
    """
    gain = np.exp(log_gain.astype(np.float32, copy=False))
    gain[0] = 0.0
    phi = rng.random(gain.shape[0], dtype=np.float32) * np.float32(2 * np.pi)
    spec = np.empty(gain.shape[0], dtype=np.complex64)
    spec.real = gain * np.cos(phi)
    spec.imag = gain * np.sin(phi)
    return unit_rms(sfft.irfft(spec, length)[:n])


def coloured_noise(n: int, sr: int, rng: np.random.Generator, log_amplitude_of_logf) -> np.ndarray:
    """Noise whose log spectral amplitude is ``log_amplitude_of_logf(log f)``: (n,) float32."""
    length = fft_len(n)
    logf = log_freqs(length, sr)
    return noise_from_log_gain(n, length, log_amplitude_of_logf(logf), rng)


def highpass_log(logf: np.ndarray, cutoff_hz: float, sr: int, order: int = 2) -> np.ndarray:
    """log |H| of a Butterworth-like high-pass magnitude 1 / sqrt(1 + (fc/f)^(2·order)).

    ``logf`` are the rfft bins of :func:`log_freqs`; only bins below 20·cutoff are computed
    (above, |H| > 0.99999).
    """
    length = 2 * (logf.shape[0] - 1)
    k = min(logf.shape[0], int(math.ceil(20.0 * cutoff_hz * length / sr)) + 1)
    out = np.zeros(logf.shape[0], dtype=np.float32)
    x = np.exp(np.float32(2 * order) * (np.float32(math.log(cutoff_hz)) - logf[:k]))
    out[:k] = -0.5 * np.log(1.0 + x)
    return out


def biquad(b: list[float], a: list[float]) -> np.ndarray:
    return np.array([[b[0] / a[0], b[1] / a[0], b[2] / a[0], 1.0, a[1] / a[0], a[2] / a[0]]])


def peaking_sos(f0: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """RBJ peaking-EQ biquad as one SOS row, (1, 6)."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2 * math.pi * f0 / sr
    alpha = math.sin(w0) / (2 * q)
    c = math.cos(w0)
    return biquad([1 + alpha * a, -2 * c, 1 - alpha * a], [1 + alpha / a, -2 * c, 1 - alpha / a])


def pass_sos(kind: str, f0: float, q: float, sr: int) -> np.ndarray:
    """RBJ ``lowpass`` / ``highpass`` / ``bandpass`` (0 dB peak) biquad, (1, 6).

    With q = 1/sqrt(2) the low/high-pass is a 2nd-order Butterworth.
    """
    w0 = 2 * math.pi * min(f0, 0.45 * sr) / sr
    alpha = math.sin(w0) / (2 * q)
    c = math.cos(w0)
    a = [1 + alpha, -2 * c, 1 - alpha]
    if kind == "lowpass":
        b = [(1 - c) / 2, 1 - c, (1 - c) / 2]
    elif kind == "highpass":
        b = [(1 + c) / 2, -(1 + c), (1 + c) / 2]
    elif kind == "bandpass":
        b = [alpha, 0.0, -alpha]
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    return biquad(b, a)
