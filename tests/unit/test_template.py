"""The guarantees template.yaml gives users and operators, read from the template itself.

The template is the single source of truth: these tests parse it (CloudFormation short tags
understood) rather than restating its values elsewhere. No network: the SAM transform used at
the end runs offline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ppcollector.connectors import descriptors
from ppcollector.descriptor import ConnectorDescriptor
from ppctl.local_deploy import load_template, transform

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"

CONNECTORS = descriptors()
# What ppctl and the README read from the stack: its own outputs, and each connector's function and log group.
STACK_OUTPUTS = {
    "StateTableName",
    "RawBucketName",
    "EventStreamName",
    "SinkMode",
    "SecretPrefix",
    "PodImageRepositoryUri",
    "PodClusterName",
    "AlarmTopicArn",
    "SharedLayerArn",
    *(c.function_output for c in CONNECTORS if c.function_output),
    *(c.log_group_output for c in CONNECTORS),
}
TAP_POLLER_ENVIRONMENT = {
    "STATE_TABLE",
    "RAW_BUCKET",
    "EVENT_STREAM",
    "SINKS",
    "SECRET_PREFIX",
    "TAP_DEFAULT_SETTLE_LAG_SECONDS",
    "TAP_RATE_LIMIT_PER_DAY",
    "DISPATCH_MODE",
}
# Actions that have no resource-level permissions, so Resource "*" is the only option.
UNSCOPABLE_ACTIONS = {"cloudwatch:PutMetricData", "xray:PutTraceSegments", "xray:PutTelemetryRecords",
                      "ecr:GetAuthorizationToken"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def _branches(node: Any) -> Iterator[Any]:
    """Both branches of an Fn::If (AWS::NoValue dropped), or the node itself."""
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        for branch in node["Fn::If"][1:]:
            yield from _branches(branch)
    elif node != {"Ref": "AWS::NoValue"}:
        yield node


def _statements(node: Any) -> Iterator[dict[str, Any]]:
    """Every IAM policy statement anywhere in a template fragment, conditional ones included."""
    if isinstance(node, dict):
        if "Effect" in node and ({"Action", "NotAction"} & set(node)):
            yield node
            return
        for value in node.values():
            yield from _statements(value)
    elif isinstance(node, list):
        for item in node:
            for branch in _branches(item):
                yield from _statements(branch)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _function_properties(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    """A function's properties with the Function Globals merged in, as SAM does."""
    globals_ = template.get("Globals", {}).get("Function", {})
    own = template["Resources"][logical_id]["Properties"]
    merged = {**globals_, **own}
    merged["Environment"] = {
        "Variables": {
            **globals_.get("Environment", {}).get("Variables", {}),
            **own.get("Environment", {}).get("Variables", {}),
        }
    }
    return merged


# --- IAM ----------------------------------------------------------------------------------------


def test_template_has_iam_statements(template):
    assert len(list(_statements(template["Resources"]))) >= 6


# Statements allowed a wildcard, each with its reason (the same reasons stand next to them in template.yaml).
JUSTIFIED_WILDCARDS = {
    ("AlarmKey", "AccountAdministers"): "AWS's default key policy: delegates key administration to IAM",
    ("AlarmKey", "CloudWatchPublishes"): "in a key policy, Resource * means this key only",
}


SECURITY_LAKE_PROVIDER_ROLES = {"Fn::Join": ["pp_*", {"Fn::Split": ["{source}", {"Ref": "SecurityLakeRoleArn"}]}]}


