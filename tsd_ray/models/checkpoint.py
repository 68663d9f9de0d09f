"""Self-describing model files: the config that rebuilds a model travels with its weights.

A model file (``model.pt``) is a plain dict of primitives and tensors, loaded with
``torch.load(weights_only=True)`` so no arbitrary object is ever unpickled::

    {"format": "tsd_ray.model", "version": 1, "kind": "f" | "w" | "encoder" | "detector",
     "config": {...}, "n_mels": 64, "classes": [...], "state_dict": {...}, "meta": {...}}

``kind == "detector"`` is the exported bundle used by detection: the final student (f or w)
plus the frozen encoder (``encoder`` entry) plus the post-processing tuned on validation.
A student trained with joint fine-tuning (``encoder.joint``, :mod:`tsd_ray.train.joint`) also
carries an ``encoder`` entry: the whole encoder payload it was trained with.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from tsd_ray.common import storage
from tsd_ray.common.config import DetectorConfig, EncoderConfig, from_dict, to_dict
from tsd_ray.models.detector import Detector
from tsd_ray.models.encoder import Cnn14Encoder

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

    kind = kind or payload["kind"]
    if payload["kind"] not in ("f", "w"):
        raise CheckpointError(f"expected an f/w student checkpoint, got kind '{payload['kind']}'")
    cfg = from_dict(DetectorConfig, payload["config"], "detector")
    model = Detector(cfg, payload["n_mels"], STUDENT_POOLING[kind])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def build_encoder(payload: dict):
    if payload["kind"] != "encoder":
        raise CheckpointError(f"expected an encoder checkpoint, got kind '{payload['kind']}'")
    cfg = from_dict(EncoderConfig, payload["config"], "encoder")
    model = Cnn14Encoder(cfg, payload["n_mels"], len(payload["classes"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def load_student(uri: str, kind: str | None = None):
    return build_student(load_payload(uri), kind)


def own_encoder(payload: dict) -> dict | None:
    """The encoder payload a student model file carries (trained with ``encoder.joint``), else None."""
    enc = payload.get("encoder") if payload.get("kind") in STUDENT_POOLING else None
    return enc if isinstance(enc, dict) else None


def load_encoder(uri: str):
    """The encoder of an encoder model file, or the one a jointly fine-tuned student carries."""
    payload = load_payload(uri)
    return build_encoder(own_encoder(payload) or payload)


# --------------------------------------------------------------------------------------------
# Detector bundle (used by tsd_ray.apps.detect / jobs/detect.py)
# --------------------------------------------------------------------------------------------


def export_detector(student_model_uri: str, encoder_model_uri: str | None, postprocessing: dict, out_uri: str) -> str:
    """Bundle a trained student, its frozen encoder and the tuned post-processing into one file.

    A student trained with joint fine-tuning carries its own encoder, which is bundled instead
    of ``encoder_model_uri``'s (the pretrained one it started from; may then be None).

    The result (``kind == "detector"``) is all detection needs: the student's config and
    weights (top level, as in a student file, plus ``student_kind`` "f" or "w"), the encoder's
    whole payload under ``encoder``, the classes, the front end (``meta["frontend"]``) and
    ``postprocessing = {"threshold": float in [0, 1], "median_frames": odd int >= 1,
    "fill_gap_frames": int >= 0, "min_event_frames": int >= 0}`` (the last two optional; as tuned
    on validation by :func:`tsd_ray.evaluate.predict.evaluate_model`). Returns ``out_uri``.

    Raises :class:`CheckpointError` (naming the file) when a model file is missing, of the
    wrong kind or version, or when the student and encoder do not fit together.
    """
    student = load_payload(student_model_uri)
    if student["kind"] not in STUDENT_POOLING:
        raise CheckpointError(
            f"{student_model_uri}: expected an f/w student model file, got kind '{student['kind']}'"
        )
    if own_encoder(student) is not None:
        encoder, encoder_model_uri = own_encoder(student), student_model_uri
    elif encoder_model_uri is None:
        raise CheckpointError(
            f"{student_model_uri} carries no encoder of its own (it was trained with encoder.joint "
            "off): pass the encoder model.pt of its run (--encoder)"
        )
    else:
        encoder = load_payload(encoder_model_uri)
    if encoder["kind"] != "encoder":
        raise CheckpointError(
            f"{encoder_model_uri}: expected an encoder model file, got kind '{encoder['kind']}'"
        )
    s_dim = int(student["config"].get("embedding_dim", -1))
    e_dim = int(encoder["config"].get("embedding_dim", -2))
    if s_dim != e_dim:
        raise CheckpointError(
            f"{student_model_uri} expects {s_dim}-d reference embeddings but {encoder_model_uri} "
            f"gives {e_dim}-d ones; pair the student with the encoder of its own run"
        )
    if int(student["n_mels"]) != int(encoder["n_mels"]):
        raise CheckpointError(
            f"{student_model_uri} ({student['n_mels']} mels) and {encoder_model_uri} "
            f"({encoder['n_mels']} mels) were trained on different front ends"
        )
    frontend = student.get("meta", {}).get("frontend")
    if not frontend:
        raise CheckpointError(f"{student_model_uri}: the model file records no front end (meta.frontend)")
    enc_front = encoder.get("meta", {}).get("frontend")
    if enc_front and {k: v for k, v in enc_front.items() if k != "device"} != {
        k: v for k, v in frontend.items() if k != "device"
    }:
        raise CheckpointError(
            f"{student_model_uri} and {encoder_model_uri} were trained on different front ends; "
            "pair the student with the encoder of its own run"
        )
    try:  # the fields of tsd_ray.metrics.postprocess.PostProcessing (a layer beside this one)
        pp = {"threshold": float(postprocessing["threshold"]), "median_frames": int(postprocessing["median_frames"]),
              "fill_gap_frames": int(postprocessing.get("fill_gap_frames", 0)),
              "min_event_frames": int(postprocessing.get("min_event_frames", 0))}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"postprocessing must be {{'threshold': float, 'median_frames': int}} (optionally 'fill_gap_frames', "
            f"'min_event_frames': int), got {postprocessing!r}"
        ) from exc
    if (not 0.0 <= pp["threshold"] <= 1.0 or pp["median_frames"] < 1 or pp["median_frames"] % 2 == 0
            or pp["fill_gap_frames"] < 0 or pp["min_event_frames"] < 0):
        raise CheckpointError(
            f"postprocessing {pp}: threshold must be in [0, 1], median_frames an odd integer >= 1, "
            "fill_gap_frames and min_event_frames integers >= 0"
        )
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "detector",
        "student_kind": student["kind"],
        "config": student["config"],
        "n_mels": int(student["n_mels"]),
        "classes": list(student["classes"]),
        "state_dict": student["state_dict"],
        "meta": {**student.get("meta", {}), "student_uri": student_model_uri, "encoder_uri": encoder_model_uri},
        "encoder": encoder,
        "postprocessing": pp,
    }
    save_payload(payload, out_uri)
    return out_uri
