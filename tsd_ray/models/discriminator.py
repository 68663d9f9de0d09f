"""Domain discriminator and gradient reversal (paper eq. 8-9, DESIGN §1).

The discriminator sees the student's CNN feature map ``z`` (before the reference embedding is
joined) and predicts the domain: logit > 0 means "target". Trained with
:func:`tsd_ray.losses.domain_loss` on ``sigmoid(logit)``; the student sees it through
:func:`grad_reverse`, which turns one backward pass into the min-max of eq. 9 (see the recipe in
:mod:`tsd_ray.losses`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsd_ray.config import DiscriminatorConfig

__all__ = ["Discriminator", "GradReverse", "grad_reverse"]


class GradReverse(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``-scale`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = float(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad_output * (-ctx.scale), None


def grad_reverse(x: Tensor, scale: float) -> Tensor:
    """Gradient reversal layer ``GRL_scale``: ``y = x``; ``dL/dx = -scale * dL/dy``."""
    if scale < 0:
        raise ValueError(f"grad_reverse: scale must be >= 0 (it is lambda_d), got {scale}")
    return GradReverse.apply(x, scale)


class Discriminator(nn.Module):
    """3 conv layers (3x3, LeakyReLU) + 1 FC on ``z`` -> one domain logit per clip.

    The first two conv layers halve the time axis (stride 2 in time); frequency keeps its small
    size. The last feature map is averaged over time and frequency (any clip length works)
    before the FC layer. No batch norm: when a batch holds one domain only, batch statistics
    would normalise away exactly the domain offset the discriminator must see.

    Args:
        cfg: ``channels`` of the three conv layers.
        in_channels: channels ``C`` of ``z`` (the detector's last conv block).
    """

    def __init__(self, cfg: DiscriminatorConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        if len(cfg.channels) != 3:
            raise ValueError(f"discriminator.channels: expected 3 values, got {cfg.channels}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(cfg.channels):
            stride = (2, 1) if i < 2 else (1, 1)
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, 1)

    def forward(self, z: Tensor) -> Tensor:
        """``z`` (B, C, T', F') -> domain logits (B,)."""
        h = self.convs(z)  # (B, C3, T'/4, F')
        h = h.mean(dim=(2, 3))  # (B, C3)
        return self.fc(h).squeeze(-1)
