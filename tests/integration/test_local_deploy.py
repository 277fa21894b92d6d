"""`ppctl local deploy` against a real local AWS emulator (moto's server) on loopback."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from ppcollector.http import is_loopback_url
from ppctl import local_deploy
from ppctl.local_deploy import LocalDeployError, deploy, deploy_stack, transform
from tests.unit.test_template import STACK_OUTPUTS  # what ppctl reads, one list

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_loopback_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials and a region; no profile or config file of the machine leaks in."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_CLOUDFORMATION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def emulator(emulator_url: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The emulator as the SDK's configured endpoint. Not reset between tests: moto servers in one
    process share their state, so other test modules' stacks may be there too; each test deploys
    its own stack (STACK) and looks only at that."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator_url)
    return emulator_url


@pytest.fixture
def STACK() -> str:  # noqa: N802 - reads as the constant it is within a test
    return f"ppc-local-{uuid.uuid4().hex[:8]}"


def test_deploy_creates_the_stack_and_returns_its_outputs(emulator, STACK):
    result = deploy_stack(STACK, TEMPLATE)

    assert result.action == "created"
    outputs = result.outputs
    assert set(outputs) >= STACK_OUTPUTS
    assert all(outputs[name] for name in STACK_OUTPUTS)
    assert outputs["SinkMode"] == "both"
    assert outputs["SecretPrefix"] == f"proofpoint-collector/{STACK}"

    table = boto3.client("dynamodb").describe_table(TableName=outputs["StateTableName"])["Table"]
    assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {("pk", "HASH"), ("sk", "RANGE")}
    boto3.client("s3").head_bucket(Bucket=outputs["RawBucketName"])
    stream = boto3.client("kinesis").describe_stream_summary(StreamName=outputs["EventStreamName"])
    assert stream["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE"
    log_groups = boto3.client("logs").describe_log_groups(logGroupNamePrefix=outputs["TapPollerLogGroupName"])
    assert [g["logGroupName"] for g in log_groups["logGroups"]] == [outputs["TapPollerLogGroupName"]]

    # What `ppctl local invoke` reads: the environment the stack gave the function, as strings.
    config = boto3.client("lambda").get_function_configuration(FunctionName=outputs["TapPollerFunctionName"])
    assert config["Runtime"] == "python3.14"
    assert config["Handler"] == "app.handler"
    assert [layer["Arn"] for layer in config.get("Layers", [])] in ([], [outputs["SharedLayerArn"]])
    assert config["Environment"]["Variables"] == {
        "STATE_TABLE": outputs["StateTableName"],
        "RAW_BUCKET": outputs["RawBucketName"],
        "EVENT_STREAM": outputs["EventStreamName"],
        "SINKS": "both",
        "SECRET_PREFIX": outputs["SecretPrefix"],
        "TAP_DEFAULT_SETTLE_LAG_SECONDS": "300",
        "TAP_RATE_LIMIT_PER_DAY": "1800",
        "DISPATCH_MODE": "lambda",
        "POWERTOOLS_SERVICE_NAME": "proofpoint-collector",
        "POWERTOOLS_METRICS_NAMESPACE": "ProofpointCollector",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }

    layer_name, version = outputs["SharedLayerArn"].split(":")[-2:]
    layer = boto3.client("lambda").get_layer_version(LayerName=layer_name, VersionNumber=int(version))
    assert layer["CompatibleRuntimes"] == ["python3.14"]

    # Everything the emulator got differently from the template is reported.
    notes = " ".join(result.emulator_notes)
    for left_out in ("RawBucketPolicy", "TapPollerFunctionSchedule", "TapPollerFunctionEventInvokeConfig"):
        assert left_out in notes


def test_deploy_twice_leaves_the_stack_as_it_is(emulator, STACK):
    first = deploy(STACK, TEMPLATE)
    second = deploy_stack(STACK, TEMPLATE)

    assert second.action == "unchanged"
    assert second.outputs == first
    functions = boto3.client("lambda").list_functions()["Functions"]
    assert sorted(f["FunctionName"] for f in functions if f["FunctionName"].startswith(f"{STACK}-")) == sorted(
        [first["CasbPollerFunctionName"], first["TapPollerFunctionName"]]
    )
    layer_name = first["SharedLayerArn"].split(":")[-2]
    assert len(boto3.client("lambda").list_layer_versions(LayerName=layer_name)["LayerVersions"]) == 1


def test_changed_parameter_updates_the_stack_and_keeps_its_data(emulator, STACK):
    first = deploy(STACK, TEMPLATE)
    boto3.client("dynamodb").put_item(
        TableName=first["StateTableName"], Item={"pk": {"S": "instance#tap#demo"}, "sk": {"S": "cursor"}}
    )

    updated = deploy_stack(STACK, TEMPLATE, {"SinkMode": "s3"})

    assert updated.action == "updated"
    assert updated.outputs["SinkMode"] == "s3"
    assert updated.outputs["StateTableName"] == first["StateTableName"]
    config = boto3.client("lambda").get_function_configuration(FunctionName=first["TapPollerFunctionName"])
    assert config["Environment"]["Variables"]["SINKS"] == "s3"
    item = boto3.client("dynamodb").get_item(
        TableName=first["StateTableName"], Key={"pk": {"S": "instance#tap#demo"}, "sk": {"S": "cursor"}}
    )
    assert "Item" in item
    assert deploy_stack(STACK, TEMPLATE, {"SinkMode": "s3"}).action == "unchanged"


def test_update_the_emulator_cannot_apply_is_refused_not_half_done(emulator, STACK):
    before = deploy(STACK, TEMPLATE)

    refused = r"cannot update CasbPollerLogGroup \(AWS::Logs::LogGroup\), PodLogGroup .*TapPollerLogGroup"
    with pytest.raises(LocalDeployError, match=refused):
        deploy(STACK, TEMPLATE, {"LogRetentionDays": "7"})

    assert deploy_stack(STACK, TEMPLATE).outputs == before


def test_region_may_come_from_aws_region_alone(emulator, STACK, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")  # boto3 itself reads only this one

    assert deploy_stack(STACK, TEMPLATE).action == "created"


def test_unknown_parameter_is_refused(emulator, STACK):
    with pytest.raises(LocalDeployError, match="unknown template parameters: NoSuchParameter"):
        deploy(STACK, TEMPLATE, {"NoSuchParameter": "1"})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AWS_ENDPOINT_URL", "https://dynamodb.us-east-1.amazonaws.com"),
        ("AWS_ENDPOINT_URL", "http://10.0.0.5:5000"),
        ("AWS_ENDPOINT_URL_S3", "https://s3.us-east-1.amazonaws.com"),
    ],
)
def test_non_loopback_endpoint_is_refused_before_any_network_call(emulator, STACK, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    session = boto3.Session()
    sent: list[str] = []

    def refuse_to_send(request, **_kwargs):
        sent.append(request.url)
        raise AssertionError(f"network call to {request.url}")

    session.events.register("before-send", refuse_to_send)

    with pytest.raises(LocalDeployError, match="is not loopback"):
        deploy(STACK, TEMPLATE, session=session)
    assert sent == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:5000", True),
        ("http://127.8.9.10", True),
        ("https://localhost:4566/", True),
        ("http://LOCALHOST:4566", True),
        ("http://[::1]:5000", True),
        ("http://[::ffff:127.0.0.1]:5000", True),
        ("https://dynamodb.us-east-1.amazonaws.com", False),
        ("http://localhost.example.com:5000", False),
        ("http://127.0.0.1.nip.io:5000", False),
        ("http://0.0.0.0:5000", False),
        ("http://192.168.1.10:5000", False),
        ("ftp://127.0.0.1/", False),
        ("http://127.0.0.1:notaport", False),
        ("", False),
        (None, False),
    ],
)
def test_endpoint_is_loopback(url, expected):
    assert is_loopback_url(url) is expected


def test_emulator_adaptations_match_what_moto_supports():
    """EMULATOR_UNSUPPORTED_TYPES / EMULATOR_NOT_UPDATABLE_TYPES are statements about moto: keep
    them true as moto changes (a type moto learns to create must stop being left out)."""
    from moto.cloudformation.parsing import get_model_map

    models = get_model_map()
    template_types = {resource["Type"] for resource in transform(TEMPLATE)["Resources"].values()}
    assert template_types - set(models) == set(local_deploy.EMULATOR_UNSUPPORTED_TYPES)
    for resource_type in local_deploy.EMULATOR_NOT_UPDATABLE_TYPES:
        assert hasattr(models[resource_type].update_from_cloudformation_json, "__isabstractmethod__"), resource_type
