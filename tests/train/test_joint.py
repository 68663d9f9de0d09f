"""Joint fine-tuning of the encoder with the detector (encoder.joint), without Ray."""

import copy

import pytest
import torch

from tsd_ray.common.config import Config, DetectorConfig, EncoderConfig
from tsd_ray.models import checkpoint as ckpt
from tsd_ray.models.detector import Detector
from tsd_ray.models.encoder import Cnn14Encoder, normalise_embedding
from tsd_ray.train.joint import LiveReferences, pool_embeddings

ENC = EncoderConfig(channels=(4, 4, 8, 8, 8, 8), embedding_dim=6, dropout=0.2)
DET = DetectorConfig(channels=(4, 4, 8, 8, 8), gru_hidden=8, fc_hidden=8, embedding_dim=6, dropout=0.0)


def _encoder_and_pool(n=5, fill="floor"):
    torch.manual_seed(0)
    enc = Cnn14Encoder(EncoderConfig(**{**ENC.__dict__, "fill": fill}), 16, n_classes=4)
    with torch.no_grad():  # BatchNorm statistics away from their init, as after pretraining
        enc.bn0.running_mean.uniform_(-1, 1)
        enc.conv_block1.bn1.running_var.uniform_(0.5, 2)
    return enc, torch.randn(n, 40, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fill", ["floor", "repeat"])
@pytest.mark.parametrize("mode", ["head", "all"])
def test_live_references_start_from_the_frozen_encoders_table(mode, fill):
    """Before a step, the live encoder gives the pool the embeddings the run's table holds
    (with ``fill: repeat``, from each reference's own valid frames)."""
    enc, mels = _encoder_and_pool(fill=fill)
    n_valid = torch.tensor([40, 12, 25, 1, 33])
    live = LiveReferences(copy.deepcopy(enc), mels, mode, n_valid).train()
    with torch.no_grad():
        expected = normalise_embedding(enc.eval()(mels, n_valid).embedding.float())  # what embed_references writes
    torch.testing.assert_close(pool_embeddings(enc, mels, n_valid), expected)
    torch.testing.assert_close(live.table(), expected)
    assert live.training  # table() put the training mode back
    with torch.no_grad():  # a batch of rows, each with its own valid frames
        torch.testing.assert_close(live.eval()(torch.tensor([3, 1])), expected[[3, 1]])


@pytest.mark.parametrize("mode", ["head", "all"])
def test_joint_trains_what_its_mode_names_and_never_the_classifier(mode):
    enc, mels = _encoder_and_pool()
    live = LiveReferences(enc, mels, mode).train()
    live(torch.tensor([0, 3, 3, 1])).pow(2).mul(torch.randn(4, 6)).sum().backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if n.startswith(("fc1.", "fc_embedding.")))
    assert all(grads[n] is None for n in grads if n.startswith("fc_classifier."))
    trunk = [n for n in grads if n.startswith(("bn0.", "conv_block"))]
    if mode == "head":
        assert all(grads[n] is None for n in trunk)
        assert {id(p) for p in live.trainable()} == {id(p) for m in (enc.fc1, enc.fc_embedding) for p in m.parameters()}
    else:
        assert grads["conv_block1.conv1.weight"].abs().sum() > 0


class _Recording(Detector):
    """A teacher that remembers the embeddings it was given."""

    def forward(self, mel, embedding, frame_mask=None, groups=None):
        self.seen = embedding.detach().clone()
        return super().forward(mel, embedding, frame_mask, groups)


def _joint_ctx(tmp_path):
    """_packed_setup's phase (pseudo labels + KD + replay) with a jointly fine-tuned encoder and
    teachers that carry their own reference tables."""
    from test_worker_units import _packed_setup

    from tsd_ray.models.encoder import freeze
    from tsd_ray.train.worker import PhaseModel

    ctx, packed = _packed_setup(Config(encoder=EncoderConfig(joint="head")))
    enc, _ = _encoder_and_pool()
    live = LiveReferences(enc, torch.randn(4, 40, 16), "head").train()
    ctx.core = ctx.model = PhaseModel(ctx.core.student, None, ctx.core.projector, live)
    ctx.live = live
    ctx.kd_teacher, ctx.pseudo_teacher = freeze(_Recording(DET, 16, "none")), freeze(_Recording(DET, 16, "linsoft"))
    ctx.teacher_tables = {"kd": torch.randn(4, 6), "pseudo": torch.randn(4, 6)}
    return ctx, packed


