"""Corpus readers and the dataset spec (docs/architecture.md, "Corpus layout and the dataset spec").

Readers turn the label files of real corpora (DESED/DCASE TSVs, URBAN-SED, AudioSet strong,
a reference pool) into typed records; :func:`load_spec` + :func:`read_corpus` read a whole
dataset spec into a :class:`tsd_ray.common.types.Corpus`. See ``docs/dataset_spec.md``.
"""

from __future__ import annotations

from tsd_ray.data.corpora.readers import (
    CorpusError,
    derive_weak,
    read_audioset_strong,
    read_dcase_strong,
    read_dcase_weak,
    read_label_names,
    read_references,
    read_urbansed,
    render_audioset_filename,
)
from tsd_ray.data.corpora.spec import (
    FORMAT_KEYS,
    SPLIT_ROLES,
    DatasetSpec,
    SpecError,
    SplitSpec,
    load_spec,
    read_corpus,
    spec_from_dict,
)

__all__ = [
    "FORMAT_KEYS",
    "SPLIT_ROLES",
    "CorpusError",
    "DatasetSpec",
    "SpecError",
    "SplitSpec",
    "derive_weak",
    "load_spec",
    "read_audioset_strong",
    "read_corpus",
    "read_dcase_strong",
    "read_dcase_weak",
    "read_label_names",
    "read_references",
    "read_urbansed",
    "render_audioset_filename",
    "spec_from_dict",
]
