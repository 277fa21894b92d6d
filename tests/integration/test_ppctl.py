"""ppctl as an operator meets it: one-line failures, the samconfig defaults, removing and re-adding an
instance, the `sam local invoke` env-vars file, and the AWS permissions each command needs."""

from __future__ import annotations

import gzip
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from ppctl import local_deploy
from ppctl import main as cli
from tests.conftest import register_secret
from tests.integration.conftest import ROOT, SIM_PRINCIPAL, SIM_SECRET, free_port, run_ppctl
from tests.integration.test_tap_pipeline import add_instance

pytestmark = pytest.mark.integration

IAM_POLICY = ROOT / "docs" / "ppctl-iam-policy.json"


def assert_one_line_failure(result, *expected: str) -> str:
    """Non-zero exit, exactly one line on stderr saying why, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0]
    return lines[0]


@pytest.fixture
def sim():
    from ppsim.tap import TapSimulator

    with TapSimulator({SIM_PRINCIPAL: SIM_SECRET}, seed=5, events_per_hour=30) as simulator:
        yield simulator


# --- every failure is one line -------------------------------------------------------------------------

def test_no_region_is_one_line(aws_endpoint, tmp_path):
    empty = tmp_path / "aws-config"
    empty.write_text("")
    result = run_ppctl("status", check=False, env={"AWS_REGION": None, "AWS_DEFAULT_REGION": None,
                                                   "AWS_CONFIG_FILE": str(empty)})
    assert_one_line_failure(result, "no AWS region configured", "--region")


def test_unknown_profile_is_one_line(aws_endpoint):
    result = run_ppctl("status", check=False, env={"AWS_PROFILE": "nosuch"})
    assert_one_line_failure(result, "AWS profile 'nosuch' not found")


def test_no_credentials_is_one_line(aws_endpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("")
    result = run_ppctl("status", check=False, env={
        "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
        "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty), "AWS_EC2_METADATA_DISABLED": "true"})
    assert_one_line_failure(result, "no AWS credentials found")


def test_unreachable_endpoint_is_one_line(aws_endpoint):
    closed = f"http://127.0.0.1:{free_port()}"
    result = run_ppctl("status", check=False, env={"AWS_ENDPOINT_URL": closed, "AWS_MAX_ATTEMPTS": "1"})
    assert_one_line_failure(result, "cannot reach the AWS endpoint", closed)


def test_missing_stack_is_one_line(aws_endpoint):
    result = run_ppctl("status", "--stack", "no-such-stack", check=False)
    assert_one_line_failure(result, "stack 'no-such-stack' not found in us-east-1")


def test_aws_error_after_the_stack_lookup_is_one_line(aws_endpoint):
    """The stack is there, its state table is not (deleted by hand): the AWS error, by operation and code."""
    name = f"ppc-gone-{uuid.uuid4().hex[:6]}"
    outputs = local_deploy.deploy(name, str(ROOT / "template.yaml"))
    boto3.client("dynamodb").delete_table(TableName=outputs["StateTableName"])

    result = run_ppctl("status", "--stack", name, check=False)

    assert_one_line_failure(result, "ppctl: AWS Query failed: ResourceNotFoundException")


@pytest.mark.parametrize(("argv", "expected"), [
    (["local", "invoke", "tap", "--event", "/no/such/event.json"], "cannot read /no/such/event.json"),
    (["local", "invoke", "tap", "--event", "NOT_JSON"], "is not JSON"),
    (["local", "deploy", "--param", "Foo"], "expected KEY=VALUE, got 'Foo'"),
    (["instance", "set", "x", "poll_interval"], "expected KEY=VALUE"),
    (["status", "--config-file", "/no/such/samconfig.toml"], "config file /no/such/samconfig.toml not found"),
])
def test_bad_input_is_one_line(aws_endpoint, tmp_path, argv, expected):
    not_json = tmp_path / "event.json"
    not_json.write_text("{not json")
    argv = [str(not_json) if arg == "NOT_JSON" else arg for arg in argv]
    assert_one_line_failure(run_ppctl(*argv, check=False), expected)


def test_local_invoke_refuses_a_non_loopback_endpoint(aws_endpoint, deployed_stack):
    result = run_ppctl("local", "invoke", "tap", "--stack", deployed_stack["name"], check=False,
                       env={"AWS_ENDPOINT_URL_DYNAMODB": "https://dynamodb.us-east-1.amazonaws.com"})
    assert_one_line_failure(result, "refusing to run a function locally", "dynamodb", "is not loopback")


# --- stack and region from samconfig.toml ----------------------------------------------------------------

def test_stack_and_region_come_from_the_deploy_section_sam_guided_writes(deployed_stack, tmp_path):
    (tmp_path / "samconfig.toml").write_text(
        'version = 0.1\n[default.global.parameters]\nstack_name = "not-this-one"\n'
        f'[default.deploy.parameters]\nstack_name = "{deployed_stack["name"]}"\nregion = "us-east-1"\n'
        'capabilities = "CAPABILITY_IAM"\n')
    rows = json.loads(run_ppctl("status", "--json", cwd=tmp_path, env={"AWS_REGION": None,
                                                                      "AWS_DEFAULT_REGION": None}).stdout)
    assert isinstance(rows, list)

    # --stack wins over the file; the region written there is used.
    result = run_ppctl("status", "--stack", "other-stack", cwd=tmp_path, check=False,
                       env={"AWS_REGION": None, "AWS_DEFAULT_REGION": None})
    assert_one_line_failure(result, "stack 'other-stack' not found in us-east-1")


def test_region_in_samconfig_wins_over_the_sdk_default(deployed_stack, tmp_path):
    (tmp_path / "samconfig.toml").write_text(
        f'[default.global.parameters]\nstack_name = "{deployed_stack["name"]}"\nregion = "eu-west-1"\n')
    result = run_ppctl("status", cwd=tmp_path, check=False)  # the environment says us-east-1
    assert_one_line_failure(result, f"stack '{deployed_stack['name']}' not found in eu-west-1")
    assert run_ppctl("status", "--region", "us-east-1", cwd=tmp_path).returncode == 0


# --- remove, then add the same name; a redeploy finds the secret ------------------------------------------

def secret_value(stack: dict, name: str) -> dict:
    secret_id = f"{stack['SecretPrefix']}/{name}"
    return json.loads(boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"])


def test_remove_then_add_the_same_name_works(deployed_stack, sim):
    first, second = register_secret("first-s3cr3t-91"), register_secret("second-s3cr3t-17")
    add_instance(deployed_stack, sim, "readd-tap", "--no-validate", secret=first)
    run_ppctl("instance", "remove", "readd-tap", "--stack", deployed_stack["name"])
    with pytest.raises(boto3.client("secretsmanager").exceptions.ResourceNotFoundException):
        secret_value(deployed_stack, "readd-tap")  # gone at once, not waiting 7 days in a recovery window

    result = add_instance(deployed_stack, sim, "readd-tap", "--no-validate", secret=second)

    assert "Pending" in result.stdout
    assert secret_value(deployed_stack, "readd-tap") == {"secret": second}


def test_add_after_a_redeploy_takes_over_the_secret_left_under_that_name(deployed_stack, sim):
    """`sam delete` keeps ppctl's secrets (they are not stack resources); the redeployed stack of the same
    name registers the instance again: the entered value replaces the old one."""
    old, new = register_secret("old-stack-s3cr3t-33"), register_secret("new-stack-s3cr3t-44")
    boto3.client("secretsmanager").create_secret(Name=f"{deployed_stack['SecretPrefix']}/redeploy-tap",
                                                 SecretString=json.dumps({"secret": old}))

    result = add_instance(deployed_stack, sim, "redeploy-tap", "--no-validate", secret=new)

    assert "existed already" in result.stderr and "AWSPREVIOUS" in result.stderr
    assert secret_value(deployed_stack, "redeploy-tap") == {"secret": new}


def test_add_with_reuse_secret_keeps_the_stored_one_even_if_scheduled_for_deletion(deployed_stack, sim):
    kept = register_secret("kept-s3cr3t-55")
    sim.credentials["reuse-principal"] = kept
    secrets = boto3.client("secretsmanager")
    name = f"{deployed_stack['SecretPrefix']}/reuse-tap"
    secrets.create_secret(Name=name, SecretString=json.dumps({"secret": kept}))
    secrets.delete_secret(SecretId=name, RecoveryWindowInDays=7)  # what an older ppctl's remove did

    run_ppctl("instance", "add", "tap", "reuse-tap", "--principal", "reuse-principal", "--base-url", sim.url,
              "--reuse-secret", "--stack", deployed_stack["name"])  # validated with the kept secret: exit 0

    assert secret_value(deployed_stack, "reuse-tap") == {"secret": kept}
    assert "DeletedDate" not in secrets.describe_secret(SecretId=name)
    missing = run_ppctl("instance", "add", "tap", "reuse-none", "--principal", SIM_PRINCIPAL, "--reuse-secret",
                        "--stack", deployed_stack["name"], check=False)
    assert_one_line_failure(missing, "no stored secret", "reuse-none")


# --- sam local invoke's env-vars file ---------------------------------------------------------------------

def test_local_env_vars_gives_each_function_the_stacks_resources_and_no_secret(deployed_stack, sim, tmp_path):
    add_instance(deployed_stack, sim, "envvars-tap", "--no-validate")
    out = tmp_path / "env.json"

    run_ppctl("local", "env-vars", "--out", str(out), "--stack", deployed_stack["name"])

    env_vars = json.loads(out.read_text())
    assert set(env_vars) == {"TapPollerFunction", "CasbPollerFunction"}
    for variables in env_vars.values():
        assert variables["STATE_TABLE"] == deployed_stack["StateTableName"]
        assert variables["RAW_BUCKET"] == deployed_stack["RawBucketName"]
        assert variables["EVENT_STREAM"] == deployed_stack["EventStreamName"]
        assert variables["SINKS"] == deployed_stack["SinkMode"]
        assert variables["SECRET_PREFIX"] == deployed_stack["SecretPrefix"]
        assert variables["DISPATCH_MODE"] == "inline"
        assert all(isinstance(value, str) for value in variables.values())
    assert env_vars["TapPollerFunction"]["TAP_DEFAULT_SETTLE_LAG_SECONDS"] == "300"
    assert SIM_SECRET not in out.read_text()


# --- the permissions each command needs ----------------------------------------------------------------

# API operations authorised by an IAM action of another name.
IAM_ACTION_OF = {"s3:ListObjectsV2": "s3:ListBucket"}


def _iam_action(operation: str) -> str:
    return IAM_ACTION_OF.get(operation, operation)


def _record_calls(monkeypatch) -> list[str]:
    """Every AWS API call ppctl makes, as the IAM action it needs."""
    calls: list[str] = []
    real_session = cli.aws_session

    def recording_session(region):
        session = real_session(region)
        session.events.register("before-call", lambda model, **_: calls.append(_iam_action(
            f"{model.service_model.signing_name}:{model.name}")))
        return session

    monkeypatch.setattr(cli, "aws_session", recording_session)
    return calls


def _policy_actions() -> set[str]:
    policy = json.loads(IAM_POLICY.read_text())
    assert policy["Version"] == "2012-10-17"
    actions: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and statement["Resource"]
        actions |= set([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    return actions


def _readme_permissions() -> dict[str, set[str]]:
    """The README's table: `ppctl COMMAND` -> the actions listed for it."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Permissions ppctl needs"):]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("###"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`ppctl "):
            for command in cells[0].replace("`", "").split(" / "):
                rows[command.removeprefix("ppctl ").split(" NAME")[0].strip()] = {
                    action.strip(" `") for action in cells[1].split(",")}
    return rows


