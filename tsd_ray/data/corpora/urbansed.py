"""URBAN-SED: one ``.txt`` annotation per mixture (``onset offset label``), paired with its audio."""

from __future__ import annotations

import os

from tsd_ray.common.storage import is_uri
from tsd_ray.common.types import Domain, Event, MixtureRecord, Quarantined
from tsd_ray.data.audio import AUDIO_EXTENSIONS
from tsd_ray.data.corpora.tsv import (
    CorpusError,
    derive_weak,
    join_path,
    parse_event,
    reason,
    require_dir,
    sort_events,
)


def _read_urbansed_txt(path: str) -> tuple[list[Event], list[str]]:
    """Events and problems of one URBAN-SED annotation file (``onset offset label`` lines)."""
    events: list[Event] = []
    problems: list[str] = []
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            fields = text.split("\t") if "\t" in text else text.split()
            fields = [f.strip() for f in fields]
            where = f"{path} line {number}"
            if len(fields) != 3:
                problems.append(
                    f"{where}: expected 3 tab-separated columns (onset, offset, label), "
                    f"got {len(fields)}"
                )
                continue
            parsed = parse_event(fields[0], fields[1], fields[2], where)
            if isinstance(parsed, str):
                problems.append(parsed)
            else:
                events.append(parsed)
    return events, problems


def read_urbansed(
    audio_dir: str | os.PathLike[str],
    annotations_dir: str | os.PathLike[str],
    *,
    split: str,
    domain: Domain,
    as_weak: bool = False,
) -> tuple[list[MixtureRecord], list[Quarantined]]:
    """Read one URBAN-SED split, e.g. ``audio/train`` with ``annotations/train``.

    Every ``X.txt`` in ``annotations_dir`` pairs with ``X.wav`` (or .flac/.ogg) in
    ``audio_dir``; ``.jams`` and other files are ignored. An annotation without audio, audio
    without annotation, or an annotation with a bad line is quarantined. ``audio_dir`` may be a
    URI (then audio is assumed to be ``X.wav`` and not checked).
    """
    ann_dir = require_dir(annotations_dir, "URBAN-SED annotations folder")
    if is_uri(ann_dir):
        raise CorpusError(
            f"URBAN-SED annotations folder '{ann_dir}' must be a local folder; copy the "
            "annotations locally (they are small) and point 'annotations' there"
        )
    audio_dir = require_dir(audio_dir, "URBAN-SED audio folder")
    stems = sorted(n[:-4] for n in os.listdir(ann_dir) if n.endswith(".txt"))
    audio_names: dict[str, str] | None = None
    if not is_uri(audio_dir):
        audio_names = {}
        for name in sorted(os.listdir(audio_dir)):
            stem, ext = os.path.splitext(name)
            if ext.lower() in AUDIO_EXTENSIONS:
                audio_names.setdefault(stem, name)
    records: list[MixtureRecord] = []
    quarantined: list[Quarantined] = []
    for stem in stems:
        ann_path = os.path.join(ann_dir, stem + ".txt")
        if audio_names is not None and stem not in audio_names:
            quarantined.append(
                Quarantined(
                    ann_path,
                    split,
                    f"no audio file for annotation '{ann_path}': expected '{stem}.wav' in "
                    f"'{audio_dir}'",
                )
            )
            continue
        filename = audio_names[stem] if audio_names is not None else stem + ".wav"
        audio_path = join_path(audio_dir, filename)
        events, problems = _read_urbansed_txt(ann_path)
        if problems:
            quarantined.append(Quarantined(audio_path, split, reason(problems)))
            continue
        ordered = sort_events(events)
        weak = derive_weak(ordered) if as_weak else None
        records.append(MixtureRecord(filename, audio_path, split, domain, ordered, weak))
    if audio_names is not None:
        stem_set = set(stems)
        for stem, name in audio_names.items():
            if stem not in stem_set:
                audio_path = join_path(audio_dir, name)
                quarantined.append(
                    Quarantined(
                        audio_path,
                        split,
                        f"annotation file '{os.path.join(ann_dir, stem + '.txt')}' not found "
                        f"for audio '{audio_path}'",
                    )
                )
    records.sort(key=lambda r: r.mixture_id)
    return records, quarantined
