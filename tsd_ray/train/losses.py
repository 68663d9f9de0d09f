"""Losses of the two-student method (paper eq. 2-9; docs/architecture.md, "Equations and where they are implemented").

Shapes: ``B`` batch, ``T'`` output frames (40 ms each), ``H`` Bi-GRU width (2 x hidden).
Every loss is computed in float32 whatever the autocast dtype of its inputs, so bf16/fp16
training on GPU cannot overflow a ``log`` or lose a small gradient in a sum.

Adversarial min-max (eq. 8-9), how the training loop uses these pieces::

    out = student(mel, embedding, frame_mask)                     # DetectorOutput
    l_tsd = frame_bce(out.frame_logits, labels, frame_mask)       # or clip_bce_from_logits / KD / pseudo
    z = grad_reverse(out.z, lambda_d)                             # identity forward
    l_d = domain_loss(discriminator(z, frame_mask), domain)       # eq. 8, d = 0 source, 1 target
    loss = l_tsd + l_d
    loss.backward(); optimizer.step()                             # one optimiser, both nets

Backward through ``grad_reverse`` multiplies the gradient by ``-lambda_d``, so the
discriminator's parameters receive ``+dL_d/dtheta_D`` (they *minimise* ``L_d``) while the
student's feature extractor receives ``dL_tsd/dtheta - lambda_d * dL_d/dtheta``: it minimises
``L_tsd - lambda_d * L_d`` (eq. 9), i.e. it *maximises* the discriminator's error. This is the
real min-max; the public reference code let the extractor minimise ``L_d`` too.
:func:`domain_logits` packages the reversal and the discriminator: the training loop calls it
inside the student's (DDP-wrapped) forward and :func:`domain_loss` on the logits it returns.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsd_ray.models.discriminator import grad_reverse
from tsd_ray.models.pooling import EPS as _EPS
from tsd_ray.models.pooling import check_mask as _check_mask

__all__ = [
    "KDProjector",
    "clip_bce",
    "clip_bce_from_logits",
    "domain_logits",
    "domain_loss",
    "frame_bce",
    "pseudo_labels",
]



def frame_bce(frame_logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Frame-level binary cross-entropy from logits (eq. 2 and eq. 7), mean over valid frames.

    Args:
        frame_logits: (B, T') logits (any float dtype; computed in float32).
        targets: (B, T') hard {0, 1} or soft [0, 1] targets.
        mask: optional (B, T') bool of valid frames.
    """
    logits = frame_logits.float()
    tgt = targets.to(device=logits.device, dtype=torch.float32)
    if tgt.shape != logits.shape:
        raise ValueError(f"frame_bce: targets {tuple(tgt.shape)} vs logits {tuple(logits.shape)}")
    per_frame = F.binary_cross_entropy_with_logits(logits, tgt, reduction="none")  # (B, T')
    m = _check_mask(mask, logits, "frame_bce")
    if m is None:
        return per_frame.mean()
    m = m.float()
    return (per_frame * m).sum() / m.sum().clamp_min(1.0)


def clip_bce(clip_prob: Tensor, clip_labels: Tensor) -> Tensor:
    """Clip-level BCE on a pooled probability (eq. 3), float32, clamped away from 0 and 1.

    The clamp passes no gradient once ``clip_prob`` saturates; training uses
    :func:`clip_bce_from_logits` (the same value, exact in the log domain) instead.

    Args:
        clip_prob: (B,) clip probabilities (LinSoft output of the w student).
        clip_labels: (B,) weak labels in {0, 1}.
    """
    p = clip_prob.float().clamp(_EPS, 1.0 - _EPS)
    y = clip_labels.to(device=p.device, dtype=torch.float32)
    if y.shape != p.shape:
        raise ValueError(f"clip_bce: labels {tuple(y.shape)} vs probabilities {tuple(p.shape)}")
    return -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p)).mean()


