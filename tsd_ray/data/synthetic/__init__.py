"""Deterministic synthetic corpus for target sound detection (docs/synthetic.md; docs/architecture.md, "The synthetic corpus").

``make_corpus(out_dir, preset="tiny", seed=0, overlap_classes=False)`` writes mixtures,
reference clips, DCASE label TSVs and a ``dataset.yaml`` spec, and returns the spec's path.
"""

from __future__ import annotations

from tsd_ray.data.synthetic.corpus import (
    GENERATOR_VERSION,
    CorpusDirError,
    corpus_size_bytes,
    make_corpus,
    render_clip,
    write_metadata,
)
from tsd_ray.data.synthetic.plan import (
    DOMAIN_SNR_DB,
    PRESETS,
    ClipPlan,
    CorpusPlan,
    EventPlan,
    SyntheticPreset,
    class_sets,
    get_preset,
    plan_corpus,
)
from tsd_ray.data.synthetic.sounds import CLASSES, FAMILIES, SoundClass, draw_instance, render_event

__all__ = [
    "CLASSES",
    "DOMAIN_SNR_DB",
    "FAMILIES",
    "GENERATOR_VERSION",
    "PRESETS",
    "ClipPlan",
    "CorpusDirError",
    "CorpusPlan",
    "EventPlan",
    "SoundClass",
    "SyntheticPreset",
    "class_sets",
    "corpus_size_bytes",
    "draw_instance",
    "get_preset",
    "make_corpus",
    "plan_corpus",
    "render_clip",
    "render_event",
    "write_metadata",
]
