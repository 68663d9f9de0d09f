"""Detection on a user's own recordings with a trained model (``jobs/detect.py``).

A *detector* file (``kind == "detector"``, written by :func:`tsd_ray.models.checkpoint.export_detector`
or :func:`export_from_run`) holds everything detection needs: the student (f or w), the frozen
encoder, the front end and the post-processing tuned on validation. A plain student file plus
its run's encoder file works too (default post-processing unless given).

Steps, for a recording of any length and sample rate:

1. **Reference**: each reference clip is decoded, padded/cropped to
   ``frontend.reference_s`` (as the feature build does), embedded by the encoder and
   normalised (:func:`tsd_ray.models.encoder.normalise_embedding`); several clips of one class
   are averaged and normalised again.
2. **Features**: the whole recording is resampled and turned into a log-mel ``(T, F)`` by the
   front end the model was trained with (:class:`tsd_ray.data.features.LogMel`), rounded through
   float16 like the stored training features.
3. **Windows**: the mel is cut into ``clip_s`` windows (10 s = 501 input frames) that
   start every ``hop`` input frames (even, so a window starting at input frame ``s`` maps its
   output frame ``i`` to global output frame ``s // 2 + i``); the last window is padded with
   the log-mel of silence and its padded frames are masked out, exactly as short training
   clips were. Probabilities of frames covered by several windows are averaged with weights
   that favour the window in which the frame sits centrally (a plain mean split events at
   window boundaries: a window's edge frames are less reliable), see
   :func:`frame_probabilities`.
4. **Events**: median filter + threshold + merge (:func:`tsd_ray.metrics.postprocess.postprocess`) with
   the detector's post-processing; 40 ms output frames.

Many files (a folder or a list) run as a Ray Data batch-inference pipeline
(:func:`detect_many`): an actor pool, one detector per actor, a GPU per actor when the cluster
has GPUs. A file that fails comes back as a row with its error, never an exception: the run
goes on and reports the failures at the end.

The code: :mod:`~tsd_ray.apps.detect_model` (loading, export), :mod:`~tsd_ray.apps.detect_inference`
(reference, windows, one recording), :mod:`~tsd_ray.apps.detect_batch` (many recordings on Ray
Data), :mod:`~tsd_ray.apps.detect_files` (TSV outputs). This module gathers their public names,
the API ``jobs/detect.py`` and ``from tsd_ray.apps import detect`` use.
"""

from __future__ import annotations

from tsd_ray.apps.detect_batch import (
    BatchResult,
    DetectActor,
    Failure,
    detect_many,
    list_audio,
)
from tsd_ray.apps.detect_files import (
    EVENTS_HEADER,
    format_events_tsv,
    format_failures_tsv,
    format_frames_tsv,
    read_events_tsv,
    write_text,
)
from tsd_ray.apps.detect_inference import (
    Detection,
    Reference,
    as_stored,
    compute_mel,
    detect_file,
    embed_reference,
    frame_probabilities,
    window_hop,
    window_starts,
)
from tsd_ray.apps.detect_model import (
    DEFAULT_LABEL,
    DetectError,
    LoadedDetector,
    export_from_run,
    load_detector,
    read_ledger_steps,
)

__all__ = [
    "BatchResult",
    "DEFAULT_LABEL",
    "DetectActor",
    "DetectError",
    "Detection",
    "EVENTS_HEADER",
    "Failure",
    "LoadedDetector",
    "Reference",
    "as_stored",
    "compute_mel",
    "detect_file",
    "detect_many",
    "embed_reference",
    "export_from_run",
    "format_events_tsv",
    "format_failures_tsv",
    "format_frames_tsv",
    "frame_probabilities",
    "list_audio",
    "load_detector",
    "read_events_tsv",
    "read_ledger_steps",
    "window_hop",
    "window_starts",
    "write_text",
]
