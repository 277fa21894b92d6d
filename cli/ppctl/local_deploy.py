"""Deploy ``template.yaml`` into a local AWS emulator on loopback: ``ppctl local deploy``.

The steps, in order (``deploy_stack``):

1. Resolve the endpoints the standard SDK configuration points at (``AWS_ENDPOINT_URL``,
   ``AWS_ENDPOINT_URL_<SERVICE>``, the config file) and refuse anything that is not loopback,
   before any network call.
2. Zip each function's code and the layer's packages, upload them to an artifacts bucket.
3. SAM-transform the template offline (``transform``) with those S3 locations.
4. Adapt that CloudFormation to what moto's CloudFormation can do (``prepare_for_emulator``): leave
   out the resource types it cannot create, publish the layer through the Lambda API, pass
   environment values as strings; every adaptation is logged and returned as a note. Only this
   emulator copy changes: ``template.yaml`` and what real AWS gets are untouched.
5. Create the stack, or update it (unchanged template and parameters: nothing to do), wait, and
   return its outputs. An update moto would apply only half (see EMULATOR_NOT_UPDATABLE_TYPES) is
   refused instead.

moto also accepts, but ignores, some properties: on create, a function's Layers, Architectures,
TracingConfig and EphemeralStorage; a table's PITR and SSE; a stream's on-demand mode and
encryption; a bucket's versioning, public access block, ownership controls and lifecycle. That
is fine for running handlers locally; tests/unit/test_template.py guards the real values.

``transform`` is also what ``tools/sam_transform.py`` (the cfn-lint input) runs, so the template
is transformed one way only.

Only boto3 is imported at module level: this module ships in the Lambda layer with the rest of the
package, where samtranslator and PyYAML (dev-only dependencies) are not installed.
"""

from __future__ import annotations

import ast
import base64
import copy
import hashlib
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ppcollector.http import is_loopback_url

logger = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
PLACEHOLDER_BUCKET = "placeholder-bucket"
ARTIFACTS_BUCKET = "ppcollector-local-artifacts"

# The SAM property holding each resource type's local code directory.
_ARTIFACT_PROPERTY = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}

# Resource types in the transformed template that moto 5.2.5's CloudFormation has no model for.
# moto would skip them with only a server-side warning, then fail on any reference to them; we
# drop them up front and report each one. Real AWS always gets the full template.
# tests/integration/test_local_deploy.py checks this set against moto's own model list.
EMULATOR_UNSUPPORTED_TYPES = frozenset(
    {
        "AWS::Scheduler::Schedule",  # ScheduleV2 events: nothing fires locally anyway
        "AWS::S3::BucketPolicy",  # the TLS-only deny; moto does not enforce bucket policies
        "AWS::Lambda::EventInvokeConfig",  # async retry settings; nothing retries locally
        "AWS::CloudWatch::Alarm",  # alarms: the emulator evaluates none
        "AWS::SNS::Subscription",  # the optional alarm e-mail
        "AWS::SNS::TopicPolicy",  # CloudWatch's permission to publish alarms
        "AWS::Logs::QueryDefinition",  # saved queries; ppctl logs sends its own query
        "AWS::Glue::Database",  # the archive tables: ppctl query reads them from the template (DuckDB)
        "AWS::Glue::Table",
        "AWS::Athena::WorkGroup",  # Athena runs no SQL in the emulator; ppctl query uses DuckDB locally
        "AWS::Athena::NamedQuery",  # the hunting queries: ppctl query reads the same SQL from its package
        "AWS::SQS::QueuePolicy",  # EventBridge's permission to feed the OCSF writer's queue (writer off locally)
    }
)
# Resource types moto 5.2.5's CloudFormation creates but cannot update: an update that changes
# one leaves the stack without it (its Ref and the outputs using it vanish). Such an update is
# refused with a clear message (layer versions never get there: see prepare_for_emulator).
EMULATOR_NOT_UPDATABLE_TYPES = frozenset(
    {"AWS::DynamoDB::Table", "AWS::Logs::LogGroup", "AWS::Lambda::Permission", "AWS::Lambda::LayerVersion"}
)

