"""Training step of the detector's Bi-GRU on a batch with padded rows: packed vs reversed-prefix.

Prints the time of one forward + backward of ``Detector._run_gru`` on CPU (one torch thread)
for a batch where every third row is padded, through ``pack_padded_sequence`` (the baseline,
what runs on CUDA) and through the in-place reversal the detector uses on CPU; the ratio is
measured in the same run. Also checks the two give the same output and gradients.

    .venv/bin/python -m bench.bench_gru_padding --batch 48 --frames 125
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from tsd_ray.common.config import load_config
from tsd_ray.models.detector import Detector


def _packed(det: Detector, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
    out, _ = det.gru(packed)
    return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])[0]


def _time(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--frames", type=int, default=125, help="output frames T' (125: 5-s clips)")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(args.config).detector
    det = Detector(cfg, 64, "none")
    width = det.gru.input_size
    h = torch.randn(args.batch, args.frames, width, requires_grad=True)
    lengths = torch.full((args.batch,), args.frames)
    lengths[::3] = torch.randint(1, args.frames, lengths[::3].shape)  # a third of the rows padded
    mask = torch.arange(args.frames)[None, :] < lengths[:, None]

    def step(run):
        def go():
            out = run()
            grads = torch.autograd.grad((out ** 2).sum(), [h, *det.gru.parameters()])
            return out, grads
        return go

    packed = step(lambda: _packed(det, h, lengths))
    reversed_ = step(lambda: det._run_gru_reversed(h, lengths, mask))
    (o1, g1), (o2, g2) = packed(), reversed_()
    diff = max(((a - b).abs().max() / a.abs().max().clamp(min=1e-12)).item() for a, b in zip([o1, *g1], [o2, *g2]))
    t_packed = _time(packed, args.repeats)
    t_rev = _time(reversed_, args.repeats)
    print(f"load average {os.getloadavg()[0]:.1f}; batch {args.batch} x {args.frames} frames, "
          f"{int((lengths < args.frames).sum())} rows padded; largest relative output/gradient difference {diff:.1e}")
    print(f"packed (baseline): {t_packed * 1000:.1f} ms   reversed prefix: {t_rev * 1000:.1f} ms   "
          f"ratio {t_packed / t_rev:.2f}x")


if __name__ == "__main__":
    main()
