"""Domain discriminator and gradient reversal (paper eq. 8-9; docs/architecture.md, "Discriminator and gradient reversal").

The discriminator sees the student's CNN feature map ``z`` (before the reference embedding is
joined) and predicts the domain: logit > 0 means "target". Trained with
:func:`tsd_ray.train.losses.domain_loss` on ``sigmoid(logit)``; the student sees it through
:func:`grad_reverse`, which turns one backward pass into the min-max of eq. 9 (see the recipe in
:mod:`tsd_ray.train.losses`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsd_ray.common.config import DiscriminatorConfig

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

    Padding: given the frame mask of ``z`` the logit of a clip depends on its valid frames only,
    exactly as if the clip were fed alone at its own length (padded frames would otherwise be a
    domain cue whenever clip lengths differ between the domains). Before each conv the invalid
    frames are set to 0, which is what the conv's own zero padding gives past a clip's end; a
    frame after a stride-2 conv is valid when the input frame at its centre (``2j``) is valid,
    i.e. a clip of ``n`` valid frames keeps the ``ceil(n / 2)`` frames it would have alone; the
    final average runs over valid frames only.

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
        self.time_strides: list[int] = []
        c_in = in_channels
        for i, c_out in enumerate(cfg.channels):
            stride = (2, 1) if i < 2 else (1, 1)
            self.time_strides.append(stride[0])
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, 1)

    def forward(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Domain logits (B,) of ``z`` (B, C, T', F').

        Args:
            z: (B, C, T', F') CNN features of the student (``DetectorOutput.z``; its time axis
                is the detector's output frames, 40 ms each).
            mask: optional (B, T') bool, True on the valid frames of ``z`` (a prefix per row:
                the detector's frame mask of the mixture). None: every frame is valid.
        """
        if mask is not None and mask.shape != (z.shape[0], z.shape[2]):
            raise ValueError(
                f"Discriminator: mask {tuple(mask.shape)} does not match z's (batch, frames) "
                f"({z.shape[0]}, {z.shape[2]}); pass the frame mask of z's rows (one per "
                "mixture when samples are packed)"
            )
        m = None if mask is None else mask.to(device=z.device, dtype=torch.bool)  # (B, T')
        if m is None or bool(m.all()):  # no padding: the plain average
            h = self.convs(z)  # (B, C3, T'/4, F')
            h = h.mean(dim=(2, 3))  # (B, C3)
            return self.fc(h).squeeze(-1)
        h = z
        layers = list(self.convs)
        for k, stride in enumerate(self.time_strides):
            conv, act = layers[2 * k], layers[2 * k + 1]
            h = h * m[:, None, :, None].to(h.dtype)  # padding -> the conv's own zeros
            h = act(conv(h))  # (B, C_k, ceil(T_i / stride), F')
            m = m[:, ::stride]  # valid when the centre input frame is valid
        w = m[:, None, :, None].to(h.dtype)  # (B, 1, T'', 1)
        n = w.sum(dim=(2, 3)).clamp_min(1.0) * h.shape[3]  # (B, 1) valid frames x F'
        h = (h * w).sum(dim=(2, 3)) / n  # (B, C3)
        return self.fc(h).squeeze(-1)
