"""Procedural sound classes of the synthetic corpus: catalogue, instance draws, rendering.

Every class is a :class:`SoundClass`: a family, a renderer (``kind``), a duration range and
parameter ranges. An *instance* (one event) draws every range uniformly
(:func:`draw_instance`), so a class varies from event to event (pitch jitter, rates,
envelopes, durations) while staying recognisable from a reference clip. Neighbouring classes
of a family are deliberately confusable (close pitch, same band at another rate...).

:func:`render_event` turns an instance into audio. The contract that keeps the corpus labels
honest: the returned signal has exactly the planned length, starts rising at its first sample
and reaches (near) zero only at its last one, so ``onset``/``offset`` in the label files are
where the event really starts and ends in the audio. All content stays below
:data:`MAX_FREQ_HZ` so a class sounds the same at every preset's sample rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tsd_ray.data.synthetic.dsp import fft_len, log_freqs, noise_from_log_gain

#: Upper limit of every class's spectral content, in Hz (below Nyquist of 16 kHz audio).
MAX_FREQ_HZ = 7000.0

#: The families, in catalogue order.
FAMILIES: tuple[str, ...] = (
    "tonal",
    "harmonic",
    "chirp",
    "noise_burst",
    "pulse_train",
    "impact",
    "am_texture",
    "fm_texture",
)

#: Level (dB below peak) that decaying classes (impacts, bells) reach at their offset.
DECAY_FLOOR_DB = 35.0


@dataclass(frozen=True)
class SoundClass:
    """One procedurally generated sound class.

    ``ranges`` maps a parameter to ``(low, high)``: every instance draws it uniformly.
    ``fixed`` holds constants of the class (strings, numbers or tuples such as modal ratios).
    Frequencies are in Hz, times in seconds, rates in Hz, depths are fractions.
    """

    name: str
    family: str
    kind: str  # renderer, see _RENDERERS
    duration_s: tuple[float, float]
    description: str
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    fixed: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict:
        """JSON-safe description (classes.json)."""
        return {
            "family": self.family,
            "kind": self.kind,
            "description": self.description,
            "duration_s": list(self.duration_s),
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "fixed": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.fixed.items()},
        }


def _c(
    name: str, family: str, kind: str, dur: tuple[float, float], desc: str, **params
) -> SoundClass:
    """Catalogue helper: tuple values are ranges, everything else is fixed (lists -> tuples)."""
    ranges = {k: (float(v[0]), float(v[1])) for k, v in params.items() if isinstance(v, tuple)}
    fixed = {
        k: (tuple(v) if isinstance(v, list) else v)
        for k, v in params.items()
        if not isinstance(v, tuple)
    }
    return SoundClass(name, family, kind, (float(dur[0]), float(dur[1])), desc, ranges, fixed)


_ENV = {"attack": (0.005, 0.03), "release": (0.02, 0.08)}
_SHORT_ENV = {"attack": (0.002, 0.008), "release": (0.005, 0.02)}

# Per family: [anchor, pair A (2), pair B (2), pair C (2)]. Presets take the first k of each
# family; the domain pattern keeps each confusable pair inside one domain (see corpus.py).
# fmt: off
_CATALOGUE: tuple[SoundClass, ...] = (
    # ---- tonal: steady sines with vibrato / tremolo ----------------------------------------
    _c("tone_2600_beep", "tonal", "tone", (0.15, 0.5), "short electronic beep",
       f0=(2550, 2650), vib_rate=(4, 6), vib_depth=(0.0, 0.002), trem_rate=(3, 5),
       trem_depth=(0.0, 0.05), h2=(0.02, 0.1), **_SHORT_ENV),
    _c("tone_330_steady", "tonal", "tone", (1.0, 4.0), "steady low tone",
       f0=(320, 340), vib_rate=(4, 6), vib_depth=(0.0, 0.002), trem_rate=(3, 5),
       trem_depth=(0.0, 0.05), h2=(0.05, 0.2), **_ENV),
    _c("tone_370_vibrato", "tonal", "tone", (1.0, 4.0), "low tone with vibrato (near tone_330)",
       f0=(360, 380), vib_rate=(5, 7), vib_depth=(0.012, 0.02), trem_rate=(3, 5),
       trem_depth=(0.0, 0.05), h2=(0.05, 0.2), **_ENV),
    _c("tone_1200_tremolo", "tonal", "tone", (0.5, 2.5), "mid tone with deep tremolo",
       f0=(1170, 1230), vib_rate=(4, 6), vib_depth=(0.0, 0.003), trem_rate=(7, 10),
       trem_depth=(0.6, 0.9), h2=(0.02, 0.1), **_ENV),
    _c("tone_1200_steady", "tonal", "tone", (0.5, 2.5), "mid tone, steady (same pitch as tremolo)",
       f0=(1170, 1230), vib_rate=(4, 6), vib_depth=(0.0, 0.003), trem_rate=(3, 5),
       trem_depth=(0.0, 0.05), h2=(0.02, 0.1), **_ENV),
    _c("tone_4200_whistle", "tonal", "tone", (0.8, 3.0), "high whistle with slow vibrato",
       f0=(4100, 4300), vib_rate=(3, 5), vib_depth=(0.02, 0.035), trem_rate=(3, 5),
       trem_depth=(0.0, 0.1), h2=(0.0, 0.02), **_ENV),
    _c("tone_4600_whistle", "tonal", "tone", (0.8, 3.0), "high whistle (near tone_4200)",
       f0=(4500, 4700), vib_rate=(3, 5), vib_depth=(0.02, 0.035), trem_rate=(3, 5),
       trem_depth=(0.0, 0.1), h2=(0.0, 0.02), **_ENV),
    # ---- harmonic: several partials, different spectral envelopes ---------------------------
    _c("harm_buzz_110", "harmonic", "harmonic", (1.0, 5.0), "low buzz, all partials",
       f0=(105, 115), slope_db_oct=(-3.5, -2.0), vib_rate=(4, 6), vib_depth=(0.0, 0.004),
       odd_only=0, formants=0, **_ENV),
    _c("harm_vowel_a_150", "harmonic", "harmonic", (0.4, 1.5), "sung vowel 'a' (F1~700, F2~1200)",
       f0=(140, 160), slope_db_oct=(-4.0, -3.0), vib_rate=(4.5, 6), vib_depth=(0.005, 0.012),
       f1=(650, 750), f2=(1100, 1300), formant_bw=(100, 160), odd_only=0, formants=1, **_ENV),
    _c("harm_vowel_i_150", "harmonic", "harmonic", (0.4, 1.5), "sung vowel 'i' (F1~300, F2~2300)",
       f0=(140, 160), slope_db_oct=(-4.0, -3.0), vib_rate=(4.5, 6), vib_depth=(0.005, 0.012),
       f1=(250, 350), f2=(2100, 2400), formant_bw=(100, 160), odd_only=0, formants=1, **_ENV),
    _c("harm_odd_220", "harmonic", "harmonic", (0.5, 2.5), "hollow clarinet-like, odd partials",
       f0=(210, 230), slope_db_oct=(-6.5, -5.0), vib_rate=(4, 6), vib_depth=(0.0, 0.004),
       odd_only=1, formants=0, **_ENV),
    _c("harm_bright_220", "harmonic", "harmonic", (0.5, 2.5), "bright, all partials (same f0)",
       f0=(210, 230), slope_db_oct=(-2.5, -1.5), vib_rate=(4, 6), vib_depth=(0.0, 0.004),
       odd_only=0, formants=0, **_ENV),
    _c("harm_horn_440", "harmonic", "harmonic", (0.5, 2.0), "soft horn, steep rolloff",
       f0=(430, 450), slope_db_oct=(-10.0, -8.0), vib_rate=(4, 6), vib_depth=(0.002, 0.006),
       odd_only=0, formants=0, attack=(0.03, 0.06), release=(0.04, 0.1)),
    _c("harm_horn_490", "harmonic", "harmonic", (0.5, 2.0), "soft horn (near harm_horn_440)",
       f0=(480, 500), slope_db_oct=(-10.0, -8.0), vib_rate=(4, 6), vib_depth=(0.002, 0.006),
       odd_only=0, formants=0, attack=(0.03, 0.06), release=(0.04, 0.1)),
    # ---- chirp: up/down sweeps at different rates -------------------------------------------
    _c("chirp_up_short", "chirp", "chirp", (0.2, 0.6), "single fast upward sweep",
       f_start=(450, 550), f_end=(2300, 2700), h2=(0.05, 0.2), mode="single",
       **_SHORT_ENV),
    _c("chirp_down_short", "chirp", "chirp", (0.2, 0.6), "single fast downward sweep",
       f_start=(2800, 3200), f_end=(800, 1000), h2=(0.05, 0.2), mode="single",
       **_SHORT_ENV),
    _c("chirp_down_long", "chirp", "chirp", (1.0, 3.0), "slow downward sweep (same range)",
       f_start=(2800, 3200), f_end=(800, 1000), h2=(0.05, 0.2), mode="single",
       **_ENV),
    _c("chirp_trill_up_fast", "chirp", "chirp", (0.5, 2.0), "repeated up-sweeps, ~10 per second",
       f_start=(1100, 1300), f_end=(3400, 3800), period=(0.08, 0.12), h2=(0.0, 0.1),
       mode="repeat", **_SHORT_ENV),
    _c("chirp_trill_up_slow", "chirp", "chirp", (0.5, 2.0), "repeated up-sweeps, ~3 per second",
       f_start=(1100, 1300), f_end=(3400, 3800), period=(0.25, 0.35), h2=(0.0, 0.1),
       mode="repeat", **_SHORT_ENV),
    _c("siren_slow", "chirp", "chirp", (2.0, 5.0), "wailing siren, slow sinusoidal sweep",
       fc=(900, 1000), depth_oct=(0.55, 0.65), period=(1.5, 2.5), h2=(0.1, 0.3), mode="siren",
       **_ENV),
    _c("siren_fast", "chirp", "chirp", (1.0, 4.0), "yelp siren, fast sinusoidal sweep",
       fc=(900, 1000), depth_oct=(0.55, 0.65), period=(0.2, 0.3), h2=(0.1, 0.3), mode="siren",
       **_ENV),
    # ---- noise bursts: band-passed noise ---------------------------------------------------
    _c("noise_rumble_150", "noise_burst", "noise", (1.0, 5.0), "low rumble",
       centre=(130, 170), bw_oct=(1.2, 1.6), attack=(0.02, 0.06), release=(0.03, 0.08)),
    _c("noise_band_800", "noise_burst", "noise", (0.3, 1.5), "narrow noise band at 800 Hz",
       centre=(760, 840), bw_oct=(0.4, 0.6), **_ENV),
    _c("noise_band_1000", "noise_burst", "noise", (0.3, 1.5), "narrow noise band at 1 kHz",
       centre=(950, 1050), bw_oct=(0.4, 0.6), **_ENV),
    _c("noise_hiss_4k_long", "noise_burst", "noise", (1.0, 4.0), "steady hiss around 4 kHz",
       centre=(3800, 4200), bw_oct=(0.9, 1.1), **_ENV),
    _c("noise_hiss_4k_short", "noise_burst", "noise", (0.15, 0.4), "short puff, same band",
       centre=(3800, 4200), bw_oct=(0.9, 1.1), attack=(0.002, 0.006), release=(0.02, 0.05)),
    _c("noise_wide_2k", "noise_burst", "noise", (0.5, 2.0), "broad noise around 2 kHz",
       centre=(1900, 2100), bw_oct=(2.5, 3.0), **_ENV),
    _c("noise_narrow_2k", "noise_burst", "noise", (0.5, 2.0), "narrow noise at 2 kHz",
       centre=(1900, 2100), bw_oct=(0.2, 0.3), **_ENV),
    # ---- pulse trains: clicks or tone pips at different rates -------------------------------
    _c("clicks_4hz", "pulse_train", "pulses", (1.0, 4.0), "clicks, ~4 per second",
       rate=(3.5, 4.5), pip_freq=(2500, 3500), pip_len=(0.006, 0.006), jitter=(0.0, 0.1),
       pulse="click"),
    _c("clicks_8hz", "pulse_train", "pulses", (0.8, 3.0), "clicks, ~8 per second",
       rate=(7, 9), pip_freq=(2500, 3500), pip_len=(0.006, 0.006), jitter=(0.0, 0.1),
       pulse="click"),
    _c("clicks_11hz", "pulse_train", "pulses", (0.8, 3.0), "clicks, ~11 per second",
       rate=(10, 12), pip_freq=(2500, 3500), pip_len=(0.006, 0.006), jitter=(0.0, 0.1),
       pulse="click"),
    _c("pips_1500_3hz", "pulse_train", "pulses", (1.5, 4.0), "1.5 kHz pips, ~3 per second",
       rate=(2.6, 3.4), pip_freq=(1450, 1550), pip_len=(0.03, 0.04), jitter=(0.0, 0.05),
       pulse="pip"),
    _c("pips_1500_5hz", "pulse_train", "pulses", (1.5, 4.0), "1.5 kHz pips, ~5 per second",
       rate=(4.5, 5.5), pip_freq=(1450, 1550), pip_len=(0.03, 0.04), jitter=(0.0, 0.05),
       pulse="pip"),
    _c("pips_600_2hz", "pulse_train", "pulses", (1.5, 5.0), "600 Hz pips, ~2 per second",
       rate=(1.8, 2.2), pip_freq=(580, 620), pip_len=(0.06, 0.08), jitter=(0.0, 0.05),
       pulse="pip"),
    _c("pips_750_2hz", "pulse_train", "pulses", (1.5, 5.0), "750 Hz pips, ~2 per second",
       rate=(1.8, 2.2), pip_freq=(730, 770), pip_len=(0.06, 0.08), jitter=(0.0, 0.05),
       pulse="pip"),
    # ---- impacts: decaying resonances --------------------------------------------------------
    _c("impact_knock_wood", "impact", "impact", (0.15, 0.35), "wooden knock",
       f=(190, 230), damping=(1.2, 1.8), pitch_drop=(0.0, 0.02), noise=(0.2, 0.4),
       ratios=[1.0, 2.76, 5.4]),
    _c("impact_metal_clang", "impact", "impact", (0.8, 2.5), "ringing metal clang",
       f=(780, 860), damping=(0.2, 0.4), pitch_drop=(0.0, 0.0), noise=(0.05, 0.15),
       ratios=[1.0, 2.32, 4.25, 6.63]),
    _c("impact_metal_ping", "impact", "impact", (0.8, 2.5), "ringing metal (near clang)",
       f=(930, 1010), damping=(0.2, 0.4), pitch_drop=(0.0, 0.0), noise=(0.05, 0.15),
       ratios=[1.0, 2.32, 4.25, 6.63]),
    _c("impact_glass_tink", "impact", "impact", (0.2, 0.6), "glass tink",
       f=(2500, 2700), damping=(0.5, 0.9), pitch_drop=(0.0, 0.0), noise=(0.05, 0.15),
       ratios=[1.0, 1.59, 2.14]),
    _c("impact_glass_clink", "impact", "impact", (0.2, 0.6), "glass clink (near tink)",
       f=(2950, 3150), damping=(0.5, 0.9), pitch_drop=(0.0, 0.0), noise=(0.05, 0.15),
       ratios=[1.0, 1.59, 2.14]),
    _c("impact_drum_low", "impact", "impact", (0.3, 0.8), "low drum with pitch drop",
       f=(80, 100), damping=(0.8, 1.2), pitch_drop=(0.2, 0.4), noise=(0.2, 0.4),
       ratios=[1.0, 1.5, 2.0]),
    _c("impact_drum_mid", "impact", "impact", (0.3, 0.8), "mid drum (near drum_low)",
       f=(130, 150), damping=(0.8, 1.2), pitch_drop=(0.2, 0.4), noise=(0.2, 0.4),
       ratios=[1.0, 1.5, 2.0]),
    # ---- AM textures -------------------------------------------------------------------------
    _c("am_engine_idle", "am_texture", "am", (2.0, 5.0), "idling engine: low harmonics, AM",
       f0=(35, 45), am_rate=(8, 12), am_depth=(0.4, 0.6),
       attack=(0.03, 0.08), release=(0.03, 0.08), carrier="harmonic"),
    _c("am_flutter_6hz", "am_texture", "am", (1.0, 4.0), "fluttering noise, ~6 Hz AM",
       am_rate=(5, 7), am_depth=(0.8, 0.95), centre=(1400, 1600), bw_oct=(0.9, 1.1),
       carrier="noise", **_ENV),
    _c("am_flutter_10hz", "am_texture", "am", (1.0, 4.0), "fluttering noise, ~10 Hz AM",
       am_rate=(9, 11), am_depth=(0.8, 0.95), centre=(1400, 1600), bw_oct=(0.9, 1.1),
       carrier="noise", **_ENV),
    _c("am_crackle_sparse", "am_texture", "am", (1.0, 4.0), "sparse crackle (fire-like)",
       am_rate=(25, 40), centre=(3000, 4000),
       carrier="crackle", **_SHORT_ENV),
    _c("am_crackle_dense", "am_texture", "am", (1.0, 4.0), "dense crackle (rain-like)",
       am_rate=(120, 200), centre=(3000, 4000),
       carrier="crackle", **_SHORT_ENV),
    _c("am_rough_tone_30", "am_texture", "am", (0.5, 2.0), "800 Hz tone, 30 Hz AM (rough)",
       f0=(780, 820), am_rate=(27, 33), am_depth=(0.85, 0.95),
       carrier="tone", **_ENV),
    _c("am_rough_tone_60", "am_texture", "am", (0.5, 2.0), "800 Hz tone, 60 Hz AM (buzzier)",
       f0=(780, 820), am_rate=(55, 65), am_depth=(0.85, 0.95),
       carrier="tone", **_ENV),
    # ---- FM textures -------------------------------------------------------------------------
    _c("fm_bell", "fm_texture", "fm", (0.8, 2.5), "FM bell, decaying brightness",
       fc=(480, 520), index=(3.0, 6.0), mode="bell", ratio=1.4),
    _c("fm_warble_slow", "fm_texture", "fm", (0.5, 2.5), "bird-like warble, ~7 Hz FM",
       fc=(1900, 2100), fm_rate=(6, 8), dev=(250, 350), mode="warble", **_ENV),
    _c("fm_warble_fast", "fm_texture", "fm", (0.5, 2.5), "bird-like warble, ~16 Hz FM",
       fc=(1900, 2100), fm_rate=(14, 18), dev=(250, 350), mode="warble", **_ENV),
    _c("fm_growl_low", "fm_texture", "fm", (0.5, 2.5), "growl: audio-rate FM of 200 Hz",
       fc=(190, 210), fm_rate=(50, 60), index=(2.5, 3.5), mode="growl", **_ENV),
    _c("fm_growl_high", "fm_texture", "fm", (0.5, 2.5), "growl: audio-rate FM of 300 Hz",
       fc=(280, 320), fm_rate=(70, 80), index=(2.5, 3.5), mode="growl", **_ENV),
    _c("fm_trill_3300", "fm_texture", "fm", (0.3, 1.2), "fast trill around 3.3 kHz",
       fc=(3200, 3400), fm_rate=(25, 30), dev=(400, 600), mode="warble", **_SHORT_ENV),
    _c("fm_trill_3700", "fm_texture", "fm", (0.3, 1.2), "fast trill around 3.7 kHz",
       fc=(3600, 3800), fm_rate=(25, 30), dev=(400, 600), mode="warble", **_SHORT_ENV),
)
# fmt: on

#: Every class of the catalogue by name (56 classes, 7 per family).
CLASSES: dict[str, SoundClass] = {c.name: c for c in _CATALOGUE}


def family_classes(family: str) -> tuple[SoundClass, ...]:
    """The catalogue classes of one family, in catalogue order."""
    return tuple(c for c in _CATALOGUE if c.family == family)


# --------------------------------------------------------------------------------------------
# Instances
# --------------------------------------------------------------------------------------------


def draw_instance(
    cls: SoundClass, rng: np.random.Generator, max_duration_s: float | None = None
) -> dict[str, float]:
    """Draw one event's parameters; ``duration`` (s) is the exact length of the event.

    Pulse trains round their duration so that the last pulse ends exactly at ``duration``
    (and store ``n_pulses``), so the label offset is where the sound really ends.
    """
    p = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in cls.ranges.items()}
    duration = float(rng.uniform(*cls.duration_s))
    if max_duration_s is not None:
        duration = min(duration, max_duration_s)
    if cls.kind == "pulses":
        n_pulses = max(1, int(math.floor((duration - p["pip_len"]) * p["rate"])) + 1)
        p["n_pulses"] = float(n_pulses)
        duration = (n_pulses - 1) / p["rate"] + p["pip_len"]
    p["duration"] = duration
    return p


# --------------------------------------------------------------------------------------------
# Rendering helpers (all float32 signals of n samples)
# --------------------------------------------------------------------------------------------


def ar_envelope(n: int, sr: int, attack_s: float, release_s: float) -> np.ndarray:
    """Raised-cosine attack/release envelope, (n,) float32; > 0 on every sample."""
    env = np.ones(n, dtype=np.float32)
    na = int(min(max(1, round(attack_s * sr)), max(1, n // 2)))
    nr = int(min(max(1, round(release_s * sr)), max(1, n - na)))
    ramp = np.sin(0.5 * np.pi * (np.arange(na, dtype=np.float32) + 0.5) / na) ** 2
    env[:na] = ramp
    fall = np.sin(0.5 * np.pi * (nr - np.arange(nr, dtype=np.float32) - 0.5) / nr) ** 2
    env[n - nr :] *= fall
    return env


def phase_from_freq(
    freq_hz: np.ndarray | float, n: int, sr: int, phase0: float = 0.0
) -> np.ndarray:
    """Instantaneous phase (radians, wrapped to [0, 2π)) of a frequency track, (n,) float32.

    Accumulated in float64 and wrapped before the cast so long high tones keep their pitch.
    """
    if np.ndim(freq_hz) == 0:
        cycles = np.arange(n, dtype=np.float64) * (float(freq_hz) / sr)
    else:
        cycles = np.cumsum(np.asarray(freq_hz, dtype=np.float64)) / sr
    cycles += phase0 / (2 * np.pi)
    cycles -= np.floor(cycles)
    return (2 * np.pi * cycles).astype(np.float32)


def _times(n: int, sr: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32) * np.float32(1.0 / sr)


def _partials(theta: np.ndarray, amps: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Sum_k amps[k] * sin(ks[k] * theta): (n,) float32."""
    out = np.zeros(theta.shape[0], dtype=np.float32)
    for a, k in zip(amps.astype(np.float32), ks.astype(np.float32), strict=True):
        out += a * np.sin(k * theta)
    return out