def test_the_iam_policy_and_readme_cover_every_api_each_command_calls(deployed_stack, sim, monkeypatch, tmp_path):
    calls = _record_calls(monkeypatch)
    stack = ["--stack", deployed_stack["name"]]
    secret = register_secret("iam-s3cr3t-66")
    sim.credentials["iam-principal"] = secret
    by_command: dict[str, set[str]] = {}

    def run(command: str, *argv: str, stdin: str = "") -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        calls.clear()
        code = cli.main([*argv, *stack])
        assert code == 0, argv
        by_command.setdefault(command, set()).update(calls)

    add = ["instance", "add", "tap", "iam-tap", "--principal", "iam-principal", "--base-url", sim.url,
           "--secret-stdin"]
    run("instance add", *add, stdin=secret + "\n")
    run("instance list", "instance", "list")
    run("instance show", "instance", "show", "iam-tap")
    run("instance set", "instance", "set", "iam-tap", "poll_interval=10m")
    run("instance disable", "instance", "disable", "iam-tap")
    run("instance enable", "instance", "enable", "iam-tap")
    run("instance rotate-secret", "instance", "rotate-secret", "iam-tap", "--secret-stdin", stdin=secret + "\n")
    run("validate", "validate", "iam-tap")
    run("status", "status")
    since = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    run("backfill", "backfill", "iam-tap", "--since", since)
    run("logs", "logs", "iam-tap")
    # An archived event of the instance, for ppctl ocsf sample (as the poller would have written it).
    from ppcollector.sinks import partition_prefix
    from tests.ocsf_samples import collector_record, fixture_records

    sample = next(r for r in fixture_records() if r["source"] == "proofpoint_tap")
    line = json.dumps(collector_record("proofpoint_tap", sample["event_type"], sample["raw"], instance="iam-tap"))
    boto3.client("s3").put_object(
        Bucket=deployed_stack["RawBucketName"], Body=gzip.compress(line.encode() + b"\n"),
        Key=partition_prefix("proofpoint_tap", "iam-tap", "all", "2025-11-20T12") + "w_0000.json.gz")
    run("ocsf sample", "ocsf", "sample", "iam-tap")
    run("ocsf status", "ocsf", "status")
    run("local env-vars", "local", "env-vars", "--out", str(tmp_path / "env.json"))
    run("instance remove", "instance", "remove", "iam-tap")
    # The same name again, over a secret left behind (a redeployed stack), then with --reuse-secret.
    boto3.client("secretsmanager").create_secret(Name=f"{deployed_stack['SecretPrefix']}/iam-tap",
                                                 SecretString=json.dumps({"secret": secret}))
    run("instance add", *add, "--no-validate", stdin=secret + "\n")
    run("instance remove", "instance", "remove", "iam-tap")
    left = boto3.client("secretsmanager").create_secret(Name=f"{deployed_stack['SecretPrefix']}/iam-tap",
                                                        SecretString=json.dumps({"secret": secret}))
    boto3.client("secretsmanager").delete_secret(SecretId=left["ARN"], RecoveryWindowInDays=7)
    run("instance add", *add[:-1], "--reuse-secret")

    print(json.dumps({command: sorted(actions) for command, actions in by_command.items()}, indent=1))
    policy = _policy_actions()
    readme = _readme_permissions()
    for command, actions in by_command.items():
        assert actions, command
        assert actions <= policy, f"{command}: {sorted(actions - policy)} missing from {IAM_POLICY.name}"
        listed = readme.get(command, set())
        assert actions <= listed, f"{command}: README lacks {sorted(actions - listed)}"
    assert policy == set().union(*by_command.values()), "the policy allows only what ppctl calls"
