"""Fault tolerance: a Train worker killed mid-phase resumes from its last checkpoint; corrupt
shards and checkpoints stop with an error naming the file and are left as they are.

The driver killed and the job resubmitted (resume from the ledger) is covered end to end by
tests/end_to_end/test_iterate.py::test_iterate_killed_after_phase_two_resumes_and_reports.
"""

from __future__ import annotations

import json
import os
import shutil
import types

import pytest
from test_build import make_corpus

from tsd_ray.common.config import load_config
from tsd_ray.models import checkpoint as ckpt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small corpus and its features (serial build: no Ray needed)."""
    from tsd_ray.data.build import build_features
    from tsd_ray.data.shards import load_manifest

    root = tmp_path_factory.mktemp("faults")
    cfg = load_config("tiny", ["frontend.device=cpu", "build.rows_per_shard=2"])
    corpus = make_corpus(root / "corpus", n_per_split=3)
    build_features(corpus, str(root / "features"), frontend=cfg.frontend, samples_cfg=cfg.samples,
                   build_cfg=cfg.build, use_ray=False)
    return {"root": root, "cfg": cfg, "corpus": corpus, "manifest": load_manifest(str(root / "features"))}


def _epoch_recorder(path: str):
    """A Ray Train callback (runs in the Train controller) appending each reported epoch to a
    file. Built in a function so cloudpickle ships the class by value."""
    from ray.train import UserCallback

    class EpochRecorder(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps({"epoch": metrics[0]["epoch"], "checkpoint": checkpoint is not None}) + "\n")

    return EpochRecorder()


def test_killed_worker_resumes_from_last_checkpoint(built, ray_local, tmp_path):
    """train.fail_at_epoch=1: rank 0 exits hard (os._exit) at the start of epoch 1, after
    epoch 0 was reported with its checkpoint. Ray Train starts a new worker group, which
    resumes from that checkpoint: epochs 0, 1, 2 are each reported exactly once."""
    from tsd_ray.models.encoder import Cnn14Encoder
    from tsd_ray.train import driver as runner
    from tsd_ray.train.encoder import embed_references
    from tsd_ray.train.phase import make_phase

    manifest = built["manifest"]
    cfg = load_config("tiny", ["frontend.device=cpu", "train.fail_at_epoch=1", "train.max_failures=1"])
    runs = str(tmp_path / "runs")
    enc_uri = runner.encoder_file(runs, "ft")  # untrained encoder: embeddings without a fit
    enc = Cnn14Encoder(cfg.encoder, manifest.n_mels, len(manifest.classes))
    ckpt.save_payload(ckpt.model_payload("encoder", cfg.encoder, enc, n_mels=manifest.n_mels,
                                         classes=manifest.classes), enc_uri)
    emb = embed_references(enc_uri, manifest, runner.embeddings_file(runs, "ft"))
    spec = make_phase(cfg, "f_source", "f_src", student="f", train_split="source_train",
                      val_split="source_val", loss="frame", adversarial=False).with_(epochs=3, patience=10)
    log = tmp_path / "reports.jsonl"

    res = runner.run_phase(cfg, spec, manifest, emb, storage_path=runs, run_name="ft",
                           callbacks=[_epoch_recorder(str(log))])

    assert (tmp_path / "runs" / "ft-f_src" / "_fault_injected").exists(), "the worker was never killed"
    reports = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["epoch"] for r in reports] == [0, 1, 2], reports  # no epoch lost, none repeated
    assert all(r["checkpoint"] for r in reports)
    assert [h["epoch"] for h in res.history] == [0, 1, 2]  # history restored from the checkpoint
    assert ckpt.load_payload(res.model_uri)["kind"] == "f"


# --------------------------------------------------------------------------------------------
# Corrupt files
# --------------------------------------------------------------------------------------------


def test_truncated_shard_is_named_left_alone_and_rebuilt_on_request(built, ray_local, tmp_path):
    from tsd_ray.data.build import build_features
    from tsd_ray.data.shards import CorruptShardError, iter_local, load_manifest, read_samples

    features = tmp_path / "features"
    shutil.copytree(built["root"] / "features", features)
    manifest = load_manifest(str(features))
    part = features / "source_train" / "part-00001.parquet"
    good = part.read_bytes()
    part.write_bytes(good[: len(good) // 2])  # an interrupted copy
    broken = part.read_bytes()
    manifest_before = (features / "manifest.json").read_bytes()

    with pytest.raises(CorruptShardError, match=r"source_train/part-00001\.parquet"):
        read_samples(manifest, "source_train")  # Ray Data path (training, evaluation)
    with pytest.raises(CorruptShardError, match=r"source_train/part-00001\.parquet"):
        list(iter_local(manifest, "source_train"))  # pyarrow path (tools, small evaluations)
    assert part.read_bytes() == broken  # nothing overwritten or "repaired" behind the user's back
    assert (features / "manifest.json").read_bytes() == manifest_before

    # the fix the message gives: delete the shard and its record, build again -> only it is rebuilt
    part.unlink()
    (features / "_shards" / "source_train-00001.json").unlink()
    cfg = built["cfg"]
    res = build_features(built["corpus"], str(features), frontend=cfg.frontend, samples_cfg=cfg.samples,
                         build_cfg=cfg.build, use_ray=False)
    assert res.shards_written == 1
    assert part.read_bytes() == good
    _, n = manifest.count("source_train")
    assert read_samples(load_manifest(str(features)), "source_train").count() == n


def test_truncated_model_file_is_named_and_left_alone(tmp_path):
    from tsd_ray.common.config import DetectorConfig
    from tsd_ray.models.detector import Detector

    dc = DetectorConfig(channels=(4, 4, 4, 4, 4), gru_hidden=4, fc_hidden=4, embedding_dim=4, projection_dim=4)
    uri = tmp_path / "ck" / "model.pt"
    ckpt.save_payload(ckpt.model_payload("f", dc, Detector(dc, 64, "none"), n_mels=64), str(uri))
    blob = uri.read_bytes()
    uri.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ckpt.CheckpointError, match=r"ck/model\.pt.*corrupt"):
        ckpt.load_payload(str(uri))
    assert uri.read_bytes() == blob[: len(blob) // 2]


def test_corrupt_resume_state_is_named(tmp_path):
    """A phase resuming from a damaged state.pt stops with the checkpoint's storage location."""
    from tsd_ray.train.worker import _restore

    state = tmp_path / "state.pt"
    state.write_bytes(b"PK\x03\x04 truncated")
    ctx = types.SimpleNamespace(phase=types.SimpleNamespace(name="f_src"))
    where = "bucket/runs/t-f_src/checkpoint_2026-01-01_00-00-00.000000/state.pt"
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint_2026-01-01_00-00-00\.000000/state\.pt") as e:
        _restore(ctx, os.fspath(state), where)
    assert "f_src" in str(e.value)