def band_noise(
    n: int, sr: int, centre_hz: float, bw_oct: float, rng: np.random.Generator
) -> np.ndarray:
    """Random-phase noise with a Gaussian band (in log-frequency) around ``centre_hz``.

    ``bw_oct`` is the full width at half maximum of the band in octaves. (n,) float32, unit RMS.
    """
    length = fft_len(n)
    logf = log_freqs(length, sr)
    sigma = max(bw_oct, 1e-3) / 2.355 * math.log(2.0)  # in natural-log units
    log_gain = -0.5 * ((logf - np.float32(math.log(centre_hz))) / np.float32(sigma)) ** 2
    log_gain = log_gain + np.log(high_cut(np.exp(logf)) + np.float32(1e-12))
    return noise_from_log_gain(n, length, log_gain, rng)


def high_cut(f: np.ndarray) -> np.ndarray:
    """Smooth taper to 0 between 0.9·MAX_FREQ_HZ and MAX_FREQ_HZ (keeps classes sr-independent)."""
    lo = 0.9 * MAX_FREQ_HZ
    x = np.clip((f - lo) / (MAX_FREQ_HZ - lo), 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * x)).astype(np.float32)


def _mod(t: np.ndarray, rate: float, depth: float, phase: float) -> np.ndarray:
    """Amplitude modulator in [1 - depth, 1], (n,) float32."""
    return (1.0 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * rate * t + phase))).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Renderers: (params, fixed, n, sr, rng) -> (n,) float32 (before the final envelope)
