"""Units of the training loop that need no Ray: the min-max through PhaseModel, references."""

import torch

from tsd_ray.config import DetectorConfig, DiscriminatorConfig
from tsd_ray.loop import PhaseModel, ReferenceTable
from tsd_ray.losses import domain_loss
from tsd_ray.models.detector import Detector
from tsd_ray.models.discriminator import Discriminator

DET = DetectorConfig(channels=(4, 4, 8, 8, 8), gru_hidden=8, fc_hidden=8, embedding_dim=6, dropout=0.0)


def _grads(lambda_d, reverse=True):
    torch.manual_seed(0)
    student = Detector(DET, 16, "none")
    model = PhaseModel(student, Discriminator(DiscriminatorConfig(channels=(4, 4, 4)), student.out_channels), None)
    mel, emb = torch.randn(4, 21, 16), torch.randn(4, 6)
    domains = torch.tensor([0.0, 0.0, 1.0, 1.0])
    if reverse:
        _, logit, _ = model(mel, emb, None, lambda_d=lambda_d)
    else:  # plain gradient of L_d, no reversal
        logit = model.discriminator(student(mel, emb).z)
    domain_loss(logit, domains).backward()
    d = torch.cat([p.grad.flatten() for p in model.discriminator.parameters()])
    conv = student.blocks[0][0].weight.grad.clone()
    return d, conv


def test_phase_model_is_a_real_min_max():
    d_rev, conv_rev = _grads(0.2)
    d_plain, conv_plain = _grads(0.0, reverse=False)
    # the discriminator descends L_d in both cases (same gradient)
    torch.testing.assert_close(d_rev, d_plain)
    # the feature extractor gets -lambda_d times the gradient of L_d
    torch.testing.assert_close(conv_rev, -0.2 * conv_plain, rtol=1e-4, atol=1e-7)
    assert conv_plain.abs().sum() > 0


def test_reference_table_fixed_and_drawn():
    emb = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # rows 0..5
    cls = torch.tensor([1, 0, 1, 2, 0, 1])
    table = ReferenceTable(emb, cls, n_classes=3)
    fixed = table.lookup(torch.tensor([3, 0]), torch.tensor([2, 1]), None)
    torch.testing.assert_close(fixed, emb[[3, 0]])
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        rows = table.lookup(torch.tensor([-1]), torch.tensor([1]), g)
        seen.add(int(rows[0, 0]) // 2)
    assert seen == {0, 2, 5}  # every reference of class 1, nothing else


def test_shuffle_seed_is_reproducible_and_fresh_per_epoch_rank_and_stream():
    from tsd_ray.ray_utils import shuffle_seed

    assert shuffle_seed(3, 1, 0) == shuffle_seed(3, 1, 0)
    seeds = {shuffle_seed(s, e, r, k) for s in range(3) for e in range(20) for r in range(4) for k in range(3)}
    assert len(seeds) == 3 * 20 * 4 * 3
    assert all(0 <= x < 2**32 for x in seeds)
