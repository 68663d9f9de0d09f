"""Reading built features back: Ray Datasets of TSD samples, streamed with flat memory.

Mixture rows (one mel each) are expanded into sample rows on the fly by a ``map_batches``
step, so the spectrogram is stored once however many targets a mixture has.

Sample batch keys and shapes (``B`` samples, ``T`` input frames, ``F`` mels, ``T'`` = T // 2):

    mel           (B, T, F) float16   log-mel of the mixture
    frame_labels  (B, T')   float32   target activity per 40 ms frame (0 when not strong)
    has_strong    (B,)      bool      frame labels are real (strong corpus)
    clip_label    (B,)      float32   1 if the target occurs in the mixture
    target_idx    (B,)      int64     index into manifest["classes"]
    ref_idx       (B,)      int64     row of the reference table; -1: draw one at training time
    domain        (B,)      int64     0 source, 1 target
    n_valid       (B,)      int64     output frames holding real signal
    sample_id, mixture_id, target (B,) str      only with ``with_ids=True`` (evaluation)
    event_onsets, event_offsets (B,) object      the target's true events (s), same condition
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow.parquet as pq

from tsd_ray.common import storage
from tsd_ray.common.ray_env import quiet_data_context
from tsd_ray.data.samples import frame_activity

NUMERIC_KEYS = (
    "mel",
    "frame_labels",
    "has_strong",
    "clip_label",
    "target_idx",
    "ref_idx",
    "domain",
    "n_valid",
)
DOMAIN_ID = {"source": 0, "target": 1}


class FeaturesError(FileNotFoundError):
    """Built features are missing or incomplete."""


class CorruptShardError(ValueError):
    """A feature shard exists but is not a readable Parquet file (e.g. truncated by a copy)."""


def _shard_error(uri: str, exc: BaseException) -> CorruptShardError:
    return CorruptShardError(
        f"{uri}: corrupt feature shard ({type(exc).__name__}: {exc}). Nothing was changed; to "
        "rebuild only this shard, delete it and its record _shards/<split>-<index>.json beside "
        "it, then run jobs/build_dataset.py again with the same --out"
    )


def open_shard(uri: str) -> pq.ParquetFile:
    """A Parquet shard opened for reading; CorruptShardError naming it if it cannot be."""
    fs, path = storage.resolve(uri)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise _shard_error(uri, exc) from exc


_CHECKED: set[str] = set()  # shards whose footer was read in this process (they are immutable)


def check_shards(uris: Sequence[str]) -> None:
    """Read every shard's Parquet footer (in parallel, once per process) before Ray Data does.

    Ray Data reads footers of a sample of files and fails on the others later without naming
    them; this names the corrupt file up front. Costs one footer read per file (~50 ms on S3,
    16 at a time), only the first time a file is seen.
    """
    from concurrent.futures import ThreadPoolExecutor

    todo = [u for u in uris if u not in _CHECKED]
    if not todo:
        return

    def footer(uri: str) -> None:
        open_shard(uri).metadata  # noqa: B018 - reading the footer is the check

    with ThreadPoolExecutor(max_workers=min(16, len(todo))) as pool:
        list(pool.map(footer, todo))
    _CHECKED.update(todo)


@dataclass(frozen=True)
class Manifest:
    uri: str
    data: dict

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def source_classes(self) -> list[str]:
        return list(self.data["source_classes"])

    @property
    def target_classes(self) -> list[str]:
        return list(self.data["target_classes"])

    @property
    def n_frames(self) -> int:
        return int(self.data["n_frames"])

    @property
    def n_output_frames(self) -> int:
        return int(self.data["n_output_frames"])

    @property
    def output_hop_s(self) -> float:
        return float(self.data["output_hop_s"])

    @property
    def n_mels(self) -> int:
        return int(self.data["frontend"]["n_mels"])

    def has_split(self, split: str) -> bool:
        return bool(self.data["splits"].get(split, {}).get("files"))

    def files(self, split: str) -> list[str]:
        entry = self.data["references"] if split == "references" else self.data["splits"].get(split)
        if not entry or not entry.get("files"):
            raise FeaturesError(
                f"{self.uri}: split '{split}' has no rows (splits built: "
                f"{', '.join(k for k, v in self.data['splits'].items() if v.get('files'))})"
            )
        return [storage.join(self.uri, f) for f in entry["files"]]

    def count(self, split: str) -> tuple[int, int]:
        """(mixtures, samples) of a split."""
        e = self.data["splits"].get(split, {})
        return int(e.get("mixtures", 0)), int(e.get("samples", 0))


def load_manifest(features: str) -> Manifest:
    features = storage.expand(features)
    uri = storage.join(features, "manifest.json")
    if not storage.exists(uri):
        raise FeaturesError(
            f"no manifest.json under {features}: the features are not built (or the build was "
            f"interrupted); run jobs/build_dataset.py --spec SPEC --out {features}"
        )
    return Manifest(features, storage.read_json(uri))


def reference_ids(manifest: Manifest) -> list[str]:
    """Reference ids in table order (the order of the embedding table rows)."""
    ids: list[str] = []
    for f in manifest.files("references"):
        ids += open_shard(f).read(columns=["reference_id"]).column(0).to_pylist()
    return ids


def reference_mels(manifest: Manifest) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels, log-mels (N, T_ref, F) and valid frames (N,) of the reference pool in table
    order, read with pyarrow alone: the whole pool, small enough for every training worker to hold."""
    labels: list[str] = []
    mels: list[np.ndarray] = []
    n_frames: list[int] = []
    for f in manifest.files("references"):
        t = open_shard(f).read(columns=["label", "mel", "n_frames"])
        labels += t.column("label").to_pylist()
        n_frames += t.column("n_frames").to_pylist()
        for chunk in t.column("mel").chunks:
            mels.append(chunk.to_numpy_ndarray())
    if not mels:
        raise FeaturesError(f"{manifest.uri}: the features hold no reference clips; rebuild them")
    return labels, np.concatenate(mels).astype(np.float32, copy=False), np.asarray(n_frames, dtype=np.int64)


