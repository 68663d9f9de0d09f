"""Short stable digests of configs and specs, and the one list of result-neutral config keys.

A digest is the first 16 hex digits of the sha256 of the object's JSON (sorted keys): the
ledger pins a run's config by it, a phase is reused by its spec's digest, Tune shares an
encoder among trials by it. Keys that change where or how a run is kept, but not what it
computes, are left out of result digests (:data:`RESULT_NEUTRAL`), so renaming a run or
adding a fault hook does not make its results look different.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

__all__ = ["ADDED_AT_NEUTRAL", "RESULT_NEUTRAL", "digest", "without_neutral_keys"]

#: config section -> keys that do not change results (None: the whole section)
RESULT_NEUTRAL: dict[str, tuple[str, ...] | None] = {
    "run": None,  # the run's name and storage root
    "train": ("fail_at_epoch", "max_failures"),  # the fault-injection hook and Ray's retry budget
}


#: config section -> keys added after runs existed, with the value at which a run computes what
#: it computed before them. A key at that value is left out of result digests, so runs started
#: before it was added still resume and reuse their phases (at any other value it counts).
ADDED_AT_NEUTRAL: dict[str, dict[str, Any]] = {
    "augment": {"gain_db": 0.0, "eq_db": 0.0, "max_bin_shift": 0, "mix_prob": 0.0, "mix_max_db": 12.0},
    "encoder": {"joint": "off", "joint_lr_scale": 0.1, "fill": "floor"},
    "eval": {"fill_gap_frames": 0, "min_event_frames": 0, "fill_gaps": [0], "min_event_lengths": [0]},
}


def digest(obj: Any, length: int = 16) -> str:
    """First ``length`` hex digits of the sha256 of ``obj`` as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def without_neutral_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config dict (or of any subset of its sections) without the keys of
    :data:`RESULT_NEUTRAL`, nor those of :data:`ADDED_AT_NEUTRAL` at their neutral value."""
    out = copy.deepcopy(config)
    for section, keys in RESULT_NEUTRAL.items():
        if section not in out:
            continue
        if keys is None:
            del out[section]
        else:
            for k in keys:
                out[section].pop(k, None)
    for section, neutral in ADDED_AT_NEUTRAL.items():
        for k, value in neutral.items():
            if section in out and k in out[section] and out[section][k] == value:
                del out[section][k]
    return out
