"""Networks: encoder shapes and PANNs checkpoint mapping, detector outputs, discriminator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tsd_ray.common.config import DetectorConfig, DiscriminatorConfig, EncoderConfig
from tsd_ray.models import (
    Cnn14Encoder,
    Detector,
    DetectorOutput,
    Discriminator,
    EncoderOutput,
    PannsCheckpointError,
    freeze,
    load_panns_cnn14,
    output_frames,
)
from tsd_ray.models.encoder import repeat_fill
from tsd_ray.models.pooling import linsoft_pool

NARROW_ENC = EncoderConfig(channels=(4, 8, 8, 16, 16, 32), embedding_dim=16)
SMALL_DET = DetectorConfig(channels=(4, 8, 8, 16, 16), gru_hidden=8, fc_hidden=8, embedding_dim=16)

# ---------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("frames", [501, 201, 50, 7])
def test_encoder_shapes_long_and_short_inputs(frames):
    enc = Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5).eval()
    out = enc(torch.randn(3, frames, 64))
    assert isinstance(out, EncoderOutput)
    assert out.embedding.shape == (3, 16) and out.logits.shape == (3, 5)
    assert torch.isfinite(out.embedding).all()


def test_encoder_rejects_wrong_mel_bins():
    enc = Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5)
    with pytest.raises(ValueError, match=r"\(B, T, 64\)"):
        enc(torch.randn(2, 100, 40))


def test_encoder_module_names_follow_panns():
    enc = Cnn14Encoder(EncoderConfig(), n_mels=64, n_classes=3)
    names = set(enc.state_dict())
    for key, shape in _panns_trunk_shapes(EncoderConfig().channels, 64).items():
        assert key in names and tuple(enc.state_dict()[key].shape) == shape, key
    assert {"fc_embedding.weight", "fc_classifier.weight"} <= names


def test_freeze_sets_eval_and_no_grad():
    enc = freeze(Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5))
    assert not enc.training and all(not p.requires_grad for p in enc.parameters())
    x = torch.randn(2, 60, 64)
    assert torch.equal(enc(x).embedding, enc(x).embedding)  # dropout off


def test_cosine_classifier_scores_direction_only_and_learns_its_scale():
    enc = Cnn14Encoder(EncoderConfig(channels=NARROW_ENC.channels, embedding_dim=16, classifier="cosine"),
                       n_mels=64, n_classes=5)
    e = torch.randn(4, 16)
    head = enc.fc_classifier
    # the logits of e and of 7e are the same: only the embedding's direction counts
    assert torch.allclose(head(e), head(7.0 * e), atol=1e-5)
    # |logit| <= scale (a cosine times the scale), and the scale is a trained parameter
    assert (head(e).abs() <= head.scale + 1e-5).all()
    loss = head(e).logsumexp(1).mean()
    loss.backward()
    assert head.scale.grad is not None and head.weight.grad is not None
    # the linear head, by contrast, grows with the embedding's norm
    lin = Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5).fc_classifier
    assert not torch.allclose(lin(e), lin(7.0 * e))
    assert {"fc_classifier.weight", "fc_classifier.scale"} <= set(enc.state_dict())


def test_repeat_fill_repeats_each_clips_valid_frames():
    mel = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 2)
    out = repeat_fill(mel, torch.tensor([3, 7]))
    assert out[0, :, 0].tolist() == [0, 2, 4, 0, 2, 4, 0]  # frames 0-2, then again from frame 0
    assert torch.equal(out[1], mel[1])  # a clip that fills its window is left as it is
    assert torch.equal(repeat_fill(mel, torch.tensor([0, 99]))[0], mel[0, :1].expand(7, 2))  # clamped to [1, T]


def test_repeat_filling_encoder_sees_only_the_valid_frames():
    """With ``fill: repeat`` what lies past a clip's valid frames (silence floor, anything)
    does not change its embedding; with ``floor`` it does, and repeat needs the valid frames."""
    x = torch.randn(2, 80, 64)
    y = x.clone()
    y[:, 30:] = -13.8  # the same clips, the build's silence floor after 30 frames
    x[:, 30:] = torch.randn(2, 50, 64)
    n = torch.tensor([30, 30])
    rep = Cnn14Encoder(EncoderConfig(channels=NARROW_ENC.channels, embedding_dim=16, fill="repeat"),
                       n_mels=64, n_classes=5).eval()
    torch.testing.assert_close(rep(x, n).embedding, rep(y, n).embedding)
    flo = Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5).eval()
    assert not torch.allclose(flo(x, n).embedding, flo(y, n).embedding)
    with pytest.raises(ValueError, match="n_valid"):
        rep(x)


def test_encoder_rejects_unknown_classifier_and_fill():
    with pytest.raises(ValueError, match="encoder.classifier"):
        Cnn14Encoder(EncoderConfig(channels=NARROW_ENC.channels, embedding_dim=16, classifier="arc"),
                     n_mels=64, n_classes=5)
    with pytest.raises(ValueError, match="encoder.fill"):
        Cnn14Encoder(EncoderConfig(channels=NARROW_ENC.channels, embedding_dim=16, fill="zeros"),
                     n_mels=64, n_classes=5)


# ---------------------------------------------------------------------------- PANNs loading


def _panns_trunk_shapes(channels, n_mels=64) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the trunk of a public PANNs Cnn14 state dict with these widths."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{k}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn0", n_mels)
    c_in = 1
    for i, c in enumerate(channels, start=1):
        shapes[f"conv_block{i}.conv1.weight"] = (c, c_in, 3, 3)
        shapes[f"conv_block{i}.conv2.weight"] = (c, c, 3, 3)
        bn(f"conv_block{i}.bn1", c)
        bn(f"conv_block{i}.bn2", c)
        c_in = c
    shapes["fc1.weight"] = (c_in, c_in)
    shapes["fc1.bias"] = (c_in,)
    return shapes


def _write_panns_checkpoint(path, channels, *, wrap=True, seed=0, drop=(), reshape=None):
    """A checkpoint laid out like ``Cnn14_mAP=0.431.pth``: {'model': sd, 'iteration': ...} with
    the extractor and fc_audioset keys (PANNs: window 1024 -> 513 bins, 527 classes)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in _panns_trunk_shapes(channels).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g)
    sd["spectrogram_extractor.stft.conv_real.weight"] = torch.randn(513, 1, 1024, generator=g)
    sd["spectrogram_extractor.stft.conv_imag.weight"] = torch.randn(513, 1, 1024, generator=g)
    sd["logmel_extractor.melW"] = torch.rand(513, 64, generator=g)
    sd["fc_audioset.weight"] = torch.randn(527, channels[-1], generator=g)
    sd["fc_audioset.bias"] = torch.randn(527, generator=g)
    for k in drop:
        del sd[k]
    if reshape:
        k, shape = reshape
        sd[k] = torch.randn(shape, generator=g)
    torch.save({"iteration": 600000, "model": sd} if wrap else sd, path)
    return sd


