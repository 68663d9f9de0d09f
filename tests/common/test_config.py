import pytest

from tsd_ray.common.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    config_from_dict,
    get_key,
    load_config,
    parse_override,
)


def test_defaults_and_shipped_configs_load():
    assert Config().frontend.hop_length == 441
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.detector.embedding_dim == cfg.encoder.embedding_dim, path.name


def test_unknown_key_is_rejected_with_its_dotted_name():
    with pytest.raises(ConfigError, match="unknown config key 'method.lamda_d'"):
        load_config("tiny", ["method.lamda_d=0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'nonsense'"):
        config_from_dict({"nonsense": {}})


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.kd=yes please", "method.kd: expected true/false"),
        ("train.num_workers=2.5", "train.num_workers: expected an integer"),
        ("method.lambda_d=high", "method.lambda_d: expected a number"),
        ("detector.channels=[1,2,3]", "detector.channels: expected 5 values"),
        ("eval.selection_metric=auc", "eval.selection_metric: expected one of"),
        ("method=3", "method: expected a mapping"),
    ],
)
def test_wrong_types_are_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_overrides_parse_yaml_values():
    cfg = load_config("tiny", ["method.lambda_d=0.05", "method.kd=false", "eval.thresholds=[0.2, 0.8]", "encoder.panns_checkpoint=/x/Cnn14.pth"])
    assert cfg.method.lambda_d == 0.05 and cfg.method.kd is False
    assert cfg.eval.thresholds == (0.2, 0.8)
    assert cfg.encoder.panns_checkpoint == "/x/Cnn14.pth"
    assert parse_override("a.b=") == (["a", "b"], "")
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("method.kd")


def test_int_is_accepted_for_float_and_none_for_optional():
    cfg = load_config(None, ["method.lambda_d=1", "frontend.f_max=null"])
    assert isinstance(cfg.method.lambda_d, float) and cfg.frontend.f_max is None


def test_base_chain_lists_only_changes(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: tiny\nmethod:\n  lambda_d: 0.3\n")
    cfg = load_config(child)
    tiny = load_config("tiny")
    assert cfg.method.lambda_d == 0.3
    assert cfg.detector == tiny.detector
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(loop)


def test_missing_config_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_get_key_and_digest():
    cfg = load_config("tiny")
    assert get_key(cfg, "method.lambda_d") == 0.2
    with pytest.raises(ConfigError):
        get_key(cfg, "method.nope")
    other = load_config("tiny", ["method.lambda_d=0.3"])
    assert cfg.digest() != other.digest()
    assert cfg.digest("frontend") == other.digest("frontend")


def test_paper_config_runs_algorithm_1_as_written():
    """paper.yaml: no source replay and MS = the f student (the demo's defaults are on)."""
    paper = load_config("paper")
    assert paper.method.source_replay is False
    assert paper.method.final_student == "f"
    assert paper.method.kd and paper.method.pseudo and paper.method.adversarial
    default = Config().method
    assert default.source_replay is True and default.final_student == "best"


def test_removed_keys_are_ignored_with_a_warning_that_says_what_to_use(caplog):
    """run.seed, discriminator.hidden and encoder.patience were never read: a config (or an
    older model file) that names them still loads, and the warning names the key."""
    import logging

    from tsd_ray.common.config import REMOVED_KEYS, load_config

    with caplog.at_level(logging.WARNING, logger="tsd_ray.common.config"):
        cfg = load_config("tiny", ["run.seed=3", "discriminator.hidden=8", "encoder.patience=2"])
    assert cfg.train.seed == load_config("tiny").train.seed
    messages = [r.getMessage() for r in caplog.records]
    for key in REMOVED_KEYS:
        assert any(f"'{key}' was removed" in m for m in messages), (key, messages)
    assert any("'run.seed'" in m and "train.seed" in m for m in messages)  # says what to use
    with pytest.raises(ConfigError, match="unknown config key 'run.sede'"):
        load_config("tiny", ["run.sede=3"])


def test_renamed_duration_keys_are_read_under_their_new_names(caplog, tmp_path):
    """Durations are named *_s; a config, an override or a model file with the old *_seconds
    names still loads (with a warning), and naming both is refused."""
    import logging

    import yaml

    from tsd_ray.common.config import FrontendConfig, from_dict, load_config

    with caplog.at_level(logging.WARNING, logger="tsd_ray.common.config"):
        cfg = load_config("demo", ["frontend.clip_seconds=10"])
        front = from_dict(FrontendConfig, {"clip_seconds": 7.0, "reference_seconds": 2.0}, "frontend")
    assert cfg.frontend.clip_s == 10.0 and (front.clip_s, front.reference_s) == (7.0, 2.0)
    assert any("frontend.clip_s" in r.getMessage() for r in caplog.records)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"base": "demo", "frontend": {"clip_seconds": 10.0, "clip_s": 5.0}}))
    with pytest.raises(ConfigError, match="both 'frontend.clip_seconds' and its new name"):
        load_config(str(path))


def test_a_bare_off_in_yaml_is_the_word_off_where_a_setting_takes_words():
    """YAML 1.1 reads `off` as false; encoder.joint takes the word."""
    assert load_config("tiny", ["encoder.joint=off"]).encoder.joint == "off"
    assert load_config("tiny", ["encoder.joint=head"]).encoder.joint == "head"
    with pytest.raises(ConfigError, match="encoder.joint"):
        load_config("tiny", ["encoder.joint=on"])  # no such word: still an error naming the key
