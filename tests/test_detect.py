"""Detection on user recordings: long/resampled audio, folder mode on Ray Data, pictures, errors.

One module fixture trains the model (encoder pretraining + one f phase: two Ray Train fits)
on a small tonal corpus whose events sit at random times (so the detector cannot learn
positions), exports a detector, and every test reuses it.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from tsd_ray import checkpoint as ckpt
from tsd_ray import detect
from tsd_ray.plots import plot_detection, plot_training, png_size
from tsd_ray.types import SPLIT_DOMAIN, Corpus, Event, MixtureRecord, ReferenceRecord

pytestmark = pytest.mark.slow

SR = 16000
FREQS = {"s1": 500, "s2": 900, "t1": 1400, "t2": 2100}
N_PER_SPLIT = {"source_train": 40, "source_val": 10, "target_train": 2, "target_val": 2, "target_test": 2}


def tone(seconds: float, freq: float, rng, sr: int = SR) -> np.ndarray:
    """A tone with a 10 ms fade in/out and a little noise (float32, amplitude ~0.3)."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    env = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    return (0.3 * env * np.sin(2 * np.pi * freq * t) + 0.005 * rng.standard_normal(n)).astype(np.float32)


def place_events(duration: float, classes, rng, n_max: int = 3) -> list[Event]:
    """1..n_max non-overlapping events (0.5-2 s) at random times inside ``duration``."""
    events: list[Event] = []
    for _ in range(int(rng.integers(1, n_max + 1))):
        for _try in range(20):
            length = float(rng.uniform(0.5, 2.0))
            on = round(float(rng.uniform(0.0, duration - length)), 2)
            ev = Event(on, round(on + length, 2), str(rng.choice(classes)))
            if all(ev.offset + 0.3 < e.onset or e.offset + 0.3 < ev.onset for e in events):
                events.append(ev)
                break
    return sorted(events, key=lambda e: e.onset)


def render(events, duration: float, rng, sr: int = SR) -> np.ndarray:
    wave = 0.01 * rng.standard_normal(int(duration * sr)).astype(np.float32)
    for e in events:
        a = int(round(e.onset * sr))
        seg = tone(e.offset - e.onset, FREQS[e.label], rng, sr)
        wave[a : a + len(seg)] += seg[: len(wave) - a]
    return wave


def make_tone_corpus(root) -> Corpus:
    """2 source + 2 target tonal classes, 10-s mixtures at 16 kHz, events at random times."""
    rng = np.random.default_rng(1)
    mixtures = {}
    for split, domain in SPLIT_DOMAIN.items():
        classes = ["s1", "s2"] if domain == "source" else ["t1", "t2"]
        recs = []
        for i in range(N_PER_SPLIT[split]):
            events = place_events(10.0, classes, rng)
            path = root / split / f"mix{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, render(events, 10.0, rng), SR, subtype="PCM_16")
            weak = tuple(sorted({e.label for e in events})) if split == "target_train" else None
            recs.append(MixtureRecord(f"mix{i}.wav", str(path), split, domain, tuple(events), weak))
        mixtures[split] = tuple(recs)
    refs = []
    for c, f in FREQS.items():
        for j in range(8):  # enough clips for the encoder to separate the classes
            p = root / "refs" / f"{c}_{j}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, tone(1.5, f * (1 + 0.005 * (j - 3.5)), rng), SR)
            refs.append(ReferenceRecord(f"{c}_{j}.wav", str(p), c))
    return Corpus(mixtures=mixtures, references=tuple(refs), source_classes=("s1", "s2"), target_classes=("t1", "t2"))


