"""The spine every connector runs on: due instances, leases, status, metrics, error classes.

A connector (``connectors/*/``) knows its vendor: how to authenticate, how to ask for the next window
or page, and how to turn it into a unit of delivery (``delivery.Unit``). ``poll_instance`` knows the
rest, in this order: is it due, take the lease (its ``Fence``), read the credentials, run every live
stream and then every operator backfill (``collect``), pulling units from the connector and handing
each to ``delivery.deliver`` (marker -> sinks -> fenced cursor write), record the status, release the
lease.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from botocore.exceptions import BotoCoreError, ClientError

from .budget import RateBudget
from .crashpoints import AFTER_LEASE, crashpoint
from .delivery import Delivered, Unit, deliver
from .descriptor import ConnectorDescriptor
from .errors import (
    CollectorError,
    CursorConflict,
    LeaseHeld,
    LeaseLost,
    SettingsError,
    SinkError,
    VendorAccessError,
    VendorAuthError,
    VendorError,
    VendorRequestError,
    VendorTransientError,
)
from .http import ENDPOINT_LOG_KEYS, VendorHosts, endpoint_log_keys
from .observability import COUNT, SECONDS, emit_metrics, logger
from .secrets import Credentials, SecretStore
from .sinks import SinkSet
from .state import ACTIVE, DEGRADED, DISABLED, FAILED, MAX_GAPS_KEPT, PENDING, Cursor, Fence, Instance, StateStore
from .timeutil import format_duration, format_rfc3339, parse_duration, parse_timestamp, utcnow

FAILED_RETRY = timedelta(minutes=30)  # a rejected credential is retried slowly, not every minute
LEASE_MARGIN = timedelta(seconds=60)
BACKFILL_PREFIX = "backfill-"  # an operator's backfill of stream S runs on the cursor "backfill-S"


class Deadline:
    """Remaining invocation time; the Lambda context's clock, or a fixed budget elsewhere."""

    def __init__(self, remaining_seconds: Callable[[], float]) -> None:
        self._remaining = remaining_seconds

    @classmethod
    def from_context(cls, context: Any, default_seconds: float = 300.0) -> Deadline:
        if context is not None and hasattr(context, "get_remaining_time_in_millis"):
            return cls(lambda: context.get_remaining_time_in_millis() / 1000.0)
        return cls.fixed(default_seconds)

    @classmethod
    def fixed(cls, seconds: float) -> Deadline:
        end = time.monotonic() + seconds
        return cls(lambda: end - time.monotonic())

    def remaining(self) -> float:
        return self._remaining()

    def share(self, parts: int) -> Deadline:
        """A slice of what is left, so one slow instance cannot starve the others in a tick."""
        end = time.monotonic() + self.remaining() / max(parts, 1)
        return Deadline(lambda: min(end - time.monotonic(), self.remaining()))


@dataclass
class Deps:
    state: StateStore
    secrets: SecretStore
    sinks: SinkSet
    budget: RateBudget
    clock: Callable[[], datetime]
    http: Any  # requests.Session
    new_http: Callable[[], Any] | None = None  # a fresh session per concurrent poll (sessions aren't shared)


@dataclass
class PollReport:
    """What one poll of one instance did (connectors fill it in)."""

    events: int = 0
    windows: int = 0
    caught_up: bool = True
    oldest_cursor: datetime | None = None
    gaps: list[dict[str, str]] = field(default_factory=list)
    paused_reason: str = ""  # e.g. the rate budget held a steady-state request back
    api_calls: int = 0
    sink_stats: dict[str, int] = field(default_factory=dict)

    def add_sink_stats(self, stats: dict[str, int]) -> None:
        for key, value in stats.items():
            self.sink_stats[key] = self.sink_stats.get(key, 0) + value


@dataclass
class PollContext:
    instance: Instance
    credentials: Credentials
    deps: Deps
    deadline: Deadline
    report: PollReport
    fence: Fence  # the poll's lease: every cursor write checks it


@dataclass(frozen=True)
class Bounds:
    """An operator's backfill range (``ppctl backfill``): collect ``[since, until]`` again."""

    since: datetime
    until: datetime


# What a connector's ``run`` is: it yields units; the spine delivers each and sends back what was delivered.
Units = Generator[Unit, Delivered, None]


