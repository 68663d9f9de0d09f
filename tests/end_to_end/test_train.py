"""One phase on Ray Train (2 workers, DDP on gloo), checkpoints, encoder, evaluation job."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_build import make_corpus

from tsd_ray.common.config import load_config
from tsd_ray.data.build import build_features
from tsd_ray.data.shards import iter_local, load_manifest
from tsd_ray.models import checkpoint as ckpt
from tsd_ray.train.phase import make_phase

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_local):
    """Features, encoder and embedding table of a small corpus (built once per module)."""
    from tsd_ray.train.driver import embeddings_file
    from tsd_ray.train.encoder import embed_references, pretrain_encoder

    root = tmp_path_factory.mktemp("train")
    # the encoder learns from every labelled clip (train_on=all): the multi-label path on 2 workers
    cfg = load_config("tiny", ["frontend.device=cpu", "encoder.epochs=2", "train.num_workers=2",
                               "encoder.train_on=all"])
    corpus = make_corpus(root / "corpus", n_per_split=6)
    build_features(corpus, str(root / "features"), frontend=cfg.frontend, samples_cfg=cfg.samples,
                   build_cfg=cfg.build, use_ray=False)
    manifest = load_manifest(str(root / "features"))
    enc = pretrain_encoder(cfg, manifest, storage_path=str(root / "runs"), run_name="t")
    emb = embed_references(enc, manifest, embeddings_file(str(root / "runs"), "t"))
    return {"cfg": cfg, "manifest": manifest, "encoder": enc, "embeddings": emb, "root": root, "corpus": corpus}


def test_encoder_checkpoint_and_embedding_table(trained):
    import pyarrow.parquet as pq

    enc = ckpt.load_encoder(trained["encoder"])
    assert not enc.training
    t = pq.read_table(trained["embeddings"])
    assert t.num_rows == 8  # 4 classes x 2 references
    emb = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    assert emb.shape == (8, trained["cfg"].encoder.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), np.sqrt(emb.shape[1]), rtol=1e-4)
    assert set(t.column("label").to_pylist()) == {"s1", "s2", "t1", "t2"}


def test_two_worker_phase_lowers_loss_and_checkpoint_describes_itself(trained):
    from tsd_ray.train.driver import run_phase

    cfg = dataclasses.replace(trained["cfg"], train=dataclasses.replace(trained["cfg"].train, lr_schedule="cosine"))
    spec = make_phase(cfg, "f_source", "f_src", student="f", train_split="source_train",
                      val_split="source_val", loss="frame", adversarial=True).with_(epochs=4, patience=10, lr=3e-3)
    res = run_phase(cfg, spec, trained["manifest"], trained["embeddings"],
                    storage_path=str(trained["root"] / "runs"), run_name="t")
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 4
    assert losses[-1] < losses[0], losses
    assert all("loss_domain" in h for h in res.history)  # the adversary trained alongside
    # validation is shared by the two workers, and still scores every sample exactly once
    _, n_val = trained["manifest"].count("source_val")
    assert [h["val_samples"] for h in res.history] == [n_val] * 4
    lrs = [h["lr_last"] for h in res.history]  # the cosine schedule, falling every epoch
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[0] <= 3e-3, lrs
    # the model file rebuilds the student alone (config inside), weights as trained
    payload = ckpt.load_payload(res.model_uri)
    assert payload["kind"] == "f" and payload["config"]["channels"] == list(cfg.detector.channels)
    assert payload["meta"]["features"] == trained["manifest"].uri
    model = ckpt.build_student(payload)
    batch = next(iter_local(trained["manifest"], "source_val"))
    emb = torch.zeros(len(batch["mel"]), cfg.detector.embedding_dim)
    with torch.no_grad():
        out = model(torch.as_tensor(batch["mel"]).float(), emb)
    assert out.frame_probs.shape == (len(batch["mel"]), 250)
    trained["f_model"] = res.model_uri


def test_a_two_worker_phase_repeats_exactly_under_one_seed(trained):
    """Same seed, same phase, two fits: the same numbers, epoch by epoch (train.reproducible).

    The features are rebuilt with one mixture per shard, so the training split has many
    blocks for the two workers to share: Ray's streaming split hands blocks to whichever worker
    asks first unless the ingest preserves order, and the auxiliary rows' block order was drawn
    afresh at every pass.
    """
    from tsd_ray.train import driver as runner
    from tsd_ray.train.driver import run_phase
    from tsd_ray.train.encoder import embed_references

    root = trained["root"]
    cfg = dataclasses.replace(trained["cfg"], build=dataclasses.replace(trained["cfg"].build, rows_per_shard=1))
    build_features(trained["corpus"], str(root / "features3"), frontend=cfg.frontend, samples_cfg=cfg.samples,
                   build_cfg=cfg.build, use_ray=False)
    manifest = load_manifest(str(root / "features3"))
    assert len(manifest.files("target_train")) == manifest.count("target_train")[0]
    emb = embed_references(trained["encoder"], manifest, str(root / "runs" / "emb3.parquet"))
    spec = make_phase(cfg, "w_target", "w_t", student="w", train_split="target_train", val_split="target_val",
                      loss="clip", adversarial=True).with_(epochs=2, patience=10, replay=True)
    assert spec.aux_split == "source_train"
    runs = []
    for i in range(2):
        runner._SPLITS.clear()  # the second fit expands its splits again, as a new job would
        runs.append(run_phase(cfg, spec, manifest, emb, storage_path=str(root / "runs"), run_name=f"rep{i}"))
    keys = ("loss", "loss_clip", "loss_domain", "loss_replay", "train_samples", "val_event_f", "val_segment_f")
    first, second = ([{k: h[k] for k in keys} for h in r.history] for r in runs)
    assert len(first) == 2 and first == second
    a, b = (ckpt.load_payload(r.model_uri)["state_dict"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keep_order_holds_for_that_dataset_only(ray_local):
    """keep_order sets preserve_order in the dataset's own DataContext copy, not Ray's global one."""
    import ray
    from ray.data import DataContext

    from tsd_ray.common.ray_env import keep_order

    ds = ray.data.from_items([{"i": i} for i in range(8)], override_num_blocks=8)
    assert keep_order(ds) is ds and ds.context.execution_options.preserve_order
    assert not DataContext.get_current().execution_options.preserve_order


def test_phases_share_the_splits_they_read(trained):
    from tsd_ray.train.driver import phase_datasets

    cfg, manifest = trained["cfg"], trained["manifest"]
    spec = make_phase(cfg, "f_source", "a", student="f", train_split="source_train", val_split="source_val",
                      loss="frame", adversarial=True)
    a = phase_datasets(manifest, spec, 0, cache_max_samples=10_000)
    b = phase_datasets(manifest, spec.with_(name="b", student="w", loss="clip"), 0, cache_max_samples=10_000)
    assert a["val"] is b["val"]  # expanded once, held in the object store
    assert a["train"].count() == manifest.count("source_train")[1] == b["train"].count()
    assert set(a) == {"train", "val", "aux"}
    streamed = phase_datasets(manifest, spec, 0, cache_max_samples=0)  # too big to hold: streamed
    assert streamed["val"].count() == manifest.count("source_val")[1]
    assert streamed["train"].columns() == a["train"].columns()  # the same rows either way


def test_packed_rows_hold_every_sample_of_their_mixture(trained):
    """Training rows packed per mixture carry exactly the samples of the expanded rows."""
    from tsd_ray.data.shards import NUMERIC_KEYS, _expander, collate_packed, packed_collate_fn
    from tsd_ray.train.driver import phase_datasets

    cfg, manifest = trained["cfg"], trained["manifest"]
    rows = next(manifest_rows(manifest, "target_train", 8))
    samples = next(iter_local(manifest, "target_train", batch_rows=8, with_ids=False))
    b = collate_packed(_expander(manifest, None, False, packed=True)(rows))
    assert b["mel"].shape[0] == len(rows["mixture_id"]) < b["mix"].shape[0] == len(samples["mel"])
    assert torch.equal(b["mel"][b["mix"]], torch.from_numpy(samples["mel"]))
    for k in NUMERIC_KEYS[1:]:
        assert torch.equal(b[k], torch.from_numpy(samples[k])), k
    assert torch.equal(b["mix_domain"][b["mix"]], b["domain"])

    # through Ray: held in the object store, split, shuffled by mixture, nothing lost
    spec = make_phase(cfg, "w_target", "p", student="w", train_split="target_train", val_split="target_val",
                      loss="clip", adversarial=True)
    ds = phase_datasets(manifest, spec, 0, cache_max_samples=10_000, packed=True)
    n_mix, n_samples = manifest.count("target_train")
    assert ds["train"].count() == n_mix
    seen_mix = seen = 0
    for batch in ds["train"].iter_torch_batches(batch_size=5, local_shuffle_buffer_size=16, local_shuffle_seed=1,
                                                collate_fn=packed_collate_fn()):
        seen_mix += batch["mel"].shape[0]
        seen += batch["mix"].shape[0]
        assert batch["frame_labels"].shape == (batch["mix"].shape[0], manifest.n_output_frames)
    assert (seen_mix, seen) == (n_mix, n_samples)


def manifest_rows(manifest, split: str, n: int):
    """The first ``n`` mixture rows of a split, as the readers get them from Parquet."""
    from tsd_ray.data.shards import _MIXTURE_COLUMNS, _record_batch_to_numpy, open_shard

    pf = open_shard(manifest.files(split)[0])
    yield _record_batch_to_numpy(next(pf.iter_batches(batch_size=n, columns=_MIXTURE_COLUMNS)))


def test_evaluate_job_scores_the_checkpoint(trained, tmp_path):
    model = trained.get("f_model")
    if model is None:
        pytest.skip("needs the phase test's checkpoint")
    out = tmp_path / "eval"
    r = subprocess.run(
        [sys.executable, "jobs/evaluate.py", "--checkpoint", model, "--split", "source_val",
         "--val-split", "source_train", "--config", "tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "evaluation.json").read_text())
    assert 0.0 <= res["event_f"] <= 100.0 and 0.0 <= res["segment_f"] <= 100.0
    assert set(res["per_class"]) == {"s1", "s2"}
    assert 0.0 <= res["psds1"] <= 1.0 and 0.0 <= res["intersection_f"] <= 100.0
    assert all("psds1" in v and "intersection_f" in v for v in res["per_class"].values())
    md = (out / "evaluation.md").read_text()
    assert "segment" in md.lower() and "| PSDS1 |" in md


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="model.pt"):
        ckpt.load_payload(str(bad))


def test_joint_fine_tuning_chains_the_encoder_down_the_phases_and_evaluates_with_it(trained):
    """encoder.joint on 2 workers: phase 1 trains the whole encoder ("all") with the detector,
    phase 2 starts from phase 1's student and its encoder ("head", with phase 1 as KD teacher),
    and evaluation embeds the references with the student's own encoder."""
    import pyarrow.parquet as pq

    from tsd_ray.evaluate.predict import evaluate_model
    from tsd_ray.train.driver import run_phase

    def cfg_with(mode):
        c = trained["cfg"]
        return dataclasses.replace(c, encoder=dataclasses.replace(c.encoder, joint=mode, joint_lr_scale=1.0))

    runs, manifest = str(trained["root"] / "runs"), trained["manifest"]
    pretrained = ckpt.load_payload(trained["encoder"])["state_dict"]
    cfg = cfg_with("all")
    spec1 = make_phase(cfg, "f_source", "j1", student="f", train_split="source_train", val_split="source_val",
                       loss="frame").with_(epochs=2, patience=10, lr=3e-3)
    r1 = run_phase(cfg, spec1, manifest, trained["embeddings"], storage_path=runs, run_name="joint",
                   encoder_uri=trained["encoder"])
    enc1 = ckpt.load_payload(r1.model_uri)["encoder"]
    assert enc1["meta"]["fine_tuned_in"] == "j1" and enc1["meta"]["joint"] == "all"
    changed = {k for k in pretrained if not torch.equal(pretrained[k], enc1["state_dict"][k])}
    assert "conv_block1.conv1.weight" in changed and "fc_embedding.weight" in changed
    assert not any(k.startswith("fc_classifier.") for k in changed)

    cfg = cfg_with("head")
    spec2 = make_phase(cfg, "w_source", "j2", student="w", train_split="source_train", val_split="source_val",
                       loss="clip", init=r1.model_uri, kd_teacher=r1.model_uri).with_(epochs=1, patience=10)
    r2 = run_phase(cfg, spec2, manifest, trained["embeddings"], storage_path=runs, run_name="joint",
                   encoder_uri=trained["encoder"])
    enc2 = ckpt.load_payload(r2.model_uri)["encoder"]["state_dict"]
    # phase 2 went on from phase 1's encoder: its trunk (frozen under "head") is phase 1's
    assert all(torch.equal(enc2[k], enc1["state_dict"][k]) for k in enc2 if k.startswith("conv_block"))
    assert not torch.equal(enc2["fc_embedding.weight"], enc1["state_dict"]["fc_embedding.weight"])

    ev = evaluate_model(r2.model_uri, manifest, trained["embeddings"], trained["cfg"].eval,
                        split="source_val", val_split="source_train")
    assert 0.0 <= ev["encoder_loo"] <= 1.0 and 0.0 <= ev["event_f"] <= 100.0
    own = pq.read_table(f"{r2.model_uri}.embeddings.parquet")
    run_table = pq.read_table(trained["embeddings"])
    assert own.column("reference_id").to_pylist() == run_table.column("reference_id").to_pylist()
    assert own.column("embedding").to_pylist() != run_table.column("embedding").to_pylist()


