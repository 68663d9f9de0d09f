"""Typed records of the data contract (docs/architecture.md, "Typed records and splits"). Times are in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Seconds = float
Domain = Literal["source", "target"]

#: The splits a built dataset may hold, in build order.
SPLITS: tuple[str, ...] = (
    "source_train",
    "source_val",
    "target_train",
    "target_val",
    "target_test",
)
#: The reference pool: its key in a dataset spec and its "split" in the feature shards.
REFERENCES = "references"
#: Which domain each split belongs to.
SPLIT_DOMAIN: dict[str, Domain] = {
    "source_train": "source",
    "source_val": "source",
    "target_train": "target",
    "target_val": "target",
    "target_test": "target",
}


@dataclass(frozen=True)
class Event:
    """One labelled sound event in a recording."""

    onset: Seconds
    offset: Seconds
    label: str

    def clipped(self, duration: Seconds) -> Event | None:
        """The part of the event inside ``[0, duration]``; None when nothing is left."""
        onset, offset = max(0.0, self.onset), min(duration, self.offset)
        if offset <= onset:
            return None
        return Event(onset, offset, self.label)


@dataclass(frozen=True)
class MixtureRecord:
    """A recording of a split with its labels, before features are computed.

    ``events`` holds strong labels (None when the corpus gives none), ``weak_labels`` the
    clip-level classes (None when not given; derived from events when needed). For
    ``target_train`` the events, when present, are kept aside for the SS baseline only.
    """

    mixture_id: str  # unique within the split, e.g. the file's relative path
    audio_path: str  # local path or URI of the audio file
    split: str
    domain: Domain
    events: tuple[Event, ...] | None = None
    weak_labels: tuple[str, ...] | None = None

    def clip_classes(self) -> tuple[str, ...]:
        """Classes present in the clip: weak labels if given, else the events' labels."""
        if self.weak_labels is not None:
            return tuple(sorted(set(self.weak_labels)))
        return tuple(sorted({e.label for e in self.events or ()}))


@dataclass(frozen=True)
class ReferenceRecord:
    """An isolated, labelled clip of the reference pool."""

    reference_id: str
    audio_path: str
    label: str


@dataclass(frozen=True)
class Quarantined:
    """An item left out of a build, with the reason (written to the quarantine report)."""

    item: str  # file path or mixture id
    split: str
    reason: str


@dataclass(frozen=True)
class Corpus:
    """All records of a dataset spec: mixtures per split, references and class sets."""

    mixtures: dict[str, tuple[MixtureRecord, ...]]
    references: tuple[ReferenceRecord, ...]
    source_classes: tuple[str, ...]
    target_classes: tuple[str, ...]
    quarantined: tuple[Quarantined, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)  # warnings for the build report