@pytest.mark.parametrize("wrap", [True, False])
def test_load_panns_maps_keys_by_name(tmp_path, wrap):
    path = tmp_path / "Cnn14_mAP=0.431.pth"
    sd = _write_panns_checkpoint(path, NARROW_ENC.channels, wrap=wrap)
    enc = Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5)
    head_before = enc.fc_embedding.weight.detach().clone()
    report = load_panns_cnn14(enc, path)
    own = enc.state_dict()
    for k in _panns_trunk_shapes(NARROW_ENC.channels):
        assert torch.equal(own[k], sd[k]), k
    assert set(report.loaded) == set(_panns_trunk_shapes(NARROW_ENC.channels))
    assert set(report.ignored) == {
        "spectrogram_extractor.stft.conv_real.weight",
        "spectrogram_extractor.stft.conv_imag.weight",
        "logmel_extractor.melW",
        "fc_audioset.weight",
        "fc_audioset.bias",
    }
    assert "fc_embedding.weight" in report.not_in_checkpoint
    assert torch.equal(enc.fc_embedding.weight, head_before)  # our heads untouched


def test_load_panns_without_num_batches_tracked(tmp_path):
    path = tmp_path / "old.pth"
    keys = [
        k for k in _panns_trunk_shapes(NARROW_ENC.channels) if k.endswith("num_batches_tracked")
    ]
    _write_panns_checkpoint(path, NARROW_ENC.channels, drop=keys)
    load_panns_cnn14(Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5), path)


