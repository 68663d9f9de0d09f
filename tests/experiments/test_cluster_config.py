"""cluster.yaml: valid the way `ray up` checks it, and secure by construction.

Offline, in the order `ray up` runs (ray.autoscaler._private.commands._bootstrap_config):
Ray's JSON schema, ``prepare_config`` (merges ray/autoscaler/aws/defaults.yaml),
``validate_config``; then, against a mocked EC2/IAM (moto), the AWS provider's
``fillout_available_node_types_resources`` and ``bootstrap_config`` (IAM role, key pair,
subnets, security groups) — everything before the first instance is launched.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster.yaml"
DOCS = REPO / "docs" / "cluster.md"
PLACEHOLDER_CIDR = "203.0.113.0/32"
PLACEHOLDER_SG = "sg-CHANGE-ME"
MY_CIDR = "198.51.100.7/32"  # what a user puts in instead of the placeholder


def _raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def _prepared(cfg: dict | None = None) -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(cfg if cfg is not None else _raw()))


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _ray_start(commands: list[str]) -> list[str]:
    return [c for c in commands if re.search(r"\bray start\b", c)]


# --------------------------------------------------------------------------------------------
# Validation as `ray up` does it
# --------------------------------------------------------------------------------------------


def test_passes_ray_schema_and_ray_up_validation():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    raw = _raw()
    jsonschema.validate(raw, schema)
    prepared = _prepared(raw)
    validate_config(prepared)  # schema again + Ray's cross-field checks
    assert prepared["provider"]["type"] == "aws"
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["max_workers"] == 0 and "GPU" not in head["resources"]
    gpu = prepared["available_node_types"]["gpu"]
    assert gpu["min_workers"] == 0 and 1 <= gpu["max_workers"] <= prepared["max_workers"]
    assert gpu["resources"]["GPU"] == 1 and gpu["node_config"]["InstanceType"].startswith("g5.")


def test_validation_catches_a_broken_file():
    """The validation above is not vacuous: a typo'd key is refused."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    bad = _raw()
    bad["available_node_types"]["gpu"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(_prepared(bad))


def test_setup_installs_tsd_ray_with_the_local_ray_version():
    import ray

    setup = "\n".join(_prepared()["worker_setup_commands"])
    assert "--require-hashes -r ~/tsd_ray/requirements/runtime.lock" in setup
    assert "--no-deps --no-build-isolation -e ~/tsd_ray" in setup
    lock = (REPO / "requirements" / "runtime.lock").read_text()
    assert f"\nray=={ray.__version__} " in lock  # the cluster's Ray is the local one
    assert "\nboto3==" in lock  # the autoscaler's AWS node provider
    assert _raw()["file_mounts"]["~/tsd_ray"] == "."
    assert ".gitignore" in _raw()["rsync_filter"]  # no .venv / data shipped


# --------------------------------------------------------------------------------------------
# Security properties (on the prepared config: Ray's defaults merged in)
# --------------------------------------------------------------------------------------------


def test_dashboard_only_on_localhost():
    cfg = _prepared()
    (head_start,) = _ray_start(cfg["head_start_ray_commands"])
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    for s in _strings(cfg):
        assert "0.0.0.0" not in s and "::/0" not in s, s


def test_ray_default_head_command_would_open_the_dashboard():
    """Why the file sets its own start commands: Ray's AWS defaults bind to 0.0.0.0."""
    raw = _raw()
    del raw["head_start_ray_commands"]
    (head_start,) = _ray_start(_prepared(raw)["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in head_start


def test_token_auth_on_every_node_and_token_shipped():
    cfg = _prepared()
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = _ray_start(cfg["head_start_ray_commands"]) + _ray_start(cfg["worker_start_ray_commands"])
    assert len(starts) == 2
    for cmd in starts:
        assert "RAY_AUTH_MODE=token" in cmd, cmd
    for key in ("head_setup_commands", "worker_setup_commands"):
        setup = "\n".join(cfg[key])
        assert "export RAY_AUTH_MODE=token" in setup
        assert "chmod 600 ~/.ray/auth_token" in setup
        assert "TSD_STORAGE=s3://" in setup


def test_only_inbound_rule_is_ssh_from_the_placeholder_cidr():
    raw = _raw()
    rules = raw["provider"]["security_group"]["IpPermissions"]
    assert len(rules) == 1
    (rule,) = rules
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22)
    assert [r["CidrIp"] for r in rule["IpRanges"]] == [PLACEHOLDER_CIDR]
    assert not rule.get("Ipv6Ranges") and not rule.get("PrefixListIds")
    assert not rule.get("UserIdGroupPairs")
    line = next(x for x in CLUSTER.read_text().splitlines() if PLACEHOLDER_CIDR in x)
    assert "CHANGE ME" in line
    # every node type uses the pre-created group by id (Ray adds no rules to such a group)
    for name, node in raw["available_node_types"].items():
        assert node["node_config"]["SecurityGroupIds"] == [PLACEHOLDER_SG], name


# --------------------------------------------------------------------------------------------
# Ray's AWS bootstrap against a mocked EC2 / IAM
# --------------------------------------------------------------------------------------------


# moto's mock costs seconds to set up and tear down: these tests are marked slow.
@pytest.fixture
def aws(monkeypatch, tmp_path):
    """moto's in-process AWS mock; HOME is a temp dir (Ray writes a key pair under ~/.ssh)."""
    moto = pytest.importorskip("moto")
    import ray.autoscaler._private.aws.config as aws_config

    home = tmp_path / "home"
    home.mkdir()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-west-2", "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
                 "HOME": str(home), "AWS_CONFIG_FILE": str(home / "none"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(home / "none")}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(aws_config.time, "sleep", lambda s: None)  # IAM propagation waits
    with moto.mock_aws():
        yield


def _docs_security_group_snippet() -> str:
    text = DOCS.read_text()
    block = text.split("<!-- BEGIN security-group", 1)[1].split("<!-- END security-group", 1)[0]
    return block.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]


def _run_snippet(cwd: Path, monkeypatch) -> str:
    monkeypatch.chdir(cwd)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_docs_security_group_snippet(), "docs/cluster.md", "exec"), {"__name__": "__main__"})
    return out.getvalue().strip()


