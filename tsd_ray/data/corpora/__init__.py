"""Corpus readers and the dataset spec (docs/architecture.md, "Corpus layout and the dataset spec").

Readers turn the label files of real corpora into typed records, one module per format
(times in seconds):

- :mod:`~tsd_ray.data.corpora.dcase`: DESED / DCASE strong TSV, header ``filename  onset
  offset  event_label`` (a row whose onset/offset/event_label are empty lists a file with no
  events); weak TSV, header ``filename  event_labels`` (comma-separated, may be empty).
- :mod:`~tsd_ray.data.corpora.urbansed`: ``audio/<split>/X.wav`` with
  ``annotations/<split>/X.txt`` (no header, lines ``onset  offset  label``); the ``.jams``
  files beside them are ignored.
- :mod:`~tsd_ray.data.corpora.audioset`: AudioSet strong (Hershey et al. 2021), header
  ``segment_id  start_time_seconds  end_time_seconds  label`` (label = machine id such as
  ``/m/04rlf``) plus ``mid_to_display_name.tsv`` (no header, ``/m/04rlf  Music``).
- :mod:`~tsd_ray.data.corpora.references`: the reference pool TSV, header ``filename  event_label``.

Every reader returns ``(records, quarantined)`` (shared machinery: :mod:`~tsd_ray.data.corpora.tsv`).
A problem with one item (a NaN onset, an event whose offset is not after its onset, a row
with the wrong number of columns, a missing audio or annotation file) quarantines that item
with its reason and the read goes on; nothing is dropped silently. A problem with a label
file as a whole (missing, wrong header) raises :class:`CorpusError` naming the file and the
fix. Audio is not opened here: decoding, duration and channel checks belong to the feature
build. Label files are read as streams with :mod:`csv` (AudioSet strong has ~1M rows).

:func:`load_spec` (:mod:`~tsd_ray.data.corpora.spec`) + :func:`read_corpus`
(:mod:`~tsd_ray.data.corpora.reading`) read a whole dataset spec into a
:class:`tsd_ray.common.types.Corpus`. See ``docs/dataset_spec.md``.
"""

from __future__ import annotations

from tsd_ray.data.corpora.audioset import (
    read_audioset_strong,
    read_label_names,
    render_audioset_filename,
)
from tsd_ray.data.corpora.dcase import read_dcase_strong, read_dcase_weak
from tsd_ray.data.corpora.reading import read_corpus
from tsd_ray.data.corpora.references import read_references
from tsd_ray.data.corpora.spec import (
    FORMAT_KEYS,
    SPLIT_ROLES,
    DatasetSpec,
    SpecError,
    SplitSpec,
    load_spec,
    spec_from_dict,
)
from tsd_ray.data.corpora.tsv import CorpusError, derive_weak
from tsd_ray.data.corpora.urbansed import read_urbansed

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
