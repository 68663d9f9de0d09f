"""Detection, the model: loading a detector (or a student + encoder) file, exporting the final
model of a finished run from its ledger. See :mod:`tsd_ray.apps.detect` for the steps."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from tsd_ray.common import storage
from tsd_ray.common.config import EvalConfig, FrontendConfig, from_dict
from tsd_ray.data.features import n_input_frames, output_hop_s, pick_device
from tsd_ray.experiments.final_model import Outcome, final_model
from tsd_ray.metrics.postprocess import PostProcessing
from tsd_ray.models import checkpoint as ckpt
from tsd_ray.models.encoder import freeze

DEFAULT_LABEL = "target"


class DetectError(ValueError):
    """A detection input (model, reference, recording, list) cannot be used; names the file."""


@dataclass(frozen=True, eq=False)
class LoadedDetector:
    """A ready-to-run detector: frozen student + encoder on ``device``, in eval mode."""

    student: torch.nn.Module
    encoder: torch.nn.Module
    frontend: FrontendConfig
    postprocessing: PostProcessing
    classes: tuple[str, ...]  # classes the model was trained with (student file)
    encoder_classes: tuple[str, ...]  # classes of the encoder's pretraining head
    student_kind: str  # "f" or "w"
    uri: str
    device: torch.device
    encoder_uri: str | None = None  # separate encoder file (plain student), None when bundled

    @property
    def output_hop_s(self) -> float:
        """Seconds per output frame (0.04 with the default front end)."""
        return output_hop_s(self.frontend)

    @property
    def window_frames(self) -> int:
        """Input frames of one window: ``clip_s`` of audio (10 s -> 501)."""
        return n_input_frames(self.frontend.clip_s, self.frontend)


def load_detector(
    uri: str,
    *,
    encoder_uri: str | None = None,
    postprocessing: PostProcessing | None = None,
    device: str | torch.device = "auto",
) -> LoadedDetector:
    """Load a detector file, or a plain f/w student file plus ``encoder_uri`` (not needed, and
    not used, for a student trained with ``encoder.joint``, which carries its own encoder).

    ``postprocessing`` overrides the one stored in the detector file; a plain student gets
    the :class:`~tsd_ray.common.config.EvalConfig` defaults (threshold 0.5, no median filter) unless
    given. Raises :class:`~tsd_ray.models.checkpoint.CheckpointError` (a missing, corrupt or
    other-version file, naming it) or :class:`DetectError`.
    """

    payload = ckpt.load_payload(uri)
    kind = payload.get("kind")
    if kind == "detector":
        student = ckpt.build_student({**payload, "kind": payload["student_kind"]})
        enc_payload = payload["encoder"]
        if encoder_uri:
            enc_payload = ckpt.load_payload(encoder_uri)
        pp = postprocessing or PostProcessing.from_dict(payload["postprocessing"])
        student_kind = str(payload["student_kind"])
    elif kind in ckpt.STUDENT_POOLING:
        own = ckpt.own_encoder(payload)
        if not encoder_uri and own is None:
            raise DetectError(
                f"{uri}: a plain {kind} student model file has no encoder inside; pass the encoder "
                "of its run (--encoder <run>-encoder/checkpoint_*/model.pt) or export a detector "
                "first (python jobs/detect.py export --run RUN_DIR --out detector.pt)"
            )
        student = ckpt.build_student(payload)
        # a student trained with encoder.joint carries the encoder it was trained with
        enc_payload = own if own is not None else ckpt.load_payload(encoder_uri)
        ev = EvalConfig()
        pp = postprocessing or PostProcessing(threshold=ev.threshold, median_frames=ev.median_frames,
                                              fill_gap_frames=ev.fill_gap_frames, min_event_frames=ev.min_event_frames)
        student_kind = str(kind)
    else:
        raise DetectError(
            f"{uri}: a '{kind}' model file cannot detect; give a detector file (jobs/detect.py export) "
            "or an f/w student model file with --encoder"
        )
    encoder = ckpt.build_encoder(enc_payload)
    if int(encoder.cfg.embedding_dim) != int(student.cfg.embedding_dim):
        raise DetectError(
            f"{uri}: the student expects {student.cfg.embedding_dim}-d embeddings but the encoder gives "
            f"{encoder.cfg.embedding_dim}-d ones; use the encoder of the student's own run"
        )
    front = (payload.get("meta") or {}).get("frontend")
    if not front:
        raise DetectError(f"{uri}: the model file records no front end (meta.frontend); re-export it")
    frontend = from_dict(FrontendConfig, front, "frontend")
    dev = pick_device(device) if isinstance(device, str) else device
    return LoadedDetector(
        student=freeze(student.to(dev)),
        encoder=freeze(encoder.to(dev)),
        frontend=frontend,
        postprocessing=pp,
        classes=tuple(payload.get("classes", ())),
        encoder_classes=tuple(enc_payload.get("classes", ())),
        student_kind=student_kind,
        uri=uri,
        device=dev,
        encoder_uri=encoder_uri,
    )


def export_from_run(run_dir: str, out_uri: str, *, recipe: str = "MS") -> str:
    """Export the final model of ``recipe`` (SS, WS, MS or an ablation name) of a finished run.

    Reads ``<run_dir>/ledger.json``: the encoder, the recipe's evaluation (its post-processing,
    tuned on validation) and its final student: the model that evaluation scored (recorded in
    the ledger, so the w student when ``method.final_student=best`` chose it). Ledgers written
    before evaluations recorded their model fall back to the best f by validation score among
    phase 4 and the loop iterations (the phase-3 w student when pseudo supervision was off).
    Returns ``out_uri``.
    """
    steps = read_ledger_steps(run_dir)
    if "encoder" not in steps:
        raise DetectError(f"{run_dir}: the ledger has no finished encoder step; finish the run first")
    ev_name = f"{recipe}-eval"
    if ev_name not in steps:
        have = sorted(k[: -len("-eval")] for k in steps if k.endswith("-eval") and "-eval-" not in k)
        raise DetectError(
            f"{run_dir}: no finished evaluation '{ev_name}' in the ledger (recipes evaluated: {have}); "
            "pick one with --recipe"
        )
    ev = steps[ev_name]
    model = ev.get("model_uri") or _final_model(steps, recipe, run_dir)
    return ckpt.export_detector(model, steps["encoder"]["model_uri"], ev["postprocessing"], out_uri)


def _final_model(steps: dict[str, dict], recipe: str, run_dir: str) -> str:
    """The final model of an older ledger whose evaluation did not record it: Algorithm 1's
    rule (:func:`tsd_ray.experiments.final_model.final_model`, f student) over its phases."""
    if recipe in steps and "model_uri" in steps[recipe]:  # SS, WS: one phase
        return steps[recipe]["model_uri"]
    phases = [(f"{recipe}-p3_w_target", "w"), (f"{recipe}-p4_f_target", "f")]
    for k in range(1, 1000):
        if f"{recipe}-it{k}_w" not in steps and f"{recipe}-it{k}_f" not in steps:
            break
        phases += [(f"{recipe}-it{k}_w", "w"), (f"{recipe}-it{k}_f", "f")]
    outcomes = [Outcome(n, student, "target_val", float(steps[n]["best_val_score"]), steps[n]["model_uri"])
                for n, student in phases if n in steps]
    chosen = final_model(outcomes, pseudo=any(o.student == "f" for o in outcomes), final_student="f")
    if chosen is None:
        raise DetectError(f"{run_dir}: cannot find the final model of recipe '{recipe}' in the ledger")
    return chosen.model_uri


def read_ledger_steps(run_dir: str) -> dict[str, dict]:
    """The ``steps`` of ``<run_dir>/ledger.json`` (``run_dir`` may also be the ledger file)."""
    uri = run_dir if str(run_dir).endswith(".json") else storage.join(run_dir, "ledger.json")
    try:
        data = storage.read_json(uri)
    except (FileNotFoundError, OSError) as exc:
        raise DetectError(f"{uri}: no run ledger here ({exc}); give the run's folder (<storage>/<run name>)") from exc
    except json.JSONDecodeError as exc:
        raise DetectError(f"{uri}: the ledger is not valid JSON ({exc})") from exc
    return dict(data.get("steps", {}))
