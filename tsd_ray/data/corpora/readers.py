"""Readers of real corpus label formats -> typed records (docs/architecture.md, "Corpus layout and the dataset spec").

Every reader returns ``(records, quarantined)``. A problem with one item (a NaN onset, an
event whose offset is not after its onset, a row with the wrong number of columns, a missing
audio or annotation file) quarantines that item with its reason and the read goes on; nothing
is dropped silently. A problem with a label file as a whole (missing, wrong header) raises
:class:`CorpusError` naming the file and the fix.

Formats (times in seconds):

- DESED / DCASE strong TSV: header ``filename  onset  offset  event_label``; a row whose
  onset/offset/event_label are empty lists a file with no events.
- DCASE weak TSV: header ``filename  event_labels`` (comma-separated, may be empty).
- URBAN-SED: ``audio/<split>/X.wav`` with ``annotations/<split>/X.txt`` (no header, lines
  ``onset  offset  label``); the ``.jams`` files beside them are ignored.
- AudioSet strong (Hershey et al. 2021): header
  ``segment_id  start_time_seconds  end_time_seconds  label`` (label = machine id such as
  ``/m/04rlf``) plus ``mid_to_display_name.tsv`` (no header, ``/m/04rlf  Music``).
- Reference pool TSV: header ``filename  event_label``.

Audio is not opened here: decoding, duration and channel checks belong to the feature build.
Label files are read as streams with :mod:`csv` (AudioSet strong has ~1M rows).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from tsd_ray.common.storage import is_uri
from tsd_ray.common.types import Domain, Event, MixtureRecord, Quarantined, ReferenceRecord
from tsd_ray.data.audio import AUDIO_EXTENSIONS

STRONG_HEADER: tuple[str, ...] = ("filename", "onset", "offset", "event_label")
WEAK_HEADER: tuple[str, ...] = ("filename", "event_labels")
REFERENCE_HEADER: tuple[str, ...] = ("filename", "event_label")
AUDIOSET_HEADER: tuple[str, ...] = (
    "segment_id",
    "start_time_seconds",
    "end_time_seconds",
    "label",
)
DEFAULT_AUDIOSET_TEMPLATE = "{segment_id}.wav"

#: At most this many reasons are spelled out per quarantined item.
_MAX_REASONS = 3


class CorpusError(ValueError):
    """A label file or folder as a whole cannot be read; the message names it and the fix."""


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def join_path(folder: str | os.PathLike[str], name: str) -> str:
    """``folder/name`` as an absolute local path, or joined with ``/`` for a URI folder."""
    folder = str(folder)
    if is_uri(folder):
        return folder.rstrip("/") + "/" + name.lstrip("/")
    return os.path.abspath(os.path.join(os.path.expanduser(folder), name))


class _AudioIndex:
    """Answers "does this audio file exist?" with one directory listing per folder.

    URIs are reported as present: remote existence is checked when the build decodes them.
    """

    def __init__(self) -> None:
        self._listing: dict[str, frozenset[str]] = {}

    def exists(self, path: str) -> bool:
        if is_uri(path):
            return True
        parent, name = os.path.split(path)
        names = self._listing.get(parent)
        if names is None:
            try:
                names = frozenset(os.listdir(parent))
            except OSError:
                names = frozenset()
            self._listing[parent] = names
        return name in names and os.path.isfile(path)


def _require_file(path: str | os.PathLike[str], what: str) -> str:
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(path):
        raise CorpusError(f"{what} '{path}' does not exist or is not a file; fix the path")
    return path


def _require_dir(path: str | os.PathLike[str], what: str) -> str:
    path = str(path)
    if is_uri(path):
        return path
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise CorpusError(f"{what} '{path}' does not exist or is not a folder; fix the path")
    return path


# --------------------------------------------------------------------------------------------
# TSV streaming and per-item problem collection
# --------------------------------------------------------------------------------------------


class _Row(NamedTuple):
    line: int  # 1-based line number in the file
    values: list[str] | None  # the wanted columns in order; None: wrong column count
    raw: list[str]  # every field of the row, stripped


def _tsv_rows(path: str, columns: tuple[str, ...], what: str) -> Iterator[_Row]:
    """Stream the data rows of a headed TSV; the header must name every wanted column.

    Extra columns are allowed (and ignored); a row must have as many fields as the header.
    Blank lines are skipped. (Kept lean: AudioSet strong has ~1M rows.)
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header: list[str] | None = None
        index: list[int] = []
        width = 0
        in_order = False
        for row in reader:
            fields = [f.strip() for f in row]
            if not any(fields):
                continue
            if header is None:
                header = fields
                missing = [c for c in columns if c not in header]
                if missing:
                    raise CorpusError(
                        f"{what} '{path}': line {reader.line_num} should be the header "
                        f"'{chr(9).join(columns)}' (tab-separated) but reads "
                        f"'{chr(9).join(fields)}' (missing column(s) {', '.join(missing)}); "
                        "fix the header line or the format given for this file"
                    )
                index = [header.index(c) for c in columns]
                width = len(header)
                in_order = index == list(range(width))
                continue
            if len(fields) != width:
                yield _Row(reader.line_num, None, fields)
            elif in_order:
                yield _Row(reader.line_num, fields, fields)
            else:
                yield _Row(reader.line_num, [fields[i] for i in index], fields)
        if header is None:
            raise CorpusError(
                f"{what} '{path}' is empty; it needs the header '{chr(9).join(columns)}'"
            )


