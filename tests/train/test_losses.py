"""Losses: LinSoft by hand, BCE, domain loss + GRL min-max sign, KD projector, pseudo labels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tsd_ray.common.config import DetectorConfig, DiscriminatorConfig
from tsd_ray.models import Detector, Discriminator, freeze, grad_reverse
from tsd_ray.models.pooling import linsoft_pool
from tsd_ray.train.losses import (
    KDProjector,
    clip_bce,
    domain_logits,
    domain_loss,
    frame_bce,
    pseudo_labels,
)

# ---------------------------------------------------------------------------- LinSoft


def test_linsoft_by_hand():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.6, 0.2]])
    # [0.5,0.5,0]: 0.5/1 = 0.5; [1,0,0]: 1; [0.2,0.6,0.2]: (0.04+0.36+0.04)/1.0 = 0.44
    got = linsoft_pool(p)
    assert torch.allclose(got, torch.tensor([0.5, 1.0, 0.44]), atol=1e-6)


def test_linsoft_one_hot_long_clip_and_all_zero():
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    got = linsoft_pool(p)
    assert got[0].item() == pytest.approx(1.0, abs=1e-6)
    assert got[1].item() == 0.0 and torch.isfinite(got).all()


def test_linsoft_ignores_masked_frames():
    p = torch.tensor([[0.5, 0.5, 0.9, 0.9]])
    mask = torch.tensor([[True, True, False, False]])
    assert linsoft_pool(p, mask).item() == pytest.approx(0.5, abs=1e-6)
    assert linsoft_pool(p).item() == pytest.approx((0.25 * 2 + 0.81 * 2) / 2.8, abs=1e-6)


# ---------------------------------------------------------------------------- BCE


def test_frame_bce_matches_formula_and_mask():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)
    per = -(y * p.log() + (1 - y) * (1 - p).log())
    assert frame_bce(logits, y).item() == pytest.approx(per.mean().item(), rel=1e-6)
    mask = torch.tensor([[True, True, False]])
    assert frame_bce(logits, y, mask).item() == pytest.approx(per[0, :2].mean().item(), rel=1e-6)


def test_frame_bce_float32_under_bf16_and_extreme_logits():
    logits = torch.tensor([[80.0, -80.0]], dtype=torch.bfloat16)
    loss = frame_bce(logits, torch.tensor([[0.0, 1.0]]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(80.0, rel=1e-2)


def test_clip_bce_by_hand_and_clamped():
    got = clip_bce(torch.tensor([0.8, 0.25]), torch.tensor([1.0, 0.0]))
    assert got.item() == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2, rel=1e-6)
    assert torch.isfinite(clip_bce(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])))


def test_clip_bce_from_logits_equals_linsoft_bce_and_keeps_its_gradient_when_saturated():
    from tsd_ray.train.losses import clip_bce_from_logits

    g = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(3, 12, generator=g)  # (B, T'), far from saturation
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 8:] = False  # padded frames of a shorter clip
    mask[2, 5:] = False
    y = torch.tensor([1.0, 0.0, 1.0])
    old = clip_bce(linsoft_pool(torch.sigmoid(logits), mask), y)
    new = clip_bce_from_logits(logits, y, mask)
    assert new.dtype == torch.float32
    assert new.item() == pytest.approx(old.item(), abs=1e-5)
    # padded frames do not count, whatever their logits
    garbage = logits.masked_fill(~mask, 50.0)
    assert clip_bce_from_logits(garbage, y, mask).item() == pytest.approx(new.item(), abs=1e-6)
    # bf16 logits are computed in float32 too
    assert clip_bce_from_logits(logits.bfloat16(), y, mask).dtype == torch.float32

    # every frame saturated at logit 20 with label 0: the clamped formula has no gradient left,
    # the log-domain one pushes the logits down
    sat = torch.full((2, 12), 20.0, requires_grad=True)
    labels = torch.zeros(2)
    clip_bce(linsoft_pool(torch.sigmoid(sat)), labels).backward()
    assert sat.grad is not None and float(sat.grad.abs().sum()) == 0.0
    sat_new = torch.full((2, 12), 20.0, requires_grad=True)
    loss = clip_bce_from_logits(sat_new, labels)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(20.0, abs=1e-3)  # -log(1 - P)
    assert torch.isfinite(sat_new.grad).all() and (sat_new.grad > 0).all()
    # and label 1 on clips that are all "off" (logit -20): finite, non-zero gradient upwards
    off = torch.full((2, 12), -20.0, requires_grad=True)
    clip_bce_from_logits(off, torch.ones(2)).backward()
    assert torch.isfinite(off.grad).all() and (off.grad < 0).all()


def test_clip_bce_from_logits_rejects_wrong_shapes_and_empty_rows():
    from tsd_ray.train.losses import clip_bce_from_logits

    with pytest.raises(ValueError, match="clip_bce_from_logits: labels"):
        clip_bce_from_logits(torch.zeros(2, 5), torch.zeros(3))
    with pytest.raises(ValueError, match="no valid frame"):
        clip_bce_from_logits(torch.zeros(2, 5), torch.zeros(2), torch.zeros(2, 5, dtype=torch.bool))


def test_domain_loss_is_squared_error_on_sigmoid():
    logits = torch.tensor([0.0, 2.0])
    d = torch.tensor([0.0, 1.0])
    want = ((0.5 - 0.0) ** 2 + (torch.sigmoid(torch.tensor(2.0)).item() - 1.0) ** 2) / 2
    assert domain_loss(logits, d).item() == pytest.approx(want, rel=1e-6)
    assert domain_loss(torch.tensor([0.3, 0.9]), d, from_logits=False).item() == pytest.approx(
        (0.09 + 0.01) / 2, rel=1e-6
    )


# ---------------------------------------------------------------------------- GRL min-max

SMALL = DetectorConfig(
    channels=(4, 8, 8, 8, 8), gru_hidden=8, fc_hidden=8, embedding_dim=8, dropout=0.0
)


def _adv_setup(seed: int = 0):
    torch.manual_seed(seed)
    det = Detector(SMALL, 16, "none")
    disc = Discriminator(DiscriminatorConfig(channels=(4, 4, 4)), det.out_channels)
    mel = torch.randn(4, 20, 16)
    e = torch.randn(4, 8)
    y = (torch.rand(4, 10) > 0.5).float()
    d = torch.tensor([0.0, 0.0, 1.0, 1.0])
    return det, disc, mel, e, y, d


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _backward(lam: float | None, with_tsd: bool):
    """Gradients of det/disc for L = [L_tsd] + L_d(D(GRL_lam(z))) (lam None: no GRL)."""
    det, disc, mel, e, y, d = _adv_setup()
    det.train(), disc.train()
    out = det(mel, e)
    z = out.z if lam is None else grad_reverse(out.z, lam)
    loss = domain_loss(disc(z), d)
    if with_tsd:
        loss = loss + frame_bce(out.frame_logits, y)
    loss.backward()
    return _grads(det), _grads(disc)


def test_grad_reverse_identity_forward_reversed_scaled_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = grad_reverse(x, 0.2)
    assert torch.equal(y, x)
    (y * torch.arange(12.0).reshape(3, 4)).sum().backward()
    assert torch.allclose(x.grad, -0.2 * torch.arange(12.0).reshape(3, 4))


def _tsd_only_grads() -> dict[str, torch.Tensor]:
    det, _, mel, e, y, _ = _adv_setup()
    det.train()
    frame_bce(det(mel, e).frame_logits, y).backward()
    return _grads(det)


def test_grl_sign_discriminator_plus_extractor_minus_lambda():
    """One backward of L_tsd + L_d(D(GRL_lam(z))): D gets +dL_d, the extractor dL_tsd - lam dL_d."""
    lam = 0.2
    det_tsd = _tsd_only_grads()  # dL_tsd only
    det_plain, disc_plain = _backward(lam=None, with_tsd=False)  # dL_d, no reversal
    det_grl, disc_grl = _backward(lam=lam, with_tsd=True)  # the real objective

    # Discriminator: the same gradient as plain L_d (it minimises L_d), sign +.
    assert disc_grl and disc_grl.keys() == disc_plain.keys()
    for n in disc_plain:
        assert torch.allclose(disc_grl[n], disc_plain[n], atol=1e-7), n
    # Extractor (conv blocks producing z): dL_tsd - lam * dL_d.
    conv_names = [n for n in det_plain if n.startswith("blocks.")]
    assert conv_names
    for n in conv_names:
        want = det_tsd[n] - lam * det_plain[n]
        assert torch.allclose(det_grl[n], want, atol=1e-6, rtol=1e-4), n
    # The reversed part is not negligible, so a missing reversal would fail the check above.
    assert max((lam * det_plain[n]).abs().max().item() for n in conv_names) > 1e-5
    # Layers after z (GRU, FCs) get no gradient from L_d at all.
    assert all(not n.startswith(("gru.", "fc")) for n in det_plain)


def test_domain_logits_and_domain_loss_as_the_loop_uses_them_train_the_discriminator():
    det, disc, mel, e, _, d = _adv_setup()
    opt = torch.optim.SGD(disc.parameters(), lr=0.5)
    with torch.no_grad():
        z = det(mel, e).z
    before = domain_loss(disc(z), d).item()
    for _ in range(5):
        opt.zero_grad()
        domain_loss(domain_logits(z.clone().requires_grad_(True), disc, 0.2), d).backward()
        opt.step()
    after = domain_loss(disc(z), d).item()
    assert after < before


# ---------------------------------------------------------------------------- KD


def test_kd_teacher_frozen_eval_identical_outputs_and_params_unchanged():
    torch.manual_seed(0)
    cfg = DetectorConfig(
        channels=(4, 8, 8, 8, 8), gru_hidden=8, fc_hidden=8, embedding_dim=8, dropout=0.5
    )
    teacher = freeze(Detector(cfg, 16, "none"))
    student = Detector(cfg, 16, "linsoft")
    proj = KDProjector(teacher.gru_dim, student.gru_dim, 6)
    mel, e = torch.randn(4, 30, 16), torch.randn(4, 8)
    bn = teacher.blocks[0][1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    params = {n: p.detach().clone() for n, p in teacher.named_parameters()}

    out1 = teacher(mel, e)
    out2 = teacher(mel, e)
    assert not teacher.training
    assert torch.equal(out1.gru, out2.gru) and torch.equal(out1.frame_probs, out2.frame_probs)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])

    opt = torch.optim.Adam([*student.parameters(), *proj.parameters()], lr=1e-2)
    with torch.no_grad():
        t_gru = teacher(mel, e).gru
    s_out = student(mel, e)
    loss = clip_bce(s_out.clip_prob, torch.tensor([1.0, 0.0, 1.0, 0.0])) + proj(t_gru, s_out.gru)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for n, p in teacher.named_parameters():
        assert not p.requires_grad and p.grad is None and torch.equal(p, params[n]), n
    # A student that is *not* frozen does drift in train mode (dropout): the check can fail.
    student.train()
    assert not torch.equal(student(mel, e).gru, student(mel, e).gru)


def test_kd_projector_scale_invariant_no_collapse_by_shrinking():
    torch.manual_seed(0)
    proj = KDProjector(12, 10, 4)
    fs, fw = torch.randn(2, 50, 12), torch.randn(2, 50, 10)
    base = proj(fs, fw).item()
    with torch.no_grad():
        proj.w_s.weight.mul_(1e-4)
        proj.w_w.weight.mul_(1e-4)
    assert proj(fs, fw).item() == pytest.approx(base, rel=1e-3)


def test_kd_projector_cannot_be_driven_to_zero_on_unrelated_features():
    """Only the projections learn; features are independent noise. A naive (unnormalised)
    projector collapses to ~0; ours stays near 2 (= 2 * (1 - correlation))."""
    torch.manual_seed(0)
    fs, fw = torch.randn(4, 250, 16), torch.randn(4, 250, 16)

    class Naive(KDProjector):
        def forward(self, t, s, mask=None):
            return ((self.w_s(t) - self.w_w(s)) ** 2).mean()

    finals = {}
    for cls in (KDProjector, Naive):
        torch.manual_seed(1)
        proj = cls(16, 16, 8)
        opt = torch.optim.Adam(proj.parameters(), lr=2e-2)
        start = proj(fs, fw).item()
        for _ in range(200):
            opt.zero_grad()
            loss = proj(fs, fw)
            loss.backward()
            opt.step()
        finals[cls.__name__] = (start, loss.item())
    naive_start, naive_end = finals["Naive"]
    ours_start, ours_end = finals["KDProjector"]
    assert naive_end < 1e-3 * naive_start  # the collapse is real ...
    assert ours_end > 1.5  # ... and prevented here


def test_kd_projector_learns_real_agreement_and_respects_mask():
    torch.manual_seed(0)
    fs = torch.randn(4, 100, 16)
    fw = fs @ torch.randn(16, 16)  # student features a linear view of the teacher's
    proj = KDProjector(16, 16, 4)
    opt = torch.optim.Adam(proj.parameters(), lr=2e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = proj(fs, fw)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    # Masked frames do not count: garbage on them leaves the loss unchanged.
    mask = torch.ones(4, 100, dtype=torch.bool)
    mask[:, 80:] = False
    fw_bad = fw.clone()
    fw_bad[:, 80:] = 1e3
    assert proj(fs, fw_bad, mask).item() == pytest.approx(
        proj(fs[:, :80], fw[:, :80]).item(), rel=1e-5
    )


# ---------------------------------------------------------------------------- pseudo labels


def test_pseudo_labels_zeroed_on_negative_clips_and_detached():
    probs = torch.tensor([[0.2, 0.9], [0.7, 0.4], [0.5, 0.5]], requires_grad=True)
    got = pseudo_labels(probs, torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(got, torch.tensor([[0.2, 0.9], [0.0, 0.0], [0.5, 0.5]]))
    assert not got.requires_grad and got.dtype == torch.float32