def _checked_statements(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for logical_id, resource in template["Resources"].items():
        for statement in _statements(resource):
            if (logical_id, statement.get("Sid")) not in JUSTIFIED_WILDCARDS:
                yield statement


def test_justified_wildcards_still_exist(template):
    """A stale entry would silently widen what the wildcard tests accept."""
    present = {(lid, s.get("Sid")) for lid, r in template["Resources"].items() for s in _statements(r)}
    assert set(JUSTIFIED_WILDCARDS) <= present


def test_no_wildcard_actions(template):
    for statement in _checked_statements(template):
        assert "NotAction" not in statement, statement
        for action in _as_list(statement["Action"]):
            assert action != "*", statement
            service, _, name = action.partition(":")
            assert name, f"action {action!r} has no service prefix"
            assert "*" not in service, statement
            if statement["Effect"] == "Allow":
                assert "*" not in name, f"Allow of a wildcard action {action!r}"


def test_resource_star_only_for_unscopable_actions(template):
    for statement in _checked_statements(template):
        if statement["Effect"] != "Allow":
            continue
        assert "NotResource" not in statement, statement
        if _as_list(statement["Action"]) == ["sts:AssumeRole"]:
            if "Principal" in statement:
                assert "Resource" not in statement  # a trust policy
            else:  # the OCSF writer: Security Lake's provider roles of this project's sources only
                assert statement["Resource"] == SECURITY_LAKE_PROVIDER_ROLES, statement
            continue
        if "*" in _as_list(statement["Resource"]):
            assert set(_as_list(statement["Action"])) <= UNSCOPABLE_ACTIONS, statement


def test_put_metric_data_limited_to_own_namespace(template):
    metric_statements = [
        s for s in _statements(template["Resources"]) if "cloudwatch:PutMetricData" in _as_list(s["Action"])
    ]
    assert metric_statements
    for statement in metric_statements:
        assert statement["Condition"]["StringEquals"]["cloudwatch:namespace"] == "ProofpointCollector"


def test_tap_poller_policies_are_inline_and_scoped(template):
    policies = template["Resources"]["TapPollerFunction"]["Properties"]["Policies"]
    # No managed policies or SAM policy templates by name: every grant is visible here.
    assert all(isinstance(policy, dict) and "Statement" in policy for policy in policies)
    by_sid = {s["Sid"]: s for s in _statements(policies)}
    assert by_sid["StateTableReadWrite"]["Resource"] == {"Fn::GetAtt": ["StateTable", "Arn"]}
    assert set(by_sid["StateTableReadWrite"]["Action"]) == {
        "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query",
        "dynamodb:BatchGetItem",
    }
    assert by_sid["RawBucketWrite"]["Resource"] == {"Fn::Sub": "${RawBucket.Arn}/proofpoint/*"}
    assert by_sid["EventStreamWrite"]["Resource"] == {"Fn::GetAtt": ["EventStream", "Arn"]}
    assert by_sid["InstanceSecretsRead"]["Action"] == "secretsmanager:GetSecretValue"
    assert by_sid["InstanceSecretsRead"]["Resource"]["Fn::Sub"].endswith(
        ":secret:proofpoint-collector/${AWS::StackName}/*"
    )


def test_kinesis_grants_only_when_kinesis_is_a_sink(template):
    statements = template["Resources"]["TapPollerFunction"]["Properties"]["Policies"][0]["Statement"]
    conditional = {item["Fn::If"][1]["Sid"]: item["Fn::If"][0] for item in statements if "Fn::If" in item}
    assert conditional == {"EventStreamWrite": "UsesKinesis"}
    assert template["Conditions"]["UsesKinesis"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "SinkMode"}, "s3"]}]}


def test_transformed_role_adds_only_basic_execution_and_xray():
    cfn = transform(TEMPLATE)
    roles = {k: r for k, r in cfn["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    managed = {
        arn["Fn::Sub"] if isinstance(arn, dict) else arn
        for arn in roles["TapPollerFunctionRole"]["Properties"]["ManagedPolicyArns"]
    }
    assert {arn.rsplit("/", 1)[-1] for arn in managed} == {"AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess"}
    for statement in _statements(cfn["Resources"]):  # the roles SAM generates obey the same rules
        for action in _as_list(statement["Action"]):
            assert action != "*" and "*" not in action.partition(":")[0]


# --- storage ------------------------------------------------------------------------------------


def test_state_table(resources):
    table = resources["StateTable"]
    properties = table["Properties"]
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert {(k["AttributeName"], k["KeyType"]) for k in properties["KeySchema"]} == {("pk", "HASH"), ("sk", "RANGE")}
    assert {(a["AttributeName"], a["AttributeType"]) for a in properties["AttributeDefinitions"]} == {
        ("pk", "S"), ("sk", "S"),
    }
    assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert properties["SSESpecification"]["SSEEnabled"] is True
    assert "TimeToLiveSpecification" not in properties  # cursors never expire


def test_raw_bucket_is_private_encrypted_versioned_and_retained(resources):
    bucket = resources["RawBucket"]
    properties = bucket["Properties"]
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
    }
    assert properties["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert properties["VersioningConfiguration"]["Status"] == "Enabled"
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")


def test_raw_bucket_lifecycle(template, resources):
    rules = resources["RawBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    unconditional = [r for r in rules if "Fn::If" not in r]
    assert any(r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") == 7 for r in unconditional)
    # Expiration of the archive exists only when RawRetentionDays is not 0 (0 keeps objects forever);
    # Athena's query results (athena-results/) are working copies and expire after 30 days.
    assert not any("ExpirationInDays" in r for r in unconditional if r.get("Prefix") != "athena-results/")
    (results,) = [r for r in unconditional if r.get("Prefix") == "athena-results/"]
    assert results["ExpirationInDays"] == 30
    (expiring,) = [r["Fn::If"] for r in rules if "Fn::If" in r]
    assert expiring[0] == "HasRawRetention"
    assert expiring[1]["ExpirationInDays"] == {"Ref": "RawRetentionDays"}
    assert expiring[2] == {"Ref": "AWS::NoValue"}
    assert template["Conditions"]["HasRawRetention"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "RawRetentionDays"}, 0]}]}
    assert template["Parameters"]["RawRetentionDays"]["Default"] == 0