def test_load_panns_wrong_shape_names_file_key_and_shapes(tmp_path):
    path = tmp_path / "bad.pth"
    _write_panns_checkpoint(path, NARROW_ENC.channels, reshape=("fc1.weight", (7, 7)))
    enc = Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5)
    before = enc.conv_block1.conv1.weight.detach().clone()
    with pytest.raises(PannsCheckpointError) as err:
        load_panns_cnn14(enc, path)
    msg = str(err.value)
    assert "bad.pth" in msg and "fc1.weight" in msg and "(7, 7)" in msg and "(32, 32)" in msg
    assert torch.equal(enc.conv_block1.conv1.weight, before)  # nothing half-loaded


def test_load_panns_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "partial.pth"
    _write_panns_checkpoint(path, NARROW_ENC.channels, drop=("conv_block6.conv2.weight",))
    sd = torch.load(path, weights_only=True)
    sd["model"]["att_block.fc.weight"] = torch.zeros(2)
    torch.save(sd, path)
    with pytest.raises(PannsCheckpointError, match="conv_block6.conv2.weight") as err:
        load_panns_cnn14(Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5), path)
    assert "att_block.fc.weight" in str(err.value) and "partial.pth" in str(err.value)


def test_load_panns_channel_mismatch_and_missing_file(tmp_path):
    path = tmp_path / "wide.pth"
    _write_panns_checkpoint(path, (8, 8, 8, 16, 16, 32))
    with pytest.raises(
        PannsCheckpointError, match=r"conv_block1.conv1.weight: checkpoint \(8, 1, 3, 3\)"
    ):
        load_panns_cnn14(Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5), path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_panns_cnn14(Cnn14Encoder(NARROW_ENC, n_mels=64, n_classes=5), tmp_path / "nope.pth")


def test_load_panns_full_public_shapes(tmp_path):
    """The real widths (64..2048, ~80 M parameters): keys and shapes of the public release."""
    channels = EncoderConfig().channels
    path = tmp_path / "Cnn14_mAP=0.431.pth"
    sd = _write_panns_checkpoint(path, channels)
    enc = Cnn14Encoder(EncoderConfig(), n_mels=64, n_classes=10)
    report = load_panns_cnn14(enc, path)
    assert len(report.loaded) == len(_panns_trunk_shapes(channels))
    assert torch.equal(enc.conv_block6.conv2.weight, sd["conv_block6.conv2.weight"])
    n_trunk = sum(p.numel() for p in enc.trunk_parameters())
    assert n_trunk == sum(
        sd[k].numel()
        for k in sd
        if not k.startswith(("spectro", "logmel", "fc_audio"))
        and "running" not in k
        and "num_batches" not in k
    )


# ---------------------------------------------------------------------------- detector


@pytest.mark.parametrize("frames", [501, 201])
@pytest.mark.parametrize("pooling", ["none", "linsoft"])
def test_detector_output_shapes(frames, pooling):
    det = Detector(SMALL_DET, n_mels=64, clip_pooling=pooling)
    out = det(torch.randn(2, frames, 64), torch.randn(2, 16))
    t_out = frames // 2
    assert isinstance(out, DetectorOutput)
    assert out.frame_logits.shape == (2, t_out) and out.frame_probs.shape == (2, t_out)
    assert out.clip_prob.shape == (2,)
    assert out.gru.shape == (2, t_out, 2 * SMALL_DET.gru_hidden)
    assert out.z.shape == (2, SMALL_DET.channels[-1], t_out, 2)  # 64 bins pooled 2^5 -> 2
    assert det.output_frames(frames) == output_frames(frames) == t_out


def test_output_frames_values():
    assert output_frames(501) == 250 and output_frames(201) == 100 and output_frames(1001) == 500


@pytest.mark.parametrize("block", [0, 2, 4])
def test_time_pool_block_anywhere_gives_t_over_2(block):
    cfg = DetectorConfig(**{**SMALL_DET.__dict__, "time_pool_block": block})
    out = Detector(cfg, n_mels=64, clip_pooling="none")(torch.randn(1, 501, 64), torch.randn(1, 16))
    assert out.frame_logits.shape == (1, 250)


