"""Conditional network: a PANNs Cnn14-style reference encoder (docs/architecture.md, "Reference encoder (conditional network)").

Module names follow the public PANNs release (Kong et al. 2020, ``Cnn14_mAP=0.431.pth``) so its
state dict loads by name: ``bn0``, ``conv_block1`` .. ``conv_block6`` (each ``conv1``, ``conv2``,
``bn1``, ``bn2``) and ``fc1``. On top sit our own heads: ``fc_embedding`` (the reference
embedding ``e``) and ``fc_classifier`` (used only to pretrain the encoder as a classifier over
the reference pool). PANNs' ``spectrogram_extractor``/``logmel_extractor`` (we feed log-mels)
and ``fc_audioset`` (527 AudioSet classes) are not part of this model.

Note on PANNs features: PANNs was trained on 32 kHz audio, 64 mels (50-14,000 Hz) in dB
(``10 log10``). Our front end (22,050 Hz, natural log) gives a different scale; ``bn0``'s running
statistics absorb part of that, and fine-tuning (``encoder.finetune_trunk``) or at least
training the embedding head is still needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsd_ray.common.config import EncoderConfig

__all__ = [
    "Cnn14Encoder",
    "ConvBlock",
    "CosineClassifier",
    "EncoderOutput",
    "LoadReport",
    "PannsCheckpointError",
    "freeze",
    "load_panns_cnn14",
    "normalise_embedding",
    "repeat_fill",
]

#: Key prefixes of a public PANNs Cnn14 checkpoint that this encoder deliberately does not use.
PANNS_IGNORED_PREFIXES: tuple[str, ...] = (
    "spectrogram_extractor.",
    "logmel_extractor.",
    "fc_audioset.",
)


class EncoderOutput(NamedTuple):
    embedding: Tensor  # (B, E) reference embedding e
    logits: Tensor  # (B, n_classes) reference-class logits (pretraining head)


class ConvBlock(nn.Module):
    """PANNs ConvBlock: (conv3x3 -> BN -> ReLU) x 2, then average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor, pool_size: tuple[int, int] = (2, 2)) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        if pool_size != (1, 1):
            x = F.avg_pool2d(x, kernel_size=pool_size)
        return x


class CosineClassifier(nn.Module):
    """Normalised-softmax head (NormFace, Wang et al. 2017): logits ``s * cos(e, w_k)``.

    Its class scores depend only on the embedding's direction, the geometry the detector and
    the nearest-centroid check use (embeddings are L2-normalised before either sees them); a
    linear head can separate the training references by their norm and offset instead. The
    scale ``s`` is learnt (initial 10), so no temperature is tuned to a corpus.
    """

    def __init__(self, embedding_dim: int, n_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, embedding_dim))
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, e: Tensor) -> Tensor:
        return self.scale * F.normalize(e.float(), dim=-1) @ F.normalize(self.weight.float(), dim=-1).T