def expand_batch(
    batch: dict[str, np.ndarray],
    *,
    class_index: dict[str, int],
    ref_index: dict[str, int],
    n_out: int,
    hop_s: float,
    with_ids: bool = False,
) -> dict[str, np.ndarray]:
    """Mixture rows -> sample rows (pure numpy; the map_batches step of every reader)."""
    out: dict[str, list] = {k: [] for k in NUMERIC_KEYS}
    out["owner"] = []  # the mixture row of each sample (for pack_batch)
    if with_ids:
        out["sample_id"], out["mixture_id"], out["target"] = [], [], []
        out["event_onsets"], out["event_offsets"] = [], []
    for i in range(len(batch["mixture_id"])):
        onsets = np.asarray(batch["event_onsets"][i], dtype=np.float64)
        offsets = np.asarray(batch["event_offsets"][i], dtype=np.float64)
        labels = np.asarray(batch["event_labels"][i], dtype=object)
        strong = bool(batch["has_strong"][i])
        n_valid = min(n_out, int(batch["n_frames"][i]) // 2)
        domain = DOMAIN_ID[str(batch["domain"][i])]
        for sid, target, clip, ref in zip(
            batch["sample_ids"][i],
            batch["sample_targets"][i],
            batch["sample_clip_labels"][i],
            batch["sample_reference_ids"][i],
        ):
            if strong:
                y = frame_activity(onsets[labels == target], offsets[labels == target], n_frames=n_out,
                                   hop_s=hop_s, dtype=np.float32)
            else:
                y = np.zeros(n_out, dtype=np.float32)
            out["mel"].append(batch["mel"][i])
            out["frame_labels"].append(y)
            out["has_strong"].append(strong)
            out["clip_label"].append(float(clip))
            out["target_idx"].append(class_index[str(target)])
            if ref and str(ref) not in ref_index:
                raise FeaturesError(
                    f"sample {sid}: its fixed reference '{ref}' is not in the reference table (the "
                    "build left it out); these features predate fixed references drawn after the "
                    "audio check: build them again into a new --out folder (jobs/build_dataset.py)"
                )
            out["ref_idx"].append(ref_index[str(ref)] if ref else -1)
            out["domain"].append(domain)
            out["n_valid"].append(n_valid)
            out["owner"].append(i)
            if with_ids:
                out["sample_id"].append(str(sid))
                out["mixture_id"].append(str(batch["mixture_id"][i]))
                out["target"].append(str(target))
                keep = labels == target
                out["event_onsets"].append(onsets[keep].astype(np.float32))
                out["event_offsets"].append(offsets[keep].astype(np.float32))
    if not out["mel"]:
        T, F = batch["mel"].shape[1:] if len(batch["mel"]) else (0, 0)
        empty = {k: np.zeros((0,), dtype=np.float32) for k in out}
        empty["mel"] = np.zeros((0, T, F), dtype=np.float16)
        empty["frame_labels"] = np.zeros((0, n_out), dtype=np.float32)
        empty["owner"] = np.zeros((0,), dtype=np.int64)
        return empty
    res = {
        "mel": np.stack(out["mel"]),
        "frame_labels": np.stack(out["frame_labels"]),
        "has_strong": np.asarray(out["has_strong"], dtype=bool),
        "clip_label": np.asarray(out["clip_label"], dtype=np.float32),
        "target_idx": np.asarray(out["target_idx"], dtype=np.int64),
        "ref_idx": np.asarray(out["ref_idx"], dtype=np.int64),
        "domain": np.asarray(out["domain"], dtype=np.int64),
        "n_valid": np.asarray(out["n_valid"], dtype=np.int64),
        "owner": np.asarray(out["owner"], dtype=np.int64),
    }
    if with_ids:
        for key in ("sample_id", "mixture_id", "target"):
            res[key] = np.asarray(out[key], dtype=object)
        for key in ("event_onsets", "event_offsets"):
            col = np.empty(len(out[key]), dtype=object)
            col[:] = out[key]
            res[key] = col
    return res


#: Per-sample columns of a packed (one row per mixture) training batch, each row holding
#: that mixture's samples: (k,) arrays, and (k, T') for the frame labels.
PACKED_SAMPLE_KEYS = ("frame_labels", "clip_label", "target_idx", "ref_idx")
#: Per-mixture columns of a packed batch.
PACKED_MIXTURE_KEYS = ("mel", "has_strong", "domain", "n_valid")


def pack_batch(samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sample rows (from :func:`expand_batch`) -> one row per mixture holding all its samples.

    Training reads mixtures packed this way so a batch holds whole mixtures: the detector's CNN
    does not see the reference, so it runs once per mixture instead of once per sample (a
    mixture of the demo corpus gives 3.3 samples). Per-mixture columns: ``mel``,
    ``has_strong``, ``domain``, ``n_valid``; per-sample columns (:data:`PACKED_SAMPLE_KEYS`)
    become object arrays of each mixture's (k,) / (k, T') arrays. :func:`collate_packed`
    undoes it on the worker.
    """
    owner = samples["owner"]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if len(owner) else np.zeros(0, dtype=np.int64)
    out = {k: samples[k][starts] for k in PACKED_MIXTURE_KEYS}
    bounds = np.r_[starts, len(owner)]
    for k in PACKED_SAMPLE_KEYS:
        col = np.empty(len(starts), dtype=object)
        col[:] = [samples[k][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        out[k] = col
    return out


def collate_packed(batch: dict[str, np.ndarray]) -> dict:
    """A numpy batch of packed mixtures -> torch tensors: ``mel`` (U, T, F) and the mixture
    columns once per mixture (``mix_domain``, ``mix_n_valid``), the sample columns of
    :data:`NUMERIC_KEYS` once per sample (B = all samples of the U mixtures), and ``mix`` (B,),
    the ``mel`` row of each sample."""
    import torch

    counts = np.array([len(x) for x in batch["target_idx"]], dtype=np.int64)
    mix = np.repeat(np.arange(len(counts)), counts)
    out = {k: torch.from_numpy(np.concatenate(list(batch[k]))) for k in PACKED_SAMPLE_KEYS}
    out["mel"] = torch.from_numpy(np.array(batch["mel"]))  # a writable copy (Arrow's is read-only)
    out["mix"] = torch.from_numpy(mix)
    out["mix_domain"] = torch.from_numpy(np.array(batch["domain"], dtype=np.int64))
    out["mix_n_valid"] = torch.from_numpy(np.array(batch["n_valid"], dtype=np.int64))
    for k in ("has_strong", "domain", "n_valid"):
        out[k] = torch.from_numpy(np.asarray(batch[k])[mix])  # fancy indexing copies
    return out


def packed_collate_fn():
    """:func:`collate_packed` as Ray Data wants a ``collate_fn`` (a ``NumpyBatchCollateFn``)."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class PackedCollate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]) -> dict:
            return collate_packed(batch)

    return PackedCollate()


def _expander(manifest: Manifest, refs: Sequence[str] | None, with_ids: bool, packed: bool = False):
    refs = reference_ids(manifest) if refs is None else refs
    expand = partial(
        expand_batch,
        class_index={c: i for i, c in enumerate(manifest.classes)},
        ref_index={r: i for i, r in enumerate(refs)},
        n_out=manifest.n_output_frames,
        hop_s=manifest.output_hop_s,
        with_ids=with_ids,
    )
    if packed:
        if with_ids:
            raise ValueError("packed rows are for training; evaluation reads sample rows with ids")
        return lambda rows: pack_batch(expand(rows))

    def sample_rows(rows):
        out = expand(rows)
        del out["owner"]
        return out

    return sample_rows


_MIXTURE_COLUMNS = [
    "mixture_id",
    "domain",
    "n_frames",
    "mel",
    "has_strong",
    "event_onsets",
    "event_offsets",
    "event_labels",
    "sample_ids",
    "sample_targets",
    "sample_clip_labels",
    "sample_reference_ids",
]


class _ShardStream:
    """Ray Data UDF: one shard path in, its sample batches out (a generator: streams).

    One task per Parquet shard, reading 16 mixtures at a time and expanding them, so the first
    batch arrives after one row group and memory stays flat however large the split is (Ray
    2.60's ``read_parquet`` bundled a whole small split into one read task and one block).
    """

    def __init__(self, expand, fraction: float | None, seed: int, batch_rows: int = 16,
                 columns: Sequence[str] = tuple(_MIXTURE_COLUMNS)):
        self.expand = expand
        self.fraction = fraction
        self.seed = seed
        self.batch_rows = batch_rows
        self.columns = list(columns)

    def __call__(self, batch: dict):
        for uri, index in zip(batch["uri"], batch["index"]):
            pf = open_shard(str(uri))
            rng = np.random.default_rng([self.seed, int(index)])
            for rb in pf.iter_batches(batch_size=self.batch_rows, columns=self.columns):
                rows = _record_batch_to_numpy(rb)
                if self.fraction is not None and self.fraction < 1.0:
                    keep = rng.random(len(rows["mixture_id"])) < self.fraction
                    if not keep.any():
                        continue
                    rows = {k: v[keep] for k, v in rows.items()}
                out = self.expand(rows)
                if len(out["mel"]):
                    yield out


def _record_batch_to_numpy(rb) -> dict[str, np.ndarray]:
    batch = {}
    for name in rb.schema.names:
        col = rb.column(name)
        if name == "mel":
            batch[name] = col.to_numpy_ndarray()
        else:
            values = col.to_pylist()
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            batch[name] = arr
    return batch


def read_samples(
    features: str | Manifest,
    split: str,
    *,
    with_ids: bool = False,
    reference_table: Sequence[str] | None = None,
    fraction: float | None = None,
    seed: int = 0,
    packed: bool = False,
):
    """Ray Dataset of the TSD samples of ``split`` (batch keys above), streamed from Parquet.

    ``fraction`` keeps a random share of the mixtures (e.g. to balance an auxiliary domain),
    drawn per shard with ``seed``. ``packed``: one row per mixture holding all its samples
    (:func:`pack_batch`; training reads these through :func:`collate_packed`).
    """
    import ray

    quiet_data_context()
    manifest = features if isinstance(features, Manifest) else load_manifest(features)
    files = manifest.files(split)
    check_shards(files)
    items = [{"uri": f, "index": i} for i, f in enumerate(files)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(
        _ShardStream(_expander(manifest, reference_table, with_ids, packed), fraction, seed),
        batch_size=1,
        batch_format="numpy",
    )


def read_mixture_items(features: str | Manifest, splits: Sequence[str], make_items, *,
                       extra_columns: Sequence[str] = ()):
    """Ray Dataset of what ``make_items`` (mixture rows -> item columns) makes of ``splits``.

    Streamed one task per shard, 16 mixtures at a time, like :func:`read_samples`; the
    encoder's items (:mod:`tsd_ray.train.encoder_items`) are made this way.
    """
    import ray

    quiet_data_context()
    manifest = features if isinstance(features, Manifest) else load_manifest(features)
    files = [f for split in splits for f in manifest.files(split)]
    check_shards(files)
    items = [{"uri": f, "index": i} for i, f in enumerate(files)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    stream = _ShardStream(make_items, None, 0, columns=[*_MIXTURE_COLUMNS, *extra_columns])
    return ds.map_batches(stream, batch_size=1, batch_format="numpy")


def read_references(features: str | Manifest):
    """Ray Dataset of reference clips: reference_id, label, mel (B, T_ref, F), n_frames."""
    import ray

    quiet_data_context()
    manifest = features if isinstance(features, Manifest) else load_manifest(features)
    files = manifest.files("references")
    check_shards(files)
    fs, _ = storage.resolve(files[0])
    return ray.data.read_parquet(
        [storage.resolve(f)[1] for f in files],
        filesystem=fs,
        columns=["reference_id", "label", "mel", "n_frames"],
    )


def iter_local(
    features: str | Manifest, split: str, *, batch_rows: int = 16, with_ids: bool = True
) -> Iterator[dict[str, np.ndarray]]:
    """Sample batches read with pyarrow alone (no Ray): small evaluations, tests, tools."""
    manifest = features if isinstance(features, Manifest) else load_manifest(features)
    expand = _expander(manifest, None, with_ids)
    for f in manifest.files(split):
        pf = open_shard(f)
        for rb in pf.iter_batches(batch_size=batch_rows, columns=_MIXTURE_COLUMNS):
            yield expand(_record_batch_to_numpy(rb))


def read_mixture_table(features: str | Manifest, split: str, columns: Sequence[str] | None = None):
    """A split's mixture rows as one pyarrow Table (small splits only)."""
    import pyarrow as pa

    manifest = features if isinstance(features, Manifest) else load_manifest(features)
    tables = []
    for f in manifest.files(split):
        tables.append(open_shard(f).read(columns=list(columns) if columns else None))
    return pa.concat_tables(tables)
