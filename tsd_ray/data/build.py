"""Feature build on Ray Data: corpus -> TSD samples -> sharded log-mel Parquet.

Layout under the output URI::

    manifest.json                 written last: classes, splits, shards, counts, corpus notes
                                  (build complete)
    _build.json                   build key (config + corpus digest): a re-run must match it
    quarantine.tsv                item, split, reason: everything left out, nothing silently lost
    summary.json                  sample counts per split and class
    <split>/part-00000.parquet    one row per mixture: its mel once + its samples beside it
    references/part-00000.parquet one row per reference clip
    _shards/<split>-00000.json    per-shard completion record (rows written, quarantined items)

A shard is finished when its ``_shards`` record exists (written after the Parquet file), so an
interrupted build resumes by skipping finished shards. Each shard is one unit of work of a Ray
Data ``map_batches`` over an actor pool (GPU mels when present); :func:`extract_shard` is the
pure core, and serial and distributed builds give identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tsd_ray.common import storage
from tsd_ray.common.config import BuildConfig, FrontendConfig, SamplesConfig, to_dict
from tsd_ray.common.progress import say
from tsd_ray.common.ray_env import cluster_cpus, cluster_gpus, ensure_ray, map_with_actors
from tsd_ray.common.types import REFERENCES, SPLITS, Corpus, Event, MixtureRecord, Quarantined
from tsd_ray.data.audio import SILENCE_RMS, AudioError, load_audio
from tsd_ray.data.features import (
    LogMel,
    n_input_frames,
    n_output_frames,
    output_hop_s,
    pick_device,
)
from tsd_ray.data.samples import build_samples, clip_label_after_crop, summarize

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Events may end this far past the audio's end (rounding in label tools) before the item is
#: rejected as "label outside the clip".
LABEL_TOLERANCE_S = 0.05


class BuildError(RuntimeError):
    """The build cannot go on (e.g. an output folder made from a different corpus/config)."""


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


def mixture_schema(n_frames: int, n_mels: int) -> pa.Schema:
    """One row per mixture; samples and events as parallel lists beside the features."""
    return pa.schema(
        [
            ("mixture_id", pa.string()),
            ("split", pa.string()),
            ("domain", pa.string()),
            ("audio_path", pa.string()),
            ("duration_s", pa.float32()),
            ("n_frames", pa.int32()),  # frames holding real signal (rest is zero padding)
            ("mel", pa.fixed_shape_tensor(pa.float16(), [n_frames, n_mels])),  # (T, F)
            ("has_strong", pa.bool_()),
            ("event_onsets", pa.list_(pa.float32())),
            ("event_offsets", pa.list_(pa.float32())),
            ("event_labels", pa.list_(pa.string())),
            ("has_weak", pa.bool_()),
            ("weak_labels", pa.list_(pa.string())),
            ("sample_ids", pa.list_(pa.string())),
            ("sample_targets", pa.list_(pa.string())),
            ("sample_clip_labels", pa.list_(pa.int8())),
            ("sample_reference_ids", pa.list_(pa.string())),  # "" = drawn at training time
        ]
    )


def reference_schema(n_frames: int, n_mels: int) -> pa.Schema:
    return pa.schema(
        [
            ("reference_id", pa.string()),
            ("label", pa.string()),
            ("audio_path", pa.string()),
            ("duration_s", pa.float32()),
            ("n_frames", pa.int32()),
            ("mel", pa.fixed_shape_tensor(pa.float16(), [n_frames, n_mels])),
        ]
    )


# --------------------------------------------------------------------------------------------
# Planning (driver side, no audio read)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    split: str  # a split of SPLITS, or "references"
    index: int
    items: tuple[dict, ...]  # JSON-safe item descriptions

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}"


def _mixture_item(mix: MixtureRecord, samples) -> dict:
    return {
        "mixture_id": mix.mixture_id,
        "audio_path": mix.audio_path,
        "split": mix.split,
        "domain": mix.domain,
        "events": None
        if mix.events is None
        else [[e.onset, e.offset, e.label] for e in mix.events],
        "weak_labels": None if mix.weak_labels is None else list(mix.weak_labels),
        "samples": [
            [s.sample_id, s.target, s.clip_label, s.reference_id or ""] for s in samples
        ],
    }


def plan_build(
    corpus: Corpus,
    samples_cfg: SamplesConfig,
    build_cfg: BuildConfig,
    unusable_references: Mapping[str, str] | None = None,
) -> tuple[list[ShardPlan], dict]:
    """Shards to write and the sample summary; deterministic for a corpus and seed.

    ``unusable_references`` (reference id -> reason): references the audio check left out; a
    val/test sample whose fixed reference is one of them gets another of its class (see
    :func:`tsd_ray.data.samples.build_samples`). Nothing else of the plan changes.
    """
    refs_by_class: dict[str, list[str]] = {}
    for r in corpus.references:
        refs_by_class.setdefault(r.label, []).append(r.reference_id)
    shards: list[ShardPlan] = []
    samples_by_split = {}
    for split_index, split in enumerate(SPLITS):
        mixtures = corpus.mixtures.get(split, ())
        domain_classes = corpus.source_classes if split.startswith("source") else corpus.target_classes
        by_mix = build_samples(
            mixtures,
            domain_classes,
            negatives_per_positive=samples_cfg.negatives_per_positive,
            references=refs_by_class,
            fixed_references=not split.endswith("train"),
            seed=samples_cfg.seed * 1000 + split_index,
            unusable_references=unusable_references,
        )
        samples_by_split[split] = by_mix
        ordered = sorted(mixtures, key=lambda m: m.mixture_id)
        items = [_mixture_item(m, by_mix[m.mixture_id]) for m in ordered]
        shards += _chunk(split, items, build_cfg.rows_per_shard)
    ref_items = [
        {"reference_id": r.reference_id, "audio_path": r.audio_path, "label": r.label}
        for r in sorted(corpus.references, key=lambda r: r.reference_id)
    ]
    shards += _chunk(REFERENCES, ref_items, build_cfg.rows_per_shard)
    return shards, summarize(samples_by_split)


def _chunk(split: str, items: list[dict], size: int) -> list[ShardPlan]:
    return [
        ShardPlan(split, i // size, tuple(items[i : i + size])) for i in range(0, len(items), size)
    ]


def build_key(shards: Sequence[ShardPlan], frontend: FrontendConfig, samples_cfg: SamplesConfig) -> str:
    """Digest of everything that determines the shards' contents."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": FORMAT_VERSION, "frontend": to_dict(frontend), "samples": to_dict(samples_cfg)}, sort_keys=True).encode())
    for s in shards:
        h.update(json.dumps([s.split, s.index, s.items], sort_keys=True).encode())
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------------------------
# The pure core: one shard's items -> Arrow table + quarantined items
# --------------------------------------------------------------------------------------------