class Cnn14Encoder(nn.Module):
    """PANNs Cnn14 trunk + embedding and classifier heads.

    Args:
        cfg: ``channels`` (6 values; PANNs: 64, 128, 256, 512, 1024, 2048), ``embedding_dim``,
            ``dropout`` (after each conv block and before/after ``fc1``), ``classifier`` (the
            pretraining head: ``linear`` or ``cosine``, :class:`CosineClassifier`).
        n_mels: mel bins ``F`` of the input (``bn0`` normalises each bin; PANNs: 64).
        n_classes: classes of the pretraining head (reference-pool labels).

    ``forward(mel, n_valid)`` takes (B, T, F) log-mels (float32) and the valid frames of each
    (B,) (the rest is the build's silence floor), and returns :class:`EncoderOutput`. With
    ``cfg.fill == "repeat"`` each clip's valid frames are repeated over its window first
    (:func:`repeat_fill`); with ``"floor"`` the window is used as given and ``n_valid`` may be None.
    Inputs shorter than 32 frames (or with fewer than 32 mel bins) are padded with each clip's
    minimum value (the quietest level in the clip) so the five 2x2 poolings never reach size 0;
    the time pooling (max + mean over frames) then sees at least one frame.
    """

    n_pool_blocks = 5

    def __init__(self, cfg: EncoderConfig, n_mels: int, n_classes: int) -> None:
        super().__init__()
        if len(cfg.channels) != 6:
            raise ValueError(f"encoder.channels: Cnn14 has 6 conv blocks, got {cfg.channels}")
        if n_classes < 1:
            raise ValueError(f"Cnn14Encoder: n_classes must be >= 1, got {n_classes}")
        self.cfg = cfg
        self.n_mels = n_mels
        self.n_classes = n_classes
        self.bn0 = nn.BatchNorm2d(n_mels)
        c_in = 1
        for i, c_out in enumerate(cfg.channels, start=1):
            setattr(self, f"conv_block{i}", ConvBlock(c_in, c_out))
            c_in = c_out
        self.fc1 = nn.Linear(c_in, c_in, bias=True)
        self.fc_embedding = nn.Linear(c_in, cfg.embedding_dim)
        if cfg.classifier == "cosine":
            self.fc_classifier: nn.Module = CosineClassifier(cfg.embedding_dim, n_classes)
        elif cfg.classifier == "linear":
            self.fc_classifier = nn.Linear(cfg.embedding_dim, n_classes)
        else:
            raise ValueError(f"encoder.classifier: 'linear' or 'cosine', got {cfg.classifier!r}")
        if cfg.fill not in ("floor", "repeat"):
            raise ValueError(f"encoder.fill: 'floor' or 'repeat', got {cfg.fill!r}")
        self._init_weights()

    def _init_weights(self) -> None:
        # PANNs init: Xavier-uniform convs/linears, zero biases, BN weight 1 / bias 0.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, CosineClassifier):
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def blocks(self) -> list[ConvBlock]:
        return [getattr(self, f"conv_block{i}") for i in range(1, 7)]

    def trunk_parameters(self) -> list[nn.Parameter]:
        """Parameters of the PANNs-compatible trunk (``bn0``, conv blocks, ``fc1``)."""
        heads = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if id(p) not in heads]

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of our own heads (``fc_embedding``, ``fc_classifier``)."""
        return [*self.fc_embedding.parameters(), *self.fc_classifier.parameters()]

    def _pad_min(self, x: Tensor) -> Tensor:
        # x (B, T, F): pad T and F at the end up to 2**n_pool_blocks with the clip minimum.
        need = 2**self.n_pool_blocks
        pad_t = max(0, need - x.shape[1])
        pad_f = max(0, need - x.shape[2])
        if pad_t == 0 and pad_f == 0:
            return x
        fill = x.amin(dim=(1, 2), keepdim=True)  # (B, 1, 1)
        out = fill.expand(x.shape[0], x.shape[1] + pad_t, x.shape[2] + pad_f).clone()
        out[:, : x.shape[1], : x.shape[2]] = x
        return out

    def forward(self, mel: Tensor, n_valid: Tensor | None = None) -> EncoderOutput:
        """``mel`` (B, T, F) log-mel, ``n_valid`` (B,) its valid frames -> :class:`EncoderOutput`
        (embedding (B, E), logits (B, K)): :meth:`pooled` (the trunk) then :meth:`embed_pooled`."""
        embedding = self.embed_pooled(self.pooled(mel, n_valid))  # (B, E)
        logits = self.fc_classifier(embedding)  # (B, K)
        return EncoderOutput(embedding=embedding, logits=logits)

    def pooled(self, mel: Tensor, n_valid: Tensor | None = None) -> Tensor:
        """The trunk: ``mel`` (B, T, F) -> fill (``cfg.fill``) -> conv blocks -> max + mean over
        time (B, C6)."""
        if mel.ndim != 3 or mel.shape[2] != self.n_mels:
            raise ValueError(
                f"Cnn14Encoder: expected mel of shape (B, T, {self.n_mels}), got {tuple(mel.shape)}"
            )
        if self.cfg.fill == "repeat":
            if n_valid is None:
                raise ValueError("Cnn14Encoder: encoder.fill is 'repeat', so each clip's valid frames "
                                 "(n_valid) must be given with its log-mel")
            mel = repeat_fill(mel, n_valid)
        x = mel.unsqueeze(1)  # (B, 1, T, F)
        x = x.transpose(1, 3)  # (B, F, T, 1): bn0 normalises each mel bin, as in PANNs
        x = self.bn0(x)
        x = x.transpose(1, 3)  # (B, 1, T, F)
        x = self._pad_min(x.squeeze(1)).unsqueeze(1)  # (B, 1, T>=32, F>=32)
        p = self.cfg.dropout
        for i, block in enumerate(self.blocks):
            x = block(x, pool_size=(2, 2) if i < 5 else (1, 1))
            x = F.dropout(x, p=p, training=self.training)  # (B, C_i, T_i, F_i)
        x = x.mean(dim=3)  # (B, C6, T6): mean over frequency
        return x.amax(dim=2) + x.mean(dim=2)  # (B, C6): max + mean over time

    def embed_pooled(self, x: Tensor) -> Tensor:
        """The embedding head on the trunk's output: (B, C6) -> ``fc1`` -> ``fc_embedding`` (B, E)."""
        p = self.cfg.dropout
        x = F.dropout(x, p=p, training=self.training)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, p=p, training=self.training)
        return self.fc_embedding(x)