@runtime_checkable
class Connector(Protocol):
    """Everything the spine, the dispatcher and ``ppctl`` ask of a connector: each one declares it all."""

    descriptor: ConnectorDescriptor  # name, source, secrets, ppctl flags, stack outputs (descriptor.py)
    name: str  # descriptor.name, e.g. "tap"
    source: str  # descriptor.source, e.g. "proofpoint_tap"
    endpoints: dict[str, VendorHosts]  # endpoint setting -> Proofpoint's own hosts for it (http.py)

    def validate_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings, checked and with defaults filled in; SettingsError says what is wrong."""
        ...

    def test_call(self, instance: Instance, credentials: Credentials, deps: Deps) -> str:
        """One cheap call with these credentials (``ppctl validate``): what Proofpoint answered."""
        ...

    def streams(self, instance: Instance) -> list[str]:
        """The instance's live streams (one cursor each), in the order a poll runs them."""
        ...

    def run(self, ctx: PollContext, stream: str, cursor: Cursor, bounds: Bounds | None) -> Units:
        """Units from ``cursor`` on (the live cursor, or with ``bounds`` a backfill's), while time, budget
        and data allow. Each ``yield unit`` returns the ``Delivered`` result (the new cursor)."""
        ...

    def expected_lag(self, instance: Instance, deps: Deps) -> timedelta:
        """How far behind now the cursor trails when all is well (TAP's settle lag): added to the lag
        above which an instance is Degraded."""
        ...

    def budget_pools(self, instance: Instance) -> list[tuple[str, str, int | None]]:
        """The (credential, pool, daily limit or None for the budget's default) the instance draws on."""
        ...

    def start_backfill(self, deps: Deps, instance: Instance, since: datetime, until: datetime) -> list[str]:
        """Queue a re-collection of [since, until] (``ppctl backfill``); the streams queued. A connector
        that cannot re-collect raises SettingsError saying why."""
        ...


@dataclass
class Outcome:
    instance: str
    state: str
    polled: bool
    events: int = 0
    error: str = ""
    skipped_reason: str = ""
    raise_error: bool = False
    error_class: str = ""


def is_due(instance: Instance, status: dict[str, Any], now: datetime) -> tuple[bool, str]:
    if not instance.enabled:
        return False, "disabled"
    backoff = status.get("backoff_until")
    if backoff and parse_timestamp(backoff) > now:
        return False, f"backing off until {backoff}"
    next_due = status.get("next_due")
    if next_due and parse_timestamp(next_due) > now:
        return False, f"next poll due at {next_due}"
    return True, ""