_SKIPPED_DIRECTORIES = {"__pycache__", ".pytest_cache", "tests"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}
_SKIPPED_NAMES = {"Makefile"}  # build recipes, not code
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # deterministic zips: same code, same key, no update
_WAITER = {"Delay": 1, "MaxAttempts": 300}


class LocalDeployError(Exception):
    """The local deployment was refused or failed; the message says why."""


@dataclass(frozen=True)
class LocalDeployResult:
    """What ``deploy_stack`` did."""

    stack_name: str
    action: str  # "created" | "updated" | "unchanged"
    outputs: dict[str, str]
    # One line per resource the emulator got differently from the template (see
    # prepare_for_emulator): "LogicalId (Type): what was done instead".
    emulator_notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Artifact:
    bucket: str
    key: str
    sha256_b64: str  # what the Lambda API reports as CodeSha256


# ---------------------------------------------------------------------------------------------
# Endpoint guard
# ---------------------------------------------------------------------------------------------


def require_loopback(clients: Mapping[str, Any], action: str = "deploy") -> None:
    for service, client in clients.items():
        url = client.meta.endpoint_url
        if not is_loopback_url(url):
            raise LocalDeployError(
                f"refusing to {action}: the {service} endpoint {url} is not loopback "
                "(set AWS_ENDPOINT_URL to the local emulator, e.g. http://127.0.0.1:5000)"
            )


# ---------------------------------------------------------------------------------------------
# Template: load and SAM-transform (offline)
# ---------------------------------------------------------------------------------------------


def load_template(template_path: str | Path) -> dict[str, Any]:
    """Parse a CloudFormation/SAM YAML template; short tags (!Ref, !Sub, ...) become their
    long form ({"Ref": ...}, {"Fn::Sub": ...})."""
    import yaml

    class _CloudFormationLoader(yaml.SafeLoader):
        pass

    def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
        name = tag_suffix if tag_suffix in ("Ref", "Condition") else f"Fn::{tag_suffix}"
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if tag_suffix == "GetAtt":  # !GetAtt Resource.Attribute
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    _CloudFormationLoader.add_multi_constructor("!", _intrinsic)
    with open(template_path, encoding="utf-8") as stream:
        return yaml.load(stream, Loader=_CloudFormationLoader)  # noqa: S506 - SafeLoader subclass


def transform(
    template_path: str | Path,
    code_locations: Mapping[str, tuple[str, str]] | None = None,
    parameter_values: Mapping[str, Any] | None = None,
    region: str = DEFAULT_REGION,
) -> dict[str, Any]:
    """SAM-transform ``template_path`` offline and return the CloudFormation template.

    Each function's ``CodeUri`` / layer's ``ContentUri`` becomes the S3 location given in
    ``code_locations`` ({logical_id: (bucket, key)}), else ``s3://placeholder-bucket/<id>.zip``.
    Managed policies are referenced by ARN in this project, so the managed-policy lookup (an IAM
    call in real SAM) is a stub that knows no names.
    """
    from samtranslator.metrics.metrics import DummyMetricsPublisher, Metrics
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator
    from samtranslator.utils.py27hash_fix import (
        to_py27_compatible_template,
        undo_mark_unicode_str_in_template,
    )

    sam_template = load_template(template_path)
    resources = sam_template.get("Resources") or {}
    locations = dict(code_locations or {})
    unknown = sorted(set(locations) - set(resources))
    if unknown:
        raise ValueError(f"code_locations name resources that are not in the template: {unknown}")
    for logical_id, resource in resources.items():
        prop = _ARTIFACT_PROPERTY.get(resource.get("Type"))
        if prop is None or prop not in resource.get("Properties", {}):
            continue
        bucket, key = locations.get(logical_id, (PLACEHOLDER_BUCKET, f"{logical_id}.zip"))
        resource["Properties"][prop] = {"Bucket": bucket, "Key": key}

    parameters = dict(parameter_values or {})
    to_py27_compatible_template(sam_template, parameters)
    metrics = Metrics("ServerlessTransform", DummyMetricsPublisher())  # offline: recorded, not sent
    # A session with an explicit region: SAM derives the partition from it (no credentials used).
    session = boto3.session.Session(region_name=region)
    translator = Translator(None, Parser(), boto_session=session, metrics=metrics)
    try:
        cfn = translator.translate(
            sam_template, parameter_values=parameters, get_managed_policy_map=lambda: {}
        )
    except InvalidDocumentException as error:
        causes = "; ".join(cause.message for cause in error.causes) or error.message
        raise LocalDeployError(f"{template_path} is not a valid SAM template: {causes}") from error
    finally:
        metrics.publish()
    return undo_mark_unicode_str_in_template(cfn)


