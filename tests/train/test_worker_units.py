"""Units of the training loop that need no Ray: the min-max through PhaseModel, references."""

import math

import torch

from tsd_ray.common.config import DetectorConfig, DiscriminatorConfig
from tsd_ray.models.detector import Detector
from tsd_ray.models.discriminator import Discriminator
from tsd_ray.train.losses import domain_loss
from tsd_ray.train.validation import ReferenceTable
from tsd_ray.train.worker import PhaseModel

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
    from tsd_ray.common.ray_env import shuffle_seed

    assert shuffle_seed(3, 1, 0) == shuffle_seed(3, 1, 0)
    seeds = {shuffle_seed(s, e, r, k) for s in range(3) for e in range(20) for r in range(4) for k in range(3)}
    assert len(seeds) == 3 * 20 * 4 * 3
    assert all(0 <= x < 2**32 for x in seeds)


def _replay_ctx(replay: bool, adversarial: bool):
    from tsd_ray.common.config import Config
    from tsd_ray.train.phase import PhaseSpec
    from tsd_ray.train.worker import Context

    torch.manual_seed(0)
    student = Detector(DET, 16, "linsoft")
    disc = Discriminator(DiscriminatorConfig(channels=(4, 4, 4)), student.out_channels) if adversarial else None
    core = PhaseModel(student, disc, None)
    phase = PhaseSpec(name="p", student="w", train_split="target_train", val_split="target_val", loss="clip",
                      epochs=1, lr=1e-3, patience=1, adversarial=adversarial, replay=replay, replay_weight=0.5)
    return Context(
        cfg=Config(), phase=phase, manifest={}, sources={}, device=torch.device("cpu"), model=core, core=core,
        optimizer=torch.optim.SGD(core.parameters(), lr=0.0), kd_teacher=None, pseudo_teacher=None,
        refs=ReferenceTable(torch.randn(4, 6), torch.tensor([0, 1, 2, 3]), n_classes=4),
        gen=torch.Generator().manual_seed(0),
    )


def _replay_batch(source_labels: torch.Tensor):
    n_out = source_labels.shape[1]
    g = torch.Generator().manual_seed(1)
    return {
        "mel": torch.randn(4, 2 * n_out, 16, generator=g),
        "frame_labels": torch.cat([torch.zeros(2, n_out), source_labels]),
        "n_valid": torch.full((4,), n_out),
        "ref_idx": torch.tensor([0, 1, 2, 3]),
        "target_idx": torch.tensor([0, 1, 2, 3]),
        "clip_label": torch.tensor([1.0, 0.0, 1.0, 1.0]),
        "has_strong": torch.tensor([False, False, True, True]),  # target rows weak, source rows strong
        "domain": torch.tensor([1, 1, 0, 0]),
        "is_main": torch.tensor([1, 1, 0, 0]),
    }


def test_source_replay_fits_the_source_rows_strong_labels():
    from tsd_ray.train import losses
    from tsd_ray.train.worker import compute_losses

    n_out = 10
    on = torch.zeros(2, n_out)
    on[:, 3:7] = 1.0
    for adversarial in (False, True):
        ctx = _replay_ctx(replay=True, adversarial=adversarial)
        b = _replay_batch(on)
        _, parts = compute_losses(ctx, b)
        assert set(parts) == ({"clip", "replay", "domain"} if adversarial else {"clip", "replay"})
        # the replay term is replay_weight x the frame BCE of the source rows (2, 3) only
        with torch.no_grad():  # same rows, same train-mode forward (no augmentation configured)
            out = ctx.core.student(b["mel"], ctx.refs.lookup(b["ref_idx"], b["target_idx"], None))
        expected = 0.5 * losses.frame_bce(out.frame_logits[2:], on)
        assert abs(parts["replay"] - float(expected)) < 1e-5
        # the source rows' labels move it; the clip loss of the target rows does not see them
        _, parts_zero = compute_losses(_replay_ctx(True, adversarial), _replay_batch(torch.zeros(2, n_out)))
        assert abs(parts_zero["replay"] - parts["replay"]) > 1e-3
        assert parts_zero["clip"] == parts["clip"]
    # without replay the source rows give no task loss (only the discriminator sees them)
    _, parts = compute_losses(_replay_ctx(replay=False, adversarial=True), _replay_batch(on))
    assert set(parts) == {"clip", "domain"}