def _check_mixture(item: dict, duration: float, frontend: FrontendConfig) -> str | None:
    limit = frontend.clip_s + frontend.max_overhang_s
    if duration > limit:
        return (
            f"audio is {duration:.2f} s, longer than clip_s={frontend.clip_s} "
            f"(+{frontend.max_overhang_s} s); cut it into clips or raise frontend.clip_s"
        )
    for onset, offset, label in item["events"] or ():
        if offset > duration + LABEL_TOLERANCE_S or onset >= duration:
            return (
                f"label outside the clip: '{label}' {onset:.3f}-{offset:.3f} s but the audio "
                f"is {duration:.3f} s long; fix the annotation"
            )
    return None


def extract_shard(
    split: str, items: Sequence[dict], frontend: FrontendConfig, mel: LogMel | None = None
) -> tuple[pa.Table | None, list[Quarantined]]:
    """Decode, check and featurise one shard's items. Bad items are quarantined, not raised."""
    mel = mel or LogMel(frontend)
    is_ref = split == REFERENCES
    seconds = frontend.reference_s if is_ref else frontend.clip_s
    T = n_input_frames(seconds, frontend)
    rows: dict[str, list] = {}
    mels: list[np.ndarray] = []
    bad: list[Quarantined] = []
    for item in items:
        name = item["audio_path"]
        try:
            wave, sr = load_audio(name)
        except AudioError as exc:
            bad.append(Quarantined(name, split, str(exc).removeprefix(f"{name}: ")))
            continue
        duration = len(wave) / sr
        if is_ref:
            if float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) < SILENCE_RMS:
                bad.append(Quarantined(name, split, "reference clip is silent; replace it"))
                continue
            problem = None
        else:
            problem = _check_mixture(item, duration, frontend)
        if problem:
            bad.append(Quarantined(name, split, problem))
            continue
        feats, n_valid = mel(wave, sr, seconds=seconds)
        if feats.shape[0] != T:
            raise AssertionError(f"{name}: got {feats.shape[0]} frames, expected {T}")
        mels.append(feats.astype(np.float16))
        common = {"audio_path": name, "duration_s": duration, "n_frames": n_valid}
        if is_ref:
            row = {"reference_id": item["reference_id"], "label": item["label"], **common}
        else:
            usable = min(duration, frontend.clip_s)
            all_events = None if item["events"] is None else [Event(*e) for e in item["events"]]
            events = [e.clipped(usable) for e in all_events or ()]
            events = [e for e in events if e is not None]
            weak = item["weak_labels"]
            samples = item["samples"]
            # a target whose events all lie in the cropped tail is a negative of the kept audio
            clip_labels = [clip_label_after_crop(s[1], int(s[2]), all_events, events) for s in samples]
            row = {
                "mixture_id": item["mixture_id"],
                "split": item["split"],
                "domain": item["domain"],
                **common,
                "has_strong": item["events"] is not None,
                "event_onsets": [e.onset for e in events],
                "event_offsets": [e.offset for e in events],
                "event_labels": [e.label for e in events],
                "has_weak": weak is not None,
                "weak_labels": list(weak or []),
                "sample_ids": [s[0] for s in samples],
                "sample_targets": [s[1] for s in samples],
                "sample_clip_labels": clip_labels,
                "sample_reference_ids": [s[3] for s in samples],
            }
        for k, v in row.items():
            rows.setdefault(k, []).append(v)
    if not mels:
        return None, bad
    schema = (reference_schema if is_ref else mixture_schema)(T, frontend.n_mels)
    arrays = []
    for field in schema:
        if field.name == "mel":
            arrays.append(pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack(mels)))
        else:
            arrays.append(pa.array(rows[field.name], type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema), bad


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    # No dictionary encoding: it slows float16 decode 2.5-3x (docs/architecture.md, "Parquet layout of float16 features").
    buf = io.BytesIO()
    pq.write_table(table, buf, use_dictionary=False, compression="snappy")
    return buf.getvalue()


def shard_path(out: str, split: str, index: int) -> str:
    return storage.join(out, split, f"part-{index:05d}.parquet")


def record_path(out: str, name: str) -> str:
    return storage.join(out, "_shards", f"{name}.json")


def write_shard(out: str, plan: ShardPlan, frontend: FrontendConfig, mel: LogMel | None = None) -> dict:
    """Extract and write one shard, then its completion record; returns the record."""
    table, bad = extract_shard(plan.split, plan.items, frontend, mel)
    if table is not None:
        storage.write_bytes_atomic(shard_path(out, plan.split, plan.index), table_to_parquet_bytes(table))
    record = {
        "split": plan.split,
        "index": plan.index,
        "rows": 0 if table is None else table.num_rows,
        "samples": 0
        if table is None or plan.split == REFERENCES
        else int(sum(len(x) for x in table.column("sample_ids").to_pylist())),
        "quarantined": [asdict(q) for q in bad],
    }
    storage.write_json_atomic(record_path(out, plan.name), record)
    return record


class _ShardWriter:
    """Ray Data actor: keeps the mel transform (and its device) across shards."""

    def __init__(self, out: str, frontend: dict):
        import torch

        torch.set_num_threads(1)  # one actor per core: no oversubscription
        self.out = out
        self.frontend = FrontendConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in frontend.items()})
        self.mel = LogMel(self.frontend, pick_device(self.frontend.device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = []
        for split, index, payload in zip(batch["split"], batch["index"], batch["items"]):
            plan = ShardPlan(str(split), int(index), tuple(json.loads(payload)))
            records.append(json.dumps(write_shard(self.out, plan, self.frontend, self.mel)))
        return {"record": np.array(records, dtype=object)}


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    out: str
    shards_total: int
    shards_written: int  # in this call (0 when everything was already built)
    quarantined: tuple[Quarantined, ...]
    summary: dict
    seconds: float


def build_features(
    corpus: Corpus,
    out: str,
    *,
    frontend: FrontendConfig,
    samples_cfg: SamplesConfig,
    build_cfg: BuildConfig,
    use_ray: bool = True,
    spec_path: str | None = None,
) -> BuildResult:
    """Write the features of ``corpus`` under ``out`` (local path or URI), resuming if begun."""
    t0 = time.time()
    out = storage.expand(out)
    shards, summary = plan_build(corpus, samples_cfg, build_cfg)
    key = build_key(shards, frontend, samples_cfg)
    key_uri = storage.join(out, "_build.json")
    if storage.exists(key_uri):
        previous = storage.read_json(key_uri)
        if previous.get("key") != key:
            raise BuildError(
                f"{out} holds features built from a different corpus or config "
                f"(build key {previous.get('key')} != {key}); use a new --out folder or delete it"
            )
    else:
        storage.makedirs(out)
        storage.write_json_atomic(key_uri, {"key": key, "version": FORMAT_VERSION})
    done = {
        storage.join(out, "_shards", f"{s.name}.json") for s in shards
    } & set(storage.list_files(storage.join(out, "_shards"), ".json"))
    pending = [s for s in shards if record_path(out, s.name) not in done]
    say(f"build {out}: {len(shards)} shards, {len(pending)} to write")
    # References first: val/test samples may only get a fixed reference that passed the audio
    # check, so the mixtures are planned again once the references' quarantine is known.
    ref_pending = [s for s in pending if s.split == REFERENCES]
    _write_shards(out, ref_pending, frontend, build_cfg, use_ray)
    unusable = _unusable_references(out, corpus, [s for s in shards if s.split == REFERENCES])
    if unusable:
        log.warning("build %s: %d reference clip(s) left out (see quarantine.tsv); fixed references drawn "
                    "without them", out, len(unusable))
        try:
            shards, summary = plan_build(corpus, samples_cfg, build_cfg, unusable)
        except ValueError as exc:
            raise BuildError(f"{out}: {exc}") from exc
        pending = [s for s in shards if s.split != REFERENCES and record_path(out, s.name) not in done]
    else:
        pending = [s for s in pending if s.split != REFERENCES]
    _write_shards(out, pending, frontend, build_cfg, use_ray)
    written = len(ref_pending) + len(pending)
    return _finalise(out, corpus, shards, summary, frontend, key, written, spec_path, t0)


def _write_shards(
    out: str, pending: list[ShardPlan], frontend: FrontendConfig, build_cfg: BuildConfig, use_ray: bool
) -> None:
    """Write ``pending`` shards on Ray Data (``use_ray``) or here, one after the other."""
    if not pending:
        return
    if use_ray:
        _run_on_ray_data(out, pending, frontend, build_cfg)
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 3x less CPU per clip than torch's default threads here
    try:
        mel = LogMel(frontend, pick_device(frontend.device))
        for plan in pending:
            write_shard(out, plan, frontend, mel)
    finally:
        torch.set_num_threads(threads)


def _unusable_references(out: str, corpus: Corpus, ref_shards: Sequence[ShardPlan]) -> dict[str, str]:
    """``{reference_id: reason}`` of the references their (finished) shards quarantined."""
    reasons: dict[str, str] = {}
    for plan in ref_shards:
        for q in storage.read_json(record_path(out, plan.name))["quarantined"]:
            reasons[q["item"]] = q["reason"]
    return {r.reference_id: reasons[r.audio_path] for r in corpus.references if r.audio_path in reasons}


def _run_on_ray_data(out: str, pending: list[ShardPlan], frontend: FrontendConfig, build_cfg: BuildConfig) -> None:
    import ray

    ensure_ray()
    use_gpu = frontend.device != "cpu" and cluster_gpus() > 0
    n = build_cfg.num_workers or max(1, int(cluster_cpus()))
    n = max(1, min(n, len(pending)))
    items = [
        {"split": p.split, "index": p.index, "items": json.dumps(list(p.items))} for p in pending
    ]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = map_with_actors(ds, _ShardWriter, kwargs={"out": out, "frontend": to_dict(frontend)}, size=n,
                         batch_size=1, num_gpus=(cluster_gpus() / n) if use_gpu else 0, batch_format="default")
    for _ in ds.iter_batches(batch_size=None):  # stream; records are also on storage
        pass


def _finalise(out, corpus, shards, summary, frontend, key, written, spec_path, t0) -> BuildResult:
    quarantined = list(corpus.quarantined)
    splits: dict[str, dict[str, Any]] = {}
    for plan in shards:
        rec = storage.read_json(record_path(out, plan.name))
        quarantined += [Quarantined(**q) for q in rec["quarantined"]]
        entry = splits.setdefault(plan.split, {"files": [], "mixtures": 0, "samples": 0})
        if rec["rows"]:
            entry["files"].append(f"{plan.split}/part-{plan.index:05d}.parquet")
        entry["mixtures"] += rec["rows"]
        entry["samples"] += rec["samples"]
    lines = ["item\tsplit\treason"] + [f"{q.item}\t{q.split}\t{q.reason}" for q in quarantined]
    storage.write_bytes_atomic(storage.join(out, "quarantine.tsv"), ("\n".join(lines) + "\n").encode())
    storage.write_json_atomic(storage.join(out, "summary.json"), summary)
    T = n_input_frames(frontend.clip_s, frontend)
    manifest = {
        "version": FORMAT_VERSION,
        "build_key": key,
        "spec": spec_path,
        "frontend": to_dict(frontend),
        "n_frames": T,
        "n_output_frames": n_output_frames(T),
        "output_hop_s": output_hop_s(frontend),
        "reference_frames": n_input_frames(frontend.reference_s, frontend),
        "source_classes": list(corpus.source_classes),
        "target_classes": list(corpus.target_classes),
        "classes": sorted(set(corpus.source_classes) | set(corpus.target_classes)),
        "splits": {k: v for k, v in splits.items() if k != REFERENCES},
        "references": splits.get(REFERENCES, {"files": [], "mixtures": 0}),
        "quarantined": len(quarantined),
        # the corpus's warning notes, e.g. a source_val carved from source_train (its settings)
        "notes": list(corpus.notes),
    }
    storage.write_json_atomic(storage.join(out, "manifest.json"), manifest)
    return BuildResult(out, len(shards), written, tuple(quarantined), summary, time.time() - t0)