@pytest.fixture(scope="module")
def model(tmp_path_factory, ray_local):
    """Encoder + f student trained on source_train, post-processing tuned on source_val, exported."""
    from tsd_ray.build import build_features
    from tsd_ray.config import load_config
    from tsd_ray.data import iter_local, load_manifest
    from tsd_ray.encoder_train import embed_references, pretrain_encoder
    from tsd_ray.evaluation import tune_postprocessing
    from tsd_ray.loop import load_reference_table, predict_batches, scored_samples
    from tsd_ray.phase import make_phase
    from tsd_ray.runner import embeddings_file, run_phase

    root = tmp_path_factory.mktemp("detect")
    # 32 reference clips, batch 8, 15 epochs: fewer encoder steps leave all embeddings alike
    cfg = load_config("tiny", ["frontend.device=cpu", "encoder.epochs=15", "encoder.batch_size=8"])
    corpus = make_tone_corpus(root / "corpus")
    build_features(corpus, str(root / "features"), frontend=cfg.frontend, samples_cfg=cfg.samples,
                   build_cfg=cfg.build, use_ray=False)
    manifest = load_manifest(str(root / "features"))
    runs = str(root / "runs")
    enc = pretrain_encoder(cfg, manifest, storage_path=runs, run_name="d")
    emb = embed_references(enc, manifest, embeddings_file(runs, "d"))
    spec = make_phase(cfg, "f_source", "d_f", student="f", train_split="source_train", val_split="source_val",
                      loss="frame", adversarial=False).with_(epochs=10, patience=10, lr=3e-3)
    res = run_phase(cfg, spec, manifest, emb, storage_path=runs, run_name="d")
    # post-processing tuned on validation, as evaluate_model does (in-process: small split)
    refs = load_reference_table(emb, len(manifest.classes))
    val = scored_samples(predict_batches(ckpt.load_student(res.model_uri), refs, iter_local(manifest, "source_val"),
                                         torch.device("cpu")))
    pp, _ = tune_postprocessing(val, classes=manifest.source_classes, thresholds=list(cfg.eval.thresholds),
                                median_windows=list(cfg.eval.median_windows), frame_hop_s=manifest.output_hop_s)
    pp_dict = {"threshold": pp.threshold, "median_frames": pp.median_frames}
    det_uri = ckpt.export_detector(res.model_uri, enc, pp_dict, str(root / "detector.pt"))
    return {"root": root, "detector": det_uri, "student": res.model_uri, "encoder": enc, "history": res.history,
            "pp": pp_dict, "ref_s1": str(root / "corpus" / "refs" / "s1_0.wav"),
            "ref_s1b": str(root / "corpus" / "refs" / "s1_1.wav")}


def long_recording(path, sr: int = 44100) -> list[Event]:
    """30 s at 44.1 kHz: s1 events (one across the 10-s window boundary) among s2 distractors."""
    rng = np.random.default_rng(7)
    events = [Event(1.5, 3.0, "s1"), Event(4.2, 5.4, "s2"), Event(9.4, 10.9, "s1"), Event(13.0, 14.5, "s2"),
              Event(16.8, 17.8, "s1"), Event(20.5, 22.0, "s2"), Event(24.6, 26.4, "s1"), Event(28.0, 29.0, "s2")]
    sf.write(path, render(events, 30.0, rng, sr), sr, subtype="PCM_16")
    return [e for e in events if e.label == "s1"]


def test_export_bundles_everything_and_training_learned(model):
    payload = ckpt.load_payload(model["detector"])
    assert payload["kind"] == "detector" and payload["student_kind"] == "f"
    assert payload["encoder"]["kind"] == "encoder"
    assert set(payload["postprocessing"]) == {"threshold", "median_frames"}
    assert payload["meta"]["frontend"]["clip_seconds"] == 10.0
    det = detect.load_detector(model["detector"], device="cpu")
    assert not det.student.training and not det.encoder.training
    assert det.postprocessing.threshold == model["pp"]["threshold"]
    assert det.window_frames == 501 and abs(det.output_hop_s - 0.04) < 1e-12
    losses = [h["loss"] for h in model["history"]]
    assert losses[-1] < losses[0], losses


def test_long_resampled_recording_finds_the_events(model, tmp_path):
    from tsd_ray.evaluation import score_event_lists

    wav = tmp_path / "long.wav"
    truth = long_recording(wav)
    det = detect.load_detector(model["detector"], device="cpu")
    ref = detect.embed_reference(det, [model["ref_s1"]])
    d = detect.detect_file(det, ref, str(wav), label="s1")
    assert d.probs.shape == (750,)  # 30 s at 40 ms, not truncated to 10 s
    sc = score_event_lists({"long": truth}, {"long": list(d.events)}, {"long": 30.0}, classes=["s1"])
    print("events", d.events, "event-F", sc.event_f, "segment-F", sc.segment_f)
    assert sc.event_f >= 85.0, (d.events, sc.event_f)  # 4 events, 200 ms onset collar
    assert sc.segment_f >= 85.0


