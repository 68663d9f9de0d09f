"""Algorithm 1's step logic without Ray: which phases an ablation trains and which it reuses."""

import dataclasses
import types

import pytest

from tsd_ray.common.config import load_config
from tsd_ray.experiments import pipeline
from tsd_ray.experiments.pipeline import ABLATIONS, Run, run_ms


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """A Run over tmp storage whose phases 'train' instantly and log what they were given."""
    cfg = load_config("tiny", ["method.max_iterations=1", f"run.storage={tmp_path}"])
    trained = []

    def fake_run_phase(cfg_, spec, manifest, embeddings, storage_path, run_name, encoder_uri=None):
        trained.append(spec)
        return types.SimpleNamespace(
            model_uri=f"{storage_path}/{run_name}-{spec.name}/model.pt", checkpoint_uri=None,
            best_val_score=float(len(trained)), best_metrics={}, history=[])

    monkeypatch.setattr(pipeline, "run_phase", fake_run_phase)
    run = Run(cfg, str(tmp_path), manifest=None)
    run.embeddings = "emb.parquet"
    return run, trained


def test_ablations_reuse_the_main_chain_up_to_their_switch(fake_run):
    run, trained = fake_run
    ms = run_ms(run, run.cfg.method)
    ms_specs = list(trained)
    assert [s.name for s in trained] == [f"MS-{n}" for n in
                                         ("p1_f_source", "p2_w_source", "p3_w_target", "p4_f_target", "it1_w", "it1_f")]
    main_uri = {s.name.removeprefix("MS-"): run.ledger.get(s.name)["model_uri"] for s in trained}

    def ablate(name):
        trained.clear()
        result = run_ms(run, dataclasses.replace(run.cfg.method, **ABLATIONS[name]), prefix=name)
        return result, [s.name.removeprefix(f"{name}-") for s in trained]

    # no pseudo supervision: phases 1-3 are the main chain's, its final model is MS's phase-3 w
    no_ps, ran = ablate("no_PS")
    assert ran == []
    assert no_ps.final.model_uri == main_uri["p3_w_target"]
    assert run.ledger.get("no_PS-p3_w_target")["reused_from"] == "MS-p3_w_target"
    # no KD: phase 1 is shared; phase 2 loses its teacher, so it and all after it train anew
    _, ran = ablate("no_KD")
    assert ran == ["p2_w_source", "p3_w_target", "p4_f_target", "it1_w", "it1_f"]
    assert trained[0].kd_teacher is None and trained[0].name == "no_KD-p2_w_source"
    assert run.ledger.get("no_KD-p1_f_source")["model_uri"] == main_uri["p1_f_source"]
    assert trained[1].init == run.ledger.get("no_KD-p2_w_source")["model_uri"] != main_uri["p2_w_source"]
    # no adversarial term: every phase differs
    _, ran = ablate("no_AD")
    assert len(ran) == 6 and not any(s.adversarial for s in trained)
    # no source replay (the paper's Algorithm 1): the source phases are MS's, the target ones
    # train anew without replay; in MS every target phase replays and no source phase does
    assert [s.replay for s in ms_specs] == [False, False, True, True, True, True]
    _, ran = ablate("no_SR")
    assert ran == ["p3_w_target", "p4_f_target", "it1_w", "it1_f"]
    assert not any(s.replay for s in trained) and all(s.aux_split == "source_train" for s in trained)
    assert ms.final.model_uri == main_uri["it1_f"]


def test_a_reused_phase_is_recorded_and_survives_a_restart(fake_run):
    run, trained = fake_run
    run_ms(run, run.cfg.method)
    run_ms(run, dataclasses.replace(run.cfg.method, pseudo=False), prefix="no_PS")
    entry = run.ledger.get("no_PS-p2_w_source")
    assert entry["reused_from"] == "MS-p2_w_source" and entry["seconds"] == 0.0
    assert entry["phase_key"] == run.ledger.get("MS-p2_w_source")["phase_key"]
    # a restarted job reads the reused steps back from the ledger and trains nothing
    trained.clear()
    again = Run(run.cfg, run.root, manifest=None)
    again.embeddings = run.embeddings
    run_ms(again, dataclasses.replace(run.cfg.method, pseudo=False), prefix="no_PS")
    assert trained == []
    assert again.ledger.get("no_PS-p2_w_source") == entry


def test_the_phase_key_ignores_only_the_name(fake_run):
    run, _ = fake_run
    from tsd_ray.train.phase import make_phase

    spec = make_phase(run.cfg, "f_source", "a", student="f", train_split="source_train",
                      val_split="source_val", loss="frame")
    assert spec.content_key() == spec.with_(name="b").content_key()
    for change in ({"lr": spec.lr * 2}, {"epochs": spec.epochs + 1}, {"adversarial": not spec.adversarial},
                   {"init": "x.pt"}, {"kd_teacher": "f.pt"}, {"lambda_d": 0.5}):
        assert spec.with_(**change).content_key() != spec.content_key(), change