@dataclass
class _Items:
    """Events (or labels) and problems collected per item key, in first-seen order."""

    events: dict[str, list[Event]] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)

    def touch(self, key: str) -> None:
        self.events.setdefault(key, [])

    def add(self, key: str, event: Event) -> None:
        self.events.setdefault(key, []).append(event)

    def fail(self, key: str, reason: str) -> None:
        self.touch(key)
        self.problems.setdefault(key, []).append(reason)


def _reason(reasons: list[str]) -> str:
    text = "; ".join(reasons[:_MAX_REASONS])
    if len(reasons) > _MAX_REASONS:
        text += f"; and {len(reasons) - _MAX_REASONS} more problem(s)"
    return text


def parse_event(onset: str, offset: str, label: str, where: str) -> Event | str:
    """An :class:`Event` from text fields, or the reason it is invalid (a str).

    Invalid: onset/offset not a finite number (NaN, inf, text), onset < 0, offset <= onset,
    empty label.
    """
    try:
        on = float(onset)
    except ValueError:
        return f"{where}: onset {onset!r} is not a number"
    try:
        off = float(offset)
    except ValueError:
        return f"{where}: offset {offset!r} is not a number"
    if not math.isfinite(on):
        return f"{where}: onset is {onset!r}, not a finite number"
    if not math.isfinite(off):
        return f"{where}: offset is {offset!r}, not a finite number"
    if on < 0:
        return f"{where}: onset {on:g} s is negative"
    if off <= on:
        return f"{where}: offset {off:g} s is not after onset {on:g} s"
    if not label:
        return f"{where}: empty event label"
    return Event(on, off, label)


def sort_events(events: Iterable[Event]) -> tuple[Event, ...]:
    """Events ordered by onset (then offset, label)."""
    return tuple(sorted(events, key=lambda e: (e.onset, e.offset, e.label)))


def derive_weak(events: Iterable[Event]) -> tuple[str, ...]:
    """Clip-level labels implied by strong events: the sorted distinct event labels."""
    return tuple(sorted({e.label for e in events}))


def _finish_strong(
    items: _Items,
    names: dict[str, tuple[str, str]],
    *,
    split: str,
    domain: Domain,
    as_weak: bool,
) -> tuple[list[MixtureRecord], list[Quarantined]]:
    """Records (sorted by mixture id) and quarantine entries from collected items.

    ``names`` maps an item key to ``(mixture_id, audio_path)``.
    """
    index = _AudioIndex()
    records: list[MixtureRecord] = []
    quarantined: list[Quarantined] = []
    for key, events in items.events.items():
        mixture_id, audio_path = names[key]
        reasons = list(items.problems.get(key, ()))
        if not index.exists(audio_path):
            reasons.append(f"audio file '{audio_path}' not found")
        if reasons:
            quarantined.append(Quarantined(audio_path, split, _reason(reasons)))
            continue
        ordered = sort_events(events)
        records.append(
            MixtureRecord(
                mixture_id=mixture_id,
                audio_path=audio_path,
                split=split,
                domain=domain,
                events=ordered,
                weak_labels=derive_weak(ordered) if as_weak else None,
            )
        )
    records.sort(key=lambda r: r.mixture_id)
    return records, quarantined