def poll_instance(connector: Connector, instance: Instance, deps: Deps, deadline: Deadline,
                  force: bool = False) -> Outcome:
    """Poll one instance: the only place that turns a connector's result into status and metrics."""
    name = instance.name
    now = deps.clock()
    status = deps.state.get_status(name)
    if not instance.enabled:
        _set_state(deps, instance, DISABLED, "disabled by the operator")
        return Outcome(name, DISABLED, False, skipped_reason="disabled")
    due, why = is_due(instance, status, now)
    if not due and not force:
        return Outcome(name, status.get("state", PENDING), False, skipped_reason=why)

    owner = f"{connector.name}-{uuid.uuid4().hex[:12]}"
    try:
        fence = deps.state.acquire_lease(name, owner, now,
                                         timedelta(seconds=max(deadline.remaining(), 1)) + LEASE_MARGIN)
    except LeaseHeld as held:
        # Overlapping invocations (EventBridge/Lambda may deliver twice): the loser exits cleanly.
        logger.info("instance is being polled by another invocation; skipping", extra={"detail": str(held)})
        return Outcome(name, status.get("state", PENDING), False, skipped_reason="lease held")
    except (BotoCoreError, ClientError) as exc:  # the state table is unavailable: nothing was polled
        logger.error(f"{connector.name}: could not take the lease: {exc}", extra={"error_class": "AwsServiceError"})
        return Outcome(name, status.get("state", PENDING), False, error=f"AWS error: {exc}", raise_error=True,
                       error_class="AwsServiceError")

    crashpoint(AFTER_LEASE)
    interval = parse_duration(instance.settings.get("poll_interval", "5m"))
    report = PollReport()
    outcome = Outcome(name, status.get("state", PENDING), True)
    started = time.monotonic()
    try:
        deps.state.update_status(name, lambda s: s.update(last_poll=format_rfc3339(now),
                                                           next_due=format_rfc3339(now + interval)))
        # The stored settings are checked again before any credential is read: whoever can write the
        # state table must not be able to point the poller at another endpoint (http.py).
        instance.settings = connector.validate_settings(instance.settings)
        credentials = deps.secrets.get(instance.secret_id)
        collect(connector, PollContext(instance, credentials, deps, deadline, report, fence))
    except CursorConflict as conflict:
        if isinstance(conflict, LeaseLost):
            logger.warning("the lease was taken over by another invocation (this one was frozen past it); "
                           "stopping without writing", extra={"detail": str(conflict)})
        else:
            logger.info("cursor advanced by another invocation; stopping cleanly", extra={"detail": str(conflict)})
        outcome.state = deps.state.get_status(name).get("state", PENDING)
    except (VendorAuthError, VendorAccessError, SettingsError) as exc:
        _fail(deps, instance, outcome, FAILED, exc, backoff=FAILED_RETRY)
    except (BotoCoreError, ClientError) as exc:  # an AWS service (DynamoDB, Secrets Manager) failed us
        _fail(deps, instance, outcome, DEGRADED, exc, message=f"AWS error: {exc}", error_class="AwsServiceError")
    except (VendorError, SinkError, CollectorError) as exc:  # throttles, transient vendor and sink errors
        _fail(deps, instance, outcome, DEGRADED, exc)
    except Exception as exc:  # an unexpected bug: Degraded, and the invocation fails loudly
        logger.exception("unexpected error while polling")
        _fail(deps, instance, outcome, DEGRADED, exc, message=f"internal error: {type(exc).__name__}: {exc}",
              error_class="InternalError")
    else:
        outcome.state = _record_success(deps, instance, report, lag_threshold(connector, instance, deps))
    finally:
        try:
            deps.state.release_lease(name, owner)
            if not report.caught_up and not outcome.error:
                # Catch-up continues at the next tick rather than after a whole poll interval.
                deps.state.update_status(name, lambda s: s.update(next_due=format_rfc3339(deps.clock())))
        except Exception as exc:  # the state table itself failing: the lease expires on its own
            logger.warning("could not release the lease", extra={"detail": f"{type(exc).__name__}: {exc}"})
        _emit_poll_metrics(connector, instance, deps, report, outcome, time.monotonic() - started)
    outcome.events = report.events
    return outcome


def collect(connector: Connector, ctx: PollContext) -> None:
    """Every live stream, then every operator backfill still to run, paced as catch-up (a run with bounds
    spends only the budget's catch-up share). One stream's failed read does not starve the others; the
    poll still fails at the end with the first error. Backfill cursors never set the collection lag."""
    name, state, report = ctx.instance.name, ctx.deps.state, ctx.report
    streams = connector.streams(ctx.instance)
    first_error: VendorError | None = None
    for stream in streams:
        try:
            cursor = run_stream(connector, ctx, stream, state.get_cursor(name, stream), None)
        except (VendorTransientError, VendorRequestError) as exc:
            logger.warning(f"{connector.name}: {stream} failed: {exc}", extra={"stream": stream})
            first_error = first_error or exc
            continue
        if cursor.moment:
            report.oldest_cursor = min(filter(None, [report.oldest_cursor, cursor.moment]))
    for stream in streams:
        cursor = state.get_cursor(name, BACKFILL_PREFIX + stream)
        bounds = backfill_bounds(cursor)
        if bounds is None:
            continue
        try:
            cursor = run_stream(connector, ctx, stream, cursor, bounds)
        except (VendorTransientError, VendorRequestError) as exc:
            logger.warning(f"{connector.name}: {stream} backfill failed: {exc}", extra={"stream": cursor.stream})
            first_error = first_error or exc
            continue
        if cursor.data.get("done"):
            logger.info(f"{connector.name}: backfill complete", extra={
                "stream": cursor.stream, "since": format_rfc3339(bounds.since), "until": format_rfc3339(bounds.until)})
    if first_error is not None:
        raise first_error