def test_raw_bucket_policy_denies_plain_http(resources):
    policy = resources["RawBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "RawBucket"}
    denies = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert any(
        s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        and s["Principal"] == "*"
        and s["Action"] in ("s3:*", ["s3:*"])
        and {"Fn::GetAtt": ["RawBucket", "Arn"]} in s["Resource"]
        and {"Fn::Sub": "${RawBucket.Arn}/*"} in s["Resource"]
        for s in denies
    )


def test_event_stream_on_demand_and_kms(resources):
    properties = resources["EventStream"]["Properties"]
    assert properties["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
    assert "ShardCount" not in properties
    assert properties["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}


# --- layer and function -------------------------------------------------------------------------


def test_shared_layer(resources):
    layer = resources["SharedLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    assert layer["Properties"]["ContentUri"] == "shared/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.14"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]


def test_tap_poller_function(template, resources):
    function = resources["TapPollerFunction"]
    properties = _function_properties(template, "TapPollerFunction")
    assert function["Metadata"]["BuildMethod"] == "makefile"
    assert properties["CodeUri"] == "functions/tap_poller/"
    assert properties["Handler"] == "app.handler"
    assert properties["Runtime"] == "python3.14"
    assert properties["Architectures"] == ["arm64"]
    assert properties["Tracing"] == "Active"
    assert properties["Timeout"] == 300
    assert properties["MemorySize"] == 512
    assert properties["EphemeralStorage"] == {"Size": 2048}
    assert properties["Layers"] == [{"Ref": "SharedLayer"}]


def test_tap_poller_runs_every_minute_without_retries(template):
    properties = _function_properties(template, "TapPollerFunction")
    schedules = [e["Properties"] for e in properties["Events"].values() if e["Type"] == "ScheduleV2"]
    assert len(schedules) == 1
    assert schedules[0]["ScheduleExpression"] == "rate(1 minute)"
    assert schedules[0]["RetryPolicy"]["MaximumRetryAttempts"] == 0
    assert properties["EventInvokeConfig"]["MaximumRetryAttempts"] == 0


def test_tap_poller_environment(template):
    variables = _function_properties(template, "TapPollerFunction")["Environment"]["Variables"]
    assert set(variables) >= TAP_POLLER_ENVIRONMENT
    assert variables["STATE_TABLE"] == {"Ref": "StateTable"}
    assert variables["RAW_BUCKET"] == {"Ref": "RawBucket"}
    assert variables["EVENT_STREAM"] == {"Ref": "EventStream"}
    assert variables["SINKS"] == {"Ref": "SinkMode"}
    assert variables["SECRET_PREFIX"] == {"Fn::Sub": "proofpoint-collector/${AWS::StackName}"}
    assert variables["TAP_DEFAULT_SETTLE_LAG_SECONDS"] == {"Ref": "TapSettleLagSeconds"}
    assert variables["TAP_RATE_LIMIT_PER_DAY"] == {"Ref": "TapRateLimitPerDay"}
    # ppctl checks intervals against the same values (ppctl.main.Stack.connector)
    assert template["Outputs"]["TapRateLimit"]["Value"] == {"Ref": "TapRateLimitPerDay"}
    assert template["Outputs"]["TapSettleLag"]["Value"] == {"Ref": "TapSettleLagSeconds"}
    powertools = template["Globals"]["Function"]["Environment"]["Variables"]
    assert powertools["POWERTOOLS_SERVICE_NAME"] == "proofpoint-collector"
    assert powertools["POWERTOOLS_METRICS_NAMESPACE"] == "ProofpointCollector"
    assert powertools["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}


def test_tap_poller_log_group(template, resources):
    log_group = resources["TapPollerLogGroup"]["Properties"]
    assert log_group["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${TapPollerFunction}"}
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert template["Parameters"]["LogRetentionDays"]["Default"] == 30


# --- parameters and outputs ---------------------------------------------------------------------


def test_parameters(template):
    parameters = template["Parameters"]
    assert set(parameters["SinkMode"]["AllowedValues"]) == {"s3", "kinesis", "both"}
    assert parameters["SinkMode"]["Default"] == "both"
    assert parameters["TapSettleLagSeconds"]["Default"] == 300
    assert (parameters["TapSettleLagSeconds"]["MinValue"], parameters["TapSettleLagSeconds"]["MaxValue"]) == (0, 3600)
    assert parameters["TapRateLimitPerDay"]["Default"] == 1800
    assert parameters["LogLevel"]["Default"] == "INFO"
    assert set(parameters["LogRetentionDays"]["AllowedValues"]) <= {
        1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
    }


def test_outputs(template):
    outputs = template["Outputs"]
    assert set(outputs) >= STACK_OUTPUTS
    assert all("Condition" not in outputs[name] for name in STACK_OUTPUTS)
    assert outputs["SecretPrefix"]["Value"] == {"Fn::Sub": "proofpoint-collector/${AWS::StackName}"}


@pytest.mark.parametrize("connector", CONNECTORS, ids=lambda c: c.name)
def test_a_connectors_outputs_name_its_function_and_log_group(template, resources, connector: ConnectorDescriptor):
    outputs = template["Outputs"]
    log_group = outputs[connector.log_group_output]["Value"]["Ref"]
    assert resources[log_group]["Type"] == "AWS::Logs::LogGroup"
    if connector.function:
        assert outputs[connector.function_output]["Value"] == {"Ref": connector.function}
        lambda_log_group = {"Fn::Sub": f"/aws/lambda/${{{connector.function}}}"}
        assert resources[log_group]["Properties"]["LogGroupName"] == lambda_log_group
        handler = TEMPLATE.parent / _function_properties(template, connector.function)["CodeUri"] / "app.py"
        assert f'handle_poll_event("{connector.name}"' in handler.read_text()  # it polls this connector


@pytest.mark.parametrize("connector", CONNECTORS, ids=lambda c: c.name)
def test_athena_projects_exactly_the_event_types_a_connector_writes(resources, connector: ConnectorDescriptor):
    """A table over source=<name> projects its event_type partitions from a fixed list: a type missing there
    would be archived but never queried."""
    projected = set()
    for resource in resources.values():
        if resource["Type"] != "AWS::Glue::Table":
            continue
        table = resource["Properties"]["TableInput"]
        if _sub_text(table["StorageDescriptor"]["Location"]).endswith(f"/proofpoint/source={connector.name}/"):
            projected |= set(table["Parameters"]["projection.event_type.values"].split(","))
    assert projected == set(connector.event_types)


def test_every_function_is_a_connectors(resources):
    """ppctl finds a function (local invoke) and its log group (logs) through its connector's descriptor."""
    functions = {k for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
    # The OCSF writer is no connector's: it converts what they all archive (ppctl ocsf status reads its output).
    assert functions == {c.function for c in CONNECTORS if c.function} | {"OcsfWriterFunction"}


# --- observability (issue: operations) ------------------------------------------------------------

def _sub_text(value: Any) -> str:
    """The text of a !Sub, with every ${...} replaced by a plausible value."""
    import re

    text = value["Fn::Sub"] if isinstance(value, dict) else value
    text = text[0] if isinstance(text, list) else text
    return re.sub(r"\$\{[^}]+\}", "900", text)


def _alarms(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(resources):
    topic = resources["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmKey"}
    statements = resources["AlarmKey"]["Properties"]["KeyPolicy"]["Statement"]
    assert any(s["Principal"].get("Service") == "cloudwatch.amazonaws.com" for s in statements)
    assert resources["AlarmEmailSubscription"]["Condition"] == "HasAlarmEmail"


def test_the_documented_alarms_watch_the_right_metrics(resources):
    alarms = _alarms(resources)
    expected = {
        "TapPollerErrorsAlarm": ("AWS/Lambda", "Errors"),
        "TapPollerThrottlesAlarm": ("AWS/Lambda", "Throttles"),
        "TapLagAlarm": ("ProofpointCollector", "WorstCollectionLag"),
        "TapInstanceFailedAlarm": ("ProofpointCollector", "InstancesFailed"),
        "TapRateBudgetAlarm": ("ProofpointCollector", "RateBudgetRemainingPercent"),
        "TapGapAlarm": ("ProofpointCollector", "Gaps"),
    }
    for name, (namespace, metric) in expected.items():
        assert (alarms[name]["Namespace"], alarms[name]["MetricName"]) == (namespace, metric)
        assert alarms[name]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    assert alarms["TapLagAlarm"]["TreatMissingData"] == "breaching"  # silence is as bad as lag
    assert alarms["TapLagAlarm"]["Threshold"] == {"Ref": "LagAlarmThresholdSeconds"}
    assert alarms["TapRateBudgetAlarm"]["Threshold"] == 10


def test_custom_metric_alarms_use_the_dimensions_the_code_emits(resources):
    """The spine emits connector-level blobs with dimensions connector + service (Powertools adds service)."""
    for props in _alarms(resources).values():
        if props["Namespace"] == "ProofpointCollector":
            assert {d["Name"] for d in props["Dimensions"]} == {"connector", "service"}


def test_dashboards_are_valid_json_and_show_flow_and_why_not(resources):
    import json

    flow = json.loads(_sub_text(resources["FlowDashboard"]["Properties"]["DashboardBody"]))
    why = json.loads(_sub_text(resources["WhyNotDashboard"]["Properties"]["DashboardBody"]))
    flow_text, why_text = json.dumps(flow), json.dumps(why)
    for metric in ("EventsCollected", "CollectionLag", "WorstCollectionLag", "InstancesFailed", "RecordsWrittenS3"):
        assert metric in flow_text
    for metric in ("Errors", "Throttles", "RateBudgetRemainingPercent", "DispatchDuration", "Gaps"):
        assert metric in why_text


def test_saved_queries_cover_fetched_errors_throttling_gaps(resources):
    queries = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::Logs::QueryDefinition"}
    text = {k: q["QueryString"] for k, q in queries.items()}
    assert "fetched" in text["FetchedEventsQuery"] and "by connector, instance" in text["FetchedEventsQuery"]
    assert "error_class" in text["ErrorsQuery"]
    assert "429" in text["ThrottlingQuery"]
    assert "unrecoverable gap" in text["GapsQuery"]
    assert "409" in text["PodSessionsQuery"] and queries["PodSessionsQuery"]["LogGroupNames"] == [
        {"Ref": "PodLogGroup"}]
    assert all(q["LogGroupNames"] for q in queries.values())


def test_the_poller_may_invoke_only_itself_for_fan_out(template):
    props = _function_properties(template, "TapPollerFunction")
    statements = [s for s in _statements(props["Policies"]) if "lambda:InvokeFunction" in _as_list(s["Action"])]
    assert len(statements) == 1
    assert statements[0]["Resource"]["Fn::Sub"].endswith(":function:${AWS::StackName}-tap-poller")
    assert props["FunctionName"] == {"Fn::Sub": "${AWS::StackName}-tap-poller"}
    assert props["Environment"]["Variables"]["DISPATCH_MODE"] == "lambda"


def test_every_checkov_skip_is_justified_next_to_its_resource(resources):
    skips = [(name, skip) for name, resource in resources.items()
             for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])]
    assert skips, "the template documents its checkov suppressions"
    for name, skip in skips:
        assert skip["id"].startswith(("CKV_", "CKV2_")) and len(skip.get("comment", "")) > 40, (name, skip)


# --- analytics (issue 11) ---------------------------------------------------------------------------

def test_hunting_workgroup_enforces_encrypted_results_and_a_scan_limit(template, resources):
    config = resources["AnalyticsWorkGroup"]["Properties"]["WorkGroupConfiguration"]
    assert config["EnforceWorkGroupConfiguration"] is True
    assert config["BytesScannedCutoffPerQuery"] == {"Ref": "AthenaBytesScannedCutoff"}
    assert config["ResultConfiguration"]["OutputLocation"] == {"Fn::Sub": "s3://${RawBucket}/athena-results/"}
    assert config["ResultConfiguration"]["EncryptionConfiguration"]["EncryptionOption"] == "SSE_S3"
    assert template["Parameters"]["AthenaBytesScannedCutoff"]["Default"] == 10 * 1024**3


def test_analyst_policy_is_scoped_to_this_stacks_database_tables_workgroup_and_prefixes(resources):
    statements = resources["AnalystPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for s in statements}
    assert by_sid["RunQueriesInTheWorkgroup"]["Resource"]["Fn::Sub"].endswith(":workgroup/${AWS::StackName}-hunting")
    glue = by_sid["ReadTheTableDefinitions"]["Resource"]
    assert glue[1]["Fn::Sub"][0].endswith(":database/${Database}")
    assert glue[2]["Fn::Sub"][0].endswith(":table/${Database}/*")
    assert glue[1]["Fn::Sub"][1]["Database"] == resources["AnalyticsDatabase"]["Properties"]["DatabaseInput"]["Name"]
    assert by_sid["ReadTheArchive"]["Resource"] == {"Fn::Sub": "${RawBucket.Arn}/proofpoint/*"}
    assert by_sid["WriteAndReadQueryResults"]["Resource"] == {"Fn::Sub": "${RawBucket.Arn}/athena-results/*"}
    assert all(not str(a).endswith("*") for s in statements for a in s["Action"]
               if isinstance(s["Action"], list))

# --- Globals: what the pollers share (issue 10) -----------------------------------------------------

SHARED_POLLER_ENVIRONMENT = {
    "POWERTOOLS_SERVICE_NAME": "proofpoint-collector",
    "POWERTOOLS_METRICS_NAMESPACE": "ProofpointCollector",
    "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
    "STATE_TABLE": {"Ref": "StateTable"},
    "RAW_BUCKET": {"Ref": "RawBucket"},
    "EVENT_STREAM": {"Ref": "EventStream"},
    "SINKS": {"Ref": "SinkMode"},
    "SECRET_PREFIX": {"Fn::Sub": "proofpoint-collector/${AWS::StackName}"},
    "DISPATCH_MODE": "lambda",
}
# What each deployed poller gets (after the SAM transform): moving shared properties to Globals must
# not change any of it.
DEPLOYED_POLLERS = {
    "TapPollerFunction": {
        "FunctionName": {"Fn::Sub": "${AWS::StackName}-tap-poller"}, "Handler": "app.handler", "MemorySize": 512,
        "EphemeralStorage": {"Size": 2048},
        "Environment": {"Variables": {**SHARED_POLLER_ENVIRONMENT,
                                      "TAP_DEFAULT_SETTLE_LAG_SECONDS": {"Ref": "TapSettleLagSeconds"},
                                      "TAP_RATE_LIMIT_PER_DAY": {"Ref": "TapRateLimitPerDay"}}},
    },
    "CasbPollerFunction": {
        "FunctionName": {"Fn::Sub": "${AWS::StackName}-casb-poller"}, "Handler": "app.handler", "MemorySize": 256,
        "Environment": {"Variables": SHARED_POLLER_ENVIRONMENT},
    },
}
DEPLOYED_POLLER_COMMON = {
    "Runtime": "python3.14", "Architectures": ["arm64"], "Timeout": 300, "TracingConfig": {"Mode": "Active"},
    "ReservedConcurrentExecutions": {"Fn::If": ["HasReservedConcurrency", {"Ref": "PollerReservedConcurrency"},
                                                {"Ref": "AWS::NoValue"}]},
}


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    return transform(TEMPLATE, parameter_values={"PodImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/r:1"})


@pytest.mark.parametrize("logical_id", sorted(DEPLOYED_POLLERS))
def test_each_deployed_poller_keeps_its_properties_with_globals(transformed, logical_id):
    resources = transformed["Resources"]
    properties = resources[logical_id]["Properties"]
    expected = {**DEPLOYED_POLLER_COMMON, **DEPLOYED_POLLERS[logical_id]}
    assert {key: properties.get(key) for key in expected} == expected
    assert "EphemeralStorage" in properties or "EphemeralStorage" not in expected  # only TAP spools to /tmp
    (layer,) = properties["Layers"]
    assert resources[layer["Ref"]]["Type"] == "AWS::Lambda::LayerVersion"
    invoke_config = resources[f"{logical_id}EventInvokeConfig"]["Properties"]
    assert invoke_config["MaximumRetryAttempts"] == 0 and invoke_config["FunctionName"] == {"Ref": logical_id}


def test_poller_blocks_hold_only_what_differs(template):
    """Shared settings live once in Globals; a poller's own block has its handler, schedule, policies."""
    shared = set(template["Globals"]["Function"])
    assert {"Runtime", "Architectures", "Tracing", "Timeout", "Layers", "Environment", "EventInvokeConfig",
            "ReservedConcurrentExecutions"} <= shared
    for logical_id in DEPLOYED_POLLERS:
        own = template["Resources"][logical_id]["Properties"]
        assert not (set(own) & (shared - {"Environment"})), logical_id
        assert not set(own.get("Environment", {}).get("Variables", {})) & set(SHARED_POLLER_ENVIRONMENT)
        assert {"Handler", "Events", "Policies"} <= set(own)


# --- IAM and the PoD task (issue 13) -----------------------------------------------------------------

def test_no_stack_role_is_granted_kms_on_any_key(template):
    """The stream uses the AWS managed key, usable through Kinesis by the account's principals: no kms grant."""
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::KMS::Key":
            continue  # a key policy, not a grant to a role
        for statement in _statements(resource):
            assert not any(a.startswith("kms:") for a in _as_list(statement["Action"])), (logical_id, statement)


@pytest.mark.parametrize("role", ["PodExecutionRole", "PodTaskRole"])
def test_pod_roles_trust_ecs_only_for_this_account(resources, role):
    (trust,) = resources[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_pod_container_drops_every_linux_capability_and_writes_only_tmp(resources):
    (container,) = resources["PodTaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert container["LinuxParameters"]["Capabilities"]["Drop"] == ["ALL"]
    assert "Add" not in container["LinuxParameters"]["Capabilities"]
    assert container["ReadonlyRootFilesystem"] is True


def test_pod_image_repository_expires_old_images_and_is_removed_with_the_stack(resources):
    import json

    repository = resources["PodImageRepository"]
    assert repository.get("DeletionPolicy", "Delete") == "Delete"
    assert repository["Properties"]["EmptyOnDelete"] is True  # images would otherwise block the delete
    rules = json.loads(repository["Properties"]["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    by_status = {rule["selection"]["tagStatus"]: rule for rule in rules}
    assert all(rule["action"]["type"] == "expire" for rule in rules)
    assert by_status["untagged"]["selection"]["countType"] == "sinceImagePushed"
    assert by_status["any"]["selection"]["countType"] == "imageCountMoreThan"
    assert 2 <= by_status["any"]["selection"]["countNumber"] <= 50
    # ECR requires the "any" rule to be evaluated last.
    assert by_status["any"]["rulePriority"] == max(rule["rulePriority"] for rule in rules)


# --- two stacks in one account and region -------------------------------------------------------------

# Where a resource type keeps its physical name when it is not a top-level *Name property.
NESTED_NAMES = {"AWS::Glue::Database": ("DatabaseInput", "Name"), "AWS::ECS::TaskDefinition": ("Family",)}
# Top-level *Name properties that are not the resource's own physical name.
NOT_NAMES = {"MetricName", "DisplayName", "GroupDescription"}


# Types whose Name is a label, not an identifier: an Athena named query is addressed by its id and listed
# per workgroup (each stack has its own), so two stacks' "most-attacked-people" never collide.
LABEL_NAMES = {"AWS::Athena::NamedQuery"}


def _physical_names(cfn: dict[str, Any]) -> dict[tuple[str, str], Any]:
    names: dict[tuple[str, str], Any] = {}
    for logical_id, resource in cfn["Resources"].items():
        properties = resource.get("Properties", {})
        for key, value in properties.items():
            if resource["Type"] in LABEL_NAMES and key == "Name":
                continue
            if (key == "Name" or key.endswith("Name")) and key not in NOT_NAMES:
                names[(logical_id, key)] = value
        path = NESTED_NAMES.get(resource["Type"])
        if path:
            value: Any = properties
            for part in path:
                value = value.get(part, {}) if isinstance(value, dict) else {}
            if value != {}:
                names[(logical_id, ".".join(path))] = value
    return names


def _resolve(value: Any, stack: str, cfn: dict[str, Any]) -> Any:
    """Evaluate the intrinsics a name uses, as CloudFormation would for stack ``stack``.

    A reference to another resource resolves to a name CloudFormation generates, which contains the
    stack name; a parameter to its default.
    """
    import re

    pseudo = {"AWS::StackName": stack, "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012",
              "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}

    def ref(name: str) -> str:
        if name in pseudo:
            return pseudo[name]
        if name in cfn.get("Parameters", {}):
            return str(cfn["Parameters"][name].get("Default", ""))
        return f"{stack}-{name.split('.')[0]}-GENERATED"

    if isinstance(value, dict) and len(value) == 1:
        (function, argument), = value.items()
        if function == "Ref":
            return ref(argument)
        if function == "Fn::GetAtt":
            return ref(argument[0] if isinstance(argument, list) else argument)
        if function == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            return re.sub(r"\$\{([^}!]+)\}", lambda m: str(_resolve(variables[m[1]], stack, cfn))
                          if m[1] in variables else ref(m[1]), text)
        if function == "Fn::Join":
            parts = _resolve(argument[1], stack, cfn) if isinstance(argument[1], dict) else argument[1]
            return argument[0].join(str(_resolve(part, stack, cfn)) for part in parts)
        if function == "Fn::Split":
            return str(_resolve(argument[1], stack, cfn)).split(argument[0])
        if function == "Fn::If":
            return _resolve(argument[1], stack, cfn)
    if isinstance(value, list):
        return [_resolve(item, stack, cfn) for item in value]
    return value


def test_every_named_resource_is_unique_per_stack(transformed):
    """Staging and prod deploy side by side: a fixed physical name would collide (or be taken over)."""
    names = _physical_names(transformed)
    assert {("TapPollerFunctionSchedule", "Name"), ("CasbPollerFunctionSchedule", "Name"),
            ("TapPollerFunction", "FunctionName"), ("FlowDashboard", "DashboardName")} <= set(names)
    clashes = {where: _resolve(value, "ppc-staging", transformed) for where, value in names.items()
               if _resolve(value, "ppc-staging", transformed) == _resolve(value, "ppc-prod", transformed)}
    assert clashes == {}


def test_schedule_names_fit_the_scheduler_limits(transformed):
    for logical_id in ("TapPollerFunctionSchedule", "CasbPollerFunctionSchedule"):
        name = _resolve(transformed["Resources"][logical_id]["Properties"]["Name"], "proofpoint-collector", transformed)
        assert len(name) <= 64 and name.startswith("proofpoint-collector-")


# --- operations: runbook, PoD alarms, dashboards ---------------------------------------------------------

def _readme_runbook_rows() -> set[str]:
    """The alarm names in README's "Alarms and runbook" table (first column, in backticks)."""
    import re

    readme = (TEMPLATE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Alarms and runbook", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))


def test_every_alarm_points_to_a_runbook_row_that_exists(resources):
    import re

    rows = _readme_runbook_rows()
    for logical_id, alarm in _alarms(resources).items():
        match = re.search(r'Runbook: README "Alarms" - (\w+)\.', " ".join(alarm["AlarmDescription"].split()))
        assert match, f"{logical_id} names no runbook entry"
        assert match[1] in rows, f"{logical_id}: README has no row for {match[1]}"
        assert logical_id == f"{match[1]}Alarm", f"{logical_id} points to another alarm's row ({match[1]})"


def test_every_alarm_notifies_the_topic_when_it_fires_and_when_it_clears(resources):
    for logical_id, alarm in _alarms(resources).items():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], logical_id
        assert alarm.get("OKActions") == [{"Ref": "AlarmTopic"}], logical_id


def test_pod_has_failed_instance_and_lag_alarms(resources):
    alarms = _alarms(resources)
    for logical_id, metric in (("PodInstanceFailedAlarm", "InstancesFailed"), ("PodLagAlarm", "WorstCollectionLag")):
        assert resources[logical_id]["Condition"] == "HasPodImage"
        assert alarms[logical_id]["MetricName"] == metric
        assert {d["Name"]: d["Value"] for d in alarms[logical_id]["Dimensions"]} == {
            "connector": "pod", "service": "proofpoint-collector"}
    assert alarms["PodLagAlarm"]["Threshold"] == {"Ref": "LagAlarmThresholdSeconds"}


def test_dashboards_show_pod_series_and_status(resources):
    import json

    flow = json.dumps(json.loads(_sub_text(resources["FlowDashboard"]["Properties"]["DashboardBody"])))
    why = json.dumps(json.loads(_sub_text(resources["WhyNotDashboard"]["Properties"]["DashboardBody"])))
    assert '"InstancesFailed", ".", "pod"' in flow and '"InstancesActive", ".", "pod"' in flow
    assert '["...", "pod", ".", "."]' in flow  # worst lag per connector
    assert "connector,instance,service,type" in flow and "SecondsSinceLastMessage" in flow
    assert "PodHeartbeat" in why and "Reconnects" in why


def test_ocsf_writer_reads_only_the_archive_and_writes_only_through_the_provider_roles(template):
    writer = template["Resources"]["OcsfWriterFunction"]
    assert writer["Condition"] == "EnableSecurityLake"
    by_sid = {s["Sid"]: s for s in _statements(writer["Properties"]["Policies"])}
    assert set(by_sid) == {"RawArchiveRead", "AssumeSecurityLakeProviderRoles", "StateTableOcsfStatus",
                           "OwnMetricsOnly"}
    assert by_sid["RawArchiveRead"] == {"Sid": "RawArchiveRead", "Effect": "Allow", "Action": "s3:GetObject",
                                        "Resource": {"Fn::Sub": "${RawBucket.Arn}/proofpoint/source=*"}}
    assert by_sid["AssumeSecurityLakeProviderRoles"]["Resource"] == SECURITY_LAKE_PROVIDER_ROLES
    assert by_sid["StateTableOcsfStatus"]["Condition"] == {
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["ocsf"]}}
    # Off by default: every OCSF resource hangs on the condition, which needs both parameters.
    ocsf = [lid for lid in template["Resources"] if lid.startswith("Ocsf")]
    assert len(ocsf) >= 8 and all(template["Resources"][lid]["Condition"] == "EnableSecurityLake" for lid in ocsf)
    assert template["Parameters"]["SecurityLakeBucket"]["Default"] == ""
    assert template["Parameters"]["SecurityLakeRoleArn"]["Default"] == ""
