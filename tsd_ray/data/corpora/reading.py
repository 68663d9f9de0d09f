"""Reading a whole corpus from a checked dataset spec: every split through its reader, class
lists applied, files shared between splits refused, a missing ``source_val`` carved from
``source_train`` (seeded, file-disjoint) -> :class:`tsd_ray.common.types.Corpus`."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable

from tsd_ray.common.storage import is_uri
from tsd_ray.common.types import (
    SPLIT_DOMAIN,
    SPLITS,
    Corpus,
    MixtureRecord,
    Quarantined,
)
from tsd_ray.data.corpora.audioset import (
    read_audioset_strong,
)
from tsd_ray.data.corpora.dcase import read_dcase_strong, read_dcase_weak
from tsd_ray.data.corpora.references import read_references
from tsd_ray.data.corpora.spec import (
    CARVED_FROM,
    CARVED_SPLIT,
    NOTE_FILES,
    SPLIT_ROLES,
    TARGET_TRAIN_STRONG,
    DatasetSpec,
    SpecError,
    SplitSpec,
    canonical_path,
)
from tsd_ray.data.corpora.tsv import CorpusError, derive_weak
from tsd_ray.data.corpora.urbansed import read_urbansed

logger = logging.getLogger(__name__)


def _read_entry(
    spec: DatasetSpec, entry: SplitSpec
) -> tuple[list[MixtureRecord], list[Quarantined]]:
    """Read one split entry without deriving weak labels (done after class filtering)."""
    domain = SPLIT_DOMAIN.get(entry.role, "target")
    split = entry.role
    try:
        if entry.format == "dcase_strong":
            return read_dcase_strong(entry.labels, entry.audio, split=split, domain=domain)
        if entry.format == "dcase_weak":
            return read_dcase_weak(entry.labels, entry.audio, split=split, domain=domain)
        if entry.format == "urbansed":
            return read_urbansed(entry.audio, entry.annotations, split=split, domain=domain)
        if entry.format == "audioset_strong":
            return read_audioset_strong(
                entry.labels,
                entry.label_names,
                entry.audio,
                split=split,
                domain=domain,
                filename_template=entry.filename_template,
            )
    except (CorpusError, OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"dataset spec '{spec.path}': {entry.key}: {exc}") from exc
    raise SpecError(f"dataset spec '{spec.path}': {entry.key}: cannot read format {entry.format}")


def _labels_of(record: MixtureRecord) -> set[str]:
    return {e.label for e in record.events or ()} | set(record.weak_labels or ())


def _apply_class_lists(
    records: list[MixtureRecord], known: set[str], mode: str, split: str
) -> tuple[list[MixtureRecord], list[Quarantined], Counter[str]]:
    """Quarantine (or strip, with mode "ignore") labels outside the class lists."""
    kept: list[MixtureRecord] = []
    quarantined: list[Quarantined] = []
    ignored: Counter[str] = Counter()
    for r in records:
        unknown = _labels_of(r) - known
        if not unknown:
            kept.append(r)
            continue
        if mode == "quarantine":
            quarantined.append(
                Quarantined(
                    r.audio_path,
                    split,
                    f"label(s) {', '.join(sorted(unknown))} in neither source_classes nor "
                    "target_classes (unknown_labels: quarantine); add the class to a list or "
                    "set unknown_labels: ignore to drop such events",
                )
            )
            continue
        events = None
        if r.events is not None:
            events = tuple(e for e in r.events if e.label in known)
            ignored.update(e.label for e in r.events if e.label not in known)
        weak = None
        if r.weak_labels is not None:
            weak = tuple(x for x in r.weak_labels if x in known)
            ignored.update(x for x in r.weak_labels if x not in known)
        kept.append(dataclasses.replace(r, events=events, weak_labels=weak))
    return kept, quarantined, ignored


def _file_identity(path: str) -> object:
    """Same value for two paths of one file (symlinks and hard links included)."""
    if is_uri(path):
        return path
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino)


def _check_shared_files(spec: DatasetSpec, raw: dict[str, list[MixtureRecord]]) -> None:
    """No audio file may belong to two splits (target_train_strong shares by design)."""
    owner: dict[object, tuple[str, str]] = {}  # identity -> (first split, its path)
    shared: dict[str, set[str]] = {}  # first path -> splits
    for split in SPLITS:
        for r in raw.get(split, ()):
            first, first_path = owner.setdefault(
                _file_identity(r.audio_path), (split, r.audio_path)
            )
            if first != split:
                shared.setdefault(first_path, {first}).add(split)
    if shared:
        listed = "; ".join(
            f"'{path}' ({', '.join(s for s in SPLITS if s in splits)})"
            for path, splits in sorted(shared.items())[:5]
        )
        more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
        raise SpecError(
            f"dataset spec '{spec.path}': splits: {len(shared)} audio file(s) are used by more "
            f"than one split: {listed}{more}. Validation and test must never touch training "
            "files: list each file in one split only"
        )


def carve_source_val(
    records: Iterable[MixtureRecord], *, fraction: float, seed: int
) -> tuple[list[MixtureRecord], list[MixtureRecord]]:
    """Split source_train records into (source_train, source_val) by whole audio files.

    Files are ordered by the SHA-256 of ``"{seed}:{file name}"`` (the file name is the
    record's ``mixture_id``, its path relative to the split's audio folder), which is a
    seeded permutation of the sorted names: the result does not depend on the order of the
    label file nor on where the corpus lives. The first ``round(fraction * n_files)`` files,
    at least 1 and at most ``n_files - 1``, become source_val (their records get
    ``split="source_val"``); records of one audio file always stay together, so no file's
    events end up in both parts. Both lists are sorted by ``mixture_id``.

    Raises ``ValueError`` when there are fewer than 2 audio files or ``fraction`` is not in
    (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    files: dict[str, list[MixtureRecord]] = {}
    for r in records:
        files.setdefault(canonical_path(r.audio_path), []).append(r)
    n = len(files)
    if n < 2:
        raise ValueError(f"{n} audio file(s); carving a validation split needs at least 2")
    names = {key: min(r.mixture_id for r in group) for key, group in files.items()}

    def rank(key: str) -> tuple[str, str]:
        name = names[key]
        return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest(), name

    order = sorted(files, key=rank)  # rank ends with the name: no ties
    n_val = min(n - 1, max(1, math.floor(fraction * n + 0.5)))
    train = [r for key in order[n_val:] for r in files[key]]
    val = [dataclasses.replace(r, split=CARVED_SPLIT) for key in order[:n_val] for r in files[key]]
    return sorted(train, key=lambda r: r.mixture_id), sorted(val, key=lambda r: r.mixture_id)


def _classes_found(records: Iterable[MixtureRecord]) -> set[str]:
    found: set[str] = set()
    for r in records:
        found |= _labels_of(r)
    return found


def _carve(
    spec: DatasetSpec,
    records: list[MixtureRecord],
    quarantined: list[Quarantined],
    note: Callable[[str], None],
) -> tuple[list[MixtureRecord], list[MixtureRecord]]:
    """Carve source_val from ``records`` (source_train) with the spec's settings; notes it."""
    assert spec.source_val_fraction is not None and spec.source_val_seed is not None
    try:
        train, val = carve_source_val(
            records, fraction=spec.source_val_fraction, seed=spec.source_val_seed
        )
    except ValueError as exc:
        n_bad = sum(1 for q in quarantined if q.split == CARVED_FROM)
        raise SpecError(
            f"dataset spec '{spec.path}': splits.{CARVED_FROM}: {exc} ({n_bad} quarantined); "
            f"splits.{CARVED_SPLIT} is not in the spec, so it is carved from {CARVED_FROM}: "
            f"add usable files to {CARVED_FROM} or add a splits.{CARVED_SPLIT} entry"
        ) from exc
    carved = sorted({r.mixture_id for r in val})
    n_val = len({canonical_path(r.audio_path) for r in val})
    n_files = len({canonical_path(r.audio_path) for r in records})
    shown = ", ".join(carved[:NOTE_FILES])
    more = f" and {len(carved) - NOTE_FILES} more" if len(carved) > NOTE_FILES else ""
    note(
        f"splits.{CARVED_SPLIT}: not in the spec; carved {n_val} of {n_files} "
        f"{CARVED_FROM} audio files (source_val_fraction {spec.source_val_fraction}, "
        f"source_val_seed {spec.source_val_seed}; whole files, file-disjoint): {shown}{more}"
    )
    logger.debug("splits.%s carved from %s: %s", CARVED_SPLIT, CARVED_FROM, ", ".join(carved))
    return train, val


def read_corpus(spec: DatasetSpec, *, log: Callable[[str], None] | None = None) -> Corpus:
    """Read every split of ``spec`` into a :class:`Corpus`.

    - Bad items are quarantined (``Corpus.quarantined``), never dropped silently.
    - Class sets: the spec's lists, else the sorted labels found in the source (resp. target)
      splits. A label in neither set quarantines its record (``unknown_labels: quarantine``)
      or is dropped from it with a per-split count in ``Corpus.notes`` (``ignore``).
    - ``target_train_strong`` events are attached to the target_train records of the same
      filename (weak labels stay the weak ones); ``as_weak`` derives weak labels from events.
    - Without ``splits.source_val`` in the spec, source_val is carved from the usable
      source_train records (after quarantine and class filtering) by
      :func:`carve_source_val` with the spec's ``source_val_fraction`` / ``source_val_seed``;
      a note names the parameters and the carved files (all of them are logged at info level
      and are ``Corpus.mixtures["source_val"]``).
    - Raises :class:`SpecError` when an audio file is used by two splits, a required split has
      no usable record (or source_train has fewer than 2 files to carve source_val from), or
      a class has no reference clip.

    ``log``: called with each note (default: ``logging`` at warning level).
    """
    emit = log or logger.warning
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        emit(text)

    raw: dict[str, list[MixtureRecord]] = {}
    quarantined: list[Quarantined] = []
    for role in SPLIT_ROLES:
        entry = spec.splits.get(role)
        if entry is None:
            continue
        records, bad = _read_entry(spec, entry)
        raw[role] = records
        quarantined.extend(bad)
    try:
        references, bad_refs = read_references(spec.references.labels, spec.references.audio)
    except (CorpusError, OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"dataset spec '{spec.path}': references: {exc}") from exc
    quarantined.extend(bad_refs)

    _check_shared_files(spec, raw)

    source_splits = [s for s in raw if SPLIT_DOMAIN.get(s) == "source"]
    target_splits = [s for s in raw if s not in source_splits]
    source_found = _classes_found(r for s in source_splits for r in raw[s])
    target_found = _classes_found(r for s in target_splits for r in raw[s])
    source_classes = spec.source_classes or tuple(sorted(source_found))
    target_classes = spec.target_classes or tuple(sorted(target_found))
    for listed, found, key in (
        (spec.source_classes, source_found, "source_classes"),
        (spec.target_classes, target_found, "target_classes"),
    ):
        absent = [c for c in listed or () if c not in found]
        if absent:
            note(f"{key}: listed but found in no split of that domain: {', '.join(absent)}")
    overlap = sorted(set(source_classes) & set(target_classes))
    if overlap:
        note(f"source and target classes overlap: {', '.join(overlap)}")

    known = set(source_classes) | set(target_classes)
    kept: dict[str, list[MixtureRecord]] = {}
    for role, records in raw.items():
        good, bad, ignored = _apply_class_lists(records, known, spec.unknown_labels, role)
        kept[role] = good
        quarantined.extend(bad)
        if ignored:
            counts = ", ".join(f"{label} ({n})" for label, n in sorted(ignored.items()))
            note(
                f"splits.{role}: ignored {sum(ignored.values())} label(s) outside "
                f"source_classes/target_classes (unknown_labels: ignore): {counts}"
            )

    if TARGET_TRAIN_STRONG in kept:
        strong = {r.mixture_id: r for r in kept.pop(TARGET_TRAIN_STRONG)}
        merged = []
        for r in kept["target_train"]:
            s = strong.pop(r.mixture_id, None)
            merged.append(r if s is None else dataclasses.replace(r, events=s.events))
        for s in strong.values():
            quarantined.append(
                Quarantined(
                    s.audio_path,
                    TARGET_TRAIN_STRONG,
                    f"'{s.mixture_id}' has strong labels but is not a usable target_train "
                    "file (not listed in, or quarantined from, target_train)",
                )
            )
        missing = sum(1 for r in merged if r.events is None)
        if missing:
            note(
                f"splits.{TARGET_TRAIN_STRONG}: {missing} of {len(merged)} target_train files "
                "have no strong labels; the SS baseline runs only when every target_train file has "
                "them, so it is skipped"
            )
        kept["target_train"] = merged

    for role, entry in spec.splits.items():
        if entry.as_weak and role in kept:
            kept[role] = [
                dataclasses.replace(r, weak_labels=derive_weak(r.events or ())) for r in kept[role]
            ]

    if spec.carves_source_val:
        train, val = _carve(spec, kept.get(CARVED_FROM, []), quarantined, note)
        kept[CARVED_FROM], kept[CARVED_SPLIT] = train, val

    for role in SPLITS:
        if not kept.get(role):
            n_bad = sum(1 for q in quarantined if q.split == role)
            raise SpecError(
                f"dataset spec '{spec.path}': splits.{role}: no usable recording "
                f"({n_bad} quarantined); check its label file and audio folder"
            )

    ref_labels = {r.label for r in references}
    no_ref = [c for c in dict.fromkeys(source_classes + target_classes) if c not in ref_labels]
    if no_ref:
        raise SpecError(
            f"dataset spec '{spec.path}': references: no reference clip for class(es) "
            f"{', '.join(no_ref)} in '{spec.references.labels}'; add isolated clips of these "
            "classes to the reference pool or remove them from source_classes/target_classes"
        )

    return Corpus(
        mixtures={role: tuple(kept[role]) for role in SPLITS},
        references=tuple(references),
        source_classes=tuple(source_classes),
        target_classes=tuple(target_classes),
        quarantined=tuple(quarantined),
        notes=tuple(notes),
    )
