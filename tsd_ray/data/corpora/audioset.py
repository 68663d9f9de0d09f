"""AudioSet strong labels (``segment_id start_time_seconds end_time_seconds label``), with the
label-names table and a template from segment ids to audio file names."""

from __future__ import annotations

import csv
import os

from tsd_ray.common.types import Domain, MixtureRecord, Quarantined
from tsd_ray.data.corpora.tsv import (
    CorpusError,
    Items,
    finish_strong,
    join_path,
    parse_event,
    require_dir,
    require_file,
    tsv_rows,
)

AUDIOSET_HEADER: tuple[str, ...] = (
    "segment_id",
    "start_time_seconds",
    "end_time_seconds",
    "label",
)


DEFAULT_AUDIOSET_TEMPLATE = "{segment_id}.wav"


def read_label_names(label_names_tsv: str | os.PathLike[str]) -> dict[str, str]:
    """``mid_to_display_name.tsv`` (no header, ``/m/04rlf  Music``) -> {machine id: name}."""
    path = require_file(label_names_tsv, "label names TSV")
    names: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            fields = [f.strip() for f in row]
            if not fields or not any(fields):
                continue
            if len(fields) != 2 or not fields[0] or not fields[1]:
                raise CorpusError(
                    f"label names TSV '{path}' line {reader.line_num}: expected two "
                    f"tab-separated columns 'machine id  display name' (no header), got "
                    f"{fields!r}; fix the line"
                )
            names[fields[0]] = fields[1]
    if not names:
        raise CorpusError(f"label names TSV '{path}' lists no labels")
    return names


def audioset_template_fields(segment_id: str) -> dict[str, object]:
    """Fields a filename template may use for an AudioSet segment id ``<ytid>_<start ms>``.

    ``segment_id`` (as given), ``ytid`` (YouTube id), ``start_ms`` (int) and ``start_s``
    (float seconds). The last three are absent when the id does not have that shape.
    """
    fields: dict[str, object] = {"segment_id": segment_id}
    ytid, sep, start = segment_id.rpartition("_")
    if sep and ytid and start.isdigit():
        fields.update(ytid=ytid, start_ms=int(start), start_s=int(start) / 1000.0)
    return fields


def render_audioset_filename(template: str, segment_id: str) -> str:
    """Audio filename of a segment, e.g. ``"{segment_id}.wav"`` or ``"Y{ytid}_{start_s:.3f}.wav"``.

    Raises KeyError/ValueError/IndexError when the template does not fit the id.
    """
    return template.format(**audioset_template_fields(segment_id))


def read_audioset_strong(
    labels_tsv: str | os.PathLike[str],
    label_names_tsv: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    split: str,
    domain: Domain,
    filename_template: str = DEFAULT_AUDIOSET_TEMPLATE,
    as_weak: bool = False,
) -> tuple[list[MixtureRecord], list[Quarantined]]:
    """Read AudioSet strong labels (``segment_id start_time_seconds end_time_seconds label``).

    Labels are machine ids mapped to display names through ``label_names_tsv``; an id missing
    from that map quarantines the segment. ``mixture_id`` is the rendered
    ``filename_template``; segments whose audio file is missing (common: videos disappear)
    are quarantined. Rows are streamed and grouped per segment.
    """
    path = require_file(labels_tsv, "AudioSet strong label TSV")
    audio_dir = require_dir(audio_dir, "audio folder")
    label_names = read_label_names(label_names_tsv)
    items = Items()
    bad_rows: list[Quarantined] = []
    for row in tsv_rows(path, AUDIOSET_HEADER, "AudioSet strong label TSV"):
        segment_id = row.raw[0]
        where = f"{path} line {row.line}"
        if not segment_id:
            bad_rows.append(Quarantined(f"{path}:{row.line}", split, f"{where}: empty segment_id"))
            continue
        if row.values is None:
            items.fail(
                segment_id,
                f"{where}: expected {len(AUDIOSET_HEADER)} tab-separated columns "
                f"({', '.join(AUDIOSET_HEADER)}), got {len(row.raw)}",
            )
            continue
        _, start, end, mid = row.values
        name = label_names.get(mid)
        if name is None:
            items.fail(segment_id, f"{where}: label id {mid!r} is not in '{label_names_tsv}'")
            continue
        parsed = parse_event(start, end, name, where)
        if isinstance(parsed, str):
            items.fail(segment_id, parsed)
        else:
            items.add(segment_id, parsed)
    names: dict[str, tuple[str, str]] = {}
    for segment_id in list(items.events):
        try:
            filename = render_audioset_filename(filename_template, segment_id)
        except (KeyError, ValueError, IndexError) as exc:
            bad_rows.append(
                Quarantined(
                    segment_id,
                    split,
                    f"filename_template {filename_template!r} does not fit segment id "
                    f"{segment_id!r} ({exc!r})",
                )
            )
            del items.events[segment_id]
            continue
        names[segment_id] = (filename, join_path(audio_dir, filename))
    records, quarantined = finish_strong(items, names, split=split, domain=domain, as_weak=as_weak)
    return records, bad_rows + quarantined