# ---------------------------------------------------------------------------------------------
# Emulator pre-processing
# ---------------------------------------------------------------------------------------------

_SUB_REFERENCE = re.compile(r"\$\{([A-Za-z0-9]+)(?:\.[^}]*)?\}")


def _referenced_ids(node: Any) -> Iterator[str]:
    """Logical ids a template fragment refers to via Ref, GetAtt or Sub."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                yield value
            elif key == "Fn::GetAtt":
                target = value.split(".", 1)[0] if isinstance(value, str) else value[0]
                yield target
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                yield from _SUB_REFERENCE.findall(text)
                if not isinstance(value, str):
                    yield from _referenced_ids(value[1])
            else:
                yield from _referenced_ids(value)
    elif isinstance(node, list):
        for item in node:
            yield from _referenced_ids(item)


def _replace_refs(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in values:
            return values[node["Ref"]]
        return {key: _replace_refs(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace_refs(item, values) for item in node]
    return node


def _condition_values(cfn: dict[str, Any], parameters: Mapping[str, str]) -> dict[str, bool]:
    """Evaluate the template's Conditions (Equals/Not/And/Or over parameters) for these values."""
    declared = cfn.get("Parameters", {})
    conditions = cfn.get("Conditions", {})
    values: dict[str, bool] = {}

    def value(node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                raw = parameters.get(arg, str(declared.get(arg, {}).get("Default", "")))
                if declared.get(arg, {}).get("Type") == "CommaDelimitedList":
                    return [part for part in raw.split(",")] if raw else [""]
                return raw
            if key == "Fn::Join":
                return arg[0].join(str(v) for v in (value(arg[1]) if not isinstance(arg[1], list)
                                                    else [value(i) for i in arg[1]]))
            if key == "Fn::Equals":
                return str(value(arg[0])) == str(value(arg[1]))
            if key == "Fn::Not":
                return not value(arg[0])
            if key == "Fn::And":
                return all(value(i) for i in arg)
            if key == "Fn::Or":
                return any(value(i) for i in arg)
            if key == "Condition":
                return evaluate(arg)
        return node

    def evaluate(name: str) -> bool:
        if name not in values:
            values[name] = bool(value(conditions[name]))
        return values[name]

    for name in conditions:
        evaluate(name)
    return values


def _lower_repository_name(stack_name: str, logical_id: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"{stack_name}-{logical_id}".lower()).strip("-")


def prepare_for_emulator(
    cfn: dict[str, Any], layer_arns: Mapping[str, str] | None = None, stack_name: str = "local",
    parameters: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Return the copy of ``cfn`` to give the emulator, and a note per resource changed for it.

    - Resources of ``EMULATOR_UNSUPPORTED_TYPES`` are dropped (refused if anything kept refers
      to one).
    - The layer versions in ``layer_arns`` ({logical_id: arn}, published by ``deploy_stack``) are
      dropped and each ``Ref`` to them replaced by that ARN: moto's CloudFormation creates a layer
      version but answers ``Ref`` with no ARN (and then breaks on updating the function).
    - Lambda environment values are made strings (Fn::Join of one item): moto hands a Number
      parameter through as a number, where Lambda (and os.environ) only know strings.
    """
    layer_arns = dict(layer_arns or {})
    emulated = copy.deepcopy(cfn)
    resources = emulated["Resources"]
    # Resources whose Condition is false for these parameters are not created in AWS either; moto
    # evaluates conditions on create but not on update, so they are left out here.
    conditions = _condition_values(emulated, parameters or {})
    inactive = {logical_id for logical_id, resource in resources.items()
                if "Condition" in resource and not conditions.get(resource["Condition"], True)}
    for name in [k for k, v in emulated.get("Outputs", {}).items()
                 if "Condition" in v and not conditions.get(v["Condition"], True)]:
        del emulated["Outputs"][name]
    dropped = {
        logical_id: resource["Type"]
        for logical_id, resource in resources.items()
        if resource["Type"] in EMULATOR_UNSUPPORTED_TYPES or logical_id in layer_arns or logical_id in inactive
    }
    notes = [
        f"{logical_id} ({kind}): published directly as {layer_arns[logical_id]}"
        if logical_id in layer_arns
        else f"{logical_id} ({kind}): not created, its condition is false"
        if logical_id in inactive
        else f"{logical_id} ({kind}): left out, the emulator cannot create it"
        for logical_id, kind in sorted(dropped.items())
    ]
    for logical_id in dropped:
        del resources[logical_id]
    emulated = _replace_refs(emulated, layer_arns)
    resources = emulated["Resources"]
    for resource in resources.values():
        depends_on = resource.get("DependsOn")
        if isinstance(depends_on, str):
            depends_on = [depends_on]
        if depends_on:
            kept = [name for name in depends_on if name not in dropped]
            if kept:
                resource["DependsOn"] = kept
            else:
                del resource["DependsOn"]
    for logical_id, resource in sorted(resources.items()):
        if resource["Type"] == "AWS::ECR::Repository" and "RepositoryName" not in resource.get("Properties", {}):
            # AWS generates a valid lower-case name; moto derives one from the stack name as is.
            resource.setdefault("Properties", {})["RepositoryName"] = _lower_repository_name(stack_name, logical_id)
            notes.append(f"{logical_id} (AWS::ECR::Repository): named explicitly in lower case")
        variables = (resource.get("Properties", {}).get("Environment") or {}).get("Variables") or {}
        if resource["Type"] == "AWS::Lambda::Function" and any(not isinstance(v, str) for v in variables.values()):
            for name, value in variables.items():
                if not isinstance(value, str):
                    variables[name] = {"Fn::Join": ["", [value]]}
            notes.append(f"{logical_id} (AWS::Lambda::Function): environment values passed as strings")
    referenced = set(_referenced_ids({"r": resources, "o": emulated.get("Outputs", {})}))
    dangling = sorted(referenced & set(dropped))
    if dangling:
        raise LocalDeployError(
            "the emulator cannot create "
            + ", ".join(f"{logical_id} ({dropped[logical_id]})" for logical_id in dangling)
            + ", but other resources or outputs refer to it"
        )
    return emulated, notes


# ---------------------------------------------------------------------------------------------
# Packaging
# ---------------------------------------------------------------------------------------------


def _zip_tree(entries: list[tuple[Path, str]]) -> bytes:
    """Deterministic zip of (file, name in archive) pairs."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in sorted(entries, key=lambda entry: entry[1]):
            info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _source_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if (
            path.is_file()
            and path.suffix not in _SKIPPED_SUFFIXES
            and path.name not in _SKIPPED_NAMES
            and not _SKIPPED_DIRECTORIES & set(path.relative_to(root).parts[:-1])
        ):
            yield path


def _package(resource_type: str, code_dir: Path) -> bytes:
    if not code_dir.is_dir():
        raise LocalDeployError(f"code directory {code_dir} does not exist")
    if resource_type == "AWS::Serverless::Function":
        # What the function's Makefile build puts in the artifact: the sources, at the zip root.
        return _zip_tree([(path, path.relative_to(code_dir).as_posix()) for path in _source_files(code_dir)])
    # A layer: its Python packages under python/, as the layer's Makefile build lays them out.
    # Third-party dependencies are not bundled: `ppctl local invoke` runs handlers in-process,
    # importing them from the local environment.
    entries = [
        (path, f"python/{path.relative_to(code_dir).as_posix()}")
        for package in sorted(code_dir.iterdir())
        if (package / "__init__.py").is_file()
        for path in _source_files(package)
    ]
    if not entries:
        raise LocalDeployError(f"layer directory {code_dir} holds no Python package")
    return _zip_tree(entries)


def _upload_code(
    s3: Any, stack_name: str, template_dir: Path, resources: Mapping[str, Any], region: str
) -> dict[str, _Artifact]:
    """Zip and upload the code of each function and layer in ``resources`` (the SAM template's);
    return {logical_id: artifact}."""
    try:
        if region == DEFAULT_REGION:
            s3.create_bucket(Bucket=ARTIFACTS_BUCKET)
        else:
            s3.create_bucket(
                Bucket=ARTIFACTS_BUCKET, CreateBucketConfiguration={"LocationConstraint": region}
            )
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    artifacts: dict[str, _Artifact] = {}
    for logical_id, resource in resources.items():
        prop = _ARTIFACT_PROPERTY.get(resource.get("Type"))
        code_uri = (resource.get("Properties") or {}).get(prop) if prop else None
        if not isinstance(code_uri, str):
            continue
        body = _package(resource["Type"], template_dir / code_uri)
        digest = hashlib.sha256(body).digest()
        # Content-addressed key: unchanged code gives an unchanged template, hence no update.
        key = f"{stack_name}/{logical_id}-{digest.hex()[:16]}.zip"
        s3.put_object(Bucket=ARTIFACTS_BUCKET, Key=key, Body=body)
        artifacts[logical_id] = _Artifact(ARTIFACTS_BUCKET, key, base64.b64encode(digest).decode())
    return artifacts


# ---------------------------------------------------------------------------------------------
# Deploy
# ---------------------------------------------------------------------------------------------


def _layer_name(value: Any, stack_name: str, region: str) -> str | None:
    """LayerName as CloudFormation would resolve it, for a literal or a Sub of pseudo parameters."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
        pseudo = {"AWS::StackName": stack_name, "AWS::Region": region}
        name = re.sub(r"\$\{([^}]+)\}", lambda match: pseudo.get(match.group(1), match.group(0)), value["Fn::Sub"])
        return None if "${" in name else name
    return None


def _publish_layers(
    lambda_client: Any, cfn: dict[str, Any], artifacts: Mapping[str, _Artifact], stack_name: str, region: str
) -> dict[str, str]:
    """Publish each layer version of ``cfn`` through the Lambda API (see ``prepare_for_emulator``),
    reusing an existing version with the same code; return {logical_id: layer version ARN}."""
    sha_by_key = {artifact.key: artifact.sha256_b64 for artifact in artifacts.values()}
    arns: dict[str, str] = {}
    for logical_id, resource in cfn["Resources"].items():
        if resource["Type"] != "AWS::Lambda::LayerVersion":
            continue
        properties = resource["Properties"]
        name = _layer_name(properties.get("LayerName"), stack_name, region) or f"{stack_name}-{logical_id}"
        content = properties["Content"]
        code_sha = sha_by_key.get(content.get("S3Key"))
        for version in lambda_client.list_layer_versions(LayerName=name).get("LayerVersions", []):
            found = lambda_client.get_layer_version(LayerName=name, VersionNumber=version["Version"])
            if code_sha and found["Content"].get("CodeSha256") == code_sha:
                arns[logical_id] = found["LayerVersionArn"]
                break
        else:
            published = lambda_client.publish_layer_version(
                LayerName=name,
                Description=properties.get("Description", ""),
                Content={"S3Bucket": content["S3Bucket"], "S3Key": content["S3Key"]},
                CompatibleRuntimes=properties.get("CompatibleRuntimes", []),
                CompatibleArchitectures=properties.get("CompatibleArchitectures", []),
            )
            arns[logical_id] = published["LayerVersionArn"]
    return arns


def _stack_status(cloudformation: Any, stack_name: str) -> str | None:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return stacks[0]["StackStatus"] if stacks else None


def _deployed(cloudformation: Any, stack_name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The template and parameter values the stack currently runs."""
    body = cloudformation.get_template(StackName=stack_name)["TemplateBody"]
    template = json.loads(body) if isinstance(body, str) else body
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    return template, {p["ParameterKey"]: _list_parameter_text(p.get("ParameterValue", ""))
                      for p in stack.get("Parameters", [])}


def _list_parameter_text(value: str) -> str:
    """moto reports a CommaDelimitedList value as a Python list literal ("['a', 'b']"); AWS as "a,b"."""
    if value.startswith("[") and value.endswith("]"):
        try:
            items = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(items, list):
            return ",".join(str(item) for item in items)
    return value


def _refuse_emulator_update_limits(
    stack_name: str,
    old: tuple[dict[str, Any], dict[str, str]],
    new: tuple[dict[str, Any], dict[str, str]],
) -> None:
    """Refuse an update that would change a resource moto cannot update, instead of leaving it
    broken: a resource counts as changed when its definition differs or it refers to a parameter
    whose value changed."""
    (old_template, old_parameters), (new_template, new_parameters) = old, new
    changed_parameters = {key for key, value in new_parameters.items() if old_parameters.get(key) != value}
    old_resources = old_template.get("Resources", {})
    blocked = [
        f"{logical_id} ({resource['Type']})"
        for logical_id, resource in sorted(new_template["Resources"].items())
        if resource["Type"] in EMULATOR_NOT_UPDATABLE_TYPES
        and logical_id in old_resources
        and (resource != old_resources[logical_id] or changed_parameters & set(_referenced_ids(resource)))
    ]
    if blocked:
        raise LocalDeployError(
            f"the local emulator cannot update {', '.join(blocked)} in place; delete stack {stack_name} "
            "there (or restart the emulator) and deploy again"
        )


def _create_or_update(
    cloudformation: Any, stack_name: str, template: dict[str, Any], parameters: dict[str, str]
) -> str:
    """Create the stack or bring it to ``template``/``parameters`` (every declared parameter,
    defaults included, so the result never depends on what an earlier deploy passed)."""
    request = {
        "StackName": stack_name,
        "TemplateBody": json.dumps(template, sort_keys=True),
        "Parameters": [{"ParameterKey": key, "ParameterValue": value} for key, value in sorted(parameters.items())],
        "Capabilities": ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    }
    status = _stack_status(cloudformation, stack_name)
    if status in ("ROLLBACK_COMPLETE", "DELETE_COMPLETE"):
        # A stack whose creation failed cannot be updated, only replaced (as `sam deploy` does).
        cloudformation.delete_stack(StackName=stack_name)
        cloudformation.get_waiter("stack_delete_complete").wait(StackName=stack_name, WaiterConfig=_WAITER)
        status = None
    if status is None:
        cloudformation.create_stack(**request)
        cloudformation.get_waiter("stack_create_complete").wait(StackName=stack_name, WaiterConfig=_WAITER)
        return "created"
    deployed = _deployed(cloudformation, stack_name)
    if deployed == (template, parameters):
        return "unchanged"
    _refuse_emulator_update_limits(stack_name, deployed, (template, parameters))
    try:
        cloudformation.update_stack(**request)
    except ClientError as error:
        if "No updates are to be performed" in str(error):
            return "unchanged"
        raise
    cloudformation.get_waiter("stack_update_complete").wait(StackName=stack_name, WaiterConfig=_WAITER)
    return "updated"


def deploy_stack(
    stack_name: str,
    template_path: str | Path,
    parameters: Mapping[str, str] | None = None,
    session: boto3.Session | None = None,
) -> LocalDeployResult:
    """Deploy the SAM template into the loopback emulator; see the module docstring."""
    session = session or boto3.Session()
    # boto3 reads only AWS_DEFAULT_REGION (and the config file); the Lambda runtime and the other
    # AWS SDKs also know AWS_REGION.
    region = session.region_name or os.environ.get("AWS_REGION")
    if not region:
        raise LocalDeployError("no AWS region configured (set AWS_REGION or AWS_DEFAULT_REGION)")
    clients = {
        "cloudformation": session.client("cloudformation", region_name=region),
        "lambda": session.client("lambda", region_name=region),
        # Path-style: a virtual-hosted bucket name would be prepended to the loopback host name.
        "s3": session.client("s3", region_name=region, config=Config(s3={"addressing_style": "path"})),
    }
    require_loopback(clients)  # before any network call

    template_path = Path(template_path).resolve()
    if not template_path.is_file():
        raise LocalDeployError(f"template {template_path} not found")
    sam_template = load_template(template_path)
    declared = sam_template.get("Parameters") or {}
    given = {key: str(value) for key, value in (parameters or {}).items()}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise LocalDeployError(f"unknown template parameters: {', '.join(unknown)}")
    defaults = {key: str(spec["Default"]) for key, spec in declared.items() if "Default" in spec}
    missing = sorted(set(declared) - set(defaults) - set(given))
    if missing:
        raise LocalDeployError(f"template parameters without a default need a value: {', '.join(missing)}")
    parameters = defaults | given

    try:
        resources = sam_template.get("Resources") or {}
        artifacts = _upload_code(clients["s3"], stack_name, template_path.parent, resources, region)
        locations = {logical_id: (a.bucket, a.key) for logical_id, a in artifacts.items()}
        cfn = transform(template_path, locations, parameters, region=region)
        layer_arns = _publish_layers(clients["lambda"], cfn, artifacts, stack_name, region)
        emulated, notes = prepare_for_emulator(cfn, layer_arns, stack_name, parameters)
        if notes:
            logger.info("adapted for the local emulator: %s", "; ".join(notes))
        action = _create_or_update(clients["cloudformation"], stack_name, emulated, parameters)
        stack = clients["cloudformation"].describe_stacks(StackName=stack_name)["Stacks"][0]
    except NoCredentialsError as error:
        raise LocalDeployError(
            "no AWS credentials configured (any value works for a local emulator, "
            "e.g. AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing)"
        ) from error
    except (ClientError, BotoCoreError) as error:
        raise LocalDeployError(f"local deploy of stack {stack_name} failed: {error}") from error

    outputs = {output["OutputKey"]: output.get("OutputValue", "") for output in stack.get("Outputs", [])}
    expected = {key for key, output in cfn.get("Outputs", {}).items() if "Condition" not in output}
    missing = sorted(expected - set(outputs))
    if missing:
        raise LocalDeployError(f"stack {stack_name} is {stack['StackStatus']} but lacks outputs {missing}")
    return LocalDeployResult(stack_name=stack_name, action=action, outputs=outputs, emulator_notes=notes)


def deploy(
    stack_name: str,
    template_path: str | Path,
    parameters: Mapping[str, str] | None = None,
    session: boto3.Session | None = None,
) -> dict[str, str]:
    """Deploy (create or update) the stack into the loopback emulator and return its outputs.
    What had to be changed for the emulator is logged as warnings (``deploy_stack`` returns it)."""
    return deploy_stack(stack_name, template_path, parameters, session).outputs
