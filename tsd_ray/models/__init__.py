"""Networks of the two-student method: reference encoder, detector (f/w students), discriminator."""

from __future__ import annotations

from tsd_ray.models.detector import Detector, DetectorOutput, output_frames
from tsd_ray.models.discriminator import Discriminator, grad_reverse
from tsd_ray.models.encoder import (
    Cnn14Encoder,
    EncoderOutput,
    LoadReport,
    PannsCheckpointError,
    freeze,
    load_panns_cnn14,
)

__all__ = [
    "Cnn14Encoder",
    "Detector",
    "DetectorOutput",
    "Discriminator",
    "EncoderOutput",
    "LoadReport",
    "PannsCheckpointError",
    "freeze",
    "grad_reverse",
    "load_panns_cnn14",
    "output_frames",
]