def test_replay_phase_specs():
    import dataclasses

    import pytest

    from tsd_ray.common.config import Config
    from tsd_ray.train.phase import PhaseSpec, make_phase, ss_phase, ws_phase

    cfg = Config()
    cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, source_replay=True, adversarial=False,
                                                              replay_weight=0.7))
    tgt = make_phase(cfg, "w_target", "p3", student="w", train_split="target_train", val_split="target_val", loss="clip")
    src = make_phase(cfg, "f_source", "p1", student="f", train_split="source_train", val_split="source_val", loss="frame")
    assert (tgt.replay, tgt.replay_weight, tgt.aux_split) == (True, 0.7, "source_train")
    assert (src.replay, src.aux_split) == (False, None)  # nothing to replay in a source phase
    assert not ss_phase(cfg).replay and not ws_phase(cfg).replay  # baselines stay what they are
    # with replay switched off (the paper's chain) every phase, baselines included, still builds
    off = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, source_replay=False))
    assert not ss_phase(off).replay and not ws_phase(off).replay
    assert not make_phase(off, "w_target", "p3", student="w", train_split="target_train",
                          val_split="target_val", loss="clip", replay=True).replay
    with pytest.raises(ValueError, match="replay is for target-domain phases"):
        PhaseSpec(name="x", student="f", train_split="source_train", val_split="source_val", loss="frame",
                  epochs=1, lr=1e-3, patience=1, replay=True)


def _val_batches(n=23, size=5):
    import numpy as np

    ids = [f"mix{i // 3}::target{i % 3}" for i in range(n)]
    for s in range(0, n, size):
        chunk = ids[s:s + size]
        onsets = np.empty(len(chunk), dtype=object)
        onsets[:] = [[float(k)] for k in range(s, s + len(chunk))]
        yield {"sample_id": np.asarray(chunk), "mel": np.arange(s, s + len(chunk), dtype=np.float32),
               "event_onsets": onsets}


def test_own_rows_gives_every_validation_sample_to_exactly_one_worker():
    from tsd_ray.train.validation import own_rows

    everything = [str(x) for b in _val_batches() for x in b["sample_id"]]
    seen = []
    for rank in range(3):
        for b in own_rows(_val_batches(), rank, 3):
            assert len(b["sample_id"]) == len(b["mel"]) == len(b["event_onsets"]) > 0
            for sid, mel, on in zip(b["sample_id"], b["mel"], b["event_onsets"]):
                k = everything.index(str(sid))  # the row's fields stay together
                assert mel == k and on == [float(k)]
            seen += [str(x) for x in b["sample_id"]]
    assert sorted(seen) == sorted(everything)  # nothing lost, nothing twice
    assert [str(x) for b in own_rows(_val_batches(), 0, 1) for x in b["sample_id"]] == everything
    per_rank = [sum(len(b["sample_id"]) for b in own_rows(_val_batches(200), r, 2)) for r in range(2)]
    assert min(per_rank) > 60  # shared, not all on one worker


def _gather_worker(rank, world, init_file, out_dir):
    import json

    import torch.distributed as dist

    from tsd_ray.train.validation import broadcast_scores as _broadcast_scores
    from tsd_ray.train.validation import gather_samples

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mine = [f"r{rank}-s{k}" for k in range(rank + 2)]
        got = gather_samples(mine, rank, world)
        scores = _broadcast_scores({"val_samples": len(got)} if rank == 0 else None)
        with open(f"{out_dir}/{rank}.json", "w") as f:
            json.dump({"got": got, "scores": scores}, f)
    finally:
        dist.destroy_process_group()


