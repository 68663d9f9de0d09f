"""Frame masks and linear-softmax pooling (paper eq. 3): the w student's clip probability.

Used by the detector (its clip output) and by the losses (eq. 3's clip BCE is taken on the same
pooling in the log domain); it lives here, below both, so neither imports the other.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EPS", "check_mask", "linsoft_pool"]

EPS = 1e-7  # guards the pooling's division only


def check_mask(mask: Tensor | None, like: Tensor, name: str) -> Tensor | None:
    if mask is None:
        return None
    if mask.shape != like.shape:
        raise ValueError(
            f"{name}: frame_mask has shape {tuple(mask.shape)}, expected {tuple(like.shape)}"
        )
    return mask.to(device=like.device, dtype=torch.bool)


def linsoft_pool(probs: Tensor, mask: Tensor | None = None) -> Tensor:
    """Linear-softmax pooling ``P = sum_i p_i^2 / sum_i p_i`` over valid frames (paper eq. 3).

    Args:
        probs: (B, T') frame probabilities in [0, 1].
        mask: optional (B, T') bool, True on valid (non-padded) frames; others are ignored.

    Returns:
        (B,) float32 clip probabilities. A clip whose valid frames are all 0 gets 0 (the
        ``eps`` in the denominator only guards the division).
    """
    p = probs.float()  # (B, T')
    m = check_mask(mask, p, "linsoft_pool")
    if m is not None:
        p = p * m
    return (p * p).sum(dim=-1) / (p.sum(dim=-1) + EPS)
