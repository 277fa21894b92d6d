"""``ppctl``: manage instances, check status, backfill, and run the stack locally (docs/CONTRACT.md §3).

It talks to whatever the standard AWS SDK configuration points at, and finds the stack's resources
from the stack's outputs (``--stack``/``--region``, defaults from ./samconfig.toml as ``sam deploy
--guided`` writes it). Secrets are read from a prompt or stdin, never from the command line. Exit 0 on
success; otherwise one line saying why (``main``), never a traceback, never a secret.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
)

from ppcollector import __version__
from ppcollector.config import RuntimeConfig
from ppcollector.connectors import descriptors, get_connector, get_descriptor
from ppcollector.descriptor import ConnectorDescriptor, SettingFlag
from ppcollector.errors import CollectorError, SettingsError, VendorAccessError, VendorAuthError, VendorError
from ppcollector.http import custom_endpoints
from ppcollector.runtime import aws_clients, build_deps
from ppcollector.spine import FAILED, PENDING, Connector, Deps
from ppcollector.state import DISABLED, Instance, validate_name
from ppcollector.timeutil import TimestampError, format_rfc3339, parse_duration, parse_timestamp, utcnow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STACK = "proofpoint-collector"
SAMCONFIG = "samconfig.toml"
DISTRIBUTION = "proofpoint-aws-collector"
IAM_POLICY_DOC = "docs/ppctl-iam-policy.json"


class CliError(Exception):
    """A one-line reason; ppctl prints it and exits 1."""


# --- stack discovery -----------------------------------------------------------------------------

def samconfig_defaults(path: Path, required: bool = False) -> dict[str, str]:
    """``stack_name`` and ``region`` where ``sam deploy --guided`` writes them: [default.deploy.parameters],
    else [default.global.parameters] (the deploy section wins, as in sam)."""
    if not path.is_file():
        if required:
            raise CliError(f"config file {path} not found")
        return {}
    try:
        with path.open("rb") as handle:
            environment = tomllib.load(handle).get("default", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"cannot read {path}: {_one_line(exc)}") from exc
    found: dict[str, str] = {}
    for section in ("global", "deploy"):
        parameters = environment.get(section, {}).get("parameters", {})
        found.update({key: str(parameters[key]) for key in ("stack_name", "region") if parameters.get(key)})
    return found


def aws_session(region: str | None) -> Any:
    import boto3

    return boto3.session.Session(region_name=region)


@dataclass
class Stack:
    name: str
    outputs: dict[str, str]
    clients: dict[str, Any]

    @property
    def config(self) -> RuntimeConfig:
        try:
            return RuntimeConfig.from_env({
                "STATE_TABLE": self.outputs["StateTableName"],
                "RAW_BUCKET": self.outputs["RawBucketName"],
                "EVENT_STREAM": self.outputs.get("EventStreamName", ""),
                "SINKS": self.outputs.get("SinkMode", "both"),
                "SECRET_PREFIX": self.outputs["SecretPrefix"],
            })
        except KeyError as exc:
            raise CliError(f"stack {self.name} has no output {exc.args[0]}; is it this project's stack?") from exc

    def deps(self) -> Deps:
        deps = build_deps(self.config, self.clients)
        return dataclasses.replace(deps, secrets=_RememberingSecrets(deps.secrets))

    def connector(self, name: str) -> Connector:
        """The connector as this stack's pollers run it: with the knobs its descriptor names read from the
        stack's outputs (TAP: TapRateLimit, TapSettleLag; a stack without them: the defaults)."""
        values = {variable: self.outputs[output] for variable, output in get_descriptor(name).environment
                  if self.outputs.get(output)}
        with _environment(values):
            return get_connector(name)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables set while a connector reads its knobs (it reads them when built)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_stack(args: argparse.Namespace, loopback_only: bool = False) -> Stack:
    """The stack's outputs and clients; ``loopback_only`` refuses any endpoint that is not a local emulator,
    before the first call."""
    session = aws_session(args.region)
    clients = aws_clients(session)
    clients["cloudformation"] = session.client("cloudformation")
    if loopback_only:
        from . import local_deploy

        try:
            local_deploy.require_loopback(clients, "run a function locally")
        except local_deploy.LocalDeployError as exc:
            raise CliError(str(exc)) from exc
    try:
        stacks = clients["cloudformation"].describe_stacks(StackName=args.stack)["Stacks"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ValidationError":
            raise
        raise CliError(f"stack {args.stack!r} not found in {session.region_name} (deployed? name it with --stack "
                       f"or stack_name in {SAMCONFIG}; region with --region or region in {SAMCONFIG})") from exc
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    return Stack(args.stack, outputs, clients)


# --- output ---------------------------------------------------------------------------------------

# Every secret value this process read (prompt, stdin, Secrets Manager): no line ppctl prints on stderr
# may contain one, whatever an error message echoes.
_SECRET_VALUES: set[str] = set()


class _RememberingSecrets:
    """The stack's secret store, remembering each value it hands out (see _SECRET_VALUES)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def get(self, secret_id: str) -> Any:
        credentials = self._store.get(secret_id)
        _SECRET_VALUES.update(value for value in credentials.values() if value)
        return credentials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    for value in sorted(_SECRET_VALUES, key=len, reverse=True):
        text = text.replace(value, "<secret>")
    return text


def say(text: str) -> None:
    """A note or reason for the operator, on stderr: one line, secrets masked."""
    print(_one_line(text), file=sys.stderr)


def describe_failure(exc: BaseException) -> str:
    """What went wrong, for the one line ppctl prints instead of a traceback."""
    if isinstance(exc, CliError | CollectorError):
        return str(exc)
    if isinstance(exc, NoRegionError):
        return f"no AWS region configured: pass --region, set region in {SAMCONFIG}, or set AWS_REGION"
    if isinstance(exc, ProfileNotFound):
        return f"AWS profile {exc.kwargs.get('profile')!r} not found in the AWS config files (check AWS_PROFILE)"
    if isinstance(exc, NoCredentialsError):
        return ("no AWS credentials found: configure a profile (aws configure / aws sso login) or set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Unknown")
        hint = f" (the permissions ppctl needs: {IAM_POLICY_DOC})" if "AccessDenied" in code else ""
        return f"AWS {exc.operation_name} failed: {code}: {error.get('Message', '')}{hint}"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach the AWS endpoint {exc.kwargs.get('endpoint_url')} (network, region, AWS_ENDPOINT_URL?)"
    if isinstance(exc, BotoCoreError):
        return f"AWS SDK: {exc}"
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror}" if exc.filename else f"{type(exc).__name__}: {exc}"
    return f"unexpected {type(exc).__name__}: {exc} (PPCTL_DEBUG=1 shows the traceback)"


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def emit(args: argparse.Namespace, payload: Any, columns: list[str] | None = None) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    elif columns is not None:
        print_table(payload, columns)
    elif isinstance(payload, dict):
        width = max((len(k) for k in payload), default=0)
        for key, value in payload.items():
            shown = json.dumps(value) if isinstance(value, dict | list) else ("" if value is None else value)
            print(f"{key.ljust(width)}  {shown}")
    else:
        print(payload)


# --- secrets ---------------------------------------------------------------------------------------

def read_secret_fields(descriptor: ConnectorDescriptor, from_stdin: bool) -> dict[str, str]:
    """The connector's secret fields, in its descriptor's order: one value per line on stdin
    (``--secret-stdin``), or a hidden prompt each. Never argv."""
    values: dict[str, str] = {}
    for field in descriptor.secrets:
        if from_stdin:
            line = sys.stdin.readline()
            value = line.rstrip("\r\n")
        else:
            if not sys.stdin.isatty():
                raise CliError("no terminal to prompt for the secret: pipe it in with --secret-stdin")
            value = getpass.getpass(f"{field.prompt}: ")
        _SECRET_VALUES.update(v for v in (value, value.strip()) if v.strip())
        if not value.strip():
            if field.optional:
                continue
            raise CliError(f"empty {field.prompt.lower()}")
        values[field.key] = value.strip()
    return values


# --- commands --------------------------------------------------------------------------------------

def status_row(deps: Deps, instance: Instance, now: datetime) -> dict[str, Any]:
    status = deps.state.get_status(instance.name)
    cursors = [c.moment for c in deps.state.list_cursors(instance.name)
               if c.moment and not c.stream.startswith("backfill-")]
    lag = int((now - min(cursors)).total_seconds()) if cursors else None
    state = DISABLED if not instance.enabled else status.get("state", PENDING)
    gaps = status.get("gaps", [])
    return {
        "name": instance.name,
        "connector": instance.connector,
        "state": state,
        "last_success": status.get("last_success"),
        "events": status.get("last_events"),
        "lag": _human_seconds(lag),
        "lag_seconds": lag,
        "last_error": status.get("last_error") or (status.get("reason") if state != "Active" else ""),
        "gaps": len(gaps),
        "last_gap": f"{gaps[-1]['start']} .. {gaps[-1]['end']}" if gaps else "",
        "reason": status.get("reason", ""),
        # Credentials go to a host that is not Proofpoint's (allow_custom_endpoint): always visible.
        "custom_endpoint": " ".join(custom_endpoints(instance.settings,
                                                     get_connector(instance.connector).endpoints).values()),
    }


def _human_seconds(seconds: int | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def cmd_status(args: argparse.Namespace) -> int:
    deps = load_stack(args).deps()
    now = utcnow()
    rows = []
    for instance in sorted(deps.state.list_instances(), key=lambda i: i.name):
        row = status_row(deps, instance, now)
        rows.append(row)
        # Streams with a status of their own (PoD: one websocket per type) get a row each.
        for stream, detail in sorted((deps.state.get_status(instance.name).get("types") or {}).items()):
            newest = detail.get("newest_ts")
            lag = int((now - parse_timestamp(newest)).total_seconds()) if newest else None
            rows.append({"name": f"{instance.name}/{stream}", "connector": instance.connector,
                         "state": detail.get("state", ""), "last_success": detail.get("last_message")
                         or detail.get("last_connected"), "events": None, "reconnects": detail.get("reconnects"),
                         "lag": _human_seconds(lag), "lag_seconds": lag, "gaps": "",
                         "last_error": detail.get("reason", "") if detail.get("state") != "Active" else ""})
    columns = ["name", "connector", "state", "last_success", "events", "lag", "gaps", "last_error"]
    emit(args, rows, columns + ["custom_endpoint"] if any(r.get("custom_endpoint") for r in rows) else columns)
    return 0


def cmd_instance_add(args: argparse.Namespace) -> int:
    stack = load_stack(args)
    deps = stack.deps()
    name = validate_name(args.name)
    connector = stack.connector(args.connector)
    options = vars(args)
    raw: dict[str, Any] = {flag.setting: options[_setting_dest(flag)] for flag in connector.descriptor.flags
                           if options[_setting_dest(flag)] is not None}
    for pair in options.get("set") or []:
        key, _, value = pair.partition("=")
        raw[key.strip().replace("-", "_")] = value
    settings = connector.validate_settings(raw)
    if deps.state.get_instance(name):
        raise CliError(f"an instance named {name!r} already exists (ppctl instance show {name})")
    secret_id, created = _store_secret(args, deps, f"{stack.config.secret_prefix}/{name}")
    instance = Instance(name, connector.name, settings, secret_id, enabled=not args.disabled,
                        created_at=format_rfc3339(utcnow()))
    try:
        deps.state.save_instance(instance, create=True)
    except Exception:
        if created:
            deps.secrets.delete(secret_id)
        raise
    ok = _validate(args, stack, deps, instance, quiet=True) if not args.disabled and not args.no_validate else True
    row = status_row(deps, instance, utcnow())
    emit(args, {k: row[k] for k in ("name", "connector", "state", "last_error")} if not args.json else row)
    return 0 if ok else 1


def _store_secret(args: argparse.Namespace, deps: Deps, secret_name: str) -> tuple[str, bool]:
    """The new instance's secret id, and whether it was created now.

    A secret can already exist under the name when no instance uses it: after ``sam delete`` and a redeploy
    of the same stack name (ppctl's secrets are not stack resources, so they outlive it), or left scheduled
    for deletion by an older ppctl. It is this stack's and this name's own, so it is taken over: restored,
    and given the value just entered (Secrets Manager keeps the old one as AWSPREVIOUS), or kept as it is
    with ``--reuse-secret``.
    """
    values = None if args.reuse_secret else read_secret_fields(get_descriptor(args.connector), args.secret_stdin)
    existing = deps.secrets.adopt(secret_name)
    if values is None:
        if existing is None:
            raise CliError(f"--reuse-secret: there is no stored secret {secret_name} to reuse")
        say(f"reusing the stored secret {secret_name}")
        return existing, False
    if existing is None:
        return deps.secrets.create(secret_name, values), True
    deps.secrets.update(existing, values)
    say(f"the secret {secret_name} existed already (an earlier instance or stack of this name): its value is "
        "replaced by the one entered; the previous value stays as version AWSPREVIOUS")
    return existing, False


def cmd_instance_list(args: argparse.Namespace) -> int:
    deps = load_stack(args).deps()
    rows = [{"name": i.name, "connector": i.connector, "enabled": i.enabled,
             "interval": i.settings.get("poll_interval", ""), "created_at": i.created_at}
            for i in sorted(deps.state.list_instances(), key=lambda i: i.name)]
    emit(args, rows, ["name", "connector", "enabled", "interval", "created_at"])
    return 0


def _get(deps: Deps, name: str) -> Instance:
    instance = deps.state.get_instance(name)
    if instance is None:
        raise CliError(f"no instance named {name!r} (ppctl instance list)")
    return instance


def cmd_instance_show(args: argparse.Namespace) -> int:
    deps = load_stack(args).deps()
    instance = _get(deps, args.name)
    cursors = {c.stream: c.position for c in deps.state.list_cursors(instance.name)}
    emit(args, {"name": instance.name, "connector": instance.connector, "enabled": instance.enabled,
                "settings": instance.settings, "secret": instance.secret_id, "created_at": instance.created_at,
                "cursors": cursors, "status": deps.state.get_status(instance.name)})
    return 0


def cmd_instance_set(args: argparse.Namespace) -> int:
    stack = load_stack(args)
    deps = stack.deps()
    instance = _get(deps, args.name)
    settings = dict(instance.settings)
    for pair in args.pairs:
        key, _, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if key in ("enabled", "secret", "secret_id", "connector", "name"):
            raise CliError(f"{key} cannot be set here (use enable/disable/rotate-secret)")
        if value == "":
            settings.pop(key, None)
        else:
            settings[key] = value
    instance.settings = stack.connector(instance.connector).validate_settings(settings)
    deps.state.save_instance(instance)
    # New settings deserve a fresh look: clear a Failed backoff so the next tick polls it.
    deps.state.update_status(instance.name, lambda s: s.update(backoff_until=None, next_due=None))
    emit(args, {"name": instance.name, "settings": instance.settings})
    return 0


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    deps = load_stack(args).deps()
    instance = _get(deps, args.name)
    instance.enabled = enabled
    deps.state.save_instance(instance)
    state = PENDING if enabled else DISABLED
    reason = "enabled by the operator" if enabled else "disabled by the operator"
    deps.state.update_status(instance.name, lambda s: s.update(state=state, reason=reason, backoff_until=None,
                                                               next_due=None))
    emit(args, {"name": instance.name, "enabled": enabled})
    return 0


def cmd_instance_remove(args: argparse.Namespace) -> int:
    deps = load_stack(args).deps()
    instance = _get(deps, args.name)
    deps.state.delete_instance(instance.name, get_descriptor(instance.connector).state_partitions(instance.name))
    try:
        deps.secrets.delete(instance.secret_id)
    except Exception as exc:
        say(f"warning: could not delete secret {instance.secret_id}: {describe_failure(exc)}")
    emit(args, {"removed": instance.name})
    return 0


def cmd_rotate_secret(args: argparse.Namespace) -> int:
    stack = load_stack(args)
    deps = stack.deps()
    instance = _get(deps, args.name)
    deps.secrets.update(instance.secret_id, read_secret_fields(get_descriptor(instance.connector), args.secret_stdin))
    deps.state.update_status(instance.name, lambda s: s.update(backoff_until=None, next_due=None))
    return 0 if _validate(args, stack, deps, instance) else 1


def _validate(args: argparse.Namespace, stack: Stack, deps: Deps, instance: Instance, quiet: bool = False) -> bool:
    connector = stack.connector(instance.connector)
    try:
        message = connector.test_call(instance, deps.secrets.get(instance.secret_id), deps)
    except VendorAuthError as exc:
        return _validation_failed(args, deps, instance, "Proofpoint rejected the credentials", exc)
    except VendorAccessError as exc:
        return _validation_failed(args, deps, instance, "credentials lack API access", exc)
    except (VendorError, SettingsError) as exc:
        say(f"validation of {instance.name} failed: {exc}")
        return False

    def clear(status: dict[str, Any]) -> None:
        status.update(backoff_until=None, next_due=None, validated_at=format_rfc3339(utcnow()))
        if status.get("state") == FAILED:
            status.update(state=PENDING, reason="credentials validated; waiting for the first poll")

    deps.state.update_status(instance.name, clear)
    if not quiet:
        emit(args, {"name": instance.name, "result": message})
    else:
        say(message)
    return True


def _validation_failed(args: argparse.Namespace, deps: Deps, instance: Instance, what: str,
                       exc: VendorError) -> bool:
    detail = f"HTTP {exc.http_status}: {exc.detail}" if exc.http_status else _one_line(exc)
    reason = f"{what} ({detail})"
    deps.state.update_status(instance.name, lambda s: s.update(state=FAILED, reason=reason, last_error=reason,
                                                               last_error_at=format_rfc3339(utcnow())))
    say(f"{instance.name}: {reason}")
    return False


def cmd_validate(args: argparse.Namespace) -> int:
    stack = load_stack(args)
    deps = stack.deps()
    return 0 if _validate(args, stack, deps, _get(deps, args.name)) else 1


def cmd_backfill(args: argparse.Namespace) -> int:
    stack = load_stack(args)
    deps = stack.deps()
    instance = _get(deps, args.name)
    now = utcnow()
    try:
        since = parse_timestamp(args.since)
        until = parse_timestamp(args.until) if args.until else now
    except TimestampError as exc:
        raise CliError(str(exc)) from exc
    if until <= since:
        raise CliError("--until must be after --since")
    if until > now:
        raise CliError("--until is in the future; the API only serves the past")
    # Refuses what the API cannot serve (or a connector that cannot re-collect), with why.
    streams = stack.connector(instance.connector).start_backfill(deps, instance, since, until)
    deps.state.update_status(instance.name, lambda s: s.update(next_due=None))
    emit(args, {"name": instance.name, "backfill_since": format_rfc3339(since),
                "backfill_until": format_rfc3339(until), "streams": streams,
                "note": "collected by the next polls, paced by the rate budget"})
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """That instance's log lines from CloudWatch Logs, newest first, through a Logs Insights query. The metric
    blobs (EMF: JSON with an ``_aws`` key) carry the instance too, but are numbers for CloudWatch: left out."""
    stack = load_stack(args)
    instance = _get(stack.deps(), args.name)
    output = get_descriptor(instance.connector).log_group_output
    log_group = stack.outputs.get(output)
    if not log_group:
        raise CliError(f"stack {stack.name} has no output {output} (the {instance.connector} log group)")
    try:
        since = parse_duration(args.since)
    except ValueError as exc:
        raise CliError(f"--since: {exc}") from exc
    logs = stack.clients["logs"]
    end = int(time.time())
    query = (f'fields @timestamp, @message | filter instance = "{instance.name}" '
             "| sort @timestamp desc | limit 10000")
    query_id = logs.start_query(logGroupName=log_group, startTime=end - int(since.total_seconds()),
                                endTime=end + 1, queryString=query)["queryId"]
    deadline = time.monotonic() + 120
    while True:
        response = logs.get_query_results(queryId=query_id)
        if response["status"] in ("Complete", "Failed", "Cancelled", "Timeout"):
            break
        if time.monotonic() > deadline:
            raise CliError("the Logs Insights query did not finish in 2 minutes")
        time.sleep(1)
    if response["status"] != "Complete":
        raise CliError(f"the Logs Insights query ended {response['status']}")
    rows = []
    for result in response.get("results", []):
        fields = {f["field"]: f["value"] for f in result}
        try:
            line = json.loads(fields.get("@message", ""))
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("instance") == instance.name and "_aws" not in line:
            rows.append(line)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for line in rows:
            print(f"{line.get('timestamp', '')}  {line.get('level', ''):7}  {line.get('message', '')}")
        if not rows:
            print(f"(no log lines for {instance.name} in the last {args.since})")
    return 0


# --- local --------------------------------------------------------------------------------------------

def cmd_local_deploy(args: argparse.Namespace) -> int:
    from . import local_deploy

    parameters = dict(p.split("=", 1) for p in args.param or [])  # KEY=VALUE checked by the parser
    try:
        outputs = local_deploy.deploy(args.stack, str(Path(args.template)), parameters or None,
                                      session=aws_session(args.region))
    except local_deploy.LocalDeployError as exc:
        raise CliError(str(exc)) from exc
    emit(args, outputs)
    return 0


@dataclass
class LocalContext:
    """What a handler reads from a Lambda context, for in-process runs."""

    function_name: str
    memory_limit_in_mb: int
    timeout_seconds: int
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:local"
    aws_request_id: str = ""

    def __post_init__(self) -> None:
        self.aws_request_id = self.aws_request_id or str(uuid.uuid4())
        self._deadline = time.monotonic() + self.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._deadline - time.monotonic()) * 1000), 0)


@contextmanager
def _environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Tee(io.TextIOBase):
    """Writes through to stderr and keeps the lines, to ship them to CloudWatch Logs like Lambda would."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        sys.stderr.write(text)
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        self.lines += [line for line in complete if line.strip()]
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


@contextmanager
def _function_output(tee: _Tee):
    """Like ``sam local invoke``: the function's logs and metrics on stderr, its response on stdout."""
    from contextlib import redirect_stdout

    from ppcollector.observability import logger

    handler = logger.registered_handler
    previous = handler.setStream(tee)
    try:
        with redirect_stdout(tee):
            yield
    finally:
        handler.setStream(previous)


def _ship_logs(stack: Stack, log_group: str | None, request_id: str, lines: list[str]) -> None:
    """Put the invocation's log lines into the function's log group in the emulator (for ppctl logs)."""
    if not log_group or not lines:
        return
    logs = stack.clients["logs"]
    stream = f"{time.strftime('%Y/%m/%d')}/[local]{request_id}"
    try:
        logs.create_log_stream(logGroupName=log_group, logStreamName=stream)
        events, latest = [], 0
        for line in lines:  # each line at its own time (never earlier than the one before), as Lambda ships them
            latest = max(latest, _line_millis(line))
            events.append({"timestamp": latest, "message": line})
        for start in range(0, len(events), 5000):
            logs.put_log_events(logGroupName=log_group, logStreamName=stream, logEvents=events[start:start + 5000])
    except Exception as exc:
        say(f"warning: could not write the invocation's logs to {log_group}: {describe_failure(exc)}")


def _line_millis(line: str) -> int:
    """When a log line was written: its ``timestamp`` field (Powertools) or ``_aws.Timestamp`` (EMF), else now."""
    try:
        fields = json.loads(line)
        if "_aws" in fields:
            return int(fields["_aws"]["Timestamp"])
        return int(datetime.fromisoformat(fields["timestamp"].replace(",", ".")).timestamp() * 1000)
    except (ValueError, TypeError, KeyError, AttributeError):
        return int(time.time() * 1000)


def cmd_local_invoke(args: argparse.Namespace) -> int:
    from . import local_deploy

    stack = load_stack(args, loopback_only=True)  # as documented: a local emulator only
    template = local_deploy.load_template(args.template)
    descriptor = _connector_function(template, args.function)
    logical = descriptor.function
    resource = template["Resources"][logical]
    physical = _physical_function(stack, descriptor)
    config = stack.clients["lambda"].get_function_configuration(FunctionName=physical)
    env = dict(config.get("Environment", {}).get("Variables", {}))
    code_dir = Path(args.template).resolve().parent / resource["Properties"]["CodeUri"]
    module_name, _, function_name = resource["Properties"].get("Handler", "app.handler").rpartition(".")
    event = args.event if args.event is not None else {"source": "local-invoke"}
    spec = importlib.util.spec_from_file_location(f"local_{logical}", code_dir / f"{module_name}.py")
    if spec is None or spec.loader is None:
        raise CliError(f"cannot load {code_dir / module_name}.py")
    # The emulator cannot run functions, so a tick polls the due instances in-process (inline dispatch).
    with _environment({**env, "AWS_LAMBDA_FUNCTION_NAME": physical, "DISPATCH_MODE": "inline"}):
        from ppcollector import runtime

        runtime._DEPS = None  # the stack's environment, not a previous one
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        context = LocalContext(physical, int(config.get("MemorySize", 512)), int(config.get("Timeout", 300)))
        tee = _Tee()
        try:
            with _function_output(tee):
                result = getattr(module, function_name)(event, context)
        finally:
            _ship_logs(stack, stack.outputs.get(descriptor.log_group_output), context.aws_request_id, tee.lines)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _connector_functions(template: dict[str, Any]) -> list[ConnectorDescriptor]:
    """The connectors whose function is in the template (each function is a connector's: its descriptor
    names the function's resource and the outputs naming it and its log group)."""
    functions = {k for k, v in template.get("Resources", {}).items() if v.get("Type") == "AWS::Serverless::Function"}
    return [descriptor for descriptor in descriptors() if descriptor.function in functions]


def _connector_function(template: dict[str, Any], wanted: str) -> ConnectorDescriptor:
    """The connector whose function ``wanted`` names: by the connector's name ("tap") or the template
    resource (TapPollerFunction)."""
    connectors = _connector_functions(template)
    for descriptor in connectors:
        if wanted.lower() in (descriptor.name, str(descriptor.function).lower()):
            return descriptor
    raise CliError(f"no function {wanted!r} in the template (functions: "
                   f"{', '.join(f'{d.function} ({d.name})' for d in connectors)})")


def _physical_function(stack: Stack, descriptor: ConnectorDescriptor) -> str:
    physical = stack.outputs.get(str(descriptor.function_output))
    if not physical:
        raise CliError(f"stack {stack.name} has no output {descriptor.function_output}")
    return physical


def cmd_local_env_vars(args: argparse.Namespace) -> int:
    """The ``--env-vars`` file of ``sam local invoke``: per function logical id, the variables the template
    declares for it, with the values the deployed stack gave them (resource names; never a secret: those
    stay in Secrets Manager). DISPATCH_MODE is inline, as in ``ppctl local invoke``: a tick run by sam
    polls the due instances in its own container instead of invoking the deployed function."""
    from . import local_deploy

    stack = load_stack(args)
    template = local_deploy.load_template(args.template)
    shared = (template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables") or {})
    env_vars: dict[str, dict[str, str]] = {}
    for descriptor in _connector_functions(template):
        logical = str(descriptor.function)
        declared = set(shared) | set(
            template["Resources"][logical].get("Properties", {}).get("Environment", {}).get("Variables") or {})
        config = stack.clients["lambda"].get_function_configuration(
            FunctionName=_physical_function(stack, descriptor))
        deployed = config.get("Environment", {}).get("Variables", {})
        env_vars[logical] = {key: deployed[key] for key in sorted(declared) if key in deployed}
        if "DISPATCH_MODE" in env_vars[logical]:
            env_vars[logical]["DISPATCH_MODE"] = "inline"
    text = json.dumps(env_vars, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        say(f"wrote {args.out}: sam local invoke FUNCTION --env-vars {args.out}")
    else:
        print(text, end="")
    return 0


# --- parser -------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """A usage error is one line too (argparse would print the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _key_value(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def _json_file(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{path} is not JSON ({_one_line(exc)})") from exc


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--stack", default=argparse.SUPPRESS,
                        help=f"stack name (default: stack_name in {SAMCONFIG}, else {DEFAULT_STACK})")
    common.add_argument("--region", default=argparse.SUPPRESS,
                        help=f"AWS region (default: region in {SAMCONFIG}, else the AWS SDK configuration)")
    common.add_argument("--config-file", dest="config_file", default=argparse.SUPPRESS,
                        help=f"the sam config file to take those defaults from (default: ./{SAMCONFIG})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parser = _Parser(prog="ppctl", parents=[common],
                     description="Manage the Proofpoint collector's instances and stack.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print ppctl's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")

    def command(subparsers: Any, name: str, summary: str) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[common], help=summary, description=summary)

    def secret_flags(p: argparse.ArgumentParser, what: str, validate: str = "skip the test call") -> None:
        p.add_argument("--secret-stdin", action="store_true", help=f"read {what} from stdin (one per line)")
        p.add_argument("--reuse-secret", action="store_true",
                       help="keep the secret already stored under this name (after a redeploy) instead of reading one")
        p.add_argument("--disabled", action="store_true", help="register it disabled")
        p.add_argument("--no-validate", action="store_true", help=validate)

    instance = command(sub, "instance", "manage the instance registry")
    isub = instance.add_subparsers(dest="instance_command", required=True, metavar="ACTION", help="what to do")
    add = command(isub, "add", "add an instance (secret from prompt or --secret-stdin)")
    add_sub = add.add_subparsers(dest="connector", required=True, metavar="CONNECTOR",
                                 help=", ".join(d.name for d in descriptors()))
    for descriptor in descriptors():
        add_instance = command(add_sub, descriptor.name, descriptor.title)
        add_instance.add_argument("name", help="instance name: 1-63 of a-z 0-9 - _")
        for flag in descriptor.flags:
            add_instance.add_argument(flag.option, dest=_setting_dest(flag), metavar=flag.setting.upper(),
                                      required=flag.required, help=flag.help)
        if descriptor.other_settings_help:
            add_instance.add_argument("--set", action="append", metavar="KEY=VALUE", type=_key_value,
                                      help=descriptor.other_settings_help)
        secret_flags(add_instance, "the " + ", then the ".join(field.prompt for field in descriptor.secrets))
        add_instance.set_defaults(func=cmd_instance_add)

    command(isub, "list", "one row per registered instance").set_defaults(func=cmd_instance_list)
    for verb, func, summary in (
            ("show", cmd_instance_show, "an instance's settings, cursors and status"),
            ("remove", cmd_instance_remove, "unregister an instance and delete its secret at once (no recovery)"),
            ("enable", lambda a: _set_enabled(a, True), "poll it again from the next tick"),
            ("disable", lambda a: _set_enabled(a, False), "stop polling it (cursors are kept)")):
        p = command(isub, verb, summary)
        p.add_argument("name", help="instance name")
        p.set_defaults(func=func)
    setp = command(isub, "set", "change settings: KEY=VALUE (empty value resets)")
    setp.add_argument("name", help="instance name")
    setp.add_argument("pairs", nargs="+", metavar="KEY=VALUE", type=_key_value, help="the settings to change")
    setp.set_defaults(func=cmd_instance_set)
    rot = command(isub, "rotate-secret", "replace the stored credentials and validate them")
    rot.add_argument("name", help="instance name")
    rot.add_argument("--secret-stdin", action="store_true", help="read the new secret from stdin (one per line)")
    rot.set_defaults(func=cmd_rotate_secret)

    val = command(sub, "validate", "one test call with the stored credentials")
    val.add_argument("name", help="instance name")
    val.set_defaults(func=cmd_validate)
    command(sub, "status", "one row per instance").set_defaults(func=cmd_status)
    back = command(sub, "backfill", "re-collect a past range within the API's limits")
    back.add_argument("name", help="instance name")
    back.add_argument("--since", required=True, help="start of the range (ISO 8601)")
    back.add_argument("--until", help="end of the range (ISO 8601; default now)")
    back.set_defaults(func=cmd_backfill)

    logs = command(sub, "logs", "an instance's log lines, newest first (CloudWatch Logs Insights)")
    logs.add_argument("name", help="instance name")
    logs.add_argument("--since", default="1h", help="how far back (default 1h)")
    logs.set_defaults(func=cmd_logs)

    local = command(sub, "local", "run the stack locally: emulator deploy and invoke, sam local env-vars")
    lsub = local.add_subparsers(dest="local_command", required=True, metavar="ACTION", help="what to do")
    template_help = "the SAM template (default: the project's template.yaml)"
    dep = command(lsub, "deploy", "deploy template.yaml into the local emulator (loopback endpoints only)")
    dep.add_argument("--template", default=str(PROJECT_ROOT / "template.yaml"), help=template_help)
    dep.add_argument("--param", action="append", metavar="KEY=VALUE", type=_key_value,
                     help="template parameter override (repeatable)")
    dep.set_defaults(func=cmd_local_deploy)
    inv = command(lsub, "invoke", "run a deployed function's handler in-process (loopback endpoints only)")
    inv.add_argument("function", help="TapPollerFunction, CasbPollerFunction (or tap, casb)")
    inv.add_argument("--event", type=_json_file, help="event JSON file (default: a scheduled tick)")
    inv.add_argument("--template", default=str(PROJECT_ROOT / "template.yaml"), help=template_help)
    inv.set_defaults(func=cmd_local_invoke)
    env = command(lsub, "env-vars", "write the --env-vars JSON `sam local invoke` needs, from the deployed stack")
    env.add_argument("--out", metavar="FILE", help="write it to FILE (default: stdout)")
    env.add_argument("--template", default=str(PROJECT_ROOT / "template.yaml"), help=template_help)
    env.set_defaults(func=cmd_local_env_vars)

    from . import ocsf_cmd, query_cmd, replay  # analytics: query and replay; OCSF: sample and status

    query_cmd.register(sub, common)
    replay.register(sub, common)
    ocsf_cmd.register(sub, command, load_stack, CliError, emit)
    return parser


def _setting_dest(flag: SettingFlag) -> str:
    return f"setting:{flag.setting}"  # apart from ppctl's own options, whatever a connector's settings are named


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
        os.environ["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"]  # boto3 reads only the latter
    try:
        parser = build_parser()  # a connector module named in PPCOLLECTOR_CONNECTORS may fail to load
    except CollectorError as exc:
        say(f"ppctl: {describe_failure(exc)}")
        return 1
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        config_file = getattr(args, "config_file", None)
        samconfig = samconfig_defaults(Path(config_file or SAMCONFIG), required=config_file is not None)
        args.stack = getattr(args, "stack", None) or samconfig.get("stack_name") or DEFAULT_STACK
        args.region = getattr(args, "region", None) or samconfig.get("region")
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("PPCTL_DEBUG"):
            raise
        say(f"ppctl: {describe_failure(exc)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
