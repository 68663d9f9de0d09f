"""Feature build on Ray Data: layout, quarantine, resume, serial == distributed, round trip."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from tsd_ray import data, storage
from tsd_ray.build import BuildError, build_features
from tsd_ray.config import BuildConfig, FrontendConfig, SamplesConfig
from tsd_ray.features import LogMel, n_input_frames
from tsd_ray.types import SPLIT_DOMAIN, Corpus, Event, MixtureRecord, ReferenceRecord

SR = 16000
FRONT = FrontendConfig(clip_seconds=10.0, reference_seconds=2.0, device="cpu")


def _tone(seconds, freq, rng, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def make_corpus(root, *, corrupt=False, out_of_range=False, n_per_split=3) -> Corpus:
    """A small corpus on disk: 2 source and 2 target classes, 10-s mixtures at 16 kHz."""
    rng = np.random.default_rng(0)
    freqs = {"s1": 500, "s2": 900, "t1": 1400, "t2": 2100}
    mixtures = {}
    for split, domain in SPLIT_DOMAIN.items():
        classes = ["s1", "s2"] if domain == "source" else ["t1", "t2"]
        recs = []
        for i in range(n_per_split):
            wave = 0.01 * rng.standard_normal(10 * SR).astype(np.float32)
            events = []
            for k, c in enumerate(classes[: 1 + i % 2]):
                on = 1.0 + 3.0 * k
                wave[int(on * SR) : int((on + 1.5) * SR)] += _tone(1.5, freqs[c], rng)
                events.append(Event(on, on + 1.5, c))
            path = root / split / f"mix{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wave, SR, subtype="PCM_16")
            weak = tuple(sorted({e.label for e in events})) if split == "target_train" else None
            recs.append(MixtureRecord(f"mix{i}.wav", str(path), split, domain, tuple(events), weak))
        mixtures[split] = recs
    if corrupt:
        bad = root / "source_train" / "corrupt.wav"
        bad.write_bytes(b"RIFF\x00\x00not really a wave file")
        mixtures["source_train"].append(
            MixtureRecord("corrupt.wav", str(bad), "source_train", "source", (Event(1, 2, "s1"),))
        )
    if out_of_range:
        p = root / "source_train" / "mix0.wav"
        mixtures["source_train"].append(
            MixtureRecord("late.wav", str(p), "source_train", "source", (Event(9.0, 14.0, "s1"),))
        )
    refs = []
    for c, f in freqs.items():
        for j in range(2):
            p = root / "refs" / f"{c}_{j}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, _tone(1.5, f * (1 + 0.02 * j), rng), SR)
            refs.append(ReferenceRecord(f"{c}_{j}.wav", str(p), c))
    return Corpus(
        mixtures={k: tuple(v) for k, v in mixtures.items()},
        references=tuple(refs),
        source_classes=("s1", "s2"),
        target_classes=("t1", "t2"),
    )


def _build(corpus, out, use_ray, rows_per_shard=2):
    return build_features(
        corpus,
        str(out),
        frontend=FRONT,
        samples_cfg=SamplesConfig(seed=0),
        build_cfg=BuildConfig(rows_per_shard=rows_per_shard, num_workers=2),
        use_ray=use_ray,
    )


def test_serial_build_layout_and_samples(tmp_path):
    corpus = make_corpus(tmp_path / "c")
    res = _build(corpus, tmp_path / "f", use_ray=False)
    m = data.load_manifest(str(tmp_path / "f"))
    assert m.n_frames == n_input_frames(10.0, FRONT) == 501
    assert m.n_output_frames == 250 and abs(m.output_hop_s - 0.04) < 1e-12
    assert m.classes == ["s1", "s2", "t1", "t2"]
    for split in SPLIT_DOMAIN:
        mixtures, samples = m.count(split)
        assert mixtures == 3 and samples == res.summary[split]["samples"]
    # each mixture's mel stored once; samples beside it
    t = data.read_mixture_table(m, "source_train")
    assert t.num_rows == 3
    assert t.schema.field("mel").type.value_type == "halffloat"
    assert [len(x) for x in t.column("sample_ids").to_pylist()] == [2, 2, 2]  # 1 pos + 1 neg; 2 pos + no absent class left; 1 + 1
    # parquet written without dictionary encoding for the mel column
    meta = pq.ParquetFile(m.files("source_train")[0]).metadata
    mel_col = [meta.row_group(0).column(j) for j in range(meta.num_columns) if "mel" in meta.row_group(0).column(j).path_in_schema][0]
    assert "RLE_DICTIONARY" not in str(mel_col.encodings)
    assert res.quarantined == ()


def test_features_match_direct_computation(tmp_path):
    corpus = make_corpus(tmp_path / "c")
    _build(corpus, tmp_path / "f", use_ray=False)
    m = data.load_manifest(str(tmp_path / "f"))
    t = data.read_mixture_table(m, "source_val")
    rec = corpus.mixtures["source_val"][0]
    wave, sr = sf.read(rec.audio_path, dtype="float32")
    expected, n_valid = LogMel(FRONT)(wave, sr, seconds=10.0)
    got = t.column("mel").combine_chunks().to_numpy_ndarray()[0].astype(np.float32)
    np.testing.assert_allclose(got, expected, atol=2e-2, rtol=2e-3)
    assert t.column("n_frames")[0].as_py() == n_valid


def test_frame_labels_align_with_events_after_round_trip(tmp_path):
    corpus = make_corpus(tmp_path / "c")
    _build(corpus, tmp_path / "f", use_ray=False)
    m = data.load_manifest(str(tmp_path / "f"))
    batches = list(data.iter_local(m, "target_val"))
    ids = np.concatenate([b["sample_id"] for b in batches])
    y = np.concatenate([b["frame_labels"] for b in batches])
    clip = np.concatenate([b["clip_label"] for b in batches])
    row = list(ids).index("mix1.wav#t2")  # t2 event at 4.0-5.5 s
    active = np.flatnonzero(y[row])
    assert active[0] == 100 and active[-1] == 137
    assert clip[row] == 1.0
    negatives = clip == 0
    assert negatives.any() and y[negatives].sum() == 0
    refs = np.concatenate([b["ref_idx"] for b in batches])
    assert (refs >= 0).all()  # val/test have fixed references


def test_quarantine_corrupt_audio_and_out_of_range_label(tmp_path):
    corpus = make_corpus(tmp_path / "c", corrupt=True, out_of_range=True)
    res = _build(corpus, tmp_path / "f", use_ray=False)
    reasons = {os.path.basename(q.item): q.reason for q in res.quarantined}
    assert "corrupt.wav" in reasons and "unreadable" in reasons["corrupt.wav"]
    late = [q for q in res.quarantined if "label outside the clip" in q.reason]
    assert len(late) == 1 and "14.000" in late[0].reason
    report = (tmp_path / "f" / "quarantine.tsv").read_text().splitlines()
    assert report[0] == "item\tsplit\treason" and len(report) == 3
    assert data.load_manifest(str(tmp_path / "f")).count("source_train")[0] == 3  # others kept


def test_resume_skips_finished_shards(tmp_path):
    corpus = make_corpus(tmp_path / "c")
    out = tmp_path / "f"
    first = _build(corpus, out, use_ray=False)
    assert first.shards_written == first.shards_total
    # simulate an interruption: one shard never completed, the manifest never written
    victim = out / "_shards" / "target_train-00001.json"
    victim.unlink()
    (out / "target_train" / "part-00001.parquet").unlink()
    (out / "manifest.json").unlink()
    with pytest.raises(data.FeaturesError, match="not built"):
        data.load_manifest(str(out))
    kept = out / "source_train" / "part-00000.parquet"
    mtime = kept.stat().st_mtime_ns
    second = _build(corpus, out, use_ray=False)
    assert second.shards_written == 1
    assert kept.stat().st_mtime_ns == mtime
    assert data.load_manifest(str(out)).count("target_train") == data.Manifest(str(out), json.loads((out / "manifest.json").read_text())).count("target_train")
    assert (out / "target_train" / "part-00001.parquet").exists()


def test_rebuild_with_other_config_is_refused(tmp_path):
    corpus = make_corpus(tmp_path / "c")
    _build(corpus, tmp_path / "f", use_ray=False)
    with pytest.raises(BuildError, match="different corpus or config"):
        build_features(
            corpus, str(tmp_path / "f"), frontend=FRONT, samples_cfg=SamplesConfig(seed=5),
            build_cfg=BuildConfig(rows_per_shard=2), use_ray=False,
        )


def test_ray_data_build_equals_serial_and_round_trips(tmp_path, ray_local):
    corpus = make_corpus(tmp_path / "c")
    _build(corpus, tmp_path / "serial", use_ray=False)
    res = _build(corpus, tmp_path / "ray", use_ray=True)
    assert res.shards_written == res.shards_total
    for split in list(SPLIT_DOMAIN) + ["references"]:
        a = sorted(storage.list_files(str(tmp_path / "serial" / split)))
        b = sorted(storage.list_files(str(tmp_path / "ray" / split)))
        assert [os.path.basename(x) for x in a] == [os.path.basename(x) for x in b]
        for x, y in zip(a, b):
            assert pq.read_table(x).equals(pq.read_table(y)), f"{split}: {x} differs"
    # round trip through Ray Data into torch batches
    ds = data.read_samples(str(tmp_path / "ray"), "source_train")
    n = 0
    for batch in ds.iter_torch_batches(batch_size=4):
        assert batch["mel"].shape[1:] == (501, 64)
        assert batch["frame_labels"].shape[1] == 250
        n += batch["mel"].shape[0]
    assert n == data.load_manifest(str(tmp_path / "ray")).count("source_train")[1]
    ev = data.read_samples(str(tmp_path / "ray"), "target_test", with_ids=True).take_all()
    assert {r["sample_id"] for r in ev} == {
        s for b in data.iter_local(str(tmp_path / "ray"), "target_test") for s in b["sample_id"]
    }