# --------------------------------------------------------------------------------------------
# DESED / DCASE
# --------------------------------------------------------------------------------------------


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
    path = _require_file(labels_tsv, "strong label TSV")
    audio_dir = _require_dir(audio_dir, "audio folder")
    items = _Items()
    bad_rows: list[Quarantined] = []
    for row in _tsv_rows(path, STRONG_HEADER, "strong label TSV"):
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
    records, quarantined = _finish_strong(items, names, split=split, domain=domain, as_weak=as_weak)
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
    path = _require_file(labels_tsv, "weak label TSV")
    audio_dir = _require_dir(audio_dir, "audio folder")
    labels: dict[str, tuple[str, ...]] = {}
    first_line: dict[str, int] = {}
    problems: dict[str, list[str]] = {}
    bad_rows: list[Quarantined] = []
    for row in _tsv_rows(path, WEAK_HEADER, "weak label TSV"):
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
    index = _AudioIndex()
    records: list[MixtureRecord] = []
    quarantined: list[Quarantined] = []
    for filename, weak in labels.items():
        audio_path = join_path(audio_dir, filename)
        reasons = list(problems.get(filename, ()))
        if not index.exists(audio_path):
            reasons.append(f"audio file '{audio_path}' not found")
        if reasons:
            quarantined.append(Quarantined(audio_path, split, _reason(reasons)))
            continue
        records.append(MixtureRecord(filename, audio_path, split, domain, None, weak))
    records.sort(key=lambda r: r.mixture_id)
    return records, bad_rows + quarantined


# --------------------------------------------------------------------------------------------
# URBAN-SED
# --------------------------------------------------------------------------------------------


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
    ann_dir = _require_dir(annotations_dir, "URBAN-SED annotations folder")
    if is_uri(ann_dir):
        raise CorpusError(
            f"URBAN-SED annotations folder '{ann_dir}' must be a local folder; copy the "
            "annotations locally (they are small) and point 'annotations' there"
        )
    audio_dir = _require_dir(audio_dir, "URBAN-SED audio folder")
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
            quarantined.append(Quarantined(audio_path, split, _reason(problems)))
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


# --------------------------------------------------------------------------------------------
# AudioSet strong
# --------------------------------------------------------------------------------------------


def read_label_names(label_names_tsv: str | os.PathLike[str]) -> dict[str, str]:
    """``mid_to_display_name.tsv`` (no header, ``/m/04rlf  Music``) -> {machine id: name}."""
    path = _require_file(label_names_tsv, "label names TSV")
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
    path = _require_file(labels_tsv, "AudioSet strong label TSV")
    audio_dir = _require_dir(audio_dir, "audio folder")
    label_names = read_label_names(label_names_tsv)
    items = _Items()
    bad_rows: list[Quarantined] = []
    for row in _tsv_rows(path, AUDIOSET_HEADER, "AudioSet strong label TSV"):
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
    records, quarantined = _finish_strong(items, names, split=split, domain=domain, as_weak=as_weak)
    return records, bad_rows + quarantined


# --------------------------------------------------------------------------------------------
# Reference pool
# --------------------------------------------------------------------------------------------


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
    path = _require_file(labels_tsv, "reference TSV")
    audio_dir = _require_dir(audio_dir, "reference audio folder")
    labels: dict[str, set[str]] = {}
    problems: dict[str, list[str]] = {}
    bad_rows: list[Quarantined] = []
    for row in _tsv_rows(path, REFERENCE_HEADER, "reference TSV"):
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
    index = _AudioIndex()
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
            quarantined.append(Quarantined(audio_path, split, _reason(reasons)))
            continue
        records.append(ReferenceRecord(filename, audio_path, next(iter(seen))))
    records.sort(key=lambda r: r.reference_id)
    return records, bad_rows + quarantined
