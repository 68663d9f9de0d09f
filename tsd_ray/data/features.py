"""Log-mel front end (paper §5.2): mono → 22,050 Hz → STFT 2048 / hop 441 → 64 mels → log.

Pure functions on arrays/tensors; the Ray Data build (:mod:`tsd_ray.data.build`) maps them over
shards, and detection (:mod:`tsd_ray.apps.detect`) reuses them on a user's recordings.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio

from tsd_ray.common.config import FrontendConfig

#: The detector pools time x2, so one output frame spans two input frames (40 ms).
TIME_POOL = 2


def n_input_frames(seconds: float, cfg: FrontendConfig) -> int:
    """STFT frames (center=True) for a signal of ``seconds``: 10 s -> 501."""
    n_samples = int(round(seconds * cfg.sample_rate))
    return 1 + n_samples // cfg.hop_length


def n_output_frames(n_in: int) -> int:
    """Detector output frames for ``n_in`` input frames: 501 -> 250."""
    return n_in // TIME_POOL


def output_hop_s(cfg: FrontendConfig) -> float:
    """Seconds per detector output frame: 2 * 441 / 22050 = 0.04."""
    return TIME_POOL * cfg.hop_length / cfg.sample_rate


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class LogMel:
    """Resample + log-mel on a device; resampling kernels are cached per input rate."""

    def __init__(self, cfg: FrontendConfig, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.n_fft,
            hop_length=cfg.hop_length,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            n_mels=cfg.n_mels,
            power=2.0,
            center=True,
            pad_mode="reflect",
        ).to(self.device)
        self._resamplers: dict[int, torchaudio.transforms.Resample] = {}

    def resample(self, wave: torch.Tensor, sr: int) -> torch.Tensor:
        """(..., N) at ``sr`` -> (..., M) at cfg.sample_rate."""
        if sr == self.cfg.sample_rate:
            return wave
        if sr not in self._resamplers:
            g = math.gcd(sr, self.cfg.sample_rate)
            self._resamplers[sr] = torchaudio.transforms.Resample(
                sr // g, self.cfg.sample_rate // g, dtype=torch.float32
            ).to(self.device)
        return self._resamplers[sr](wave)

    @torch.no_grad()
    def __call__(self, wave: np.ndarray | torch.Tensor, sr: int, *, seconds: float | None = None):
        """Mono waveform -> (log-mel (T, F) float32 numpy, n_valid_frames).

        With ``seconds`` the resampled signal is zero-padded or cropped to exactly that length
        (so every clip of a split has the same T); ``n_valid_frames`` counts the frames that
        hold real signal.
        """
        x = torch.as_tensor(wave, dtype=torch.float32, device=self.device)
        x = self.resample(x, sr)
        n_real = x.shape[-1]
        if seconds is not None:
            target = int(round(seconds * self.cfg.sample_rate))
            if n_real < target:
                x = torch.nn.functional.pad(x, (0, target - n_real))
            else:
                x = x[..., :target]
            n_real = min(n_real, target)
        spec = self.mel(x)  # (F, T)
        logmel = torch.log(spec + self.cfg.log_offset).transpose(-1, -2)  # (T, F)
        n_valid = min(logmel.shape[-2], 1 + n_real // self.cfg.hop_length)
        return logmel.cpu().numpy(), int(n_valid)
