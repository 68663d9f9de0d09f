"""DESED / DCASE label files: strong (``filename onset offset event_label``) and weak
(``filename event_labels``) TSVs -> mixture records."""

from __future__ import annotations

import os

from tsd_ray.common.types import Domain, MixtureRecord, Quarantined
from tsd_ray.data.corpora.tsv import (
    AudioIndex,
    Items,
    finish_strong,
    join_path,
    parse_event,
    reason,
    require_dir,
    require_file,
    tsv_rows,
)

STRONG_HEADER: tuple[str, ...] = ("filename", "onset", "offset", "event_label")


WEAK_HEADER: tuple[str, ...] = ("filename", "event_labels")


def read_dcase_strong(
    labels_tsv: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    split: str,
    domain: Domain,
    as_weak: bool = False,
) -> tuple[list[MixtureRecord], list[Quarantined]]:
    """Read a DESED/DCASE strong-label TSV (``filename onset offset event_label``, seconds).

    A row with empty onset/offset/event_label (or only a filename) lists a file with no
    events. ``as_weak``: also set ``weak_labels`` derived from the events. A file with any bad
    row (wrong column count, NaN or negative onset, offset <= onset) or whose audio is missing
    is quarantined as a whole, since its remaining labels would be incomplete.
    """
    path = require_file(labels_tsv, "strong label TSV")
    audio_dir = require_dir(audio_dir, "audio folder")
    items = Items()
    bad_rows: list[Quarantined] = []
    for row in tsv_rows(path, STRONG_HEADER, "strong label TSV"):
        filename = row.raw[0]
        where = f"{path} line {row.line}"
        if not filename:
            bad_rows.append(Quarantined(f"{path}:{row.line}", split, f"{where}: empty filename"))
            continue
        if row.values is None:
            if len(row.raw) == 1:  # trailing tabs stripped by an editor: a no-event row
                items.touch(filename)
                continue
            items.fail(
                filename,
                f"{where}: expected {len(STRONG_HEADER)} tab-separated columns "
                f"({', '.join(STRONG_HEADER)}), got {len(row.raw)}",
            )
            continue
        _, onset, offset, label = row.values
        if not onset and not offset and not label:
            items.touch(filename)
            continue
        parsed = parse_event(onset, offset, label, where)
        if isinstance(parsed, str):
            items.fail(filename, parsed)
        else:
            items.add(filename, parsed)
    names = {f: (f, join_path(audio_dir, f)) for f in items.events}
    records, quarantined = finish_strong(items, names, split=split, domain=domain, as_weak=as_weak)
    return records, bad_rows + quarantined


def read_dcase_weak(
    labels_tsv: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    split: str,
    domain: Domain,
) -> tuple[list[MixtureRecord], list[Quarantined]]:
    """Read a DCASE weak-label TSV (``filename event_labels``, labels comma-separated).

    ``weak_labels`` is the sorted tuple of distinct labels (empty: no class in the clip);
    ``events`` is None. A file listed twice, a row with the wrong column count or a missing
    audio file quarantines the file.
    """
    path = require_file(labels_tsv, "weak label TSV")
    audio_dir = require_dir(audio_dir, "audio folder")
    labels: dict[str, tuple[str, ...]] = {}
    first_line: dict[str, int] = {}
    problems: dict[str, list[str]] = {}
    bad_rows: list[Quarantined] = []
    for row in tsv_rows(path, WEAK_HEADER, "weak label TSV"):
        filename = row.raw[0]
        where = f"{path} line {row.line}"
        if not filename:
            bad_rows.append(Quarantined(f"{path}:{row.line}", split, f"{where}: empty filename"))
            continue
        if filename in first_line:
            problems.setdefault(filename, []).append(
                f"{where}: file listed again (first on line {first_line[filename]})"
            )
            continue
        first_line[filename] = row.line
        if row.values is None:
            if len(row.raw) == 1:  # no labels and the trailing tab stripped
                labels[filename] = ()
                continue
            labels[filename] = ()
            problems.setdefault(filename, []).append(
                f"{where}: expected {len(WEAK_HEADER)} tab-separated columns "
                f"({', '.join(WEAK_HEADER)}), got {len(row.raw)}"
            )
            continue
        names = (x.strip() for x in row.values[1].split(","))
        labels[filename] = tuple(sorted({x for x in names if x}))
    index = AudioIndex()
    records: list[MixtureRecord] = []
    quarantined: list[Quarantined] = []
    for filename, weak in labels.items():
        audio_path = join_path(audio_dir, filename)
        reasons = list(problems.get(filename, ()))
        if not index.exists(audio_path):
            reasons.append(f"audio file '{audio_path}' not found")
        if reasons:
            quarantined.append(Quarantined(audio_path, split, reason(reasons)))
            continue
        records.append(MixtureRecord(filename, audio_path, split, domain, None, weak))
    records.sort(key=lambda r: r.mixture_id)
    return records, bad_rows + quarantined