# --------------------------------------------------------------------------------------------


def _r_tone(p: dict, fx: dict, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr)
    vib = p["vib_depth"] * np.sin(2 * np.pi * p["vib_rate"] * t + rng.uniform(0, 2 * np.pi))
    theta = phase_from_freq(p["f0"] * (1.0 + vib), n, sr, rng.uniform(0, 2 * np.pi))
    y = np.sin(theta) + np.float32(p["h2"]) * np.sin(2 * theta)
    return y * _mod(t, p["trem_rate"], p["trem_depth"], rng.uniform(0, 2 * np.pi))


def _r_harmonic(p: dict, fx: dict, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr)
    vib = p["vib_depth"] * np.sin(2 * np.pi * p["vib_rate"] * t + rng.uniform(0, 2 * np.pi))
    theta = phase_from_freq(p["f0"] * (1.0 + vib), n, sr, rng.uniform(0, 2 * np.pi))
    top = min(MAX_FREQ_HZ, 0.45 * sr) / (p["f0"] * (1.0 + p["vib_depth"]))
    ks = np.arange(1, min(40, int(top)) + 1, dtype=np.float64)
    if fx["odd_only"]:
        ks = ks[ks % 2 == 1]
    amps = 10.0 ** (p["slope_db_oct"] * np.log2(ks) / 20.0)
    if fx["formants"]:
        fk = ks * p["f0"]
        bw = p["formant_bw"]
        amps = amps * (
            0.05
            + np.exp(-0.5 * ((fk - p["f1"]) / bw) ** 2)
            + np.exp(-0.5 * ((fk - p["f2"]) / bw) ** 2)
        )
    amps = amps * rng.uniform(0.85, 1.0, size=ks.shape)  # small per-instance timbre jitter
    return _partials(theta, amps, ks)


