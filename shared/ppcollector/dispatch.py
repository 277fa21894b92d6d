"""Fan-out: a scheduled tick dispatches every due instance to its own poll.

Why asynchronous self-invocation: each due instance becomes one ``{"instance": NAME, "dispatched": ...}``
event sent to the same function with ``InvocationType=Event``. Every tenant then gets its own
invocation (its own time limit, memory and failure), a slow or failing tenant delays nobody, there is
no queue or schedule per instance to create and clean up, and the dispatch itself is a few hundred
API calls made in parallel. Lambda may deliver an async event twice; the lease and the due check make
the second delivery a no-op. SQS would add a queue and a DLQ for the same guarantees; one
EventBridge schedule per instance would multiply resources by hundreds.

``InlineDispatcher`` runs the polls in this process on a thread pool: for ``ppctl local invoke`` (the
emulator cannot run Lambda functions) and for tests.
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .http import ENDPOINT_LOG_KEYS, endpoint_log_keys
from .observability import COUNT, SECONDS, emit_metrics, logger
from .spine import Connector, Deadline, Deps, Outcome, is_due, poll_instance
from .state import DISABLED, FAILED, PENDING, Instance
from .timeutil import format_rfc3339, parse_timestamp

STATES = ("Pending", "Active", "Degraded", "Failed", "Disabled")


class Dispatcher(Protocol):
    def dispatch(self, connector: Connector, instances: list[Instance], deps: Deps, deadline: Deadline,
                 tick: str) -> list[Outcome]: ...


class LambdaDispatcher:
    """Asynchronous invocations of this same function, one per due instance."""

    def __init__(self, client: Any, function_name: str, workers: int = 32) -> None:
        self.client = client
        self.function_name = function_name
        self.workers = workers

    def dispatch(self, connector: Connector, instances: list[Instance], deps: Deps, deadline: Deadline,
                 tick: str) -> list[Outcome]:
        correlation_id = logger.thread_safe_get_current_keys().get("correlation_id")

        def send(instance: Instance) -> Outcome:
            # The tick's correlation id (runtime.handle_poll_event) goes on, so the poll's log lines carry it.
            payload = json.dumps({"instance": instance.name, "dispatched": tick,
                                  "correlation_id": correlation_id}).encode()
            try:
                self.client.invoke(FunctionName=self.function_name, InvocationType="Event", Payload=payload)
            except Exception as exc:
                return Outcome(instance.name, "", False, error=f"dispatch failed: {exc}", raise_error=True)
            return Outcome(instance.name, "", False, skipped_reason="dispatched")

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(send, instances))


class InlineDispatcher:
    """Polls in this process, concurrently, each instance with its own HTTP session and the full deadline."""

    def __init__(self, workers: int = 16) -> None:
        self.workers = workers

    def dispatch(self, connector: Connector, instances: list[Instance], deps: Deps, deadline: Deadline,
                 tick: str) -> list[Outcome]:
        correlation_id = logger.thread_safe_get_current_keys().get("correlation_id")  # the tick's, to its threads

        def poll(instance: Instance) -> Outcome:
            logger.thread_safe_append_keys(connector=connector.name, instance=instance.name,
                                           correlation_id=correlation_id,
                                           **endpoint_log_keys(instance.settings, connector.endpoints))
            try:
                own = dataclasses.replace(deps, http=deps.new_http()) if deps.new_http else deps
                return poll_instance(connector, instance, own, deadline, force=False)
            except Exception as exc:  # one instance's failure must not take the others' results with it
                logger.exception("poll failed before it could record a status")
                return Outcome(instance.name, "", True, error=f"{type(exc).__name__}: {exc}", raise_error=True,
                               error_class=type(exc).__name__)
            finally:
                logger.thread_safe_remove_keys(["instance", "correlation_id", *ENDPOINT_LOG_KEYS])

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(poll, instances))


def dispatch_tick(connector: Connector, deps: Deps, dispatcher: Dispatcher, deadline: Deadline) -> list[Outcome]:
    """One scheduled tick: find the due instances, dispatch them, report connector-level health."""
    started = time.monotonic()
    now = deps.clock()
    instances = sorted(deps.state.list_instances(connector.name), key=lambda i: i.name)
    statuses = deps.state.get_statuses([i.name for i in instances])
    due, outcomes = [], []
    for instance in instances:
        status = statuses[instance.name]
        if not instance.enabled:
            if status.get("state") != DISABLED:
                poll_instance(connector, instance, deps, deadline)  # records Disabled, once
            outcomes.append(Outcome(instance.name, DISABLED, False, skipped_reason="disabled"))
            continue
        ok, why = is_due(instance, status, now)
        if ok:
            due.append(instance)
        else:
            outcomes.append(Outcome(instance.name, status.get("state", PENDING), False, skipped_reason=why))
    tick = format_rfc3339(now)
    outcomes += dispatcher.dispatch(connector, due, deps, deadline, tick) if due else []
    duration = time.monotonic() - started
    logger.info(f"{connector.name}: tick dispatched {len(due)} of {len(instances)} instances",
                extra={"due": len(due), "instances": len(instances), "dispatch_seconds": round(duration, 3)})
    emit_connector_health(connector, deps, instances, due, duration)
    return outcomes


def emit_connector_health(connector: Connector, deps: Deps, instances: list[Instance], due: list[Instance],
                          duration: float) -> None:
    """Connector-level metrics for the alarms: status counts, worst lag, lowest remaining rate budget."""
    now = deps.clock()
    statuses = deps.state.get_statuses([i.name for i in instances])  # after inline polls, fresh
    counts = dict.fromkeys(STATES, 0)
    worst_lag = 0.0
    for instance in instances:
        status = statuses[instance.name]
        state = DISABLED if not instance.enabled else status.get("state", PENDING)
        counts[state] = counts.get(state, 0) + 1
        if instance.enabled and status.get("cursor"):
            worst_lag = max(worst_lag, (now - parse_timestamp(status["cursor"])).total_seconds())
    values: dict[str, tuple[float, Any]] = {f"Instances{state}": (n, COUNT) for state, n in counts.items()}
    values.update(InstancesDue=(len(due), COUNT), DispatchDuration=(round(duration, 3), SECONDS),
                  WorstCollectionLag=(round(worst_lag, 1), SECONDS))
    per_pool = budget_remaining(connector, deps, instances)
    if per_pool:
        values["RateBudgetRemainingPercent"] = (min(p for p, _ in per_pool.values()), "Percent")
        for pool, (percent, remaining) in per_pool.items():
            emit_metrics(connector.name, None, {"RateBudgetRemaining": (remaining, COUNT),
                                                "RateBudgetRemainingPercent": (percent, "Percent")}, pool=pool)
    if counts[FAILED]:
        logger.warning(f"{connector.name}: {counts[FAILED]} instance(s) Failed")
    emit_metrics(connector.name, None, values)


def budget_remaining(connector: Connector, deps: Deps, instances: list[Instance]) -> dict[str, tuple[float, int]]:
    """Per pool, the lowest remaining budget (percent, requests) over the credentials in use."""
    now = deps.clock()
    lowest: dict[str, tuple[float, int]] = {}
    seen = set()
    for instance in instances:
        if not instance.enabled:
            continue
        for credential, pool, limit in connector.budget_pools(instance):
            if (credential, pool) in seen:
                continue
            seen.add((credential, pool))
            usage = deps.budget.usage(credential, pool, now, limit)
            percent = round(100.0 * usage.remaining / usage.limit, 1) if usage.limit else 100.0
            if pool not in lowest or percent < lowest[pool][0]:
                lowest[pool] = (percent, usage.remaining)
    return lowest