def test_encoder_workers_each_get_every_kind_of_reference(trained):
    """The reference table is stored class by class; split as stored, each of 2 workers held
    the same half of the classes every epoch (and its batch-norm statistics, rank 0's kept in
    the checkpoint, those of its half). Each worker's share now mixes the classes, the same
    rows in two builds of the datasets (a run repeats)."""
    import threading

    import pyarrow.parquet as pq

    from tsd_ray.train.encoder import training_datasets

    cfg = dataclasses.replace(trained["cfg"], encoder=dataclasses.replace(trained["cfg"].encoder, train_on="references"))

    def shares():
        ds = training_datasets(cfg, trained["manifest"])[0]["train"]
        its, out = ds.streaming_split(2, equal=True), {}

        def read(i):
            out[i] = [str(x) for b in its[i].iter_batches(batch_size=4, batch_format="numpy") for x in b["reference_id"]]

        threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return out

    first, again = shares(), shares()
    t = pq.read_table(trained["embeddings"], columns=["reference_id", "label"])  # every reference, its class
    labels = dict(zip(t.column("reference_id").to_pylist(), t.column("label").to_pylist()))
    assert sorted(first[0] + first[1]) == sorted(labels)
    halves = [{labels[r][0] for r in first[i]} for i in range(2)]  # "s" / "t" classes
    assert halves[0] == halves[1] == {"s", "t"}  # as stored: worker 0 had s1, s2, worker 1 t1, t2
    assert {i: sorted(v) for i, v in first.items()} == {i: sorted(v) for i, v in again.items()}