def _r_chirp(p: dict, fx: dict, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr).astype(np.float64)
    mode = fx["mode"]
    window = None
    if mode == "single":
        u = t / max(t[-1], 1e-9)
        freq = p["f_start"] * (p["f_end"] / p["f_start"]) ** u
    elif mode == "repeat":
        u = np.mod(t, p["period"]) / p["period"]
        freq = p["f_start"] * (p["f_end"] / p["f_start"]) ** u
        window = np.sqrt(np.sin(np.pi * u)).astype(np.float32)  # one chirp per period
    elif mode == "siren":  # sinusoidal sweep of +-depth_oct octaves around fc
        freq = p["fc"] * 2.0 ** (
            p["depth_oct"] * np.sin(2 * np.pi * t / p["period"] + rng.uniform(0, 2 * np.pi))
        )
    else:  # pragma: no cover - catalogue is fixed
        raise ValueError(f"unknown chirp mode {mode!r}")
    theta = phase_from_freq(freq, n, sr, rng.uniform(0, 2 * np.pi))
    y = np.sin(theta) + np.float32(p["h2"]) * np.sin(2 * theta)
    return y if window is None else y * window


def _r_noise(p: dict, fx: dict, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    return band_noise(n, sr, p["centre"], p["bw_oct"], rng)


def _click(sr: int, freq: float, length_s: float, rng: np.random.Generator) -> np.ndarray:
    """A click: two damped modes (freq, ~1.6·freq) with a 0.2 ms rise, 1.2 ms decay."""
    m = max(2, int(round(length_s * sr)))
    t = np.arange(m, dtype=np.float32) / sr
    shape = (1.0 - np.exp(-t / 0.0002)) * np.exp(-t / 0.0012)
    second = min(1.6 * freq, 0.9 * MAX_FREQ_HZ)
    ring = np.sin(2 * np.pi * freq * t) + rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * second * t)
    return (shape * ring).astype(np.float32)