def repeat_fill(mel: Tensor, n_valid: Tensor) -> Tensor:
    """Each clip's first ``n_valid`` frames repeated to fill its window: (B, T, F) -> (B, T, F).

    ``n_valid`` (B,) is clamped to [1, T]; a clip that fills its window is returned as it is.
    """
    B, T, F_ = mel.shape
    n = torch.as_tensor(n_valid, device=mel.device).long().reshape(B, 1).clamp(1, T)
    idx = torch.arange(T, device=mel.device).unsqueeze(0) % n  # (B, T)
    return mel.gather(1, idx.unsqueeze(-1).expand(B, T, F_))


def normalise_embedding(e: torch.Tensor) -> torch.Tensor:
    """Unit L2 norm scaled by sqrt(E): every embedding has the same energy, O(1) entries."""
    return F.normalize(e, dim=-1) * (e.shape[-1] ** 0.5)


def freeze(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place: ``requires_grad=False`` on every parameter and eval mode
    (dropout off, BatchNorm uses and keeps its running statistics). Returns the module.

    A later ``model.train()`` on a parent module would switch it back to train mode; call
    ``freeze`` again after that, or keep frozen modules outside the trained module tree.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    return module


# --------------------------------------------------------------------------------------------
# Loading a public PANNs Cnn14 checkpoint
# --------------------------------------------------------------------------------------------


class PannsCheckpointError(ValueError):
    """A PANNs checkpoint does not fit the encoder (missing, unexpected or mis-shaped keys)."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_panns_cnn14` did."""

    path: str
    loaded: tuple[str, ...]  # encoder keys filled from the checkpoint
    ignored: tuple[str, ...]  # checkpoint keys deliberately skipped (extractors, fc_audioset)
    not_in_checkpoint: tuple[str, ...]  # encoder keys left at their init (our heads)


def _own_head_keys(encoder: Cnn14Encoder) -> set[str]:
    return {k for k in encoder.state_dict() if k.startswith(("fc_embedding.", "fc_classifier."))}


def load_panns_cnn14(encoder: Cnn14Encoder, path: str | Path) -> LoadReport:
    """Load a public PANNs Cnn14 checkpoint (e.g. ``Cnn14_mAP=0.431.pth``) into ``encoder``.

    The file may hold ``{"model": state_dict, ...}`` (the public release) or a bare state dict.
    Keys are matched by name. ``spectrogram_extractor.*``, ``logmel_extractor.*`` and
    ``fc_audioset.*`` are ignored; our heads (``fc_embedding``, ``fc_classifier``) keep their
    initial weights. BatchNorm ``num_batches_tracked`` may be absent (older PyTorch).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PannsCheckpointError: the trunk keys do not match; the message names the file and every
            missing, unexpected and mis-shaped key (with both shapes). Typical fix: set
            ``encoder.channels`` to the checkpoint's widths (PANNs Cnn14: 64, 128, 256, 512,
            1024, 2048) and ``frontend.n_mels`` to 64.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"PANNs checkpoint '{path}' does not exist (encoder.panns_checkpoint)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise PannsCheckpointError(f"PANNs checkpoint '{path}' could not be read: {exc}") from exc
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PannsCheckpointError(
            f"PANNs checkpoint '{path}' is not a state dict (expected a dict of tensors, or a "
            "dict with key 'model' holding one)"
        )
    # Checkpoints saved from DataParallel prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}

    own = encoder.state_dict()
    heads = _own_head_keys(encoder)
    ignored = sorted(k for k in state if k.startswith(PANNS_IGNORED_PREFIXES))
    ckpt = {k: v for k, v in state.items() if not k.startswith(PANNS_IGNORED_PREFIXES)}
    wanted = {k for k in own if k not in heads}
    optional = {k for k in wanted if k.endswith("num_batches_tracked")}

    missing = sorted(wanted - set(ckpt) - optional)
    unexpected = sorted(set(ckpt) - wanted)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(ckpt[k].shape)} vs encoder {tuple(own[k].shape)}"
        for k in wanted & set(ckpt)
        if tuple(ckpt[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        lines = [f"PANNs checkpoint '{path}' does not fit the Cnn14 encoder:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched))
        lines.append(
            f"  encoder.channels={tuple(encoder.cfg.channels)}, n_mels={encoder.n_mels}; the public "
            "Cnn14 needs channels (64, 128, 256, 512, 1024, 2048) and 64 mel bins"
        )
        raise PannsCheckpointError("\n".join(lines))

    loaded = sorted(wanted & set(ckpt))
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(ckpt[k].to(own[k].dtype))
    return LoadReport(
        path=str(path),
        loaded=tuple(loaded),
        ignored=tuple(ignored),
        not_in_checkpoint=tuple(sorted(heads | (wanted - set(ckpt)))),
    )
