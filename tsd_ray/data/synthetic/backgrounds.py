"""Backgrounds and recording channels of the synthetic corpus: the domain shift.

- **source** domain: pink-to-brown noise (spectral slope drawn per clip), mains hum (50 or
  60 Hz with harmonics) and a slow level drift; flat channel.
- **target** domain: babble-like background (speech-shaped noise modulated by the syllabic
  envelopes of 4-8 "talkers", plus 2-3 voiced murmurs: glottal pulse trains through formant
  resonators) and a channel EQ applied to the whole mixture (events included): high-pass
  150-400 Hz, low-pass 4.5-7 kHz and a +3..+8 dB resonance at 1-3 kHz, as a cheap
  microphone/phone would colour it.
- **reference** clips: a little white-to-pink noise, no channel.

All parameters are drawn per clip from the clip's own random generator.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal as ssig

from tsd_ray.data.synthetic.dsp import coloured_noise, highpass_log, pass_sos, peaking_sos, unit_rms

#: Control rate (Hz) of slow envelopes (level drift, syllables, f0 contours).
CONTROL_RATE = 100


def _upsample(ctrl: np.ndarray, n: int, hop: int) -> np.ndarray:
    """Linear interpolation of a control-rate signal (one value per ``hop`` samples) to n."""
    ctrl = ctrl.astype(np.float32, copy=False)
    frac = np.arange(hop, dtype=np.float32) / np.float32(hop)
    seg = ctrl[:-1, None] + (ctrl[1:] - ctrl[:-1])[:, None] * frac[None, :]
    return seg.ravel()[:n]


def _smooth_noise(count: int, sigma_frames: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise at control rate, unit std."""
    half = int(3 * sigma_frames) + 1
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_frames) ** 2)
    z = np.convolve(rng.standard_normal(count + 2 * half), k, mode="valid")[:count]
    return (z - z.mean()) / (z.std() + 1e-12)


def _control(n: int, sr: int) -> tuple[int, int]:
    hop = max(1, sr // CONTROL_RATE)
    return hop, n // hop + 2


# --------------------------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------------------------


def source_background(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Pink/brown noise + mains hum + slow level drift: (n,) float32, unit RMS."""
    alpha = np.float32(rng.uniform(1.0, 1.8))  # power ~ 1/f^alpha (1 pink, 2 brown)
    noise = coloured_noise(
        n, sr, rng, lambda logf: -0.5 * alpha * logf + highpass_log(logf, 20.0, sr)
    )
    mains = float(rng.choice([50.0, 60.0]))
    ks = np.arange(1, 9, dtype=np.float32)
    amps = rng.uniform(0.2, 1.0, size=ks.shape).astype(np.float32) / ks
    t1 = np.arange(sr, dtype=np.float32) / np.float32(sr)  # one second = whole mains periods
    phases = rng.uniform(0, 2 * np.pi, size=ks.shape).astype(np.float32)
    one = (
        amps[:, None]
        * np.sin(np.float32(2 * np.pi * mains) * ks[:, None] * t1[None, :] + phases[:, None])
    ).sum(0)
    hum = np.resize(one, n)
    hum_db = rng.uniform(-24.0, -8.0)
    hop, count = _control(n, sr)
    drift_db = rng.uniform(0.5, 2.0)  # std of the slow level drift
    drift = _upsample(10.0 ** (drift_db * _smooth_noise(count, 60.0, rng) / 20.0), n, hop)
    y = noise * drift + unit_rms(hum) * np.float32(10.0 ** (hum_db / 20.0))
    return unit_rms(y)


def target_background(n: int, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Babble-like background and the clip's channel EQ.

    Returns ``(background (n,) float32 unit RMS, channel_sos (k, 6))``; the caller applies
    the channel to the whole mixture.
    """
    hop, count = _control(n, sr)
    # speech-shaped noise: high-passed at 80-150 Hz, falling off above 300-700 Hz
    fp = np.float32(rng.uniform(300.0, 700.0))
    f_lo = rng.uniform(80.0, 150.0)
    gamma = np.float32(rng.uniform(0.8, 1.3))
    noise = coloured_noise(
        n,
        sr,
        rng,
        lambda logf: highpass_log(logf, f_lo, sr) - gamma * np.log(1.0 + np.exp(logf) / fp),
    )
    syll = np.zeros(count, dtype=np.float64)
    for _ in range(int(rng.integers(4, 9))):  # talkers
        syll += _syllables(count, rng)
    noise *= np.sqrt(_upsample(syll / syll.mean(), n, hop))
    # voiced murmur: glottal pulses of 2-3 talkers (drifting f0, syllabic gating) through two
    # formant resonators. Pulse times come from the control-rate phase, so this stays cheap.
    pulses = np.zeros(n, dtype=np.float32)
    frame_pos = np.arange(count, dtype=np.float64) * hop
    for _ in range(int(rng.integers(2, 4))):
        f0 = rng.uniform(90.0, 240.0) * (1.0 + 0.08 * _smooth_noise(count, 20.0, rng))
        cycles = np.concatenate([[rng.uniform()], rng.uniform() + np.cumsum(f0[:-1]) * hop / sr])
        k = np.arange(math.ceil(cycles[0]), math.floor(cycles[-1]) + 1)
        pos = np.interp(k, cycles, frame_pos).astype(np.int64)
        pos = pos[pos < n]
        gate = _syllables(count, rng) ** 2
        np.add.at(pulses, pos, np.interp(pos, frame_pos, gate).astype(np.float32))
    formants = np.concatenate(
        [
            pass_sos("bandpass", rng.uniform(400.0, 900.0), 2.0, sr),
            pass_sos("bandpass", rng.uniform(1000.0, 2500.0), 2.5, sr),
            pass_sos("highpass", 60.0, 0.7071, sr),
        ]
    )
    voiced = ssig.sosfilt(formants.astype(np.float32), pulses)
    y = noise + unit_rms(voiced) * np.float32(10.0 ** (rng.uniform(-8.0, -2.0) / 20.0))
    return unit_rms(y), target_channel(sr, rng)


def _syllables(count: int, rng: np.random.Generator) -> np.ndarray:
    """One talker's syllabic envelope at control rate, in (0, 1), fluctuating at ~3-6 Hz."""
    bias = rng.uniform(-0.5, 0.5)
    return 1.0 / (1.0 + np.exp(-4.0 * (_smooth_noise(count, 4.0, rng) + bias)))


def target_channel(sr: int, rng: np.random.Generator) -> np.ndarray:
    """Channel EQ of one target clip as SOS (3, 6): HP 150-400 Hz, LP 4.5-7 kHz, 1-3 kHz peak."""
    return np.concatenate(
        [
            pass_sos("highpass", rng.uniform(150.0, 400.0), 0.7071, sr),
            pass_sos("lowpass", rng.uniform(4500.0, 7000.0), 0.7071, sr),
            peaking_sos(
                rng.uniform(1000.0, 3000.0), rng.uniform(3.0, 8.0), rng.uniform(0.7, 2.0), sr
            ),
        ]
    )


def reference_background(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Light white-to-pink noise of an isolated reference recording, (n,) float32 unit RMS."""
    alpha = np.float32(rng.uniform(0.0, 1.2))
    return coloured_noise(
        n, sr, rng, lambda logf: -0.5 * alpha * logf + highpass_log(logf, 30.0, sr)
    )
