"""Dataset spec (YAML): which corpus files make which split, read into a :class:`Corpus`.

The spec is the contract between whoever lays out a corpus on disk and the feature build
(see ``docs/dataset_spec.md``)::

    name: urban-to-desed
    root: /data                    # relative paths resolve against it; itself relative
                                   # to the spec file's folder
    source_classes: [dog_bark, siren]     # optional: default = labels found in source splits
    target_classes: [Dog, Speech]         # optional: default = labels found in target splits
    unknown_labels: quarantine            # quarantine | ignore
    source_val_fraction: 0.15             # optional: only without splits.source_val
    source_val_seed: 0                    # optional: only without splits.source_val
    splits:
      source_train: {format: urbansed, audio: URBAN-SED/audio/train,
                     annotations: URBAN-SED/annotations/train}
      ...
    references: {format: dcase_reference, labels: refs.tsv, audio: refs}

:func:`load_spec` checks the whole spec (keys, formats, roles, that label files and folders
exist) before anything is read and raises one :class:`SpecError` listing every problem with
the spec file, the key and the fix. :func:`read_corpus` then reads every split, quarantines
bad items, derives class sets and checks the corpus as a whole (references for every class,
no audio file shared between splits). A spec without ``splits.source_val`` gets one carved
from source_train: a seeded, file-disjoint fraction of its files (:func:`carve_source_val`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tsd_ray.common.storage import is_uri
from tsd_ray.common.types import (
    REFERENCES,
    SPLITS,
)
from tsd_ray.data.corpora.audioset import (
    DEFAULT_AUDIOSET_TEMPLATE,
    render_audioset_filename,
)

logger = logging.getLogger(__name__)


#: The optional split holding strong labels of target_train's files (SS baseline only).
TARGET_TRAIN_STRONG = "target_train_strong"


#: Keys allowed under ``splits``, in reading order.
SPLIT_ROLES: tuple[str, ...] = SPLITS + (TARGET_TRAIN_STRONG,)


#: Role name of the reference pool (a top-level key, not under ``splits``).
TOP_LEVEL_KEYS: tuple[str, ...] = (
    "name",
    "root",
    "source_classes",
    "target_classes",
    "unknown_labels",
    "source_val_fraction",
    "source_val_seed",
    "splits",
    "references",
)


UNKNOWN_LABEL_MODES: tuple[str, ...] = ("quarantine", "ignore")


#: The split that may be left out of a spec: it is then carved from CARVED_FROM.
CARVED_SPLIT = "source_val"


CARVED_FROM = "source_train"


#: Defaults of the carve-out (a spec without splits.source_val).
DEFAULT_SOURCE_VAL_FRACTION = 0.15


DEFAULT_SOURCE_VAL_SEED = 0


#: Allowed carve-out fractions: (0, MAX_SOURCE_VAL_FRACTION].
MAX_SOURCE_VAL_FRACTION = 0.5


#: Splits a spec must list (source_val may be carved from source_train instead).
REQUIRED_SPLITS: tuple[str, ...] = tuple(s for s in SPLITS if s != CARVED_SPLIT)


#: Carved files named in the corpus note (all of them are logged at info level).
NOTE_FILES = 5


#: format -> (required keys, optional keys) besides ``format`` itself.
FORMAT_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dcase_strong": (("labels", "audio"), ("as_weak",)),
    "dcase_weak": (("labels", "audio"), ()),
    "urbansed": (("audio", "annotations"), ("as_weak",)),
    "audioset_strong": (("labels", "label_names", "audio"), ("filename_template", "as_weak")),
    "dcase_reference": (("labels", "audio"), ()),
}


STRONG_FORMATS: frozenset[str] = frozenset({"dcase_strong", "urbansed", "audioset_strong"})


_FILE_KEYS = ("labels", "label_names")  # must be local files


_DIR_KEYS = ("annotations",)  # must be local folders


#: Splits that need onset/offset labels (training the f student, validation, test).
_STRONG_ROLES = ("source_train", "source_val", "target_val", "target_test", TARGET_TRAIN_STRONG)


def canonical_path(path: str) -> str:
    """A path key for "same file?" checks: symlinks resolved; URIs as written."""
    return path if is_uri(path) else os.path.realpath(path)


class SpecError(ValueError):
    """The dataset spec or the corpus it describes is unusable; names the file, key and fix."""


@dataclass(frozen=True)
class SplitSpec:
    """One entry of the spec: a split (or the reference pool), its format and files.

    Paths are resolved: absolute local paths, or URIs (``s3://...``) for ``audio``.
    """

    role: str  # a split name, "target_train_strong" or "references"
    format: str  # a key of FORMAT_KEYS
    audio: str  # folder the audio filenames are relative to
    labels: str | None = None  # label TSV (all formats but urbansed)
    annotations: str | None = None  # urbansed: folder of per-file .txt annotations
    label_names: str | None = None  # audioset_strong: mid_to_display_name.tsv
    filename_template: str = DEFAULT_AUDIOSET_TEMPLATE  # audioset_strong: audio filename
    as_weak: bool = False  # strong formats: derive weak labels, keep events aside

    @property
    def key(self) -> str:
        """The dotted spec key of this entry, as used in error messages."""
        return REFERENCES if self.role == REFERENCES else f"splits.{self.role}"


@dataclass(frozen=True)
class DatasetSpec:
    """A checked dataset spec (see :func:`load_spec`). Class lists are None when not given."""

    path: str  # the spec file (absolute), named in errors
    name: str
    root: str  # absolute folder (or URI) relative paths were resolved against
    splits: dict[str, SplitSpec]  # role -> entry, in SPLIT_ROLES order
    references: SplitSpec
    source_classes: tuple[str, ...] | None = None
    target_classes: tuple[str, ...] | None = None
    unknown_labels: str = "quarantine"  # quarantine | ignore
    # Carve-out of source_val from source_train; both None when the spec lists source_val.
    source_val_fraction: float | None = None  # fraction of source_train's files, in (0, 0.5]
    source_val_seed: int | None = None  # seed of the file permutation

    @property
    def carves_source_val(self) -> bool:
        """True when source_val is not in the spec and is carved from source_train."""
        return CARVED_SPLIT not in self.splits

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-safe dict of the resolved spec (e.g. to record with a build)."""
        return dataclasses.asdict(self)


def _fail(spec_path: str, problems: list[str]) -> SpecError:
    if len(problems) == 1:
        return SpecError(f"dataset spec '{spec_path}': {problems[0]}")
    listed = "\n".join(f"  - {p}" for p in problems)
    return SpecError(f"dataset spec '{spec_path}' has {len(problems)} problems:\n{listed}")


def _resolve(value: str, root: str) -> str:
    value = os.path.expanduser(value)
    if is_uri(value):
        return value
    if os.path.isabs(value):
        return os.path.normpath(value)
    if is_uri(root):
        return root.rstrip("/") + "/" + value
    return os.path.normpath(os.path.join(root, value))


def _class_list(value: Any, key: str, problems: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        problems.append(f"{key}: expected a non-empty list of class names, got {value!r}")
        return None
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        problems.append(f"{key}: class names must be non-empty strings, got {bad!r}")
        return None
    dupes = sorted(c for c, n in Counter(value).items() if n > 1)
    if dupes:
        problems.append(f"{key}: class(es) listed twice: {', '.join(dupes)}; list each once")
        return None
    return tuple(value)


def _check_template(template: str) -> str | None:
    try:
        render_audioset_filename(template, "YxlGt805lTA_30000")
    except (KeyError, ValueError, IndexError) as exc:
        return (
            f"cannot be rendered ({exc!r}); use the fields {{segment_id}}, {{ytid}}, "
            "{start_ms} or {start_s}, e.g. '{segment_id}.wav'"
        )
    return None


def _split_entry(role: str, data: Any, root: str, problems: list[str]) -> SplitSpec | None:
    key = REFERENCES if role == REFERENCES else f"splits.{role}"
    if not isinstance(data, dict):
        problems.append(
            f"{key}: expected a mapping like {{format: dcase_strong, labels: ..., audio: ...}}, "
            f"got {data!r}"
        )
        return None
    fmt = data.get("format")
    if fmt not in FORMAT_KEYS:
        problems.append(
            f"{key}.format: unknown format {fmt!r}; use one of {', '.join(FORMAT_KEYS)}"
        )
        return None
    required, optional = FORMAT_KEYS[fmt]
    allowed = ("format",) + required + optional
    ok = True
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        problems.append(
            f"{key}: unknown key(s) {', '.join(unknown)} for format {fmt}; valid keys: "
            f"{', '.join(allowed)}"
        )
        ok = False
    missing = [k for k in required if k not in data]
    if missing:
        problems.append(f"{key}: format {fmt} needs key(s) {', '.join(missing)}")
        ok = False
    if role == REFERENCES and fmt != "dcase_reference":
        problems.append(f"{key}.format: the reference pool must use format dcase_reference")
        ok = False
    if role != REFERENCES and fmt == "dcase_reference":
        problems.append(
            f"{key}.format: dcase_reference is only for the top-level 'references' entry; "
            "use dcase_strong, dcase_weak, urbansed or audioset_strong"
        )
        ok = False
    if role in _STRONG_ROLES and fmt not in STRONG_FORMATS:
        problems.append(
            f"{key}.format: {role} needs onset/offset labels but {fmt} has none; use one of "
            f"{', '.join(sorted(STRONG_FORMATS))}"
        )
        ok = False
    as_weak = data.get("as_weak", False)
    if not isinstance(as_weak, bool):
        problems.append(f"{key}.as_weak: expected true or false, got {as_weak!r}")
        ok = False
    if role == "target_train" and fmt in STRONG_FORMATS and as_weak is not True:
        problems.append(
            f"{key}: the target domain trains from weak labels but format {fmt} gives strong "
            "ones; add 'as_weak: true' (weak labels are derived, events kept aside for the SS "
            "baseline) or use format dcase_weak"
        )
        ok = False
    resolved: dict[str, str] = {}
    for name in required + optional:
        if name not in data or name == "as_weak":
            continue
        value = data[name]
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{key}.{name}: expected a non-empty string, got {value!r}")
            ok = False
            continue
        if name == "filename_template":
            err = _check_template(value)
            if err:
                problems.append(f"{key}.filename_template {value!r} {err}")
                ok = False
            resolved[name] = value
            continue
        path = _resolve(value, root)
        resolved[name] = path
        if name in _FILE_KEYS or name in _DIR_KEYS:
            if is_uri(path):
                problems.append(
                    f"{key}.{name}: '{path}' must be a local path (label files are small: "
                    "copy them locally); only audio may live at a URI"
                )
                ok = False
            elif name in _FILE_KEYS and not os.path.isfile(path):
                problems.append(
                    f"{key}.{name}: file '{path}' does not exist; fix the path (relative paths "
                    f"resolve against root '{root}')"
                )
                ok = False
            elif name in _DIR_KEYS and not os.path.isdir(path):
                problems.append(
                    f"{key}.{name}: folder '{path}' does not exist; fix the path (relative "
                    f"paths resolve against root '{root}')"
                )
                ok = False
        elif name == "audio" and not is_uri(path) and not os.path.isdir(path):
            problems.append(
                f"{key}.audio: folder '{path}' does not exist; fix the path (relative paths "
                f"resolve against root '{root}')"
            )
            ok = False
    if not ok:
        return None
    return SplitSpec(role=role, format=fmt, as_weak=as_weak, **resolved)


def spec_from_dict(data: Any, *, path: str | os.PathLike[str]) -> DatasetSpec:
    """Check a parsed spec mapping; ``path`` is the spec file (relative root resolves to it)."""
    spec_path = os.path.abspath(str(path))
    if not isinstance(data, dict):
        raise _fail(spec_path, [f"expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}"])
    problems: list[str] = []
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    for k in unknown:
        hint = ""
        if k in SPLIT_ROLES:
            hint = f" ('{k}' belongs under 'splits:')"
        problems.append(
            f"{k}: unknown key{hint}; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}"
        )
    name = data.get("name", Path(spec_path).stem)
    if not isinstance(name, str):
        problems.append(f"name: expected a string, got {name!r}")
        name = str(name)
    root_value = data.get("root", ".")
    if not isinstance(root_value, str) or not root_value.strip():
        problems.append(f"root: expected a folder path, got {root_value!r}")
        root_value = "."
    root = _resolve(root_value, os.path.dirname(spec_path))
    if not is_uri(root) and not os.path.isdir(root):
        problems.append(
            f"root: folder '{root}' does not exist (a relative root resolves against the spec "
            "file's folder); fix the path"
        )
    source_classes = _class_list(data.get("source_classes"), "source_classes", problems)
    target_classes = _class_list(data.get("target_classes"), "target_classes", problems)
    mode = data.get("unknown_labels", "quarantine")
    if mode not in UNKNOWN_LABEL_MODES:
        problems.append(
            f"unknown_labels: expected one of {', '.join(UNKNOWN_LABEL_MODES)}, got {mode!r}"
        )
    splits_data = data.get("splits")
    splits: dict[str, SplitSpec] = {}
    if not isinstance(splits_data, dict):
        problems.append(
            f"splits: expected a mapping of split entries ({', '.join(REQUIRED_SPLITS)}, "
            f"optional {CARVED_SPLIT} and {TARGET_TRAIN_STRONG}), got {splits_data!r}"
        )
        splits_data = {}
    for k in sorted(set(splits_data) - set(SPLIT_ROLES)):
        hint = " (the reference pool is the top-level key 'references')" if k == REFERENCES else ""
        problems.append(f"splits.{k}: unknown split{hint}; valid splits: {', '.join(SPLIT_ROLES)}")
    fraction, seed = _carve_settings(data, carve=CARVED_SPLIT not in splits_data, problems=problems)
    for role in REQUIRED_SPLITS:
        if role not in splits_data:
            problems.append(
                f"splits.{role}: required split is missing; add an entry such as "
                f"'{role}: {{format: dcase_strong, labels: ..., audio: ...}}'"
            )
    for role in SPLIT_ROLES:
        if role in splits_data:
            entry = _split_entry(role, splits_data[role], root, problems)
            if entry is not None:
                splits[role] = entry
    references: SplitSpec | None = None
    if "references" not in data:
        problems.append(
            "references: required entry is missing; add "
            "'references: {format: dcase_reference, labels: ..., audio: ...}'"
        )
    else:
        references = _split_entry(REFERENCES, data["references"], root, problems)
    strong = splits.get(TARGET_TRAIN_STRONG)
    weak = splits.get("target_train")
    if strong is not None and weak is not None:
        if weak.as_weak:
            problems.append(
                f"splits.{TARGET_TRAIN_STRONG}: target_train already keeps its own events "
                "(as_weak: true); remove one of the two"
            )
        elif canonical_path(strong.audio) != canonical_path(weak.audio):
            problems.append(
                f"splits.{TARGET_TRAIN_STRONG}.audio: '{strong.audio}' must be target_train's "
                f"audio folder '{weak.audio}' (its events are matched to target_train's files "
                "by filename)"
            )
    if problems:
        raise _fail(spec_path, problems)
    assert references is not None
    return DatasetSpec(
        path=spec_path,
        name=name,
        root=root,
        splits=splits,
        references=references,
        source_classes=source_classes,
        target_classes=target_classes,
        unknown_labels=mode,
        source_val_fraction=fraction,
        source_val_seed=seed,
    )


def _carve_settings(
    data: dict[str, Any], *, carve: bool, problems: list[str]
) -> tuple[float | None, int | None]:
    """Check ``source_val_fraction`` / ``source_val_seed``; their values when carving, else None.

    With an explicit ``splits.source_val`` the two keys have no meaning and are errors (rather
    than silently ignored); without it they default to 0.15 and 0 and are checked.
    """
    given = [k for k in ("source_val_fraction", "source_val_seed") if k in data]
    if not carve:
        for k in given:
            problems.append(
                f"{k}: only used when splits.{CARVED_SPLIT} is absent (source_val is then carved "
                f"from {CARVED_FROM}); remove {k} or remove splits.{CARVED_SPLIT}"
            )
        return None, None
    fraction = data.get("source_val_fraction", DEFAULT_SOURCE_VAL_FRACTION)
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0.0 < fraction <= MAX_SOURCE_VAL_FRACTION
    ):
        problems.append(
            f"source_val_fraction: expected a number in (0, {MAX_SOURCE_VAL_FRACTION}] (the "
            f"fraction of {CARVED_FROM}'s audio files carved out as {CARVED_SPLIT}), got "
            f"{fraction!r}; e.g. source_val_fraction: {DEFAULT_SOURCE_VAL_FRACTION}"
        )
        fraction = DEFAULT_SOURCE_VAL_FRACTION
    seed = data.get("source_val_seed", DEFAULT_SOURCE_VAL_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(
            f"source_val_seed: expected an integer (the seed of the {CARVED_SPLIT} carve-out), "
            f"got {seed!r}; e.g. source_val_seed: {DEFAULT_SOURCE_VAL_SEED}"
        )
        seed = DEFAULT_SOURCE_VAL_SEED
    return float(fraction), seed


def load_spec(path: str | os.PathLike[str]) -> DatasetSpec:
    """Read and check a dataset spec YAML; nothing of the corpus is read yet.

    Raises :class:`SpecError` naming the spec file, every bad key and the fix: unknown keys or
    formats, missing required splits (source_train, target_train, target_val, target_test,
    references; source_val is optional and carved from source_train when absent), a bad
    ``source_val_fraction`` / ``source_val_seed``, label files or folders that do not exist, a
    weak format where onset/offset labels are needed.
    """
    spec_path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(spec_path):
        raise SpecError(f"dataset spec '{spec_path}' not found; fix the path")
    try:
        with open(spec_path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise SpecError(f"dataset spec '{spec_path}' is not valid YAML: {exc}") from exc
    return spec_from_dict(data, path=spec_path)
