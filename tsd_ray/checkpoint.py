"""Self-describing model files: the config that rebuilds a model travels with its weights.

A model file (``model.pt``) is a plain dict of primitives and tensors, loaded with
``torch.load(weights_only=True)`` so no arbitrary object is ever unpickled::

    {"format": "tsd_ray.model", "version": 1, "kind": "f" | "w" | "encoder" | "detector",
     "config": {...}, "n_mels": 64, "classes": [...], "state_dict": {...}, "meta": {...}}

``kind == "detector"`` is the exported bundle used by detection: the f student plus the frozen
encoder (``encoder`` entry) plus the post-processing tuned on validation.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from tsd_ray import storage
from tsd_ray.config import DetectorConfig, EncoderConfig, from_dict, to_dict

FORMAT = "tsd_ray.model"
VERSION = 1
STUDENT_POOLING = {"f": "none", "w": "linsoft"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not a tsd_ray model of a known version."""


def model_payload(kind: str, config: Any, model: torch.nn.Module, *, n_mels: int, classes=(), meta=None) -> dict:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": to_dict(config),
        "n_mels": int(n_mels),
        "classes": list(classes),
        "state_dict": state,
        "meta": dict(meta or {}),
    }


def save_payload(payload: dict, uri: str) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    storage.write_bytes_atomic(uri, buf.getvalue())


def load_payload(uri: str) -> dict:
    """Read and check a model file (local path or URI)."""
    try:
        blob = storage.read_bytes(uri)
    except (FileNotFoundError, OSError) as exc:
        raise CheckpointError(f"{uri}: checkpoint not found ({exc})") from exc
    try:
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{uri}: not a readable tsd_ray checkpoint ({type(exc).__name__}: {exc}); the file is "
            "corrupt or was not written by tsd_ray"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{uri}: not a tsd_ray model file (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{uri}: checkpoint format version {payload.get('version')} but this tsd_ray reads "
            f"version {VERSION}; use the tsd_ray release that trained it"
        )
    return payload


def build_student(payload: dict, kind: str | None = None):
    """Rebuild a Detector (f or w) from a payload, weights loaded, in eval mode."""
    from tsd_ray.models.detector import Detector

    kind = kind or payload["kind"]
    if payload["kind"] not in ("f", "w"):
        raise CheckpointError(f"expected an f/w student checkpoint, got kind '{payload['kind']}'")
    cfg = from_dict(DetectorConfig, payload["config"], "detector")
    model = Detector(cfg, payload["n_mels"], STUDENT_POOLING[kind])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def build_encoder(payload: dict):
    from tsd_ray.models.encoder import Cnn14Encoder

    if payload["kind"] != "encoder":
        raise CheckpointError(f"expected an encoder checkpoint, got kind '{payload['kind']}'")
    cfg = from_dict(EncoderConfig, payload["config"], "encoder")
    model = Cnn14Encoder(cfg, payload["n_mels"], len(payload["classes"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def load_student(uri: str, kind: str | None = None):
    return build_student(load_payload(uri), kind)


def load_encoder(uri: str):
    return build_encoder(load_payload(uri))
