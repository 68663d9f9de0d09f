"""What every corpus reader shares: local paths, the audio index, TSV streaming with per-row
problems, and the typed events / quarantine records a reader returns."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from tsd_ray.common.storage import is_uri
from tsd_ray.common.types import Domain, Event, MixtureRecord, Quarantined

#: At most this many reasons are spelled out per quarantined item.
MAX_REASONS = 3


class CorpusError(ValueError):
    """A label file or folder as a whole cannot be read; the message names it and the fix."""


def join_path(folder: str | os.PathLike[str], name: str) -> str:
    """``folder/name`` as an absolute local path, or joined with ``/`` for a URI folder."""
    folder = str(folder)
    if is_uri(folder):
        return folder.rstrip("/") + "/" + name.lstrip("/")
    return os.path.abspath(os.path.join(os.path.expanduser(folder), name))


class AudioIndex:
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


def require_file(path: str | os.PathLike[str], what: str) -> str:
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(path):
        raise CorpusError(f"{what} '{path}' does not exist or is not a file; fix the path")
    return path


def require_dir(path: str | os.PathLike[str], what: str) -> str:
    path = str(path)
    if is_uri(path):
        return path
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise CorpusError(f"{what} '{path}' does not exist or is not a folder; fix the path")
    return path


class Row(NamedTuple):
    line: int  # 1-based line number in the file
    values: list[str] | None  # the wanted columns in order; None: wrong column count
    raw: list[str]  # every field of the row, stripped


def tsv_rows(path: str, columns: tuple[str, ...], what: str) -> Iterator[Row]:
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
                yield Row(reader.line_num, None, fields)
            elif in_order:
                yield Row(reader.line_num, fields, fields)
            else:
                yield Row(reader.line_num, [fields[i] for i in index], fields)
        if header is None:
            raise CorpusError(
                f"{what} '{path}' is empty; it needs the header '{chr(9).join(columns)}'"
            )


@dataclass
class Items:
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


def reason(reasons: list[str]) -> str:
    text = "; ".join(reasons[:MAX_REASONS])
    if len(reasons) > MAX_REASONS:
        text += f"; and {len(reasons) - MAX_REASONS} more problem(s)"
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


def finish_strong(
    items: Items,
    names: dict[str, tuple[str, str]],
    *,
    split: str,
    domain: Domain,
    as_weak: bool,
) -> tuple[list[MixtureRecord], list[Quarantined]]:
    """Records (sorted by mixture id) and quarantine entries from collected items.

    ``names`` maps an item key to ``(mixture_id, audio_path)``.
    """
    index = AudioIndex()
    records: list[MixtureRecord] = []
    quarantined: list[Quarantined] = []
    for key, events in items.events.items():
        mixture_id, audio_path = names[key]
        reasons = list(items.problems.get(key, ()))
        if not index.exists(audio_path):
            reasons.append(f"audio file '{audio_path}' not found")
        if reasons:
            quarantined.append(Quarantined(audio_path, split, reason(reasons)))
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