def test_gather_and_broadcast_over_a_real_gloo_group(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2))
    assert r0["got"] == ["r0-s0", "r0-s1", "r1-s0", "r1-s1", "r1-s2"]
    assert r1["got"] is None  # only rank 0 holds the predictions
    assert r0["scores"] == r1["scores"] == {"val_samples": 5}  # every rank gets rank 0's scores


def test_cosine_learning_rate_falls_from_one_to_zero_and_is_a_function_of_the_step():
    from tsd_ray.train.worker import lr_factor, steps_per_epoch

    spe = steps_per_epoch(1489, 2, 32)
    assert spe == 24  # 745 rows per worker in batches of 32
    curve = [lr_factor("cosine", e, s, spe, 4) for e in range(4) for s in range(spe)]
    assert curve[0] == 1.0
    assert all(a >= b for a, b in zip(curve, curve[1:]))  # never rises
    assert abs(lr_factor("cosine", 2, 0, spe, 4) - 0.5) < 1e-12  # halfway through the phase
    assert lr_factor("cosine", 3, spe, spe, 4) < 1e-12  # 0 after the last step
    assert lr_factor("cosine", 1, spe + 5, spe, 4) == lr_factor("cosine", 1, spe, spe, 4)  # extra steps hold
    assert curve[spe * 2 + 3] == lr_factor("cosine", 2, 3, spe, 4)  # a resumed epoch restarts on the curve
    assert {lr_factor("constant", e, s, spe, 4) for e in range(4) for s in range(0, spe, 5)} == {1.0}


def _packed_setup(cfg=None):
    """A pseudo-label phase with KD and replay, and a packed batch: an auxiliary (source, strong)
    mixture with two samples first, then two main (target, weak) mixtures with three."""
    from tsd_ray.common.config import Config
    from tsd_ray.models.encoder import freeze
    from tsd_ray.train.losses import KDProjector
    from tsd_ray.train.phase import PhaseSpec
    from tsd_ray.train.worker import Context, concat_batches

    torch.manual_seed(0)
    student = Detector(DET, 16, "none")
    core = PhaseModel(student, None, KDProjector(student.gru_dim, student.gru_dim, 4)).eval()
    phase = PhaseSpec(name="p", student="f", train_split="target_train", val_split="target_val", loss="pseudo",
                      epochs=1, lr=1e-3, patience=1, kd_teacher="f.pt", pseudo_teacher="w.pt", replay=True)
    ctx = Context(
        cfg=cfg or Config(), phase=phase, manifest={}, sources={}, device=torch.device("cpu"), model=core, core=core,
        optimizer=torch.optim.SGD(core.parameters(), lr=0.0),
        kd_teacher=freeze(Detector(DET, 16, "none")), pseudo_teacher=freeze(Detector(DET, 16, "linsoft")),
        refs=ReferenceTable(torch.randn(4, 6), torch.tensor([0, 1, 2, 3]), n_classes=4),
        gen=torch.Generator().manual_seed(0),
    )
    n_out, g = 10, torch.Generator().manual_seed(1)
    labels = (torch.rand(5, n_out, generator=g) > 0.5).float()

    def part(mels, mix, rows, main):
        k = len(rows)
        return {
            "mel": mels, "mix": mix, "mix_domain": torch.full((len(mels),), int(main)),
            "mix_n_valid": torch.tensor([n_out, 7, n_out][: len(mels)]),
            "frame_labels": labels[rows], "ref_idx": torch.tensor(rows) % 4, "target_idx": torch.tensor(rows) % 4,
            "clip_label": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])[rows], "has_strong": torch.full((k,), not main),
            "domain": torch.full((k,), int(main)), "n_valid": torch.tensor([n_out, 7, n_out])[mix],
            "is_main": torch.full((k,), int(main)),
        }

    main_mel, aux_mel = torch.randn(2, 2 * n_out, 16, generator=g), torch.randn(1, 2 * n_out, 16, generator=g)
    # main: mixture 1 holds samples 0 and 2, mixture 0 sample 1; aux: one mixture, two samples.
    # The aux mixture comes first, so the teachers' main mixtures are mel rows 1-2, not 0-1.
    main = part(main_mel, torch.tensor([1, 0, 1]), [0, 1, 2], True)
    aux = part(aux_mel, torch.tensor([0, 0]), [3, 4], False)
    packed = concat_batches(aux, main)
    assert packed["mix"].tolist() == [0, 0, 2, 1, 2]
    return ctx, packed


