"""Algorithm 1 end to end, the SS/WS baselines and ablations, resumable through a ledger.

``run(cfg)`` = data (synthetic corpus or a dataset spec → features) → encoder (pretrain or
PANNs) → embedding table → each recipe of ``method.recipes`` → test evaluation with
post-processing tuned on validation → ``report.md`` / ``report.json`` in the run folder.
Every finished step is recorded in the ledger; a second start skips recorded steps, and a
phase interrupted mid-way resumes from its last Ray Train checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tsd_ray.common import environment, storage
from tsd_ray.common.config import Config, MethodConfig, to_dict
from tsd_ray.common.digest import digest, without_neutral_keys
from tsd_ray.common.progress import say
from tsd_ray.common.ray_env import ensure_ray
from tsd_ray.data.build import build_features
from tsd_ray.data.corpora import load_spec, read_corpus
from tsd_ray.data.shards import Manifest, load_manifest, read_mixture_table
from tsd_ray.data.synthetic import make_corpus
from tsd_ray.evaluate.predict import evaluate_model
from tsd_ray.evaluate.report import format_table1, write_report
from tsd_ray.experiments.final_model import TIE, Outcome, final_model
from tsd_ray.experiments.ledger import Ledger, LedgerError, PhaseRecord
from tsd_ray.train.driver import embeddings_file, run_phase
from tsd_ray.train.encoder import embed_references, embedding_quality, pretrain_encoder
from tsd_ray.train.phase import PhaseSpec, make_phase, ss_phase, ws_phase

#: Table 2 of the paper: each ablation switches one part of the method off.
ABLATIONS: dict[str, dict[str, bool]] = {
    "no_KD": {"kd": False},
    "no_PS": {"pseudo": False},
    "no_AD": {"adversarial": False},
    "no_SR": {"source_replay": False},
}


# --------------------------------------------------------------------------------------------
# Paths and data
# --------------------------------------------------------------------------------------------


def storage_root(cfg: Config, storage_override: str | None = None) -> str:
    return storage.expand(storage_override or cfg.run.storage)


def run_dir(cfg: Config, root: str) -> str:
    return storage.join(root, cfg.run.name)


def prepare_features(cfg: Config, root: str) -> Manifest:
    """Features of the configured corpus, built (or resumed) if needed; shared across runs."""

    spec_path = cfg.data.spec
    if spec_path is None:

        local_root = root if not storage.is_uri(root) else storage.expand("~/tsd_runs")
        tag = f"synthetic-{cfg.data.synthetic_preset}-{cfg.data.synthetic_seed}"
        if cfg.method.overlap_classes:
            tag += "-overlap"
        corpus_dir = storage.join(local_root, "_corpora", tag)
        say(f"synthetic corpus '{cfg.data.synthetic_preset}' (seed {cfg.data.synthetic_seed}) at {corpus_dir}")
        spec_path = str(
            make_corpus(corpus_dir, preset=cfg.data.synthetic_preset, seed=cfg.data.synthetic_seed,
                        overlap_classes=cfg.method.overlap_classes)
        )
    features = cfg.data.features
    if features is None:
        key = cfg.digest("frontend", "samples")[:8]
        name = spec_path.rstrip("/").split("/")[-2] if spec_path.endswith("dataset.yaml") else "corpus"
        features = storage.join(root, "_features", f"{name}-{key}")
    if storage.exists(storage.join(features, "manifest.json")):
        return load_manifest(features)
    say(f"building features of {spec_path} into {features}")
    spec = load_spec(spec_path)
    corpus = read_corpus(spec)
    res = build_features(
        corpus, features, frontend=cfg.frontend, samples_cfg=cfg.samples, build_cfg=cfg.build,
        spec_path=str(spec_path),
    )
    say(f"features: {res.shards_total} shards ({res.shards_written} written now) in {res.seconds:.0f} s; "
        f"{len(res.quarantined)} items quarantined (see {features}/quarantine.tsv)")
    return load_manifest(features)


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


class Run:
    """One run: its config, storage folder, ledger and features."""

    def __init__(self, cfg: Config, root: str, manifest: Manifest):
        self.cfg = cfg
        self.root = root
        self.dir = run_dir(cfg, root)
        self.manifest = manifest
        self.ledger = Ledger.open(self.dir, result_digest(cfg))
        self.embeddings: str | None = None
        self.encoder_uri: str | None = None  # the pretrained encoder (joint fine-tuning starts there)
        self.encoder_quality: dict | None = None
        self.environment = environment.describe()
        environment.record(self.dir, self.environment)
        self.env_digest = environment.digest(self.environment)

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn`` unless the ledger has ``name``; record its result."""
        if self.ledger.done(name):
            say(f"skip {name}: finished earlier (ledger)")
            return self.ledger.get(name)
        say(f"start {name}")
        t0 = time.time()
        info = fn()
        info["seconds"] = round(time.time() - t0, 1)
        info["environment"] = self.env_digest  # which environment.json entry produced it
        entry = self.ledger.record(name, **info)
        say(f"done {name} in {info['seconds']:.0f} s")
        return entry

    # -- encoder ---------------------------------------------------------------------------
    def prepare_encoder(self) -> str:
        enc = self.step("encoder", lambda: {"model_uri": pretrain_encoder(
            self.cfg, self.manifest, storage_path=self.root, run_name=self.cfg.run.name)})

        def embed():
            uri = embed_references(enc["model_uri"], self.manifest, embeddings_file(self.root, self.cfg.run.name))
            return {"uri": uri, "quality": embedding_quality(uri)}

        emb = self.step("embeddings", embed)
        self.encoder_uri = enc["model_uri"]
        self.embeddings = emb["uri"]
        q = emb.get("quality") or embedding_quality(self.embeddings)  # ledgers of earlier versions lack it
        self.encoder_quality = q
        say(f"encoder: leave-one-out nearest-centroid accuracy of the reference embeddings "
            f"{_pct(q['accuracy'])} ({q['n']} references, {len(q['per_class'])} classes)")
        return self.embeddings

    # -- phases ----------------------------------------------------------------------------
    def phase(self, spec: PhaseSpec) -> PhaseRecord:
        """Train ``spec`` unless the ledger has it, or has a phase that differs only in name."""

        key = spec.content_key()
        if not self.ledger.done(spec.name):
            twin = next((n for n, e in self.ledger.steps.items() if e.get("phase_key") == key), None)
            if twin is not None:
                entry = {k: v for k, v in self.ledger.get(twin).items() if k not in ("finished_at", "seconds")}
                entry["reused_from"] = entry.get("reused_from", twin)
                say(f"reuse {entry['reused_from']} for {spec.name}: the same phase under another name")
                return PhaseRecord.from_entry(spec.name, self.ledger.record(spec.name, **entry, seconds=0.0))

        def go():
            r = run_phase(self.cfg, spec, self.manifest, self.embeddings, storage_path=self.root,
                          run_name=self.cfg.run.name, encoder_uri=self.encoder_uri)
            return {"model_uri": r.model_uri, "checkpoint_uri": r.checkpoint_uri,
                    "best_val_score": r.best_val_score, "best_metrics": r.best_metrics,
                    "history": r.history, "student": spec.student, "phase_key": key}

        return PhaseRecord.from_entry(spec.name, self.step(spec.name, go))

    def evaluate(self, name: str, model_uri: str) -> dict[str, Any]:

        # the evaluated model is recorded: it is the recipe's final model (jobs/detect.py export)
        return self.step(name, lambda: {**evaluate_model(model_uri, self.manifest, self.embeddings, self.cfg.eval),
                                        "model_uri": model_uri})


