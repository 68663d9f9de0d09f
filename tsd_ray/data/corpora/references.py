"""The reference pool: ``filename event_label`` TSV -> reference records."""

from __future__ import annotations

import os

from tsd_ray.common.types import Quarantined, ReferenceRecord
from tsd_ray.data.corpora.tsv import (
    AudioIndex,
    join_path,
    reason,
    require_dir,
    require_file,
    tsv_rows,
)

REFERENCE_HEADER: tuple[str, ...] = ("filename", "event_label")


def read_references(
    labels_tsv: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    split: str = "references",
) -> tuple[list[ReferenceRecord], list[Quarantined]]:
    """Read the reference pool TSV (``filename event_label``): isolated, labelled clips.

    A clip listed with two different labels, a row with the wrong column count or an empty
    label, or a missing audio file is quarantined. Identical repeated rows count once.
    """
    path = require_file(labels_tsv, "reference TSV")
    audio_dir = require_dir(audio_dir, "reference audio folder")
    labels: dict[str, set[str]] = {}
    problems: dict[str, list[str]] = {}
    bad_rows: list[Quarantined] = []
    for row in tsv_rows(path, REFERENCE_HEADER, "reference TSV"):
        filename = row.raw[0]
        where = f"{path} line {row.line}"
        if not filename:
            bad_rows.append(Quarantined(f"{path}:{row.line}", split, f"{where}: empty filename"))
            continue
        seen = labels.setdefault(filename, set())
        if row.values is None:
            problems.setdefault(filename, []).append(
                f"{where}: expected {len(REFERENCE_HEADER)} tab-separated columns "
                f"({', '.join(REFERENCE_HEADER)}), got {len(row.raw)}"
            )
            continue
        label = row.values[1]
        if not label:
            problems.setdefault(filename, []).append(f"{where}: empty event_label")
            continue
        seen.add(label)
    index = AudioIndex()
    records: list[ReferenceRecord] = []
    quarantined: list[Quarantined] = []
    for filename, seen in labels.items():
        audio_path = join_path(audio_dir, filename)
        reasons = list(problems.get(filename, ()))
        if len(seen) > 1:
            reasons.append(
                f"listed with several labels ({', '.join(sorted(seen))}); a reference clip "
                "must hold one isolated class"
            )
        if not index.exists(audio_path):
            reasons.append(f"audio file '{audio_path}' not found")
        if reasons or not seen:
            quarantined.append(Quarantined(audio_path, split, reason(reasons)))
            continue
        records.append(ReferenceRecord(filename, audio_path, next(iter(seen))))
    records.sort(key=lambda r: r.reference_id)
    return records, bad_rows + quarantined