def test_a_joint_step_trains_the_encoder_and_each_teacher_reads_its_own_table(tmp_path):
    from tsd_ray.train.worker import compute_losses

    ctx, packed = _joint_ctx(tmp_path)
    loss, parts = compute_losses(ctx, packed)
    assert set(parts) == {"pseudo", "kd", "replay"}
    loss.backward()
    assert ctx.live.encoder.fc_embedding.weight.grad.abs().sum() > 0  # the detector loss reaches the encoder
    main_rows = packed["ref_idx"][packed["is_main"].bool()]  # fixed references: the rows are the ref_idx
    torch.testing.assert_close(ctx.kd_teacher.seen, ctx.teacher_tables["kd"][main_rows])
    torch.testing.assert_close(ctx.pseudo_teacher.seen, ctx.teacher_tables["pseudo"][main_rows])


def test_the_student_file_carries_its_encoder_and_detection_bundles_that_one(tmp_path):
    from tsd_ray.train.worker import _student_payload

    ctx, _ = _joint_ctx(tmp_path)
    pretrained = ckpt.model_payload("encoder", ENC, Cnn14Encoder(ENC, 16, 4), n_mels=16, classes=list("abcd"),
                                    meta={"frontend": {"n_mels": 16}})
    ckpt.save_payload(pretrained, str(tmp_path / "pretrained.pt"))
    ctx.encoder_base = {k: v for k, v in pretrained.items() if k != "state_dict"}
    with torch.no_grad():
        ctx.live.encoder.fc_embedding.weight.add_(1.0)  # "fine-tuned": differs from the pretrained one
    ctx.best_encoder = copy.deepcopy(ctx.live.encoder.state_dict())
    ctx.manifest = {"frontend": {"n_mels": 16}, "classes": list("abcd")}
    ctx.cfg = Config(detector=DET, encoder=EncoderConfig(joint="head"))
    payload = _student_payload(ctx, ctx.core.student.state_dict(), {"val_score": 1.0})
    uri = str(tmp_path / "student.pt")
    ckpt.save_payload(payload, uri)
    assert payload["encoder"]["meta"]["fine_tuned_in"] == "p"
    loaded = ckpt.load_encoder(uri)  # the student's own encoder, weights as at its best epoch
    torch.testing.assert_close(loaded.fc_embedding.weight, ctx.best_encoder["fc_embedding.weight"])
    pp = {"threshold": 0.5, "median_frames": 1, "fill_gap_frames": 5, "min_event_frames": 3}
    out = ckpt.export_detector(uri, str(tmp_path / "pretrained.pt"), pp, str(tmp_path / "detector.pt"))
    bundle = ckpt.load_payload(out)
    torch.testing.assert_close(bundle["encoder"]["state_dict"]["fc_embedding.weight"],
                               ctx.best_encoder["fc_embedding.weight"])
    assert bundle["meta"]["encoder_uri"] == uri
    # no encoder needs naming for it; a student trained on the run's table must name one
    from tsd_ray.apps.detect_model import DetectError, load_detector

    det = load_detector(uri, device="cpu")
    torch.testing.assert_close(det.encoder.fc_embedding.weight, ctx.best_encoder["fc_embedding.weight"])
    # the bundle keeps the whole tuned post-processing, gap filling and minimum length too
    assert load_detector(out, device="cpu").postprocessing.to_dict() == pp
    with pytest.raises(ckpt.CheckpointError, match="fill_gap_frames"):
        ckpt.export_detector(uri, None, {**pp, "fill_gap_frames": -1}, str(tmp_path / "bad.pt"))
    ckpt.export_detector(uri, None, {"threshold": 0.5, "median_frames": 1}, str(tmp_path / "detector2.pt"))
    plain = {k: v for k, v in payload.items() if k != "encoder"}
    ckpt.save_payload(plain, str(tmp_path / "plain.pt"))
    with pytest.raises(ckpt.CheckpointError, match="--encoder"):
        ckpt.export_detector(str(tmp_path / "plain.pt"), None, {"threshold": 0.5, "median_frames": 1},
                             str(tmp_path / "detector3.pt"))
    with pytest.raises(DetectError, match="--encoder"):
        load_detector(str(tmp_path / "plain.pt"), device="cpu")


def test_tune_trials_share_one_pretrained_encoder_whatever_their_joint_setting():
    """The joint keys act after pretraining: trials that differ only there share the encoder."""
    from tsd_ray.common.config import load_config
    from tsd_ray.experiments.tune_trial import encoder_key

    off = encoder_key(load_config("tiny"), "features")
    assert encoder_key(load_config("tiny", ["encoder.joint=head", "encoder.joint_lr_scale=0.5"]), "features") == off
    assert encoder_key(load_config("tiny", ["encoder.epochs=3"]), "features") != off