def test_final_student_best_takes_the_w_student_only_when_it_validates_higher(fake_run, monkeypatch):
    from tsd_ray.evaluate.report import format_table1

    run, trained = fake_run
    scores = {"p3_w_target": 20.0, "p4_f_target": 22.0, "it1_w": 25.0, "it1_f": 21.0}

    def fake_run_phase(cfg_, spec, manifest, embeddings, storage_path, run_name, encoder_uri=None):
        trained.append(spec)
        return types.SimpleNamespace(
            model_uri=f"{storage_path}/{run_name}-{spec.name}/model.pt", checkpoint_uri=None,
            best_val_score=scores.get(spec.name.split("-", 1)[1], 1.0), best_metrics={}, history=[])

    monkeypatch.setattr(pipeline, "run_phase", fake_run_phase)
    paper = run_ms(run, dataclasses.replace(run.cfg.method, final_student="f"))  # the best-validating f (phase 4)
    assert paper.final_student == "f" and paper.final.model_uri.endswith("MS-p4_f_target/model.pt")
    assert run.cfg.method.final_student == "best"  # the default
    best = run_ms(run, run.cfg.method)  # phases reused from the ledger
    assert best.final_student == "w" and best.final.model_uri.endswith("MS-it1_w/model.pt")
    note = "w student, which had the higher validation score"
    table = {"SS": {"segment_f": 1, "event_f": 3}, "WS": {"segment_f": 1, "event_f": 1}}
    assert note in format_table1({**table, "MS": {"segment_f": 1, "event_f": 2, "final_student": "w"}})
    assert note not in format_table1({**table, "MS": {"segment_f": 1, "event_f": 2, "final_student": "f"}})
    scores["it1_f"] = 26.0  # f validates higher: "best" keeps f
    run.ledger.steps.pop("MS-it1_f")  # train the loop's f again, now with that score
    assert run_ms(run, dataclasses.replace(run.cfg.method, final_student="best")).final_student == "f"


def test_the_loop_stops_on_the_reported_students_validation_score(fake_run, monkeypatch):
    """Algorithm 1 stops when f stops improving; with final_student=best, when neither student
    beats the better one so far (the model MS would report)."""
    run, trained = fake_run
    scores = {"p3_w_target": 20.0, "p4_f_target": 22.0, "it1_w": 25.0, "it1_f": 21.0,
              "it2_w": 24.0, "it2_f": 23.0, "it3_w": 31.0, "it3_f": 30.0}

    def fake_run_phase(cfg_, spec, manifest, embeddings, storage_path, run_name, encoder_uri=None):
        trained.append(spec.name.split("-", 1)[1])
        return types.SimpleNamespace(
            model_uri=f"{storage_path}/{run_name}-{spec.name}/model.pt", checkpoint_uri=None,
            best_val_score=scores.get(spec.name.split("-", 1)[1], 1.0), best_metrics={}, history=[])

    monkeypatch.setattr(pipeline, "run_phase", fake_run_phase)
    def iterations(prefix):  # the loop iterations a chain ran (trained or reused from the ledger)
        return [it for it in (1, 2, 3) if run.ledger.done(f"{prefix}-it{it}_f")]

    loop = dict(max_iterations=3, iteration_patience=1)
    f_only = run_ms(run, dataclasses.replace(run.cfg.method, final_student="f", **loop), prefix="F")
    assert iterations("F") == [1]  # it1's f (21) is below phase 4's (22): stop
    assert f_only.final.model_uri.endswith("F-p4_f_target/model.pt")
    best = run_ms(run, dataclasses.replace(run.cfg.method, final_student="best", **loop), prefix="B")
    # it1's w (25) beats every score so far: go on; in it2 neither beats 25: stop before it3
    assert iterations("B") == [1, 2] and trained[-2:] == ["it2_w", "it2_f"]
    assert best.final_student == "w" and best.final.model_uri.endswith("F-it1_w/model.pt")  # reused
    patient = run_ms(run, dataclasses.replace(run.cfg.method, final_student="best", max_iterations=3,
                                              iteration_patience=2), prefix="P")
    assert iterations("P") == [1, 2, 3] and patient.final.model_uri.endswith("P-it3_w/model.pt")


def test_run_settings_record_the_method_switches_and_report_md_shows_them(tmp_path):
    from tsd_ray.evaluate.report import format_report
    from tsd_ray.experiments.pipeline import run_settings

    cfg = load_config("tiny", ["method.source_replay=false", "method.final_student=f", "method.kd=false"])
    settings = run_settings(cfg, "file:///features")
    assert settings["source_replay"] is False and settings["final_student"] == "f"
    assert (settings["kd"], settings["pseudo"], settings["adversarial"]) == (False, True, True)
    assert settings["segment_s"] == cfg.eval.segment_s and settings["features"] == "file:///features"
    assert settings["split"] == "target_test" and settings["seed"] == cfg.train.seed
    md = format_report({"MS": {"segment_f": 1.0, "event_f": 2.0}, "settings": settings}, title="t")
    line = next(x for x in md.splitlines() if x.startswith("Settings: "))
    for part in ("source_replay = `False`", "final_student = `f`", "kd = `False`", "pseudo = `True`",
                 "adversarial = `True`"):
        assert part in line, line
    assert "paper" in load_config("paper").run.name
    paper = run_settings(load_config("paper"), "s3://b/f")
    assert (paper["source_replay"], paper["final_student"]) == (False, "f")
