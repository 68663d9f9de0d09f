"""Detection outputs as files: events / frames / failures TSVs, and reading an events TSV back."""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Sequence

from tsd_ray.apps.detect_batch import Failure
from tsd_ray.apps.detect_inference import Detection
from tsd_ray.apps.detect_model import DetectError
from tsd_ray.common import storage
from tsd_ray.common.types import Event

EVENTS_HEADER = ("filename", "onset", "offset", "event_label")


def format_events_tsv(detections: Sequence[Detection]) -> str:
    """DCASE TSV ``filename onset offset event_label`` (seconds, 3 decimals), one row per event."""
    lines = ["\t".join(EVENTS_HEADER)]
    for d in detections:
        for e in d.events:
            lines.append(f"{d.name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}")
    return "\n".join(lines) + "\n"


def format_frames_tsv(detections: Sequence[Detection]) -> str:
    """``filename time prob``: every output frame's start time (s, 3 decimals) and probability."""
    lines = ["filename\ttime\tprob"]
    for d in detections:
        for i, p in enumerate(d.probs):
            lines.append(f"{d.name}\t{i * d.frame_hop_s:.3f}\t{float(p):.4f}")
    return "\n".join(lines) + "\n"


def format_failures_tsv(failures: Sequence[Failure]) -> str:
    lines = ["filename\tpath\treason"]
    for f in failures:
        reason = " ".join(f.reason.split())  # one line per file
        lines.append(f"{f.name}\t{f.path}\t{reason}")
    return "\n".join(lines) + "\n"


def write_text(uri: str, text: str) -> str:
    storage.write_bytes_atomic(uri, text.encode())
    return uri


def read_events_tsv(uri: str, *, filename: str | None = None) -> list[tuple[str, Event]]:
    """Rows ``(filename, Event)`` of a DCASE strong TSV (header ``filename onset offset
    event_label``); rows with empty times (files without events) are skipped. With ``filename``
    only rows of that file (compared by full name or base name) are returned."""
    try:
        text = storage.read_bytes(uri).decode("utf-8-sig")
    except (FileNotFoundError, OSError) as exc:
        raise DetectError(f"{uri}: label file not found ({exc})") from exc
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [[f.strip() for f in r] for r in rows if any(f.strip() for f in r)]
    if not rows or any(c not in rows[0] for c in EVENTS_HEADER):
        raise DetectError(f"{uri}: the first line must be the header '{chr(9).join(EVENTS_HEADER)}' (tab-separated)")
    idx = [rows[0].index(c) for c in EVENTS_HEADER]
    out = []
    for n, r in enumerate(rows[1:], start=2):
        if len(r) < len(rows[0]):
            if len(r) == 1:
                continue  # a file listed without events
            raise DetectError(f"{uri} line {n}: expected {len(rows[0])} tab-separated columns, got {len(r)}")
        name, on, off, lab = (r[i] for i in idx)
        if not on and not off:
            continue
        if filename is not None and name not in (filename, posixpath.basename(filename)) and \
                posixpath.basename(name) != posixpath.basename(filename):
            continue
        try:
            ev = Event(float(on), float(off), lab)
        except ValueError as exc:
            raise DetectError(f"{uri} line {n}: onset/offset must be numbers in seconds ({exc})") from None
        out.append((name, ev))
    return out