def test_windows_cover_every_frame_and_stitch_like_one_pass(model):
    det = detect.load_detector(model["detector"], device="cpu")
    assert detect.window_starts(1501, 501, 250) == [0, 250, 500, 750, 1000]
    assert detect.window_starts(501, 501, 250) == [0]
    assert detect.window_starts(100, 501, 250) == [0]
    rng = np.random.default_rng(0)
    emb = rng.standard_normal(det.student.cfg.embedding_dim).astype(np.float32)
    mel = rng.standard_normal((501, 64)).astype(np.float32)
    # one window, no overlap: exactly the model's output on the whole clip
    p = detect.frame_probabilities(det, mel, emb)
    with torch.no_grad():
        ref = det.student(torch.as_tensor(mel)[None], torch.as_tensor(emb)[None]).frame_probs[0].numpy()
    np.testing.assert_allclose(p, ref, atol=1e-6)
    # any length: one probability per output frame, all in [0, 1]
    for n in (2, 377, 1234):
        q = detect.frame_probabilities(det, rng.standard_normal((n, 64)).astype(np.float32), emb)
        assert q.shape == (n // 2,) and np.all((q >= 0) & (q <= 1))


def test_folder_mode_matches_single_file_and_reports_failures(model, tmp_path):
    folder = tmp_path / "recs"
    (folder / "sub").mkdir(parents=True)
    long_recording(folder / "a_long.wav")
    rng = np.random.default_rng(3)
    sf.write(folder / "sub" / "b.flac", render([Event(2.0, 3.5, "s1")], 12.0, rng, 22050), 22050)
    sf.write(folder / "c_short.wav", render([Event(0.5, 1.5, "s1")], 3.0, rng, 8000), 8000)
    (folder / "d_corrupt.wav").write_bytes(b"RIFF\x00\x00not a wave")
    items = detect.list_audio(str(folder))
    assert [n for _, n in items] == ["a_long.wav", "c_short.wav", "d_corrupt.wav", "sub/b.flac"]

    det = detect.load_detector(model["detector"], device="cpu")
    ref = detect.embed_reference(det, [model["ref_s1"]])
    lines: list[str] = []
    res = detect.detect_many(det, ref, items, label="s1", keep_probs=True, progress_every=2, progress=lines.append)
    print(res.settings, f"{res.files_per_s:.2f} files/s", lines)
    assert [f.name for f in res.failures] == ["d_corrupt.wav"]
    assert "d_corrupt.wav" in res.failures[0].reason
    assert [d.name for d in res.detections] == ["a_long.wav", "c_short.wav", "sub/b.flac"]
    assert lines and "4/4 files, 1 failed" in lines[-1]
    for (path, name), d in zip([items[0], items[1], items[3]], res.detections):
        single = detect.detect_file(det, ref, path, name=name, label="s1")
        assert d.events == single.events, name
        np.testing.assert_allclose(d.probs, single.probs, atol=1e-6)
    # the TSV lists every event with the file's name; round trip through the reader
    tsv = detect.format_events_tsv(res.detections)
    out = tmp_path / "events.tsv"
    out.write_text(tsv)
    back = detect.read_events_tsv(str(out))
    assert [(n, e) for d in res.detections for n, e in ((d.name, x) for x in d.events)] == [
        (n, Event(round(e.onset, 3), round(e.offset, 3), e.label)) for n, e in back
    ]
    assert tsv.splitlines()[0] == "filename\tonset\toffset\tevent_label"
    assert "d_corrupt.wav" in detect.format_failures_tsv(res.failures)
    # serial engine gives the same answer
    serial = detect.detect_many(det, ref, items, label="s1", use_ray=False, progress=None)
    assert [d.events for d in serial.detections] == [d.events for d in res.detections]


def test_several_references_average_and_silent_reference_is_named(model, tmp_path):
    det = detect.load_detector(model["detector"], device="cpu")
    one = detect.embed_reference(det, [model["ref_s1"]])
    two = detect.embed_reference(det, [model["ref_s1"], model["ref_s1b"]])
    e = two.embedding
    assert abs(np.linalg.norm(e) - np.sqrt(e.size)) < 1e-3
    assert not np.allclose(one.embedding, e)
    assert two.guess == "s1"
    silent = tmp_path / "silent_ref.wav"
    sf.write(silent, np.zeros(SR, np.float32), SR)
    with pytest.raises(detect.DetectError, match="silent_ref.wav"):
        detect.embed_reference(det, [str(silent)])


def test_detection_picture_and_training_curves_are_pngs_of_fixed_size(model, tmp_path):
    from tsd_ray.ledger import Ledger

    wav = tmp_path / "long.wav"
    truth = long_recording(wav)
    det = detect.load_detector(model["detector"], device="cpu")
    d = detect.detect_file(det, detect.embed_reference(det, [model["ref_s1"]]), str(wav), label="s1", keep_mel=True)
    assert d.mel.shape == (1501, 64)
    png = plot_detection(d, str(tmp_path / "det.png"), true_events=truth)
    assert png_size((tmp_path / "det.png").read_bytes()) == (1200, 600)
    assert png == str(tmp_path / "det.png")

    led = Ledger.open(str(tmp_path / "run"), "x")
    led.record("encoder", model_uri=model["encoder"])
    led.record("MS-p1_f_source", model_uri=model["student"], history=model["history"], best_val_score=1.0)
    plot_training(str(tmp_path / "run"), str(tmp_path / "curves.png"))
    assert png_size((tmp_path / "curves.png").read_bytes()) == (1200, 600)
    led2 = Ledger.open(str(tmp_path / "empty"), "x")
    led2.record("encoder", model_uri=model["encoder"])
    with pytest.raises(detect.DetectError, match="no finished training phase"):
        plot_training(str(tmp_path / "empty"), str(tmp_path / "none.png"))


def test_plain_student_needs_its_encoder(model):
    with pytest.raises(detect.DetectError, match="--encoder"):
        detect.load_detector(model["student"], device="cpu")
    det = detect.load_detector(model["student"], encoder_uri=model["encoder"], device="cpu")
    assert det.postprocessing.threshold == 0.5 and det.postprocessing.median_frames == 1


def _job(*args, timeout=300):
    return subprocess.run([sys.executable, "jobs/detect.py", *args], capture_output=True, text=True, timeout=timeout)


def test_detect_job_single_file_and_bad_inputs(model, tmp_path):
    wav = tmp_path / "long.wav"
    truth = long_recording(wav)
    out, frames, pic = tmp_path / "ev.tsv", tmp_path / "frames.tsv", tmp_path / "p.png"
    labels = tmp_path / "labels.tsv"
    labels.write_text("filename\tonset\toffset\tevent_label\n" + "".join(
        f"long.wav\t{e.onset}\t{e.offset}\ts1\n" for e in truth))
    r = _job("--checkpoint", model["detector"], "--reference", model["ref_s1"], "--audio", str(wav),
             "--label", "s1", "--out", str(out), "--frames", str(frames), "--plot", str(pic), "--labels", str(labels))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = out.read_text().splitlines()
    assert rows[0] == "filename\tonset\toffset\tevent_label" and all(x.startswith("long.wav\t") for x in rows[1:])
    assert len(rows) - 1 >= 3
    assert len(frames.read_text().splitlines()) == 1 + 750
    assert png_size(pic.read_bytes()) == (1200, 600)

    # mismatched checkpoint version -> exit 2, the file named on stderr
    payload = ckpt.load_payload(model["detector"])
    payload["version"] = 99
    old = tmp_path / "old_detector.pt"
    ckpt.save_payload(payload, str(old))
    r = _job("--checkpoint", str(old), "--reference", model["ref_s1"], "--audio", str(wav))
    assert r.returncode == 2 and "old_detector.pt" in r.stderr and "version" in r.stderr
    # silent reference -> exit 2 naming it
    silent = tmp_path / "quiet.wav"
    sf.write(silent, np.zeros(SR, np.float32), SR)
    r = _job("--checkpoint", model["detector"], "--reference", str(silent), "--audio", str(wav))
    assert r.returncode == 2 and "quiet.wav" in r.stderr and "silent" in r.stderr
    # unreadable recording -> exit 2 naming it
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"garbage")
    r = _job("--checkpoint", model["detector"], "--reference", model["ref_s1"], "--audio", str(bad))
    assert r.returncode == 2 and "broken.wav" in r.stderr
