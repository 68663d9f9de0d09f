"""Detection network shared by the f and w students (paper §4; docs/architecture.md, "Detection network and the two students").

``mel`` (B, T, F) -> 5 conv blocks (conv3x3-BN-ReLU + average pooling; frequency pooled by
``freq_pool[i]`` in block ``i`` (never below one bin), time halved once at block
``time_pool_block``) -> ``z`` (B, C, T', F'),
``T' = T // 2`` (40 ms frames at 50 input frames/s) -> flatten ``C x F'`` per frame -> concat the
reference embedding ``e`` on every frame -> 1 Bi-GRU layer -> FC-ReLU-dropout -> FC(1) -> frame
logits.

* f student: ``Detector(cfg, n_mels, "none")``; trained on frame logits (eq. 2, eq. 7).
* w student: ``Detector(cfg, n_mels, "linsoft")``; ``clip_prob`` is linear-softmax pooling over
  the valid frames (eq. 3).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsd_ray.common.config import DetectorConfig
from tsd_ray.models.pooling import linsoft_pool

__all__ = ["ClipPooling", "Detector", "DetectorOutput", "output_frames"]

ClipPooling = Literal["none", "linsoft"]

#: Total time pooling of the detector: T' = T // TIME_POOL.
TIME_POOL = 2


def output_frames(n_input_frames: int) -> int:
    """Output frames ``T'`` for ``T`` input frames: ``T // 2`` (501 -> 250; 201 -> 100)."""
    return int(n_input_frames) // TIME_POOL


class DetectorOutput(NamedTuple):
    frame_logits: Tensor  # (B, T') logits of "target active" per 40 ms frame
    frame_probs: Tensor  # (B, T') sigmoid(frame_logits)
    clip_prob: Tensor  # (B,) LinSoft ("linsoft") or max ("none") over valid frames, float32
    gru: Tensor  # (B, T', 2H) Bi-GRU output (KD features)
    z: Tensor  # (U, C, T', F') CNN features before the embedding is joined (discriminator input),
    # one row per row of ``mel`` (per mixture when ``groups`` is given)


