"""Cloud storage for real: features, checkpoints and ledgers through s3:// URIs.

An S3-compatible server (moto's server mode) runs on loopback inside the test process; the
driver and every Ray worker reach it through AWS_ENDPOINT_URL (pyarrow's S3 filesystem reads
it), which the Ray workers get from the job's runtime_env. One Ray Train fit in all.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile

import pytest
from test_build import make_corpus

from tsd_ray.common import storage
from tsd_ray.common.config import load_config
from tsd_ray.models import checkpoint as ckpt

pytestmark = pytest.mark.slow

BUCKET = "tsd"
FEATURES = f"s3://{BUCKET}/features"
RUNS = f"s3://{BUCKET}/runs"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto S3 on 127.0.0.1 + a Ray whose workers see the same AWS_* variables."""
    server_mod = pytest.importorskip("moto.server")
    import boto3
    import ray

    from tsd_ray.common.ray_env import quiet_data_context

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    was_running = ray.is_initialized()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        if was_running:  # the session's Ray has workers without these variables
            ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env},
                 logging_level="ERROR", log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="tsd-s3-"))  # short: socket paths
        quiet_data_context()
        try:
            yield {"client": boto3.client("s3"), "root": tmp_path_factory.mktemp("s3")}
        finally:
            ray.shutdown()
            server.stop()
    if was_running:  # give later test modules the session's Ray back
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        quiet_data_context()


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", ["frontend.device=cpu", "build.rows_per_shard=2",
                                "train.max_failures=0", "run.name=s3run"])


@pytest.fixture(scope="module")
def manifest(s3, cfg):
    """Features of a small corpus built on Ray Data straight into the bucket."""
    from tsd_ray.data.build import build_features
    from tsd_ray.data.shards import load_manifest

    corpus = make_corpus(s3["root"] / "corpus", n_per_split=3)
    res = build_features(corpus, FEATURES, frontend=cfg.frontend, samples_cfg=cfg.samples,
                         build_cfg=cfg.build, use_ray=True)
    assert res.shards_written == res.shards_total > 1
    return load_manifest(FEATURES)


def test_features_built_into_the_bucket_and_read_back_with_ray_data(s3, manifest):
    from tsd_ray.data.shards import iter_local, read_samples

    keys = _keys(s3["client"], "features/")
    assert "features/manifest.json" in keys
    parts = [k for k in keys if k.startswith("features/source_train/part-")]
    assert len(parts) == 2  # 3 mixtures, 2 rows per shard
    assert manifest.uri == FEATURES

    _, n_samples = manifest.count("source_train")
    rows = read_samples(manifest, "source_train", with_ids=True).take_all()
    assert len(rows) == n_samples > 0
    assert rows[0]["mel"].shape == (manifest.n_frames, manifest.n_mels)
    local_ids = sorted(i for b in iter_local(manifest, "source_train") for i in b["sample_id"])
    assert sorted(str(r["sample_id"]) for r in rows) == local_ids


def test_phase_trains_on_s3_and_the_run_resumes_from_its_ledger(s3, cfg, manifest, monkeypatch):
    from tsd_ray.experiments import pipeline
    from tsd_ray.experiments.pipeline import Run
    from tsd_ray.models.encoder import Cnn14Encoder
    from tsd_ray.train import driver as runner
    from tsd_ray.train.encoder import embed_references
    from tsd_ray.train.phase import make_phase

    # reference embeddings from an (untrained) encoder stored in the bucket: no extra fit
    enc_uri = runner.encoder_file(RUNS, cfg.run.name)
    enc = Cnn14Encoder(cfg.encoder, manifest.n_mels, len(manifest.classes))
    ckpt.save_payload(ckpt.model_payload("encoder", cfg.encoder, enc, n_mels=manifest.n_mels,
                                         classes=manifest.classes), enc_uri)
    emb_uri = embed_references(enc_uri, manifest, runner.embeddings_file(RUNS, cfg.run.name))
    assert emb_uri.startswith("s3://")

    spec = make_phase(cfg, "f_source", "f_src", student="f", train_split="source_train",
                      val_split="source_val", loss="frame").with_(epochs=2, patience=5)
    run = Run(cfg, RUNS, manifest)
    run.embeddings = emb_uri
    entry = run.phase(spec)
    assert entry.model_uri.startswith(f"{RUNS}/{cfg.run.name}-f_src/checkpoint_")
    assert [h["epoch"] for h in entry.history] == [0, 1]
    keys = _keys(s3["client"], f"runs/{cfg.run.name}-f_src/")
    assert f"runs/{cfg.run.name}-f_src/checkpoint_manager_snapshot.json" in keys
    ck = entry.checkpoint_uri.removeprefix(f"s3://{BUCKET}/")
    assert {f"{ck}/model.pt", f"{ck}/state.pt"} <= set(keys)
    payload = ckpt.load_payload(entry.model_uri)  # read back through s3://
    assert payload["kind"] == "f" and payload["meta"]["features"] == FEATURES
    assert storage.exists(storage.join(RUNS, cfg.run.name, "ledger.json"))

    # a resubmitted job: a fresh Run re-opens the ledger from the bucket and skips the phase
    def no_training(*a, **k):
        raise AssertionError("the phase ran again instead of being skipped")

    monkeypatch.setattr(pipeline, "run_phase", no_training)  # where the run looks it up
    again = Run(cfg, RUNS, manifest)
    again.embeddings = emb_uri
    assert again.ledger.done("f_src")
    assert again.phase(spec) == entry

    # the same run name with another config is refused, from the ledger in the bucket
    from tsd_ray.experiments.ledger import LedgerError

    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=4))
    with pytest.raises(LedgerError, match="different config"):
        Run(other, RUNS, manifest)
