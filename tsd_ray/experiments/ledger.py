"""The run ledger: which steps of a run are finished, with their metrics and model URIs.

``<storage>/<run>/ledger.json`` is rewritten atomically after every finished step, so a job
started again with the same run name skips what is recorded and resumes after it. The
ledger also pins the config digest: the same run name with a changed config is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tsd_ray.common import storage


class LedgerError(RuntimeError):
    pass


@dataclass
class Ledger:
    uri: str
    config_digest: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir: str, config_digest: str) -> Ledger:
        uri = storage.join(run_dir, "ledger.json")
        if not storage.exists(uri):
            led = cls(uri, config_digest)
            led.save()
            return led
        data = storage.read_json(uri)
        if data.get("config_digest") != config_digest:
            raise LedgerError(
                f"run at {run_dir} was started with a different config (digest "
                f"{data.get('config_digest')} != {config_digest}); resume it with its own config "
                "(saved as config.yaml beside the ledger), pick another --run-name, or pass "
                "--new-run to start a fresh run under a new name"
            )
        return cls(uri, config_digest, dict(data.get("steps", {})))

    def save(self) -> None:
        storage.write_json_atomic(self.uri, {"config_digest": self.config_digest, "steps": self.steps})

    def done(self, step: str) -> bool:
        return step in self.steps

    def get(self, step: str) -> dict[str, Any]:
        return self.steps[step]

    def record(self, step: str, **info: Any) -> dict[str, Any]:
        entry = {**info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.steps[step] = entry
        self.save()
        return entry


@dataclass(frozen=True)
class PhaseRecord:
    """A finished training phase as the ledger keeps it (typed view of its ledger entry)."""

    name: str
    student: str  # "f" or "w"
    model_uri: str  # the best-by-validation student (model.pt)
    best_val_score: float
    checkpoint_uri: str | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    reused_from: str | None = None  # the phase whose result this one took (same content)

    @classmethod
    def from_entry(cls, name: str, entry: dict[str, Any]) -> PhaseRecord:
        return cls(name=name, student=str(entry.get("student", "")), model_uri=str(entry["model_uri"]),
                   best_val_score=float(entry["best_val_score"]), checkpoint_uri=entry.get("checkpoint_uri"),
                   best_metrics=dict(entry.get("best_metrics") or {}), history=list(entry.get("history") or []),
                   seconds=float(entry.get("seconds") or 0.0), reused_from=entry.get("reused_from"))