def _pip(sr: int, freq: float, length_s: float, rng: np.random.Generator) -> np.ndarray:
    m = max(2, int(round(length_s * sr)))
    t = np.arange(m, dtype=np.float32) / sr
    win = np.sin(np.pi * (np.arange(m, dtype=np.float32) + 0.5) / m) ** 0.5
    return (win * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))).astype(np.float32)


def _r_pulses(p: dict, fx: dict, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    n_pulses = int(p["n_pulses"])
    y = np.zeros(n, dtype=np.float32)
    make = _click if fx["pulse"] == "click" else _pip
    for i in range(n_pulses):
        pulse = make(sr, p["pip_freq"], p["pip_len"], rng)
        m = pulse.shape[0]
        t = i / p["rate"]
        if 0 < i < n_pulses - 1:
            t += p["jitter"] * rng.uniform(-0.5, 0.5) / p["rate"]
        start = 0 if i == 0 else min(int(round(t * sr)), n - m)
        if i == n_pulses - 1:
            start = n - m  # the last pulse ends exactly at the offset
        start = max(0, start)
        y[start : start + m] += pulse[: n - start] * np.float32(rng.uniform(0.7, 1.0))
    return y


def _decay_tau(n: int, sr: int) -> float:
    """Time constant (s) that makes an exponential decay reach -DECAY_FLOOR_DB at the end."""
    return (n / sr) / (DECAY_FLOOR_DB / 20.0 * math.log(10.0))


def _r_impact(p: dict, fx: dict, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr)
    tau = _decay_tau(n, sr)
    sweep = (1.0 + p["pitch_drop"] * np.exp(-t / 0.04)).astype(np.float64)
    y = np.zeros(n, dtype=np.float32)
    for k, ratio in enumerate(fx["ratios"]):
        fk = p["f"] * ratio
        if fk * (1.0 + p["pitch_drop"]) >= min(MAX_FREQ_HZ, 0.45 * sr):
            continue
        amp = rng.uniform(0.6, 1.0) / math.sqrt(k + 1)
        tau_k = tau / (1.0 + p["damping"] * k)
        theta = phase_from_freq(fk * sweep, n, sr, rng.uniform(0, 2 * np.pi))
        y += np.float32(amp) * np.exp(-t / tau_k) * np.sin(theta)
    # strike transient: a few ms of noise shaped like the lowest mode's band
    m = min(n, max(8, int(0.006 * sr)))
    hit = band_noise(m, sr, min(p["f"] * 2.0, 0.4 * MAX_FREQ_HZ), 2.5, rng)
    y[:m] += np.float32(p["noise"]) * hit * np.exp(-np.arange(m, dtype=np.float32) / (0.0015 * sr))
    return y


def _r_am(p: dict, fx: dict, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr)
    carrier = fx["carrier"]
    if carrier == "crackle":
        return _crackle(p, n, sr, rng)
    if carrier == "harmonic":
        drift = 1.0 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t + rng.uniform(0, 6.28))
        theta = phase_from_freq(p["f0"] * drift, n, sr, rng.uniform(0, 2 * np.pi))
        ks = np.arange(1, int(1200.0 / p["f0"]) + 1, dtype=np.float64)
        amps = 10.0 ** (-4.0 * np.log2(ks) / 20.0) * rng.uniform(0.5, 1.0, size=ks.shape)
        y = _partials(theta, amps, ks)
    elif carrier == "noise":
        y = band_noise(n, sr, p["centre"], p["bw_oct"], rng)
    elif carrier == "tone":
        y = np.sin(phase_from_freq(p["f0"], n, sr, rng.uniform(0, 2 * np.pi)))
    else:  # pragma: no cover - catalogue is fixed
        raise ValueError(f"unknown AM carrier {carrier!r}")
    return y * _mod(t, p["am_rate"], p["am_depth"], rng.uniform(0, 2 * np.pi))