def test_packed_batch_gives_the_losses_of_repeated_mixtures():
    """A packed batch (each mixture once, samples pointing at it) trains on the same numbers as
    the same samples with their mixture repeated: task loss, pseudo labels, KD and replay."""
    from tsd_ray.train.worker import compute_losses

    ctx, packed = _packed_setup()
    repeated = {k: v for k, v in packed.items() if k not in ("mix", "mix_domain", "mix_n_valid")}
    repeated["mel"] = packed["mel"][packed["mix"]]
    with torch.no_grad():
        _, p_packed = compute_losses(ctx, packed)
        _, p_repeated = compute_losses(ctx, repeated)
    assert set(p_packed) == {"pseudo", "kd", "replay"}
    for k in p_packed:
        assert abs(p_packed[k] - p_repeated[k]) < 1e-5, (k, p_packed, p_repeated)


def test_mixing_pairs_mixtures_of_one_domain_and_label_kind_and_trains_on_the_joined_labels(monkeypatch):
    from tsd_ray.common.config import AugmentConfig, Config
    from tsd_ray.train import augment, losses
    from tsd_ray.train.worker import compute_losses

    seen = {}
    real_mix, real_pseudo = augment.mix_mixtures, losses.pseudo_labels

    def spy_mix(*args):
        seen["pair_key"] = args[5].tolist()
        return real_mix(*args)

    def spy_pseudo(frame_probs, clip_label):
        seen["pseudo_clip"] = clip_label.tolist()
        return real_pseudo(frame_probs, clip_label)

    monkeypatch.setattr(augment, "mix_mixtures", spy_mix)
    monkeypatch.setattr(losses, "pseudo_labels", spy_pseudo)
    ctx, packed = _packed_setup(Config(augment=AugmentConfig(mix_prob=1.0)))
    # Main samples 2-4: mixture 2 holds classes 0 (clip 1) and 2 (clip 1); mixture 1 class 1
    # (clip 0). Make mixture 1's sample a negative of class 2: mixed with mixture 2 (the only
    # other main mixture) it becomes a positive.
    packed["target_idx"] = packed["target_idx"].clone()
    packed["target_idx"][3] = 2
    assert packed["clip_label"][2:].tolist() == [1.0, 0.0, 1.0]
    with torch.no_grad():
        _, parts = compute_losses(ctx, packed)
    # the auxiliary mixture (source, strong) has a key of its own; the two main ones share one
    assert seen["pair_key"][1] == seen["pair_key"][2] != seen["pair_key"][0]
    assert seen["pseudo_clip"] == [1.0, 1.0, 1.0]  # the pseudo labels see the joined clip label
    assert set(parts) == {"pseudo", "kd", "replay"} and all(math.isfinite(v) for v in parts.values())
    ctx0, _ = _packed_setup()
    with torch.no_grad():
        compute_losses(ctx0, packed)
    assert seen["pseudo_clip"] == [1.0, 0.0, 1.0]  # without mixing: the sample's own label


