"""Builds the spine's dependencies from the environment (boto3 adapters) and runs one invocation."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

from .budget import RateBudget
from .config import RuntimeConfig
from .connectors import get_connector
from .dispatch import Dispatcher, InlineDispatcher, LambdaDispatcher, dispatch_tick
from .errors import SettingsError
from .http import make_session
from .kvstore import DynamoKV
from .observability import logger
from .secrets import SecretsManagerStore
from .sinks import KinesisSink, S3Sink, SinkSet
from .spine import Deadline, Deps, Outcome, poll_one, raise_for_failures
from .state import StateStore
from .timeutil import utcnow

_DEPS: Deps | None = None
_DISPATCHER: Dispatcher | None = None


def aws_clients(session: Any = None) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    session = session or boto3.session.Session()
    config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60)
    return {name: session.client(name, config=config)
            for name in ("dynamodb", "s3", "kinesis", "secretsmanager", "lambda", "logs")}


def build_deps(config: RuntimeConfig, clients: dict[str, Any] | None = None) -> Deps:
    clients = clients or aws_clients()
    s3 = S3Sink(clients["s3"], config.raw_bucket)
    sinks: list[Any] = []
    if config.sinks in ("s3", "both"):
        sinks.append(s3)
    if config.sinks in ("kinesis", "both"):
        sinks.append(KinesisSink(clients["kinesis"], config.event_stream, overflow=s3))
    kv = DynamoKV(config.state_table, clients["dynamodb"])
    return Deps(
        state=StateStore(kv),
        secrets=SecretsManagerStore(clients["secretsmanager"]),
        sinks=SinkSet(sinks),
        budget=RateBudget(kv),
        clock=utcnow,
        http=make_session(),
        new_http=make_session,
    )


def deps_from_env() -> tuple[Deps, Dispatcher]:
    """Cold start: validate the environment once, reuse the clients across warm invocations."""
    global _DEPS, _DISPATCHER
    if _DEPS is None or _DISPATCHER is None:
        config = RuntimeConfig.from_env()
        clients = aws_clients()
        _DEPS = build_deps(config, clients)
        _DISPATCHER = (LambdaDispatcher(clients["lambda"], config.function_name) if config.dispatch_mode == "lambda"
                       else InlineDispatcher())
    return _DEPS, _DISPATCHER


def handle_poll_event(connector_name: str, event: Any, context: Any, deps: Deps | None = None,
                      dispatcher: Dispatcher | None = None) -> dict[str, Any]:
    """A scheduled event dispatches every enabled, due instance; ``{"instance": NAME}`` polls that one.

    ``{"instance": NAME}`` alone (``sam local invoke``, ``ppctl local invoke``) polls now, due or not;
    with ``"dispatched"`` (sent by a tick) it polls only if still due, so a twice-delivered event is a no-op.

    Every log line carries a ``correlation_id``: the scheduled event's id (a new one otherwise), sent on
    in each dispatched event, so a tick and all the polls it dispatched share it.
    """
    if not isinstance(event, dict):
        raise SettingsError(f"the event must be a JSON object, got {type(event).__name__}")
    only = event.get("instance")
    if only is not None and (not isinstance(only, str) or not only):
        raise SettingsError('"instance" must be an instance name, e.g. {"instance": "acme-tap"}')
    connector = get_connector(connector_name)
    if deps is None:
        deps, dispatcher = deps_from_env()
    logger.append_keys(connector=connector.name)
    # Per thread (a context variable): concurrent invocations in one process keep their own.
    logger.thread_safe_append_keys(correlation_id=_correlation_id(event))
    try:
        deadline = Deadline.from_context(context)
        if only is not None:
            outcomes = poll_one(connector, deps, deadline, only, force=not event.get("dispatched"))
        else:
            outcomes = dispatch_tick(connector, deps, dispatcher or InlineDispatcher(), deadline)
        return _summarise(connector.name, outcomes)
    finally:
        logger.thread_safe_remove_keys(["correlation_id"])


def _correlation_id(event: dict[str, Any]) -> str:
    """The id a tick's log lines share: sent on by the tick, else EventBridge's event id, else new."""
    for key in ("correlation_id", "id"):
        value = event.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:100]
    return uuid.uuid4().hex


def _summarise(connector: str, outcomes: list[Outcome]) -> dict[str, Any]:
    summary = {"connector": connector, "polled": sum(o.polled for o in outcomes),
               "dispatched": sum(o.skipped_reason == "dispatched" for o in outcomes),
               "events": sum(o.events for o in outcomes), "outcomes": [asdict(o) for o in outcomes]}
    logger.info(f"{connector}: tick done", extra={k: v for k, v in summary.items() if k != "outcomes"})
    raise_for_failures(outcomes)
    return summary