def _crackle(p: dict, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Random clicks (Poisson, ``am_rate`` per second), one forced at each end of the event."""
    k = max(4, int(0.003 * sr))
    tk = np.arange(k, dtype=np.float32) / sr
    kernel = np.exp(-tk / 0.0005) * (
        np.sin(2 * np.pi * p["centre"] * tk) + 0.5 * band_noise(k, sr, p["centre"], 1.0, rng)
    )
    count = int(rng.poisson(p["am_rate"] * n / sr))
    starts = np.concatenate([[0, max(0, n - k)], rng.integers(0, max(1, n - k), size=count)])
    amps = rng.uniform(0.3, 1.0, size=starts.shape) * rng.choice([-1.0, 1.0], size=starts.shape)
    amps[:2] = np.sign(amps[:2])  # the forced end clicks are full scale
    impulses = np.zeros(n, dtype=np.float32)
    np.add.at(impulses, starts, amps.astype(np.float32))
    return np.convolve(impulses, kernel.astype(np.float32))[:n]


def _r_fm(p: dict, fx: dict, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr)
    mode = fx["mode"]
    if mode == "bell":
        tau = _decay_tau(n, sr)
        fm = p["fc"] * float(fx["ratio"])
        index = (p["index"] * np.exp(-t / (0.5 * tau))).astype(np.float32)
        theta_c = phase_from_freq(p["fc"], n, sr, rng.uniform(0, 2 * np.pi))
        theta_m = phase_from_freq(fm, n, sr, rng.uniform(0, 2 * np.pi))
        return np.exp(-t / tau) * np.sin(theta_c + index * np.sin(theta_m))
    if mode == "warble":
        freq = p["fc"] + p["dev"] * np.sin(
            2 * np.pi * p["fm_rate"] * t.astype(np.float64) + rng.uniform(0, 6.28)
        )
        return np.sin(phase_from_freq(freq, n, sr, rng.uniform(0, 2 * np.pi)))
    if mode == "growl":
        theta_c = phase_from_freq(p["fc"], n, sr, rng.uniform(0, 2 * np.pi))
        theta_m = phase_from_freq(p["fm_rate"], n, sr, rng.uniform(0, 2 * np.pi))
        return np.sin(theta_c + np.float32(p["index"]) * np.sin(theta_m))
    raise ValueError(f"unknown FM mode {mode!r}")  # pragma: no cover - catalogue is fixed


_RENDERERS: dict[str, Callable[..., np.ndarray]] = {
    "tone": _r_tone,
    "harmonic": _r_harmonic,
    "chirp": _r_chirp,
    "noise": _r_noise,
    "pulses": _r_pulses,
    "impact": _r_impact,
    "am": _r_am,
    "fm": _r_fm,
}


def render_event(
    cls: SoundClass, params: dict[str, float], n: int, sr: int, rng: np.random.Generator
) -> np.ndarray:
    """Audio of one event instance: (n,) float32, unit :func:`active_rms`.

    ``n`` is the planned length in samples (``round(params["duration"] * sr)``). The signal
    starts at sample 0 and ends at sample n - 1 (attack/release envelopes of a few ms).
    """
    if n < 2:
        raise ValueError(f"event of class {cls.name!r} is {n} samples long; need at least 2")
    y = _RENDERERS[cls.kind](params, cls.fixed, n, sr, rng).astype(np.float32, copy=False)
    if cls.kind == "impact" or (cls.kind == "fm" and cls.fixed.get("mode") == "bell"):
        env = ar_envelope(n, sr, 0.0005, min(0.01, 0.25 * n / sr))  # decays already
    elif cls.kind == "pulses" or cls.fixed.get("carrier") == "crackle":
        env = ar_envelope(n, sr, 0.0002, 0.0005)  # first/last pulse sit on the boundaries
    else:
        env = ar_envelope(n, sr, params["attack"], params["release"])
    y = y * env
    level = active_rms(y, sr)
    if not np.isfinite(level) or level <= 0.0:
        raise ValueError(f"class {cls.name!r} rendered a silent or non-finite event ({params})")
    return (y / np.float32(level)).astype(np.float32)


def active_rms(y: np.ndarray, sr: int, frame_s: float = 0.01, floor_db: float = 30.0) -> float:
    """RMS over the active 10 ms frames of ``y`` (energy within ``floor_db`` of the loudest).

    Like an active speech level (ITU-T P.56, simplified): the gaps of a pulse train or the
    tail of a decay do not lower an event's level, so the SNR means the same for every class.
    """
    m = max(1, int(frame_s * sr))
    k = y.shape[0] // m
    if k < 2:
        return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    e = np.mean(np.square(y[: k * m], dtype=np.float64).reshape(k, m), axis=1)
    active = e[e >= e.max() * 10.0 ** (-floor_db / 10.0)]
    return float(np.sqrt(active.mean()))