def backfill_bounds(cursor: Cursor) -> Bounds | None:
    """The range of a backfill cursor still to run (``start_backfill`` sets ``until``; ``since`` or the
    position where it started), or None."""
    if cursor.moment is None or not cursor.data.get("until") or cursor.data.get("done"):
        return None
    return Bounds(parse_timestamp(cursor.data.get("since") or cursor.position), parse_timestamp(cursor.data["until"]))


def run_stream(connector: Connector, ctx: PollContext, stream: str, cursor: Cursor, bounds: Bounds | None) -> Cursor:
    """Pull units from the connector and deliver each (``delivery.deliver``); returns the last cursor."""
    units = connector.run(ctx, stream, cursor, bounds)
    try:
        unit = next(units, None)
        while unit is not None:
            delivered = deliver(ctx.deps, connector.source, ctx.instance.name, cursor, unit, ctx.fence)
            cursor = delivered.cursor
            if unit.batch is not None:
                ctx.report.events += delivered.count
                ctx.report.windows += 1
                ctx.report.add_sink_stats(delivered.stats)
            try:
                unit = units.send(delivered)
            except StopIteration:
                unit = None
    finally:
        units.close()  # a failed delivery: the connector's cleanup (a spooled body) runs now
    return cursor


def _fail(deps: Deps, instance: Instance, outcome: Outcome, state: str, exc: BaseException, *,
          message: str | None = None, error_class: str | None = None, backoff: timedelta | None = None) -> None:
    """A failed poll: the invocation will fail (raise_error), the status says why."""
    outcome.error, outcome.raise_error = message or str(exc), True
    outcome.error_class = error_class or type(exc).__name__
    outcome.state = _record_failure(deps, instance, state, exc, backoff=backoff)


def _transition(instance: Instance, status: dict[str, Any], state: str, reason: str) -> None:
    previous = status.get("state", PENDING)
    if previous != state or status.get("reason") != reason:
        if previous != state:
            logger.info(f"status changed {previous} -> {state}",
                        extra={"previous_state": previous, "state": state, "reason": reason})
            emit_metrics(instance.connector, instance.name, {f"StatusChangeTo{state}": (1, COUNT)})
        if previous != state:
            status["state_since"] = format_rfc3339(utcnow())
    status["state"] = state
    status["reason"] = reason


def _set_state(deps: Deps, instance: Instance, state: str, reason: str) -> None:
    deps.state.update_status(instance.name, lambda s: _transition(instance, s, state, reason))


def lag_threshold(connector: Connector, instance: Instance, deps: Deps) -> timedelta:
    """Above this collection lag an instance is Degraded: 3 polling intervals, plus the connector's own
    expected delay (TAP's settle lag)."""
    interval = parse_duration(instance.settings.get("poll_interval", "5m"))
    return 3 * interval + connector.expected_lag(instance, deps)


def _record_success(deps: Deps, instance: Instance, report: PollReport, threshold: timedelta) -> str:
    now = deps.clock()

    def mutate(status: dict[str, Any]) -> None:
        status["last_success"] = format_rfc3339(now)
        status["last_events"] = report.events
        status["last_windows"] = report.windows
        status["last_error"] = status.get("last_error") if report.gaps else ""
        status["backoff_until"] = None
        if report.oldest_cursor:
            status["cursor"] = format_rfc3339(report.oldest_cursor)
            status["lag_seconds"] = max(int((now - report.oldest_cursor).total_seconds()), 0)
        if report.gaps:
            gap = report.gaps[-1]
            _transition(instance, status, DEGRADED,
                        f"unrecoverable gap {gap['start']} .. {gap['end']} ({gap['stream']}): {gap['why']}")
        elif report.paused_reason:
            _transition(instance, status, DEGRADED, report.paused_reason)
        elif report.oldest_cursor and now - report.oldest_cursor > threshold:
            lag = format_duration(timedelta(seconds=int((now - report.oldest_cursor).total_seconds())))
            _transition(instance, status, DEGRADED,
                        f"catching up: collection lag {lag} is above {format_duration(threshold)}")
        else:
            _transition(instance, status, ACTIVE, "polling normally" if report.caught_up else "catching up")

    return deps.state.update_status(instance.name, mutate)["state"]


