"""Feature build on Ray Data: layout, quarantine, resume, serial == distributed, round trip."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from tsd_ray.common import storage
from tsd_ray.common.config import BuildConfig, FrontendConfig, SamplesConfig
from tsd_ray.common.types import SPLIT_DOMAIN, Corpus, Event, MixtureRecord, ReferenceRecord
from tsd_ray.data import shards as data
from tsd_ray.data.build import BuildError, build_features
from tsd_ray.data.features import LogMel, n_input_frames

SR = 16000
FRONT = FrontendConfig(clip_s=10.0, reference_s=2.0, device="cpu")


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


def test_fixed_references_are_drawn_among_references_that_survived_the_audio_check(tmp_path):
    """A reference quarantined by the build (here: silent) is never a val/test sample's fixed
    reference, and reading the splits finds every fixed reference in the table."""
    from tsd_ray.data.build import plan_build

    corpus = make_corpus(tmp_path / "c")
    plans, _ = plan_build(corpus, SamplesConfig(seed=0), BuildConfig(rows_per_shard=2))
    planned = [s[3] for p in plans if p.split in ("target_val", "target_test") for it in p.items for s in it["samples"]]
    victim = sorted(set(planned))[0]  # a reference the plan gives to some sample
    ref = next(r for r in corpus.references if r.reference_id == victim)
    sf.write(ref.audio_path, np.zeros(int(1.5 * SR), dtype=np.float32), SR)  # silent: quarantined
    res = _build(corpus, tmp_path / "f", use_ray=False)
    assert [os.path.basename(q.item) for q in res.quarantined] == [victim]
    m = data.load_manifest(str(tmp_path / "f"))
    table = data.reference_ids(m)
    assert victim not in table
    for split in ("source_val", "target_val", "target_test"):
        t = data.read_mixture_table(m, split)
        refs = [r for row in t.column("sample_reference_ids").to_pylist() for r in row]
        targets = [c for row in t.column("sample_targets").to_pylist() for c in row]
        assert refs and all(r in table for r in refs), split
        labels = {r.reference_id: r.label for r in corpus.references}
        assert all(labels[r] == c for r, c in zip(refs, targets))  # still a reference of its class
        batches = list(data.iter_local(m, split))  # no KeyError
        assert all((b["ref_idx"] >= 0).all() for b in batches)
    # a class whose every reference was dropped cannot be given a fixed reference: a clear error
    other = next(r for r in corpus.references if r.label == ref.label and r.reference_id != victim)
    sf.write(other.audio_path, np.zeros(int(1.5 * SR), dtype=np.float32), SR)
    with pytest.raises(BuildError, match=f"every reference clip of class '{ref.label}'"):
        _build(corpus, tmp_path / "f2", use_ray=False)


def test_clip_label_follows_the_events_left_after_the_crop(tmp_path):
    """A file up to clip_s + max_overhang_s is cropped to clip_s: a target
    whose only event lies in the cropped tail is a negative of the kept audio."""
    corpus = make_corpus(tmp_path / "c", n_per_split=1)
    rng = np.random.default_rng(1)
    wave = 0.01 * rng.standard_normal(int(10.4 * SR)).astype(np.float32)  # 10.4 s: accepted, cropped
    wave[2 * SR : int(3.5 * SR)] += _tone(1.5, 2100, rng)
    wave[int(10.1 * SR) : int(10.35 * SR)] += _tone(0.25, 1400, rng)
    events = (Event(2.0, 3.5, "t2"), Event(10.1, 10.35, "t1"))
    path = tmp_path / "c" / "long.wav"
    sf.write(path, wave, SR, subtype="PCM_16")
    mixtures = dict(corpus.mixtures)
    for split in ("target_val", "target_train"):
        weak = ("t1", "t2") if split == "target_train" else None
        mixtures[split] = (*mixtures[split], MixtureRecord("long.wav", str(path), split, "target", events, weak))
    corpus = Corpus(mixtures=mixtures, references=corpus.references,
                    source_classes=corpus.source_classes, target_classes=corpus.target_classes)
    res = _build(corpus, tmp_path / "f", use_ray=False)
    assert res.quarantined == ()
    m = data.load_manifest(str(tmp_path / "f"))
    for split in ("target_val", "target_train"):
        got = {}
        for b in data.iter_local(m, split):
            for sid, clip, y in zip(b["sample_id"], b["clip_label"], b["frame_labels"]):
                got[str(sid)] = (float(clip), float(y.sum()))
        assert got["long.wav#t2"][0] == 1.0 and got["long.wav#t2"][1] > 0, split
        assert got["long.wav#t1"] == (0.0, 0.0), split  # was clip label 1 with no active frame
