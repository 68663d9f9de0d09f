"""Joint fine-tuning of the reference encoder with the detector (``encoder.joint``).

With ``encoder.joint: off`` (the default) the pretrained encoder is frozen: the run embeds the
reference pool once (``embeddings.parquet``) and every phase looks its embeddings up. With
``head`` or ``all`` each detector phase trains the encoder too, by the phase's own loss:

* ``head``: the layers after the conv trunk (``fc1``, ``fc_embedding``). The trunk's pooled
  outputs of the reference pool are computed once when the phase starts, so a step costs a
  small MLP over the batch's references: affordable on CPU.
* ``all``: the whole encoder runs on the log-mels of the batch's references at every step and
  trains (BatchNorm included): an encoder step per detector step, for GPUs.

The encoder's learning rate is the phase's times ``encoder.joint_lr_scale``; its classifier
head (used only to pretrain) is frozen. The phase starts from the encoder its ``init`` student
carries (so fine-tuning continues down Algorithm 1's chain), else from the run's pretrained
encoder. The student's model file then carries its encoder (``payload["encoder"]``, a whole
encoder payload at the best epoch), which evaluation, teachers and ``jobs/detect.py`` use in
place of the run's table: a student is always paired with the encoder it was trained with.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from tsd_ray.models import checkpoint as ckpt
from tsd_ray.models.encoder import Cnn14Encoder, freeze, normalise_embedding

__all__ = ["JOINT_KEYS", "LiveReferences", "encoder_payload", "pool_embeddings", "teacher_embeddings"]

#: ``encoder`` keys that act after pretraining (left out of the shared encoder's key in Tune).
JOINT_KEYS = ("joint", "joint_lr_scale")


def encoder_payload(init_payload: dict | None, pretrained_uri: str | None, phase_name: str) -> dict:
    """The encoder a jointly fine-tuned phase starts from: its init student's own, else the run's
    pretrained one (``pretrained_uri``)."""
    own = ckpt.own_encoder(init_payload) if init_payload is not None else None
    if own is not None:
        return own
    if not pretrained_uri:
        raise ValueError(
            f"phase {phase_name}: encoder.joint is on but no pretrained encoder was passed to the "
            "phase (run_phase(..., encoder_uri=...)); run it through jobs/iterate.py, or set "
            "encoder.joint=off"
        )
    return ckpt.load_payload(pretrained_uri)


@torch.no_grad()
def pool_embeddings(encoder: Cnn14Encoder, mels: Tensor, n_valid: Tensor | None = None, batch: int = 64) -> Tensor:
    """Normalised embeddings (N, E) of the reference pool (``n_valid`` (N,): each clip's valid
    frames) by a frozen encoder, as the run's embedding table holds them
    (:func:`tsd_ray.train.encoder.embed_references`)."""
    was = encoder.training
    encoder.eval()
    out = torch.cat([normalise_embedding(encoder(mels[i:i + batch], _rows(n_valid, i, batch)).embedding.float())
                     for i in range(0, mels.shape[0], batch)])
    encoder.train(was)
    return out


class LiveReferences(nn.Module):
    """The reference pool's embeddings from an encoder that trains with the detector.

    ``forward(rows)`` gives the normalised embeddings (len(rows), E) of pool rows ``rows``,
    with gradients into the trainable part of ``encoder`` (see the module docstring for
    ``mode``). ``mels`` (N, T_ref, F): the pool in table order, ``n_valid`` (N,) each clip's
    valid frames (needed by an encoder with ``fill: repeat``). The pool's inputs are a plain
    attribute, not a buffer, so DDP does not broadcast them at every step; ``.to()`` moves them.
    """

    def __init__(self, encoder: Cnn14Encoder, mels: Tensor, mode: str, n_valid: Tensor | None = None):
        super().__init__()
        if mode not in ("head", "all"):
            raise ValueError(f"encoder.joint: expected 'off', 'head' or 'all', got {mode!r}")
        self.encoder = encoder
        self.mode = mode
        for p in encoder.fc_classifier.parameters():  # the pretraining head takes no part
            p.requires_grad_(False)
        if mode == "head":
            head = {id(p) for m in (encoder.fc1, encoder.fc_embedding) for p in m.parameters()}
            for p in encoder.parameters():
                if id(p) not in head:
                    p.requires_grad_(False)
            was = encoder.training
            encoder.eval()
            with torch.no_grad():
                self._inputs = torch.cat([encoder.pooled(mels[i:i + 64], _rows(n_valid, i, 64))
                                          for i in range(0, mels.shape[0], 64)])
            encoder.train(was)
            self._n_valid = None
        else:
            self._inputs = mels
            self._n_valid = None if n_valid is None else torch.as_tensor(n_valid).long()

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._inputs = fn(self._inputs)
        if self._n_valid is not None:
            self._n_valid = self._n_valid.to(self._inputs.device)
        return self

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def forward(self, rows: Tensor) -> Tensor:
        x = self._inputs[rows.to(self._inputs.device)]
        if self.mode == "all":
            n = None if self._n_valid is None else self._n_valid[rows.to(self._n_valid.device)]
            x = self.encoder.pooled(x, n)
        return normalise_embedding(self.encoder.embed_pooled(x).float())

    @torch.no_grad()
    def table(self) -> Tensor:
        """Embeddings (N, E) of the whole pool as validation sees them (eval mode)."""
        was = self.training
        self.eval()
        rows = torch.arange(self._inputs.shape[0], device=self._inputs.device)
        out = torch.cat([self(rows[i:i + 64]) for i in range(0, len(rows), 64)])
        self.train(was)
        return out


def teacher_embeddings(payload: dict, mels: np.ndarray | None, device,
                       n_valid: np.ndarray | None = None) -> Tensor | None:
    """A teacher's own reference table (N, E) when its model file carries an encoder, else None
    (the teacher was trained on the run's table). ``n_valid``: each clip's valid frames."""
    enc = ckpt.own_encoder(payload)
    if enc is None:
        return None
    encoder = freeze(ckpt.build_encoder(enc).to(device))
    n = None if n_valid is None else torch.as_tensor(n_valid, device=device)
    return pool_embeddings(encoder, torch.as_tensor(mels, device=device), n)


def _rows(n_valid: Tensor | None, start: int, batch: int) -> Tensor | None:
    return None if n_valid is None else n_valid[start:start + batch]