def clip_bce_from_logits(
    frame_logits: Tensor, clip_labels: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Clip-level BCE of the LinSoft clip probability (eq. 3), exactly, from frame logits.

    The same loss as ``clip_bce(linsoft_pool(sigmoid(frame_logits), mask), clip_labels)`` but
    computed in the log domain in float32, with no clamping, so a saturated clip keeps its
    gradient (the clamped form passes none once every frame's probability rounds to 1 or 0:
    from a frame logit of ~17 in float32, ~7 in bf16). With ``log p_i = logsigmoid(l_i)`` and
    ``log(1 - p_i) = logsigmoid(-l_i)``, LinSoft ``P = sum_i p_i^2 / sum_i p_i`` gives::

        log P       = logsumexp_i(2 log p_i)               - logsumexp_i(log p_i)
        log (1 - P) = logsumexp_i(log p_i + log(1 - p_i))  - logsumexp_i(log p_i)

    (``1 - P = sum_i p_i (1 - p_i) / sum_i p_i``), sums over valid frames only.

    Args:
        frame_logits: (B, T') frame logits of the w student (any float dtype).
        clip_labels: (B,) weak labels in {0, 1} (soft labels in [0, 1] work too).
        mask: optional (B, T') bool, True on valid (non-padded) frames; every row needs one.

    Returns:
        Scalar float32, the mean over the B clips.
    """
    if frame_logits.ndim != 2:
        raise ValueError(
            f"clip_bce_from_logits: expected frame_logits (B, T'), got {tuple(frame_logits.shape)}"
        )
    # Autocast off: logsigmoid/logsumexp in float32 whatever the training dtype.
    with torch.autocast(device_type=frame_logits.device.type, enabled=False):
        logits = frame_logits.float()  # (B, T')
        y = clip_labels.to(device=logits.device, dtype=torch.float32)  # (B,)
        if y.shape != logits.shape[:1]:
            raise ValueError(
                f"clip_bce_from_logits: labels {tuple(y.shape)} vs logits {tuple(logits.shape)}; "
                "expected one label per row"
            )
        log_p = F.logsigmoid(logits)  # (B, T')
        log_q = F.logsigmoid(-logits)  # (B, T') log(1 - p)
        m = _check_mask(mask, logits, "clip_bce_from_logits")
        if m is not None:
            if not bool(m.any(dim=-1).all()):
                raise ValueError(
                    "clip_bce_from_logits: a row of the frame mask has no valid frame; "
                    "every clip needs at least one (check n_valid of the batch)"
                )
            log_p = log_p.masked_fill(~m, -math.inf)  # padded frames add exp(-inf) = 0
        log_sum_p = torch.logsumexp(log_p, dim=-1)  # (B,) log sum p_i
        log_clip = torch.logsumexp(2.0 * log_p, dim=-1) - log_sum_p  # (B,) log P
        log_not_clip = torch.logsumexp(log_p + log_q, dim=-1) - log_sum_p  # (B,) log(1 - P)
        return -(y * log_clip + (1.0 - y) * log_not_clip).mean()


def domain_loss(
    domain_output: Tensor, domain_labels: Tensor, *, from_logits: bool = True
) -> Tensor:
    """Least-squares domain loss ``mean_b (D(z)_b - d_b)^2`` (eq. 8).

    Args:
        domain_output: (B,) discriminator logits (``from_logits=True``, sigmoid applied here)
            or probabilities.
        domain_labels: (B,) domain ``d``: 0 = source, 1 = target.
    """
    out = domain_output.float()
    prob = torch.sigmoid(out) if from_logits else out
    d = domain_labels.to(device=prob.device, dtype=torch.float32)
    if d.shape != prob.shape:
        raise ValueError(f"domain_loss: labels {tuple(d.shape)} vs outputs {tuple(prob.shape)}")
    return ((prob - d) ** 2).mean()


def domain_logits(
    z: Tensor, discriminator: nn.Module, lambda_d: float, mask: Tensor | None = None
) -> Tensor:
    """``D(GRL_{lambda_d}(z))``: domain logits whose backward reverses into the student.

    The training loop (:class:`tsd_ray.train.worker.PhaseModel`) calls this inside the student's
    forward and :func:`domain_loss` on the result.

    Args:
        z: (U, C, T', F') CNN features of the student, one row per mixture.
        discriminator: maps ``(z, mask)`` to (U,) domain logits
            (:class:`tsd_ray.models.discriminator.Discriminator`).
        lambda_d: reversal scale (paper: 0.2).
        mask: optional (U, T') bool, True on z's valid (non-padded) frames; the discriminator
            then ignores the padding.

    Returns:
        (U,) domain logits (> 0: target).
    """

    return discriminator(grad_reverse(z, lambda_d), mask)


def pseudo_labels(w_frame_probs: Tensor, clip_labels: Tensor) -> Tensor:
    """Soft frame targets for the f student from the w student (eq. 7), detached.

    Args:
        w_frame_probs: (B, T') frame probabilities of the (frozen) w student.
        clip_labels: (B,) weak labels; frames of clips with label 0 get target 0.

    Returns:
        (B, T') float32 targets in [0, 1] with no gradient.
    """
    p = w_frame_probs.detach().float()  # (B, T')
    positive = clip_labels.detach().to(device=p.device, dtype=torch.float32) > 0.5  # (B,)
    return p * positive[:, None]


class KDProjector(nn.Module):
    """Frame-level knowledge distillation with learned projections (eq. 4-5).

    ``L_kd = mean_{valid frames i} || N(F_s W_s)_i - N(F_w W_w)_i ||^2 / P``: ``F_s`` (B, T', H_s)
    are the Bi-GRU features of the frozen teacher (f student), ``F_w`` (B, T', H_w) those of the w
    student, ``W_s`` (H_s x P) and ``W_w`` (H_w x P) learned projections (no bias).

    Why ``N``: minimising the raw distance over *both* projections has the trivial solution
    ``W_s = W_w = 0`` (loss 0, nothing distilled). ``N`` standardises every projected dimension
    over the valid frames of the batch (zero mean, unit variance; a batch norm without affine
    parameters that always uses batch statistics). Then the loss equals
    ``2 * mean_p (1 - rho_p)`` where ``rho_p`` is the correlation across frames between the
    teacher's and the student's p-th projection: it is invariant to the scale of ``W_s``/``W_w``
    and a constant projection is impossible, so the loss can only fall if the student's
    features actually predict (a linear view of) the teacher's. Range [0, 4]; ~2 for unrelated
    features. Limitation (as in CCA without a whitening constraint): all P dimensions may settle
    on the same most-shared direction; the loss still only rewards real agreement.
    """

    def __init__(self, teacher_dim: int, student_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.w_s = nn.Linear(teacher_dim, projection_dim, bias=False)
        self.w_w = nn.Linear(student_dim, projection_dim, bias=False)
        self.projection_dim = projection_dim

    @staticmethod
    def _standardise(x: Tensor) -> Tensor:
        # x (N, P) valid frames only; statistics over frames, per dimension.
        mean = x.mean(dim=0, keepdim=True)
        var = x.var(dim=0, unbiased=False, keepdim=True)
        # eps relative to the feature scale keeps the map scale-invariant down to tiny weights
        eps = 1e-10 * var.detach().mean() + 1e-30
        return (x - mean) / torch.sqrt(var + eps)

    def forward(
        self, teacher_gru: Tensor, student_gru: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        """KD loss (scalar, float32).

        Args:
            teacher_gru: (B, T', H_s) teacher Bi-GRU output (detached here).
            student_gru: (B, T', H_w) student Bi-GRU output.
            mask: optional (B, T') bool of valid frames.
        """
        if teacher_gru.shape[:2] != student_gru.shape[:2]:
            raise ValueError(
                f"KDProjector: teacher frames {tuple(teacher_gru.shape[:2])} != "
                f"student frames {tuple(student_gru.shape[:2])}"
            )
        fs = teacher_gru.detach().float()
        fw = student_gru.float()
        if mask is not None:
            m = _check_mask(mask, fs[..., 0], "KDProjector")
            fs, fw = fs[m], fw[m]  # (N, H)
        else:
            fs, fw = fs.reshape(-1, fs.shape[-1]), fw.reshape(-1, fw.shape[-1])
        if fs.shape[0] < 2:
            raise ValueError("KDProjector: need at least 2 valid frames to standardise")
        # Autocast off: the projections run in float32 like every loss here.
        with torch.autocast(device_type=fs.device.type, enabled=False):
            a = self._standardise(F.linear(fs, self.w_s.weight.float()))  # (N, P)
            b = self._standardise(F.linear(fw, self.w_w.weight.float()))  # (N, P)
        return ((a - b) ** 2).mean()