def test_detector_clip_prob_linsoft_and_max():
    torch.manual_seed(0)
    mel, e = torch.randn(3, 101, 64), torch.randn(3, 16)
    mask = torch.ones(3, 50, dtype=torch.bool)
    mask[1, 30:] = False
    for pooling in ("none", "linsoft"):
        det = Detector(SMALL_DET, n_mels=64, clip_pooling=pooling).eval()
        out = det(mel, e, frame_mask=mask)
        if pooling == "linsoft":
            assert torch.allclose(out.clip_prob, linsoft_pool(out.frame_probs, mask))
            assert not torch.allclose(out.clip_prob[1], linsoft_pool(out.frame_probs[1:2])[0])
        else:
            assert out.clip_prob[1] == out.frame_probs[1, :30].max()
            assert torch.allclose(out.clip_prob, out.frame_probs.masked_fill(~mask, 0).amax(1))


def test_detector_padding_past_the_mask_does_not_reach_valid_frames():
    """The Bi-GRU skips padding: padding beyond the conv receptive field cannot leak backwards."""
    torch.manual_seed(0)
    det = Detector(SMALL_DET, n_mels=64, clip_pooling="linsoft").eval()
    e = torch.randn(1, 16)
    mel = torch.randn(1, 100, 64)  # 50 output frames, first 30 valid
    mask = torch.zeros(1, 50, dtype=torch.bool)
    mask[0, :30] = True
    other = mel.clone()
    # Output frame j sees input frames [2j-9, 2j+10]: input >= 70 cannot reach frames < 30
    # through the convolutions, only through the GRU's backward direction.
    other[:, 70:] = 20 * torch.randn(1, 30, 64)
    a, b = det(mel, e, frame_mask=mask), det(other, e, frame_mask=mask)
    assert torch.allclose(a.gru[0, :30], b.gru[0, :30], atol=1e-6)
    assert torch.allclose(a.frame_probs[0, :30], b.frame_probs[0, :30], atol=1e-6)
    assert a.clip_prob.item() == pytest.approx(b.clip_prob.item(), abs=1e-6)
    assert torch.count_nonzero(a.gru[0, 30:]) == 0  # padded frames: zero GRU features
    # Without the mask the same garbage does change the valid frames (the check can fail).
    leak = (det(mel, e).gru[0, :30] - det(other, e).gru[0, :30]).abs().max()
    assert leak > 1e-4
    bad = mask.clone()
    bad[0, 3] = False
    with pytest.raises(ValueError, match="prefix"):
        det(mel, e, frame_mask=bad)


def test_cpu_bi_gru_equals_the_packed_one_in_output_and_gradients():
    """On CPU the padded rows skip pack_padded_sequence (slow backward) for an exact twin."""
    torch.manual_seed(0)
    det = Detector(SMALL_DET, n_mels=64, clip_pooling="none").train()
    h = torch.randn(5, 40, det.gru.input_size, requires_grad=True)
    lengths = torch.tensor([40, 17, 1, 33, 40])
    mask = torch.arange(40)[None, :] < lengths[:, None]
    packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
    ref = nn.utils.rnn.pad_packed_sequence(det.gru(packed)[0], batch_first=True, total_length=40)[0]
    out = det._run_gru(h, mask)  # CPU tensors: the reversed-prefix path
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * weights).sum(), [h, *det.gru.parameters()])
    g_out = torch.autograd.grad((out * weights).sum(), [h, *det.gru.parameters()])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # sums over frames: float order
    assert torch.count_nonzero(out[~mask]) == 0  # padded frames stay zero
    assert g_out[0][~mask].abs().max() == 0  # and feed nothing back