def _inbound(group_id: str) -> list[dict]:
    import boto3

    ec2 = boto3.client("ec2", region_name="us-west-2")
    (sg,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    return sg["IpPermissions"]


@pytest.mark.slow
def test_bootstrap_uses_the_documented_group_unchanged(aws, tmp_path, monkeypatch):
    """Step 2 of docs/cluster.md (run verbatim), then everything `ray up` does before launching:
    the cluster ends up behind a group with SSH from the user's CIDR and intra-cluster traffic
    only."""
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.util import validate_config

    text = CLUSTER.read_text().replace(PLACEHOLDER_CIDR, MY_CIDR)
    (tmp_path / "cluster.yaml").write_text(text)
    gid = _run_snippet(tmp_path, monkeypatch)
    assert re.fullmatch(r"sg-[0-9a-f]+", gid), gid
    cfg = yaml.safe_load(text.replace(PLACEHOLDER_SG, gid))  # the documented sed

    prepared = _prepared(cfg)
    filled = AWSNodeProvider.fillout_available_node_types_resources(prepared)
    validate_config(filled)
    gpu = filled["available_node_types"]["gpu"]["resources"]
    assert gpu["GPU"] == 1 and gpu["CPU"] == 4  # what EC2 says a g5.xlarge has
    resolved = AWSNodeProvider.bootstrap_config(filled)

    for name, node in resolved["available_node_types"].items():
        assert node["node_config"]["SecurityGroupIds"] == [gid], name
    rules = _inbound(gid)
    outside = [r for r in rules if r.get("IpRanges") or r.get("Ipv6Ranges") or r.get("PrefixListIds")]
    assert len(outside) == 1
    (ssh,) = outside
    assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"]) == ("tcp", 22, 22)
    assert [r["CidrIp"] for r in ssh["IpRanges"]] == [MY_CIDR] and not ssh.get("Ipv6Ranges")
    inside = [r for r in rules if r not in outside]
    assert len(inside) == 1 and [p["GroupId"] for p in inside[0]["UserIdGroupPairs"]] == [gid]


@pytest.mark.slow
def test_placeholders_fail_closed(aws, tmp_path, monkeypatch, capfd):
    """Left unedited, neither step 2 nor `ray up` goes ahead."""
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    (tmp_path / "cluster.yaml").write_text(CLUSTER.read_text())
    with pytest.raises(SystemExit, match="set your own CIDR"):
        _run_snippet(tmp_path, monkeypatch)
    with pytest.raises(Exception):  # noqa: B017 - Ray aborts through its CLI logger
        AWSNodeProvider.bootstrap_config(_prepared())
    assert "Failed to detect a security group with id" in capfd.readouterr().err


@pytest.mark.slow
def test_group_made_by_ray_itself_would_open_ssh_to_the_world(aws):
    """Why the group is created beforehand: without SecurityGroupIds, Ray's bootstrap creates
    the group and adds SSH from 0.0.0.0/0 next to the configured rule."""
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    raw = _raw()
    for node in raw["available_node_types"].values():
        del node["node_config"]["SecurityGroupIds"]
    resolved = AWSNodeProvider.bootstrap_config(_prepared(raw))
    (gid,) = resolved["available_node_types"]["head"]["node_config"]["SecurityGroupIds"]
    cidrs = {r["CidrIp"] for rule in _inbound(gid) for r in rule.get("IpRanges", [])}
    assert cidrs == {"0.0.0.0/0", PLACEHOLDER_CIDR}