def open_run(cfg: Config, root: str, manifest: Manifest, new_run: bool) -> Run:
    """Open the run's ledger; with ``new_run`` a config clash picks the next free name."""

    base, k = cfg.run.name, 1
    while True:
        try:
            return Run(cfg, root, manifest)
        except LedgerError:
            if not new_run:
                raise
            k += 1
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=f"{base}-{k}"))
            say(f"run '{base}' exists with another config: trying '{cfg.run.name}'")


def result_digest(cfg: Config) -> str:
    """Digest of everything that changes results (not the run's name/storage or fault hooks)."""
    return digest(without_neutral_keys(to_dict(cfg)))


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IterationRow:
    """The students after one loop iteration (0: phases 3-4), for Table 3."""

    iteration: int
    f: PhaseRecord
    w: PhaseRecord


@dataclass(frozen=True)
class MSResult:
    """What Algorithm 1 (:func:`run_ms`) ends with."""

    final: PhaseRecord  # the final model (:func:`tsd_ray.experiments.final_model.final_model`)
    final_student: str  # "f" or "w"
    w: PhaseRecord  # the last w student trained
    rows: list[IterationRow]


def run_ms(run: Run, method: MethodConfig, prefix: str = "MS") -> MSResult:
    """Algorithm 1 with the switches of ``method``; returns the final students and Table-3 rows."""
    cfg = dataclasses.replace(run.cfg, method=method)
    outcomes: list[Outcome] = []  # every finished phase, for the final-model rule
    results: dict[str, PhaseRecord] = {}

    def phase(key: str, name: str, **kw) -> PhaseRecord:
        spec = make_phase(cfg, key, f"{prefix}-{name}", **kw)
        res = run.phase(spec)
        outcomes.append(Outcome(spec.name, spec.student, spec.val_split, res.best_val_score, res.model_uri))
        results[spec.name] = res
        return res

    def final(final_student: str = method.final_student) -> Outcome:
        return final_model(outcomes, pseudo=method.pseudo, final_student=final_student)

    kd = method.kd
    # 1. f on D_s (eq. 2 + 9)
    f1 = phase("f_source", "p1_f_source", student="f", train_split="source_train",
               val_split="source_val", loss="frame")
    # 2. w on D_s with KD from the phase-1 f (eq. 4 + 9)
    w2 = phase("w_source", "p2_w_source", student="w", train_split="source_train",
               val_split="source_val", loss="clip", kd_teacher=f1.model_uri if kd else None)
    # 3. w on D_t with weak labels (eq. 3 + 9)
    w = phase("w_target", "p3_w_target", student="w", train_split="target_train",
              val_split="target_val", loss="clip", init=w2.model_uri)
    rows: list[IterationRow] = []
    if not method.pseudo:  # without pseudo supervision the w student is the final model
        return MSResult(final=results[final().name], final_student="w", w=w, rows=rows)
    # 4. f on D_t with pseudo labels from the phase-3 w (eq. 7 + 9)
    f = phase("f_target", "p4_f_target", student="f", train_split="target_train",
              val_split="target_val", loss="pseudo", init=f1.model_uri, pseudo_teacher=w.model_uri)
    rows.append(IterationRow(0, f, w))
    # Algorithm 1 loops until the f student stops improving; with final_student=best the
    # loop follows the model it would report, the better of the two students.
    best_score, stale = final().score, 0
    # 5. repeat {w with KD from current f; f with pseudo labels from current w}
    for it in range(1, method.max_iterations + 1):
        w = phase("w_loop", f"it{it}_w", student="w", train_split="target_train",
                  val_split="target_val", loss="clip", init=w.model_uri,
                  kd_teacher=f.model_uri if kd else None)
        f = phase("f_loop", f"it{it}_f", student="f", train_split="target_train",
                  val_split="target_val", loss="pseudo", init=f.model_uri,
                  pseudo_teacher=w.model_uri)
        rows.append(IterationRow(it, f, w))
        if final().score > best_score + TIE:
            best_score, stale = final().score, 0
        else:
            stale += 1
            if stale >= method.iteration_patience:
                who = "the better student's" if method.final_student == "best" else "f student's"
                say(f"{prefix}: {who} validation score stopped improving after iteration {it}")
                break
    chosen = final()
    if chosen.student == "w":
        say(f"{prefix}: final model is the w student of {chosen.name} (validation "
            f"{chosen.score:.1f} > f {final('f').score:.1f}; method.final_student=best)")
    return MSResult(final=results[chosen.name], final_student=chosen.student, w=w, rows=rows)