class Detector(nn.Module):
    """CRNN detection network conditioned on a reference embedding.

    Args:
        cfg: channels of the 5 conv blocks, ``time_pool_block``, ``gru_hidden``, ``fc_hidden``,
            ``embedding_dim`` (must equal the encoder's), ``dropout``.
        n_mels: mel bins ``F`` of the input.
        clip_pooling: ``"linsoft"`` (w student) or ``"none"`` (f student). For ``"none"`` the
            network has no clip-level output of its own; ``clip_prob`` is then the maximum frame
            probability over valid frames (handy for clip-level metrics, not a training target).
    """

    def __init__(self, cfg: DetectorConfig, n_mels: int, clip_pooling: ClipPooling) -> None:
        super().__init__()
        if clip_pooling not in ("none", "linsoft"):
            raise ValueError(
                f"Detector: clip_pooling must be 'none' or 'linsoft', got {clip_pooling!r}"
            )
        if len(cfg.channels) != 5:
            raise ValueError(f"detector.channels: expected 5 values, got {cfg.channels}")
        if len(cfg.freq_pool) != 5 or min(cfg.freq_pool) < 1:
            raise ValueError(f"detector.freq_pool: expected 5 values >= 1, got {cfg.freq_pool}")
        if not 0 <= cfg.time_pool_block < 5:
            raise ValueError(f"detector.time_pool_block must be in 0..4, got {cfg.time_pool_block}")
        if n_mels < 1:
            raise ValueError(f"Detector: n_mels must be >= 1, got {n_mels}")
        self.cfg = cfg
        self.n_mels = n_mels
        self.clip_pooling: ClipPooling = clip_pooling

        blocks: list[nn.Module] = []
        self.pool_sizes: list[tuple[int, int]] = []
        c_in, f = 1, n_mels
        for i, c_out in enumerate(cfg.channels):
            pool_t = TIME_POOL if i == cfg.time_pool_block else 1
            pool_f = max(1, min(cfg.freq_pool[i], f))  # never pool below one bin
            f //= pool_f
            self.pool_sizes.append((pool_t, pool_f))
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                    nn.AvgPool2d((pool_t, pool_f)) if (pool_t, pool_f) != (1, 1) else nn.Identity(),
                )
            )
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c_in  # C of z
        self.out_freq = f  # F' of z
        self.gru = nn.GRU(
            input_size=c_in * f + cfg.embedding_dim,
            hidden_size=cfg.gru_hidden,
            num_layers=1,
            batch_first=True,
            bidirectional=True,
        )
        self.fc1 = nn.Linear(2 * cfg.gru_hidden, cfg.fc_hidden)
        self.fc2 = nn.Linear(cfg.fc_hidden, 1)
        self.gru_dim = 2 * cfg.gru_hidden

    def forward(
        self,
        mel: Tensor,
        embedding: Tensor,
        frame_mask: Tensor | None = None,
        groups: Tensor | None = None,
    ) -> DetectorOutput:
        """Frame-level detection of the reference's class in a mixture.

        Args:
            mel: (B, T, F) log-mel of the mixture, T >= 2; with ``groups``, (U, T, F): each
                mixture once.
            embedding: (B, E) reference embedding.
            frame_mask: optional (B, T') bool, True on valid output frames. Valid frames must
                form a prefix of each row (padding at the end); the Bi-GRU then ignores the
                padding (packed sequence) and ``clip_prob`` pools over valid frames only.
            groups: optional (B,) long, the ``mel`` row of each sample. The CNN does not see
                the reference, so samples of one mixture (one per target class) share its
                output: it runs once per mixture and is then indexed per sample. The same
                numbers as repeating the mixture's rows, at a fraction of the convolutions.
        """
        if mel.ndim != 3 or mel.shape[2] != self.n_mels:
            raise ValueError(
                f"Detector: expected mel (B, T, {self.n_mels}), got {tuple(mel.shape)}"
            )
        if mel.shape[1] < TIME_POOL:
            raise ValueError(
                f"Detector: need at least {TIME_POOL} input frames, got {mel.shape[1]}"
            )
        n_rows = mel.shape[0] if groups is None else groups.shape[0]
        if embedding.shape != (n_rows, self.cfg.embedding_dim):
            raise ValueError(
                f"Detector: expected embedding ({n_rows}, {self.cfg.embedding_dim}), "
                f"got {tuple(embedding.shape)}"
            )
        x = mel.unsqueeze(1)  # (U, 1, T, F)
        for block in self.blocks:
            x = block(x)  # (U, C_i, T_i, F_i)
        z = x  # (U, C, T', F'): per mixture row of ``mel``
        zs = z if groups is None else z.index_select(0, groups.to(z.device))  # (B, C, T', F')
        b, c, t_out, f_out = zs.shape
        frames = zs.permute(0, 2, 1, 3).reshape(b, t_out, c * f_out)  # (B, T', C*F')
        frames = F.dropout(frames, p=self.cfg.dropout, training=self.training)
        e = embedding.to(frames.dtype).unsqueeze(1).expand(b, t_out, embedding.shape[1])
        h = torch.cat([frames, e], dim=-1)  # (B, T', C*F' + E)

        mask = None
        if frame_mask is not None:
            if frame_mask.shape != (b, t_out):
                raise ValueError(
                    f"Detector: frame_mask {tuple(frame_mask.shape)} does not match output frames "
                    f"({b}, {t_out}) for T={mel.shape[1]}"
                )
            mask = frame_mask.to(device=h.device, dtype=torch.bool)
        gru = self._run_gru(h, mask)  # (B, T', 2H)

        y = F.dropout(F.relu(self.fc1(gru)), p=self.cfg.dropout, training=self.training)
        frame_logits = self.fc2(y).squeeze(-1)  # (B, T')
        frame_probs = torch.sigmoid(frame_logits)
        if self.clip_pooling == "linsoft":
            clip_prob = linsoft_pool(frame_probs, mask)  # (B,)
        else:
            p = frame_probs.float()
            if mask is not None:
                p = p.masked_fill(~mask, 0.0)
            clip_prob = p.amax(dim=-1)  # (B,)
        return DetectorOutput(frame_logits, frame_probs, clip_prob, gru, z)

    def _run_gru(self, h: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None or bool(mask.all()):
            out, _ = self.gru(h)
            return out
        lengths = mask.sum(dim=1)  # (B,)
        prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
        if not torch.equal(prefix, mask):
            raise ValueError("Detector: frame_mask must mark a prefix of valid frames per row")
        if bool((lengths == 0).any()):
            raise ValueError("Detector: a row of frame_mask has no valid frame")
        if h.device.type == "cpu":
            return self._run_gru_reversed(h, lengths, mask)
        packed = nn.utils.rnn.pack_padded_sequence(
            h, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
        return out  # (B, T', 2H), zeros on padded frames

    def _run_gru_reversed(self, h: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
        """The packed Bi-GRU's output without packing (CPU): the same numbers and gradients.

        The forward direction runs over the padded rows as they are (padding comes after the
        valid frames, so it cannot reach them). The backward direction runs forward over each
        row's valid prefix reversed in place, and its output is reversed back. On CPU a packed
        sequence steps through per-time-step slices whose backward zero-fills a full-size
        gradient at every step: with padded rows in the batch, a training step took 1.4x as
        long. cuDNN runs packed sequences natively, so other devices keep the packed path.
        """
        b, t, _ = h.shape
        steps = torch.arange(t, device=h.device)[None, :].expand(b, t)
        order = torch.where(mask, lengths[:, None] - 1 - steps, steps)  # (B, T') an involution
        hx = h.new_zeros(1, b, self.gru.hidden_size)
        w = self.gru._flat_weights  # [w_ih, w_hh, b_ih, b_hh] then the same for the reverse
        # what nn.GRU.forward calls, one direction at a time (bias=True, 1 layer, batch first)
        fwd = torch._VF.gru(h, hx, w[:4], True, 1, 0.0, self.training, False, True)[0]
        h_rev = torch.gather(h, 1, order[:, :, None].expand_as(h))
        bwd = torch._VF.gru(h_rev, hx, w[4:], True, 1, 0.0, self.training, False, True)[0]
        bwd = torch.gather(bwd, 1, order[:, :, None].expand_as(bwd))
        return torch.cat([fwd, bwd], dim=-1) * mask[:, :, None].to(fwd.dtype)

    def output_frames(self, n_input_frames: int) -> int:
        """Output frames for ``n_input_frames`` input frames (``T // 2``)."""
        return output_frames(n_input_frames)
