"""Corpus readers and the dataset spec, on fixtures written in the real on-disk shapes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import factory
import pyarrow.parquet as pq
import pytest
import yaml

from tsd_ray.common.types import SPLITS, Event, MixtureRecord
from tsd_ray.data.corpora import (
    CorpusError,
    SpecError,
    load_spec,
    read_audioset_strong,
    read_corpus,
    read_dcase_strong,
    read_dcase_weak,
    read_references,
    read_urbansed,
)
from tsd_ray.data.corpora.reading import carve_source_val

FAST = {"seconds": 0.1, "sr": 8000}  # readers never decode audio: keep the files tiny


def _by_id(records):
    return {r.mixture_id: r for r in records}


def _reasons(quarantined):
    return {Path(q.item).name: q.reason for q in quarantined}


# --------------------------------------------------------------------------------------------
# DESED / DCASE strong
# --------------------------------------------------------------------------------------------


def test_dcase_strong_reads_desed_shape(tmp_path):
    w = factory.write_dcase_strong_fixture(tmp_path, **FAST)
    records, quarantined = read_dcase_strong(
        w.labels, w.audio, split="target_test", domain="target"
    )
    assert quarantined == []
    recs = _by_id(records)
    assert list(recs) == sorted(recs)  # deterministic order
    dog = recs["Y00pbt6aJV8Y_30.000_40.000.wav"]
    assert dog.events == (Event(0.0, 4.971, "Dog"),)
    assert dog.audio_path == str(w.audio / "Y00pbt6aJV8Y_30.000_40.000.wav")
    assert os.path.isabs(dog.audio_path)
    assert (dog.split, dog.domain, dog.weak_labels) == ("target_test", "target", None)
    # events sorted by onset although the TSV lists them out of order
    two = recs["Y0bRUkLsttto_10.000_20.000.wav"].events
    assert [e.onset for e in two] == [0.512, 2.0, 3.187]
    # the no-event row (empty onset/offset/label) is a file with no events, not a problem
    assert recs["Y1nNJNHTEzbg_0.000_10.000.wav"].events == ()


def test_dcase_strong_as_weak_derives_labels_and_keeps_events(tmp_path):
    w = factory.write_dcase_strong_fixture(tmp_path, **FAST)
    records, _ = read_dcase_strong(
        w.labels, w.audio, split="target_train", domain="target", as_weak=True
    )
    recs = _by_id(records)
    assert recs["Y0bRUkLsttto_10.000_20.000.wav"].weak_labels == ("Dog", "Speech")
    assert len(recs["Y0bRUkLsttto_10.000_20.000.wav"].events) == 3
    assert recs["Y1nNJNHTEzbg_0.000_10.000.wav"].weak_labels == ()


def test_dcase_strong_quarantines_bad_items_and_keeps_good_ones(tmp_path):
    rows = [
        ("good.wav", "0.000", "1.000", "Dog"),
        ("nan_onset.wav", "nan", "1.000", "Dog"),
        ("nan_onset.wav", "2.000", "3.000", "Dog"),  # a good row cannot rescue the file
        ("text_offset.wav", "0.5", "end", "Dog"),
        ("reversed.wav", "2.000", "2.000", "Dog"),
        ("negative.wav", "-0.100", "1.000", "Dog"),
        "short_row.wav\t0.000\t1.000",  # line 8: 3 columns
        ("no_audio.wav", "0.000", "1.000", "Dog"),
    ]
    w = factory.write_dcase_strong_fixture(tmp_path, rows, missing_audio=["no_audio.wav"], **FAST)
    records, quarantined = read_dcase_strong(
        w.labels, w.audio, split="source_train", domain="source"
    )
    assert [r.mixture_id for r in records] == ["good.wav"]
    reasons = _reasons(quarantined)
    assert set(reasons) == {
        "nan_onset.wav",
        "text_offset.wav",
        "reversed.wav",
        "negative.wav",
        "short_row.wav",
        "no_audio.wav",
    }
    assert all(q.split == "source_train" for q in quarantined)
    assert "onset is 'nan'" in reasons["nan_onset.wav"] and "line 3" in reasons["nan_onset.wav"]
    assert "offset 'end' is not a number" in reasons["text_offset.wav"]
    assert "not after onset" in reasons["reversed.wav"]
    assert "negative" in reasons["negative.wav"]
    assert "line 8" in reasons["short_row.wav"] and "got 3" in reasons["short_row.wav"]
    assert "not found" in reasons["no_audio.wav"]
    # the item is the audio path, so the report points at the file
    assert all(os.path.isabs(q.item) for q in quarantined)


def test_dcase_strong_bad_header_is_a_file_error(tmp_path):
    labels = factory.write_tsv(
        tmp_path / "x.tsv", None, [("a.wav", "0.0", "1.0", "Dog")]
    )  # header forgotten
    with pytest.raises(CorpusError, match=r"x\.tsv.*header"):
        read_dcase_strong(labels, tmp_path, split="source_train", domain="source")
    with pytest.raises(CorpusError, match="does not exist"):
        read_dcase_strong(tmp_path / "nope.tsv", tmp_path, split="source_train", domain="source")


# --------------------------------------------------------------------------------------------
# DCASE weak
# --------------------------------------------------------------------------------------------


def test_dcase_weak_reads_labels_and_quarantines(tmp_path):
    rows = list(factory.WEAK_ROWS) + [
        ("twice.wav", "Dog"),
        ("twice.wav", "Speech"),
        ("gone.wav", "Dog"),
        "extra.wav\tDog\tSpeech",
    ]
    w = factory.write_dcase_weak_fixture(tmp_path, rows, missing_audio=["gone.wav"], **FAST)
    records, quarantined = read_dcase_weak(w.labels, w.audio, split="target_train", domain="target")
    recs = _by_id(records)
    assert set(recs) == {r[0] for r in factory.WEAK_ROWS}
    assert recs["Y0AnJNEjW2Cs_20.000_30.000.wav"].weak_labels == ("Dog", "Speech")
    assert recs["Y0GwfhnfJbrg_30.000_40.000.wav"].weak_labels == ()
    assert all(r.events is None for r in records)
    reasons = _reasons(quarantined)
    assert set(reasons) == {"twice.wav", "gone.wav", "extra.wav"}
    assert "listed again" in reasons["twice.wav"]
    assert "got 3" in reasons["extra.wav"]


# --------------------------------------------------------------------------------------------
# URBAN-SED
# --------------------------------------------------------------------------------------------


def test_urbansed_reads_txt_pairs_and_ignores_jams(tmp_path):
    w = factory.write_urbansed_fixture(tmp_path / "URBAN-SED", "train", **FAST)
    assert any(p.suffix == ".jams" for p in w.annotations.iterdir())
    records, quarantined = read_urbansed(
        w.audio, w.annotations, split="source_train", domain="source"
    )
    assert quarantined == []
    recs = _by_id(records)
    assert set(recs) == {f"{s}.wav" for s in factory.URBANSED_FILES}
    r = recs["soundscape_train_bimodal0.wav"]
    assert r.events == (Event(0.0, 3.202, "dog_bark"), Event(4.511, 7.9, "siren"))
    assert r.audio_path == str(w.audio / "soundscape_train_bimodal0.wav")
    assert r.weak_labels is None


def test_urbansed_quarantines_unpaired_and_bad_files(tmp_path):
    files = dict(factory.URBANSED_FILES)
    files["soundscape_train_bad3"] = (("1.0", "nan", "siren"),)
    files["soundscape_train_cols4"] = ("1.0\t2.0",)
    w = factory.write_urbansed_fixture(
        tmp_path,
        "train",
        files,
        missing_audio=["soundscape_train_bimodal1"],
        missing_annotation=["soundscape_train_uniform2"],
        **FAST,
    )
    records, quarantined = read_urbansed(
        w.audio, w.annotations, split="source_train", domain="source"
    )
    assert [r.mixture_id for r in records] == ["soundscape_train_bimodal0.wav"]
    reasons = _reasons(quarantined)
    assert "no audio file" in reasons["soundscape_train_bimodal1.txt"]
    assert "annotation file" in reasons["soundscape_train_uniform2.wav"]
    assert "offset is 'nan'" in reasons["soundscape_train_bad3.wav"]
    assert (
        "line 1" in reasons["soundscape_train_cols4.wav"]
        and "got 2" in reasons["soundscape_train_cols4.wav"]
    )


# --------------------------------------------------------------------------------------------
# AudioSet strong
# --------------------------------------------------------------------------------------------


def test_audioset_strong_maps_ids_to_names(tmp_path):
    w = factory.write_audioset_fixture(tmp_path, **FAST)
    records, quarantined = read_audioset_strong(
        w.labels, w.label_names, w.audio, split="target_val", domain="target"
    )
    assert quarantined == []
    recs = _by_id(records)
    assert set(recs) == {"YxlGt805lTA_30000.wav", "b0RFKhbpFJA_30000.wav", "-0SdAVK79lg_110000.wav"}
    assert recs["YxlGt805lTA_30000.wav"].events == (
        Event(0.0, 2.14, "Music"),
        Event(1.07, 3.56, "Speech"),
    )


def test_audioset_strong_template_missing_audio_and_unknown_id(tmp_path):
    template = "Y{ytid}_{start_s:.3f}.wav"
    rows = list(factory.AUDIOSET_ROWS) + [("zzzzzzzzzzz_0", "0.0", "1.0", "/m/unknown")]
    w = factory.write_audioset_fixture(tmp_path, rows, missing_audio=["b0RFKhbpFJA_30000"], **FAST)
    # rename the written audio to the user's naming scheme
    for seg in ("YxlGt805lTA_30000", "-0SdAVK79lg_110000", "zzzzzzzzzzz_0"):
        ytid, ms = seg.rsplit("_", 1)
        os.rename(w.audio / f"{seg}.wav", w.audio / f"Y{ytid}_{int(ms) / 1000:.3f}.wav")
    records, quarantined = read_audioset_strong(
        w.labels,
        w.label_names,
        w.audio,
        split="target_val",
        domain="target",
        filename_template=template,
    )
    assert sorted(r.mixture_id for r in records) == [
        "Y-0SdAVK79lg_110.000.wav",
        "YYxlGt805lTA_30.000.wav",
    ]
    reasons = _reasons(quarantined)
    assert "not found" in reasons["Yb0RFKhbpFJA_30.000.wav"]
    assert "'/m/unknown'" in reasons["Yzzzzzzzzzzz_0.000.wav"]


def test_label_names_file_must_be_headerless_pairs(tmp_path):
    w = factory.write_audioset_fixture(tmp_path, **FAST)
    w.label_names.write_text("/m/04rlf\tMusic\textra\n")
    with pytest.raises(CorpusError, match="mid_to_display_name.tsv' line 1"):
        read_audioset_strong(w.labels, w.label_names, w.audio, split="target_val", domain="target")


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def test_references_read_and_quarantine(tmp_path):
    rows = list(factory.REFERENCE_ROWS) + [
        ("two_labels.wav", "Dog"),
        ("two_labels.wav", "Speech"),
        ("speech_001.wav", "Speech"),  # identical repeat counts once
        ("lost.wav", "Dog"),
        ("no_label.wav", ""),
    ]
    w = factory.write_reference_fixture(tmp_path, rows, missing_audio=["lost.wav"], **FAST)
    refs, quarantined = read_references(w.labels, w.audio)
    assert [(r.reference_id, r.label) for r in refs] == [
        ("dog_001.wav", "Dog"),
        ("speech_001.wav", "Speech"),
        ("speech_002.wav", "Speech"),
    ]
    assert refs[0].audio_path == str(w.audio / "dog_001.wav")
    reasons = _reasons(quarantined)
    assert set(reasons) == {"two_labels.wav", "lost.wav", "no_label.wav"}
    assert "several labels" in reasons["two_labels.wav"]
    assert all(q.split == "references" for q in quarantined)


# --------------------------------------------------------------------------------------------
# Dataset spec, end to end
# --------------------------------------------------------------------------------------------


def test_spec_all_roles_end_to_end(tmp_path):
    spec = load_spec(factory.write_spec_fixture(tmp_path, **FAST))
    assert set(spec.splits) == set(SPLITS) | {"target_train_strong"}
    assert spec.splits["target_val"].format == "audioset_strong"
    corpus = read_corpus(spec)
    assert corpus.quarantined == ()
    assert corpus.source_classes == factory.SPEC_SOURCE_CLASSES
    assert corpus.target_classes == factory.SPEC_TARGET_CLASSES
    assert tuple(corpus.mixtures) == SPLITS
    counts = {s: len(r) for s, r in corpus.mixtures.items()}
    assert counts == {
        "source_train": 3,
        "source_val": 2,
        "target_train": 4,
        "target_val": 3,
        "target_test": 3,
    }
    for split, records in corpus.mixtures.items():
        assert all(r.split == split for r in records)
        assert {r.domain for r in records} == {"source" if split.startswith("source") else "target"}
    # target_train: weak labels stay the weak ones, strong events merged by filename
    tt = _by_id(corpus.mixtures["target_train"])
    y0 = tt["Y0AnJNEjW2Cs_20.000_30.000.wav"]
    assert y0.weak_labels == ("Dog", "Speech")
    assert y0.events == (Event(0.5, 2.12, "Dog"), Event(5.0, 9.0, "Speech"))
    assert tt["Y0GwfhnfJbrg_30.000_40.000.wav"].events == ()
    # val/test keep strong labels only
    assert all(r.weak_labels is None for r in corpus.mixtures["target_test"])
    assert len(corpus.references) == 7
    assert corpus.notes == ()


def test_spec_target_train_as_weak(tmp_path):
    spec = load_spec(factory.write_spec_fixture(tmp_path, target_train_as_weak=True, **FAST))
    assert "target_train_strong" not in spec.splits
    tt = _by_id(read_corpus(spec).mixtures["target_train"])
    y0 = tt["Y0AnJNEjW2Cs_20.000_30.000.wav"]
    assert y0.weak_labels == ("Dog", "Speech")
    assert len(y0.events) == 2


def test_spec_class_lists_keep_their_order(tmp_path):
    path = factory.write_spec_fixture(
        tmp_path, source_classes=["siren", "dog_bark", "car_horn"], **FAST
    )
    corpus = read_corpus(load_spec(path))
    assert corpus.source_classes == ("siren", "dog_bark", "car_horn")


@pytest.mark.parametrize("mode", ["quarantine", "ignore"])
def test_spec_unknown_labels(tmp_path, mode):
    # "Music" is in neither list: quarantine the recordings holding it, or drop its events
    path = factory.write_spec_fixture(
        tmp_path, target_classes=["Dog", "Speech"], unknown_labels=mode, **FAST
    )
    corpus = read_corpus(load_spec(path))
    assert corpus.target_classes == ("Dog", "Speech")
    tt = _by_id(corpus.mixtures["target_train"])
    test = _by_id(corpus.mixtures["target_test"])
    music_file = "Y0E33n7VH_bU_60.000_70.000.wav"
    if mode == "quarantine":
        assert music_file not in tt
        assert "Y5J603SAj7QM_210.000_220.000.wav" not in test
        q = {(Path(x.item).name, x.split): x.reason for x in corpus.quarantined}
        assert "Music" in q[(music_file, "target_train")]
        assert ("YxlGt805lTA_30000.wav", "target_val") in q
        assert corpus.notes == ()
    else:
        assert tt[music_file].weak_labels == () and tt[music_file].events == ()
        assert test["Y5J603SAj7QM_210.000_220.000.wav"].events == (Event(0.0, 3.5, "Dog"),)
        assert corpus.quarantined == ()
        notes = " | ".join(corpus.notes)
        assert "splits.target_test: ignored 1 label(s)" in notes and "Music (1)" in notes
        assert "splits.target_train: ignored 1" in notes  # the weak label
        assert "splits.target_train_strong: ignored 1" in notes  # the strong event


# --------------------------------------------------------------------------------------------
# Spec errors: each names the spec file, the key and what to do
# --------------------------------------------------------------------------------------------


def _spec_data(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_spec_error_unknown_top_level_key(tmp_path):
    path = factory.edit_spec(factory.write_spec_fixture(tmp_path, **FAST), target_clases=["Dog"])
    with pytest.raises(SpecError, match=r"dataset\.yaml.*target_clases: unknown key"):
        load_spec(path)


def test_spec_error_unknown_split_key_and_format(tmp_path):
    path = factory.write_spec_fixture(tmp_path, **FAST)
    data = _spec_data(path)
    data["splits"]["target_test"]["format"] = "desed"
    data["splits"]["source_val"]["label"] = "x.tsv"
    with pytest.raises(SpecError) as err:
        load_spec(_write(path, data))
    text = str(err.value)
    assert str(path) in text and "2 problems" in text
    assert "splits.target_test.format: unknown format 'desed'" in text and "dcase_strong" in text
    assert "splits.source_val: unknown key(s) label for format urbansed" in text


def test_spec_error_missing_split(tmp_path):
    path = factory.write_spec_fixture(tmp_path, **FAST)
    data = _spec_data(path)
    del data["splits"]["target_val"]
    del data["references"]
    with pytest.raises(SpecError) as err:
        load_spec(_write(path, data))
    assert "splits.target_val: required split is missing" in str(err.value)
    assert "references: required entry is missing" in str(err.value)


def test_spec_error_missing_files(tmp_path):
    path = factory.write_spec_fixture(tmp_path, **FAST)
    data = _spec_data(path)
    data["splits"]["target_test"]["labels"] = "metadata/target_tset.tsv"
    data["splits"]["source_train"]["annotations"] = "URBAN-SED/annotation/train"
    with pytest.raises(SpecError) as err:
        load_spec(_write(path, data))
    text = str(err.value)
    assert "splits.target_test.labels: file" in text and "target_tset.tsv' does not exist" in text
    assert "splits.source_train.annotations: folder" in text


def test_spec_error_weak_format_where_strong_needed(tmp_path):
    path = factory.write_spec_fixture(tmp_path, **FAST)
    data = _spec_data(path)
    data["splits"]["target_test"] = dict(data["splits"]["target_train"])
    data["splits"]["target_train"] = dict(data["splits"]["target_train_strong"])
    del data["splits"]["target_train_strong"]
    with pytest.raises(SpecError) as err:
        load_spec(_write(path, data))
    text = str(err.value)
    assert "splits.target_test.format: target_test needs onset/offset labels" in text
    assert "splits.target_train: " in text and "as_weak: true" in text


def test_spec_error_class_without_reference(tmp_path):
    path = factory.write_spec_fixture(tmp_path, **FAST)
    refs = tmp_path / "metadata" / "references.tsv"
    refs.write_text("\n".join(x for x in refs.read_text().splitlines() if "Music" not in x) + "\n")
    with pytest.raises(SpecError, match=r"references: no reference clip for class\(es\) Music"):
        read_corpus(load_spec(path))


def test_spec_error_file_shared_between_train_and_test(tmp_path):
    path = factory.write_spec_fixture(tmp_path, **FAST)
    data = _spec_data(path)
    # a training file listed in the test labels, test audio read from the training folder
    shared = "Y0AnJNEjW2Cs_20.000_30.000.wav"
    with open(tmp_path / "metadata" / "target_test.tsv", "a") as fh:
        fh.write(f"{shared}\t0.000\t1.000\tDog\n")
    data["splits"]["target_test"]["audio"] = "audio/target_train"
    with pytest.raises(SpecError) as err:
        read_corpus(load_spec(_write(path, data)))
    text = str(err.value)
    assert str(path) in text and "1 audio file(s)" in text
    assert shared in text and "(target_train, target_test)" in text
    assert "never touch training files" in text


def test_spec_error_file_shared_through_a_link(tmp_path):
    path = factory.write_spec_fixture(tmp_path, **FAST)
    shared = "soundscape_validate_uniform1.wav"
    train_audio = tmp_path / "URBAN-SED" / "audio" / "train"
    os.symlink(tmp_path / "URBAN-SED" / "audio" / "validate" / shared, train_audio / shared)
    factory.write_tsv(
        tmp_path / "URBAN-SED" / "annotations" / "train" / "soundscape_validate_uniform1.txt",
        None,
        [("0.250", "4.750", "dog_bark")],
    )
    with pytest.raises(
        SpecError, match=r"soundscape_validate_uniform1\.wav' \(source_train, source_val\)"
    ):
        read_corpus(load_spec(path))


def test_spec_error_bad_label_file_names_the_key(tmp_path):
    path = factory.write_spec_fixture(tmp_path, **FAST)
    (tmp_path / "metadata" / "target_test.tsv").write_text("file\tstart\tend\tclass\n")
    with pytest.raises(SpecError, match=r"splits\.target_test: strong label TSV .*header"):
        read_corpus(load_spec(path))


def test_spec_error_empty_split(tmp_path):
    path = factory.write_spec_fixture(tmp_path, **FAST)
    for wav in (tmp_path / "audio" / "target_test").iterdir():
        wav.unlink()
    with pytest.raises(
        SpecError, match=r"splits\.target_test: no usable recording \(3 quarantined\)"
    ):
        read_corpus(load_spec(path))


def test_spec_paths_resolve_against_root_and_allow_audio_uris(tmp_path):
    path = factory.write_spec_fixture(tmp_path / "data", **FAST)
    data = _spec_data(path)
    data["root"] = "data"
    data["splits"]["target_test"]["audio"] = "s3://bucket/corpus/target_test"
    spec_path = _write(tmp_path / "spec.yaml", data)
    spec = load_spec(spec_path)
    assert spec.root == str(tmp_path / "data")
    assert spec.splits["target_val"].labels == str(
        tmp_path / "data" / "audioset" / "audioset_eval_strong.tsv"
    )
    corpus = read_corpus(spec)
    paths = sorted(r.audio_path for r in corpus.mixtures["target_test"])
    assert paths[0] == "s3://bucket/corpus/target_test/Y5J603SAj7QM_210.000_220.000.wav"


def test_spec_strong_labels_of_a_file_outside_target_train_are_quarantined(tmp_path):
    path = factory.write_spec_fixture(tmp_path, **FAST)
    extra = "Y9extraclip0_0.000_10.000.wav"
    factory.write_wav(tmp_path / "audio" / "target_train" / extra, **FAST)
    with open(tmp_path / "metadata" / "target_train_strong.tsv", "a") as fh:
        fh.write(f"{extra}\t1.000\t2.000\tDog\n")
    corpus = read_corpus(load_spec(path))
    assert extra not in _by_id(corpus.mixtures["target_train"])
    (q,) = corpus.quarantined
    assert (Path(q.item).name, q.split) == (extra, "target_train_strong")
    assert "not a usable target_train file" in q.reason


def test_load_spec_missing_or_invalid_file(tmp_path):
    with pytest.raises(SpecError, match=r"nope\.yaml' not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("splits: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad\.yaml' is not valid YAML"):
        load_spec(bad)


# --------------------------------------------------------------------------------------------
# A spec without source_val: carved from source_train (seeded, file-disjoint)
# --------------------------------------------------------------------------------------------

#: Extra URBAN-SED training soundscapes, so that carve-outs of different seeds can differ.
EXTRA_TRAIN_FILES = {
    f"soundscape_train_extra{i:02d}": (
        ("0.500", "2.000", ("dog_bark", "siren", "car_horn")[i % 3]),
    )
    for i in range(20)
}


def _spec_without_source_val(tmp_path, n_extra: int = 20, audio=FAST, **top_level) -> Path:
    """The all-roles fixture with source_val left out (3 + ``n_extra`` source_train files).

    ``audio``: seconds and sample rate of the written files (tiny unless features are built).
    """
    path = factory.write_spec_fixture(tmp_path, **audio)
    extra = dict(list(EXTRA_TRAIN_FILES.items())[:n_extra])
    factory.write_urbansed_fixture(tmp_path / "URBAN-SED", "train", extra, **audio)
    data = _spec_data(path)
    del data["splits"]["source_val"]
    data.update(top_level)
    return _write(path, data)


def _all_source_train(tmp_path):
    records, _ = read_urbansed(
        tmp_path / "URBAN-SED" / "audio" / "train",
        tmp_path / "URBAN-SED" / "annotations" / "train",
        split="source_train",
        domain="source",
    )
    return _by_id(records)


def _carved_ids(path) -> list[str]:
    return [r.mixture_id for r in read_corpus(load_spec(path)).mixtures["source_val"]]


def test_spec_without_source_val_carves_a_file_disjoint_part_of_source_train(tmp_path):
    path = _spec_without_source_val(tmp_path)
    spec = load_spec(path)
    assert spec.carves_source_val and "source_val" not in spec.splits
    assert (spec.source_val_fraction, spec.source_val_seed) == (0.15, 0)  # the defaults
    assert spec.to_dict()["source_val_fraction"] == 0.15
    corpus = read_corpus(spec)
    assert tuple(corpus.mixtures) == SPLITS
    train, val = corpus.mixtures["source_train"], corpus.mixtures["source_val"]
    assert len(val) == 3 and len(train) == 20  # round(0.15 * 23)
    assert all(r.split == "source_val" and r.domain == "source" for r in val)
    assert all(r.split == "source_train" for r in train)
    # whole files: disjoint, the union is the original source_train, events unchanged
    train_paths, val_paths = {r.audio_path for r in train}, {r.audio_path for r in val}
    assert train_paths.isdisjoint(val_paths)
    original = _all_source_train(tmp_path)
    assert {r.mixture_id for r in train} | {r.mixture_id for r in val} == set(original)
    for r in train + val:
        assert (r.audio_path, r.events) == (
            original[r.mixture_id].audio_path,
            original[r.mixture_id].events,
        )
    # visible: a note names the settings and the carved files
    (note,) = corpus.notes
    assert "splits.source_val: not in the spec; carved 3 of 23 source_train audio files" in note
    assert "source_val_fraction 0.15, source_val_seed 0" in note
    assert all(r.mixture_id in note for r in val)


def test_source_val_carve_out_is_seeded(tmp_path):
    a = _carved_ids(_spec_without_source_val(tmp_path / "a", source_val_seed=7))
    b = _carved_ids(_spec_without_source_val(tmp_path / "b", source_val_seed=7))
    c = _carved_ids(_spec_without_source_val(tmp_path / "c", source_val_seed=8))
    assert a == b  # same seed (another folder): same files
    assert a != c and len(a) == len(c)  # another seed: another split of the same size
    d = _carved_ids(_spec_without_source_val(tmp_path / "d", source_val_fraction=0.5))
    assert len(d) == 12  # round(0.5 * 23), half up


def test_carve_source_val_ignores_input_order_and_keeps_files_whole(tmp_path):
    def rec(name, label):
        return MixtureRecord(
            name, f"/corpus/{name}", "source_train", "source", (Event(0.0, 1.0, label),)
        )

    records = [rec(f"f{i:02d}.wav", "dog") for i in range(10)]
    # two records of one audio file (as a reader could give): they move together
    records.append(dataclasses.replace(records[3], mixture_id="f03_again.wav"))
    shuffled = list(reversed(records))
    train, val = carve_source_val(records, fraction=0.3, seed=1)
    assert (train, val) == carve_source_val(shuffled, fraction=0.3, seed=1)
    assert len({r.audio_path for r in val}) == 3  # round(0.3 * 10 files)
    assert {r.audio_path for r in train}.isdisjoint({r.audio_path for r in val})
    assert sorted(r.mixture_id for r in train + val) == sorted(r.mixture_id for r in records)
    f03 = {r.split for r in train + val if r.audio_path == "/corpus/f03.wav"}
    assert len(f03) == 1
    # at least one file on each side, whatever the fraction
    two = records[:2]
    for fraction in (0.01, 0.5):
        tr, va = carve_source_val(two, fraction=fraction, seed=0)
        assert (len(tr), len(va)) == (1, 1)
    with pytest.raises(ValueError, match="1 audio file"):
        carve_source_val(records[:1], fraction=0.15, seed=0)


@pytest.mark.parametrize("fraction", [0, 0.0, 0.6, 1, -0.1, "0.2", True, None])
def test_spec_error_bad_source_val_fraction(tmp_path, fraction):
    path = _spec_without_source_val(tmp_path, n_extra=0, source_val_fraction=fraction)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = str(err.value)
    assert str(path) in text
    assert "source_val_fraction: expected a number in (0, 0.5]" in text
    assert repr(fraction) in text


@pytest.mark.parametrize("seed", [1.5, "0", True])
def test_spec_error_bad_source_val_seed(tmp_path, seed):
    path = _spec_without_source_val(tmp_path, n_extra=0, source_val_seed=seed)
    with pytest.raises(SpecError, match=r"source_val_seed: expected an integer"):
        load_spec(path)


def test_spec_error_carve_settings_beside_an_explicit_source_val(tmp_path):
    path = factory.write_spec_fixture(tmp_path, source_val_fraction=0.2, source_val_seed=3, **FAST)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = str(err.value)
    assert "source_val_fraction: only used when splits.source_val is absent" in text
    assert "source_val_seed: only used when splits.source_val is absent" in text


def test_spec_error_too_few_source_train_files_to_carve(tmp_path):
    path = _spec_without_source_val(tmp_path, n_extra=0)
    for stem in ("soundscape_train_bimodal1", "soundscape_train_uniform2"):
        (tmp_path / "URBAN-SED" / "audio" / "train" / f"{stem}.wav").unlink()
    with pytest.raises(SpecError) as err:
        read_corpus(load_spec(path))
    text = str(err.value)
    assert "splits.source_train: 1 audio file(s)" in text and "(2 quarantined)" in text
    assert "add a splits.source_val entry" in text


def test_spec_with_explicit_source_val_is_unchanged(tmp_path):
    spec = load_spec(factory.write_spec_fixture(tmp_path, **FAST))
    assert not spec.carves_source_val
    assert (spec.source_val_fraction, spec.source_val_seed) == (None, None)
    corpus = read_corpus(spec)
    assert {r.mixture_id for r in corpus.mixtures["source_val"]} == {
        f"{stem}.wav" for stem in factory.URBANSED_VALIDATE_FILES
    }
    assert len(corpus.mixtures["source_train"]) == 3 and corpus.notes == ()


def test_carved_source_val_changes_the_build_key_and_is_recorded_by_the_build(tmp_path):
    from tsd_ray.common.config import BuildConfig, FrontendConfig, SamplesConfig
    from tsd_ray.data.build import build_features, build_key, plan_build

    samples, build_cfg = SamplesConfig(), BuildConfig(rows_per_shard=50)
    front = FrontendConfig(device="cpu")

    def key(path):
        shards, _ = plan_build(read_corpus(load_spec(path)), samples, build_cfg)
        return build_key(shards, front, samples)

    seed0 = _spec_without_source_val(tmp_path / "a")
    seed1 = _spec_without_source_val(tmp_path / "b", source_val_seed=1)
    assert key(seed0) != key(seed1)  # features of another carve-out are other features

    # 10-s clips (the labels' length) at 8 kHz, so that the build keeps every file
    small = _spec_without_source_val(tmp_path / "c", n_extra=0, audio={"seconds": 10.0, "sr": 8000})
    corpus = read_corpus(load_spec(small))
    out = tmp_path / "features"
    build_features(
        corpus,
        str(out),
        frontend=front,
        samples_cfg=samples,
        build_cfg=build_cfg,
        use_ray=False,
        spec_path=str(small),
    )
    manifest = yaml.safe_load((out / "manifest.json").read_text())  # JSON is YAML
    assert manifest["notes"] == list(corpus.notes)
    assert "source_val_fraction 0.15, source_val_seed 0" in manifest["notes"][0]
    assert manifest["quarantined"] == 0
    assert manifest["splits"]["source_val"]["mixtures"] == 1
    assert manifest["splits"]["source_train"]["mixtures"] == 2
    (part,) = manifest["splits"]["source_val"]["files"]
    rows = pq.read_table(out / part, columns=["mixture_id", "split"]).to_pylist()
    assert rows == [
        {"mixture_id": r.mixture_id, "split": "source_val"} for r in corpus.mixtures["source_val"]
    ]