def test_clip_loss_keeps_its_gradient_when_every_frame_saturates():
    """The w student's clip BCE (eq. 3) still pushes when a negative clip sits at logit ~20."""
    from tsd_ray.train.worker import compute_losses

    ctx = _replay_ctx(replay=False, adversarial=False)
    fc2 = ctx.core.student.fc2
    with torch.no_grad():
        fc2.weight.zero_()
        fc2.bias.fill_(20.0)  # every frame at logit 20: sigmoid is 1.0 in float32
    b = _replay_batch(torch.zeros(2, 10))
    b["clip_label"] = torch.zeros(4)  # negatives: the loss wants the logits down
    loss, parts = compute_losses(ctx, b)
    assert set(parts) == {"clip"}
    assert abs(parts["clip"] - 20.0) < 1e-2  # -log(1 - P), not the clamp's -log(1e-7) = 16.1
    loss.backward()
    assert torch.isfinite(fc2.bias.grad).all() and float(fc2.bias.grad) > 0.1


def test_phase_model_gives_the_discriminator_each_mixtures_frame_mask():
    """Packed batch: the discriminator sees one row of z per mixture and that mixture's mask."""
    from tsd_ray.train.worker import compute_losses

    ctx = _replay_ctx(replay=False, adversarial=True)
    disc = ctx.core.discriminator
    seen = []
    original = disc.forward

    def spy(z, mask=None):
        seen.append((tuple(z.shape), None if mask is None else mask.clone()))
        return original(z, mask)

    disc.forward = spy
    n_out, g = 10, torch.Generator().manual_seed(1)
    batch = {
        "mel": torch.randn(2, 2 * n_out, 16, generator=g),  # (U, T, F): two mixtures
        "mix": torch.tensor([0, 0, 1]),  # mixture 0 holds samples 0-1, mixture 1 sample 2
        "mix_n_valid": torch.tensor([n_out, 6]),
        "mix_domain": torch.tensor([1, 0]),
        "frame_labels": torch.zeros(3, n_out),
        "n_valid": torch.tensor([n_out, n_out, 6]),
        "ref_idx": torch.tensor([0, 1, 2]),
        "target_idx": torch.tensor([0, 1, 2]),
        "clip_label": torch.tensor([1.0, 0.0, 1.0]),
        "has_strong": torch.tensor([False, False, True]),
        "domain": torch.tensor([1, 1, 0]),
        "is_main": torch.tensor([1, 1, 0]),
    }
    _, parts = compute_losses(ctx, batch)
    assert "domain" in parts and len(seen) == 1
    shape, mask = seen[0]
    assert shape[0] == 2 and mask is not None and mask.shape == (2, n_out)
    assert mask[0].all() and mask[1].tolist() == [True] * 6 + [False] * 4


def test_tuned_selection_sees_a_detector_whose_probabilities_stay_below_one_half():
    """On real audio a useful detector can peak at 0.2-0.4: fixed 0.5 scores it 0, tuned does not."""
    import dataclasses

    import numpy as np

    from tsd_ray.common.config import EvalConfig
    from tsd_ray.common.types import Event
    from tsd_ray.metrics.scoring import ScoredSample
    from tsd_ray.train.validation import validation_scores

    rng = np.random.default_rng(0)
    samples = []
    for i in range(12):
        probs = rng.uniform(0.0, 0.08, 250).astype(np.float32)  # 10 s at 40 ms
        events = ()
        if i % 3:  # a positive: one event, where the detector says 0.3
            on = int(rng.integers(10, 150))
            probs[on:on + 50] = 0.3
            events = (Event(on * 0.04, (on + 50) * 0.04, "dog"),)
        samples.append(ScoredSample(f"s{i}", "dog", probs, events))
    fixed = validation_scores(samples, ["dog"], 0.04, EvalConfig())
    tuned = validation_scores(samples, ["dog"], 0.04, dataclasses.replace(EvalConfig(), selection="tuned"))
    assert fixed["val_event_f"] == 0.0 and fixed["val_score"] == 0.0
    assert tuned["val_event_f"] == 100.0 and tuned["val_score"] == 100.0
    assert tuned["val_threshold"] in (0.1, 0.2) and tuned["val_median_frames"] == 5
