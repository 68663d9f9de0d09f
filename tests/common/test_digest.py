"""One digest helper and one list of result-neutral keys."""

import hashlib
import json

from tsd_ray.common.config import load_config, to_dict
from tsd_ray.common.digest import ADDED_AT_NEUTRAL, RESULT_NEUTRAL, digest, without_neutral_keys
from tsd_ray.experiments.pipeline import result_digest


def test_digest_is_the_sha256_of_sorted_json():
    obj = {"b": [1, 2], "a": {"z": 0.5}}
    assert digest(obj) == hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    assert digest({"a": {"z": 0.5}, "b": [1, 2]}) == digest(obj)  # key order does not matter
    assert len(digest(obj, 20)) == 20


def test_neutral_keys_leave_the_result_digest_alone_and_others_move_it():
    cfg = load_config("tiny")
    base = result_digest(cfg)
    renamed = load_config("tiny", ["run.name=other", "run.storage=/elsewhere", "train.fail_at_epoch=2",
                                   "train.max_failures=3"])
    assert result_digest(renamed) == base
    assert result_digest(load_config("tiny", ["train.seed=7"])) != base
    d = without_neutral_keys(to_dict(cfg))
    assert "run" not in d and not set(RESULT_NEUTRAL["train"]) & set(d["train"])
    assert "run" in to_dict(cfg)  # the input is not changed


def test_keys_added_later_count_only_away_from_their_neutral_value():
    cfg = load_config("demo")
    full = to_dict(cfg)
    before = {sec: ({k: v for k, v in vals.items() if k not in ADDED_AT_NEUTRAL.get(sec, {})} if isinstance(vals, dict)
                    else vals) for sec, vals in full.items()}
    # A run started before the keys existed had a config without them: its digest is the same.
    assert result_digest(cfg) == digest(without_neutral_keys(before))
    away = {"augment": "2", "encoder.joint": "head", "encoder.joint_lr_scale": "0.5", "encoder.fill": "repeat",
            "eval.fill_gap_frames": "2", "eval.min_event_frames": "2", "eval.fill_gaps": "[0, 5]",
            "eval.min_event_lengths": "[0, 5]"}
    for section, keys in ADDED_AT_NEUTRAL.items():
        for key in keys:
            value = away.get(f"{section}.{key}", away.get(section))
            assert value is not None, f"{section}.{key}: give this test a value away from the neutral one"
            moved = load_config("demo", [f"{section}.{key}={value}"])
            assert result_digest(moved) != result_digest(cfg), key