def run_all(cfg: Config, *, storage_override: str | None = None, ablations: bool = False,
            iteration_table: bool = False, new_run: bool = False) -> dict[str, Any]:
    """The main job: SS, WS, MS (+ ablations, + per-iteration table) and the report."""

    ensure_ray()
    root = storage_root(cfg, storage_override)
    manifest = prepare_features(cfg, root)
    run = open_run(cfg, root, manifest, new_run)
    cfg = run.cfg
    cfg_uri = storage.join(run.dir, "config.yaml")
    if not storage.exists(cfg_uri):
        import io

        import yaml

        buf = io.StringIO()
        yaml.safe_dump(cfg.to_dict(), buf, sort_keys=False)
        storage.write_bytes_atomic(cfg_uri, buf.getvalue().encode())
    run.prepare_encoder()
    results: dict[str, Any] = {}
    recipes = list(cfg.method.recipes)
    if "SS" in recipes:
        if not manifest.data["splits"].get("target_train") or not _has_target_strong(run):
            say("SS skipped: the target training split has no strong labels")
        else:
            ss = run.phase(ss_phase(cfg))
            results["SS"] = _scores(run.evaluate("SS-eval", ss.model_uri), detail=True)
    if "WS" in recipes:
        ws = run.phase(ws_phase(cfg))
        results["WS"] = _scores(run.evaluate("WS-eval", ws.model_uri), detail=True)
    if "MS" in recipes:
        ms = run_ms(run, cfg.method)
        ev = run.evaluate("MS-eval", ms.final.model_uri)
        results["MS"] = _scores(ev, detail=True)
        results["MS"]["final_student"] = ms.final_student
        if iteration_table:
            results["iterations"] = [
                {
                    "iteration": r.iteration,
                    **{f"f_{k}": v for k, v in _scores(run.evaluate(f"MS-eval-it{r.iteration}-f", r.f.model_uri)).items()},
                    **{f"w_{k}": v for k, v in _scores(run.evaluate(f"MS-eval-it{r.iteration}-w", r.w.model_uri)).items()},
                }
                for r in ms.rows
            ]
    if ablations:
        results["ablations"] = {}
        for name, switches in ABLATIONS.items():
            if all(getattr(cfg.method, k) == v for k, v in switches.items()):
                continue  # already off in the main chain: the row would be MS again
            method = dataclasses.replace(cfg.method, **switches)
            ab = run_ms(run, method, prefix=name)
            results["ablations"][name] = {**_scores(run.evaluate(f"{name}-eval", ab.final.model_uri)),
                                          "switches": {"KD": method.kd, "PS": method.pseudo, "AD": method.adversarial,
                                                       "SR": method.source_replay}}
    results["settings"] = run_settings(cfg, manifest.uri)
    if run.encoder_quality is not None:
        results["encoder"] = run.encoder_quality
    results["environment"] = {**run.environment, "digest": run.env_digest,
                              "steps_by_environment": _steps_by_environment(run)}
    out = write_report(results, run.dir, title=f"tsd_ray run '{cfg.run.name}'")
    print(format_table1(results), flush=True)
    say(f"report: {storage.join(run.dir, 'report.md')}")
    return {"results": results, "run_dir": run.dir, "report": out}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def run_settings(cfg: Config, features_uri: str) -> dict[str, Any]:
    """``results["settings"]`` of a run: how it was scored, on what, and the method's switches.

    ``report.md`` states the scoring keys in a sentence and lists the others on its Settings
    line, so a report says whether MS ran the paper's Algorithm 1 as written
    (``source_replay`` off, ``final_student`` f) and which of KD, pseudo supervision and the
    adversarial term were on.
    """
    m = cfg.method
    return {
        "segment_s": cfg.eval.segment_s, "t_collar_s": cfg.eval.t_collar_s,
        "percentage_of_length": cfg.eval.percentage_of_length, "run": cfg.run.name,
        "features": features_uri, "split": "target_test", "seed": cfg.train.seed,
        "kd": m.kd, "pseudo": m.pseudo, "adversarial": m.adversarial,
        "source_replay": m.source_replay, "final_student": m.final_student,
    }


def _scores(ev: dict, detail: bool = False) -> dict:
    """Table-1 scores of an evaluation; ``detail``: with its per-class scores and post-processing."""
    out = {"segment_f": round(float(ev["segment_f"]), 2), "event_f": round(float(ev["event_f"]), 2)}
    for key, digits in (("psds1", 4), ("intersection_f", 2)):  # evaluations since PSDS was added
        if ev.get(key) is not None:
            out[key] = round(float(ev[key]), digits)
    if detail:
        out.update({k: ev[k] for k in ("per_class", "postprocessing") if ev.get(k) is not None})
    return out


def _steps_by_environment(run: Run) -> dict[str, list[str]]:
    """``{environment digest: [ledger steps]}``: more than one key means a mixed-environment run."""
    out: dict[str, list[str]] = {}
    for name, entry in run.ledger.steps.items():
        out.setdefault(entry.get("environment", "unrecorded"), []).append(name)
    return out


def _has_target_strong(run: Run) -> bool:
    """True when target_train rows carry strong labels (kept aside for SS)."""

    t = read_mixture_table(run.manifest, "target_train", columns=["has_strong"])
    return bool(t.num_rows) and all(t.column("has_strong").to_pylist())