def test_grouped_detector_equals_repeating_each_mixture():
    """groups: the CNN runs once per mixture; the result is the same as repeating its rows."""
    torch.manual_seed(0)
    det = Detector(SMALL_DET, n_mels=64, clip_pooling="linsoft").eval()  # BN/dropout fixed
    mel = torch.randn(3, 60, 64)
    groups = torch.tensor([2, 0, 0, 2, 1, 2])  # 6 samples of 3 mixtures, in any order
    emb = torch.randn(6, SMALL_DET.embedding_dim)
    mask = torch.arange(30)[None, :] < torch.tensor([30, 12, 12, 30, 21, 30])[:, None]
    grouped = det(mel, emb, mask, groups)
    assert grouped.z.shape[0] == 3  # the CNN's output: one row per mixture
    weights = torch.randn(6, 30)
    g_grouped = torch.autograd.grad((grouped.frame_logits * weights).sum(), list(det.parameters()))
    repeated = det(mel[groups], emb, mask)
    g_repeated = torch.autograd.grad((repeated.frame_logits * weights).sum(), list(det.parameters()))
    for name in ("frame_logits", "clip_prob", "gru"):
        torch.testing.assert_close(getattr(grouped, name), getattr(repeated, name))
    torch.testing.assert_close(grouped.z[groups], repeated.z)
    for a, b in zip(g_grouped, g_repeated):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # sums in another order
    assert any(float(g.abs().sum()) > 0 for g in g_grouped[:3])  # the conv weights do learn
    with pytest.raises(ValueError, match="embedding"):  # one embedding per sample, not per mixture
        det(mel, torch.randn(3, SMALL_DET.embedding_dim), None, groups)


def test_detector_rejects_bad_inputs():
    det = Detector(SMALL_DET, n_mels=64, clip_pooling="none")
    with pytest.raises(ValueError, match="embedding"):
        det(torch.randn(2, 100, 64), torch.randn(2, 5))
    with pytest.raises(ValueError, match="clip_pooling"):
        Detector(SMALL_DET, n_mels=64, clip_pooling="max")  # type: ignore[arg-type]


def test_paper_size_parameter_count():
    det = Detector(DetectorConfig(), n_mels=64, clip_pooling="linsoft")
    n = sum(p.numel() for p in det.parameters())
    assert 5e6 < n < 8e6  # paper-size CRNN, same order as the reference (8.5 M)


# ---------------------------------------------------------------------------- discriminator


def test_discriminator_shape_any_length():
    disc = Discriminator(DiscriminatorConfig(channels=(8, 8, 8)), in_channels=16)
    for t_out in (250, 100, 3):
        assert disc(torch.randn(4, 16, t_out, 2)).shape == (4,)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in disc.modules())
    n_fc = sum(isinstance(m, nn.Linear) for m in disc.modules())
    assert (n_conv, n_fc) == (3, 1)


@pytest.mark.parametrize("n_valid", [1, 2, 7, 8, 13])
def test_discriminator_ignores_frames_beyond_the_mask(n_valid):
    """A clip's domain logit is the same alone and padded with zeros or garbage behind its mask."""
    torch.manual_seed(0)
    disc = Discriminator(DiscriminatorConfig(channels=(8, 8, 8)), in_channels=16).eval()
    clip = torch.randn(1, 16, n_valid, 2)  # (1, C, T', F')
    alone = disc(clip)
    assert torch.allclose(disc(clip, torch.ones(1, n_valid, dtype=torch.bool)), alone, atol=1e-6)
    t_pad = 20
    mask = (torch.arange(t_pad) < n_valid)[None, :]  # (1, T')
    for fill in (torch.zeros(1, 16, t_pad - n_valid, 2), 30.0 * torch.randn(1, 16, t_pad - n_valid, 2)):
        padded = torch.cat([clip, fill], dim=2)  # (1, C, 20, F')
        assert torch.allclose(disc(padded, mask), alone, atol=1e-5), n_valid
    # in a batch, each row by its own mask
    batch = torch.cat([torch.cat([clip, 5.0 * torch.ones(1, 16, t_pad - n_valid, 2)], 2), torch.randn(1, 16, t_pad, 2)])
    masks = torch.stack([mask[0], torch.ones(t_pad, dtype=torch.bool)])
    out = disc(batch, masks)
    assert torch.allclose(out[0], alone[0], atol=1e-5) and torch.allclose(out[1], disc(batch[1:])[0], atol=1e-6)
    with pytest.raises(ValueError, match="Discriminator: mask"):
        disc(batch, masks[:, :-1])

