"""ppctl's surface without AWS: help for everything, the version, samconfig defaults, one-line failures."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from ppcollector import __version__
from ppcollector.connectors import get_descriptor
from ppcollector.secrets import SecretsManagerStore
from ppctl import main as cli
from tests.conftest import register_secret


def _walk(parser: argparse.ArgumentParser, path: str = "ppctl"):
    """Every (command path, action) of the parser tree; subcommands as (path, choice help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield f"{path} {name}", helps.get(name)
                yield from _walk(subparser, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_subcommand_and_option_has_help():
    entries = list(_walk(cli.build_parser()))
    missing = [where for where, text in entries if not text or text == argparse.SUPPRESS]
    assert missing == []
    commands = {where for where, _ in entries}
    for expected in ("ppctl local env-vars --out", "ppctl instance add tap --reuse-secret", "ppctl status --region",
                     "ppctl instance remove name", "ppctl --version"):
        assert expected in commands


def test_version_comes_from_the_package(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ppctl {__version__}"


def test_samconfig_deploy_section_wins_over_global(tmp_path):
    config = tmp_path / "samconfig.toml"
    config.write_text('version = 0.1\n[default.global.parameters]\nstack_name = "global-stack"\nregion = "eu-west-1"\n'
                      '[default.deploy.parameters]\nstack_name = "deployed-stack"\nconfirm_changeset = true\n')
    assert cli.samconfig_defaults(config) == {"stack_name": "deployed-stack", "region": "eu-west-1"}
    assert cli.samconfig_defaults(tmp_path / "absent.toml") == {}
    with pytest.raises(cli.CliError, match="not found"):
        cli.samconfig_defaults(tmp_path / "absent.toml", required=True)
    config.write_text("[default.deploy\n")
    with pytest.raises(cli.CliError, match="cannot read"):
        cli.samconfig_defaults(config)


class _RefusingCloudFormation:
    """Records which stack was asked for; answers like CloudFormation for a stack that is not there."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def describe_stacks(self, StackName):  # noqa: N803 - boto3's spelling
        self.asked.append(StackName)
        raise ClientError({"Error": {"Code": "ValidationError", "Message": f"Stack with id {StackName} does not "
                                     "exist"}}, "DescribeStacks")


@pytest.mark.parametrize(("argv", "samconfig", "stack", "region"), [
    ([], '[default.deploy.parameters]\nstack_name = "from-deploy"\nregion = "ap-south-1"\n',
     "from-deploy", "ap-south-1"),
    ([], '[default.global.parameters]\nstack_name = "from-global"\n', "from-global", None),
    (["--stack", "flag", "--region", "us-west-2"], '[default.deploy.parameters]\nstack_name = "x"\nregion = "y"\n',
     "flag", "us-west-2"),
    ([], None, "proofpoint-collector", None),
])
def test_stack_and_region_resolution(monkeypatch, tmp_path, capsys, argv, samconfig, stack, region):
    if samconfig is not None:
        (tmp_path / "samconfig.toml").write_text(samconfig)
    monkeypatch.chdir(tmp_path)
    cloudformation, regions = _RefusingCloudFormation(), []

    class Session:
        def __init__(self, region_name):
            regions.append(region_name)
            self.region_name = region_name or "sdk-default"

        def client(self, name, **_):
            return cloudformation

    monkeypatch.setattr(cli, "aws_session", Session)
    assert cli.main(["status", *argv]) == 1
    assert cloudformation.asked == [stack] and regions == [region]
    assert capsys.readouterr().err.strip() == (
        f"ppctl: stack {stack!r} not found in {region or 'sdk-default'} (deployed? name it with --stack or "
        "stack_name in samconfig.toml; region with --region or region in samconfig.toml)")


def test_an_aws_refusal_is_one_line_naming_the_call_and_never_the_secret_entered(monkeypatch, capsys):
    secret = register_secret("typed-s3cr3t-value-8")
    monkeypatch.setattr("sys.stdin", io.StringIO(secret + "\n"))
    cli.read_secret_fields(get_descriptor("tap"), from_stdin=True)
    refused = ClientError({"Error": {"Code": "AccessDeniedException",
                                     "Message": f"not allowed to store {secret} here"}}, "CreateSecret")

    cli.say(f"ppctl: {cli.describe_failure(refused)}")

    line = capsys.readouterr().err
    assert line.count("\n") == 1 and secret not in line
    assert line.startswith("ppctl: AWS CreateSecret failed: AccessDeniedException: not allowed to store <secret> here")
    assert cli.IAM_POLICY_DOC in line


def test_a_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["local", "deploy", "--param", "NoEquals"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "ppctl local deploy: argument --param: expected KEY=VALUE, got 'NoEquals' " \
                  "(see ppctl local deploy --help)\n"


class _SecretsClient:
    """Secrets Manager as seen right after a forced deletion: the name is busy for a few calls."""

    class exceptions:  # noqa: N801 - boto3's spelling
        class InvalidRequestException(Exception):
            pass

        class ResourceNotFoundException(Exception):
            pass

    def __init__(self, busy_calls: int) -> None:
        self.busy_calls = busy_calls
        self.created: list[str] = []

    def create_secret(self, Name, SecretString, Description):  # noqa: N803
        if self.busy_calls:
            self.busy_calls -= 1
            raise self.exceptions.InvalidRequestException(
                "You can't create this secret because a secret with this name is already scheduled for deletion.")
        self.created.append(Name)
        return {"ARN": f"arn:{Name}"}


def test_create_waits_for_a_forced_deletion_to_complete(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda _seconds: None)
    client = _SecretsClient(busy_calls=2)
    assert SecretsManagerStore(client).create("p/x", {"secret": "v"}) == "arn:p/x"
    assert client.created == ["p/x"]


def test_iam_policy_is_valid_json_with_scoped_resources():
    policy = json.loads((Path(__file__).resolve().parents[2] / cli.IAM_POLICY_DOC).read_text())
    resources = [r for s in policy["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str)
                                                           else s["Resource"])]
    # Only the Logs Insights results call has no resource-level permission in IAM.
    assert [s["Action"] for s in policy["Statement"] if s["Resource"] == "*"] == [["logs:GetQueryResults"]]
    assert all("proofpoint-collector" in r for r in resources if r != "*")