def record_gap(deps: Deps, instance: Instance, report: PollReport, gap: dict[str, str]) -> None:
    """Persist an unrecoverable gap at once (even if the poll later fails): never silently skipped."""
    logger.warning(f"{instance.connector}: unrecoverable gap {gap['start']} .. {gap['end']}", extra=gap)
    report.gaps.append(gap)

    def mutate(status: dict[str, Any]) -> None:
        gaps = [g for g in status.get("gaps", [])
                if not (g.get("stream") == gap["stream"] and g.get("start") == gap["start"])]
        if len(gaps) == len(status.get("gaps", [])):
            status["gap_count"] = int(status.get("gap_count", 0)) + 1
        status["gaps"] = (gaps + [gap])[-MAX_GAPS_KEPT:]

    deps.state.update_status(instance.name, mutate)


def _record_failure(deps: Deps, instance: Instance, state: str, exc: BaseException,
                    backoff: timedelta | None = None) -> str:
    now = deps.clock()
    message = str(exc)
    logger.error(f"{instance.connector}: poll failed: {message}",
                 extra={"error_class": type(exc).__name__, "http_status": getattr(exc, "http_status", None)})

    def mutate(status: dict[str, Any]) -> None:
        status["last_error"] = message
        status["last_error_at"] = format_rfc3339(now)
        status["consecutive_failures"] = int(status.get("consecutive_failures", 0)) + 1
        if backoff:
            status["backoff_until"] = format_rfc3339(now + backoff)
        _transition(instance, status, state, message)

    try:
        return deps.state.update_status(instance.name, mutate)["state"]
    except Exception as status_error:  # e.g. DynamoDB throttled too: the error is still raised and logged
        logger.warning("could not record the status", extra={"detail": f"{type(status_error).__name__}"})
        return state


def _emit_poll_metrics(connector: Connector, instance: Instance, deps: Deps, report: PollReport,
                       outcome: Outcome, duration: float) -> None:
    values: dict[str, tuple[float, Any]] = {
        "Polls": (1, COUNT),
        "EventsCollected": (report.events, COUNT),
        "Windows": (report.windows, COUNT),
        "ApiCalls": (report.api_calls, COUNT),
        "PollDuration": (round(duration, 3), SECONDS),
    }
    for key, value in report.sink_stats.items():
        if key in ("s3_records", "kinesis_records"):
            values["RecordsWritten" + ("S3" if key.startswith("s3") else "Kinesis")] = (value, COUNT)
    if report.oldest_cursor:
        values["CollectionLag"] = (max((deps.clock() - report.oldest_cursor).total_seconds(), 0), SECONDS)
    if report.gaps:
        values["Gaps"] = (len(report.gaps), COUNT)
    if outcome.error:
        values["Errors"] = (1, COUNT)
        if outcome.error_class == "VendorThrottled":
            values["Throttles"] = (1, COUNT)
    emit_metrics(connector.name, instance.name, values)
    if outcome.error:  # errors by class, per connector (the "why not" dashboard)
        emit_metrics(connector.name, None, {"Errors": (1, COUNT)}, error_class=outcome.error_class)
    if report.gaps:  # the connector-level series the gap alarm watches
        emit_metrics(connector.name, None, {"Gaps": (len(report.gaps), COUNT)})


def poll_one(connector: Connector, deps: Deps, deadline: Deadline, name: str, force: bool) -> list[Outcome]:
    """``{"instance": NAME}``: poll that instance now (``force``: even if not due), or as dispatched."""
    instance = deps.state.get_instance(name)
    if instance is None or instance.connector != connector.name:
        raise SettingsError(f"no {connector.name} instance named {name!r}")
    logger.append_keys(connector=connector.name, instance=instance.name,
                       **endpoint_log_keys(instance.settings, connector.endpoints))
    try:
        return [poll_instance(connector, instance, deps, deadline, force=force)]
    finally:
        logger.remove_keys(["instance", *ENDPOINT_LOG_KEYS])


class PollFailed(CollectorError):
    """Raised at the end of an invocation in which at least one poll failed (so Errors alarms see it)."""


def raise_for_failures(outcomes: list[Outcome]) -> None:
    failed = [o for o in outcomes if o.raise_error]
    if failed:
        detail = "; ".join(f"{o.instance}: {o.error}" for o in failed)
        raise PollFailed(f"{len(failed)} of {len(outcomes)} instance poll(s) failed: {detail}")
