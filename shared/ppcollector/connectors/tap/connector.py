"""The TAP connector: windows from each endpoint's cursor."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from datetime import datetime, timedelta
from typing import Any

from ...budget import credential_key
from ...crashpoints import AFTER_FETCH, crashpoint
from ...delivery import Delivered, Unit, marker, pending_of
from ...descriptor import ConnectorDescriptor, SecretField, SettingFlag
from ...errors import SettingsError, VendorRequestError, VendorThrottled
from ...http import ALLOW_CUSTOM_ENDPOINT, allow_custom_endpoint, check_endpoint
from ...observability import logger
from ...records import OutRecord, RecordBuilder, derive_id_from_canonical
from ...secrets import Credentials
from ...settings import duration_setting
from ...spine import BACKFILL_PREFIX, Bounds, Deps, PollContext, Units, record_gap
from ...state import Cursor, Instance
from ...timeutil import format_compact, format_rfc3339, parse_duration, parse_timestamp
from .body import WindowBody
from .client import TapClient
from .identity import _identity_json, event_time_text
from .settings import (
    DEFAULT_BASE_URL,
    EVENT_TIME_FIELD,
    EVENT_TYPES,
    LOOKBACK_MARGIN,
    MAX_LOOKBACK,
    MIN_WINDOW,
    SOURCE,
    TAP_HOSTS,
    THREAT_STATUSES,
    WINDOW_RESERVE_SECONDS,
    Endpoint,
    TapEnvironment,
    endpoints_for,
    validate_event_types,
    validate_threat_status,
)
from .window import WindowPlan, plan_window

# --- the connector ----------------------------------------------------------------------------------

DESCRIPTOR = ConnectorDescriptor(
    name="tap",
    source=SOURCE,
    title="a TAP SIEM API tenant",
    secrets=(SecretField("secret", "TAP service secret"),),
    flags=(
        SettingFlag("principal", "TAP service principal", required=True),
        SettingFlag("event_types", "all | issues | comma list of " + ",".join(EVENT_TYPES) + " (default all)"),
        SettingFlag("threat_status", f"comma list of {','.join(THREAT_STATUSES)} (default all three)"),
        SettingFlag("poll_interval", "polling interval (default 5m)", flag="--interval"),
        SettingFlag("base_url", "API base URL (https; http only for loopback)"),
        SettingFlag("settle_lag", "how far behind now a window ends (default stack's)"),
        SettingFlag("initial_lookback", "how far back a new instance starts (1h)"),
    ),
    function="TapPollerFunction",
    log_group_output="TapPollerLogGroupName",
    event_types=tuple(EVENT_TIME_FIELD),
    environment=(("TAP_RATE_LIMIT_PER_DAY", "TapRateLimit"), ("TAP_DEFAULT_SETTLE_LAG_SECONDS", "TapSettleLag")),
)


class TapConnector:
    descriptor = DESCRIPTOR
    name = DESCRIPTOR.name
    source = DESCRIPTOR.source
    endpoints = {"base_url": TAP_HOSTS}

    def __init__(self, environment: TapEnvironment | None = None) -> None:
        """``environment``: the deployment's knobs; by default read (and validated) from this process's."""
        self.environment = environment or TapEnvironment.from_env()

    def validate_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        clean = dict(settings)
        principal = str(clean.get("principal", "")).strip()
        if not principal:
            raise SettingsError("principal (the TAP service principal) is required")
        clean["principal"] = principal
        clean["event_types"] = validate_event_types(clean.get("event_types", "all"))
        clean["threat_status"] = validate_threat_status(clean.get("threat_status", list(THREAT_STATUSES)))
        clean["base_url"] = check_endpoint(str(clean.get("base_url", DEFAULT_BASE_URL)), TAP_HOSTS,
                                           allow_custom_endpoint(clean))
        duration_setting(clean, "poll_interval", "5m", timedelta(minutes=1), timedelta(hours=24))
        duration_setting(clean, "settle_lag", None, timedelta(0), timedelta(hours=1))
        duration_setting(clean, "initial_lookback", "1h", MIN_WINDOW, MAX_LOOKBACK - LOOKBACK_MARGIN)
        unknown = set(clean) - {"principal", "event_types", "threat_status", "base_url", "poll_interval",
                                "settle_lag", "initial_lookback", ALLOW_CUSTOM_ENDPOINT}
        if unknown:
            raise SettingsError(f"unknown TAP setting(s): {', '.join(sorted(unknown))}")
        self._check_budget(clean)
        return clean

    def _check_budget(self, settings: dict[str, Any]) -> None:
        """Refuse a steady state that alone would use 90 % of a pool's requests per 24 h (the limit the
        deployment is configured with: TAP_RATE_LIMIT_PER_DAY, default 1800)."""
        limit = self.environment.rate_limit_per_day
        per_day = timedelta(days=1) / parse_duration(settings["poll_interval"])
        pools: dict[str, int] = {}
        for endpoint in endpoints_for(settings["event_types"]):
            pools[endpoint.pool] = pools.get(endpoint.pool, 0) + 1
        for pool, count in pools.items():
            need = int(per_day * count)
            if need > limit * 0.9:
                raise SettingsError(
                    f"poll_interval={settings['poll_interval']} with these event_types needs {need} requests/day "
                    f"from the {pool} pool; this deployment allows {limit} per 24 h (keep 10% for catch-up): "
                    "poll less often or use event_types=all")

    def test_call(self, instance: Instance, credentials: Credentials, deps: Deps) -> str:
        settings = instance.settings
        credentials.require("secret")
        endpoint = endpoints_for(settings["event_types"])[0]
        now = deps.clock()
        # A minute wide and at least 5 minutes back: valid whatever the settle lag or a small clock skew.
        end = (now - max(self._settle_lag(settings), timedelta(minutes=5))).replace(microsecond=0)
        grant = deps.budget.acquire(credential_key("tap", settings["principal"]), endpoint.pool, now,
                                    limit=self.environment.rate_limit_per_day)
        if not grant.granted:
            raise VendorThrottled(f"not sent: {grant.reason}", None)
        client = TapClient(deps.http, settings["base_url"], settings["principal"], credentials["secret"])
        body = client.fetch(endpoint, end - timedelta(seconds=60), end, settings["threat_status"], 60)
        body.close()
        return f"Proofpoint accepted the credentials (HTTP {body.status} from {endpoint.path})"

    def start_backfill(self, deps: Deps, instance: Instance, since: datetime, until: datetime) -> list[str]:
        """Queue a re-collection of [since, until]: a bounded cursor per endpoint, polled as catch-up."""
        earliest = deps.clock() - MAX_LOOKBACK + LOOKBACK_MARGIN
        if since < earliest:
            raise SettingsError(f"TAP serves at most 7 days back: --since must be after {format_rfc3339(earliest)} "
                                "(older events cannot be collected from the API)")
        if until - since < MIN_WINDOW:
            raise SettingsError("TAP windows are at least 30 s: widen the range")
        streams = [e.stream for e in endpoints_for(instance.settings["event_types"])]
        for stream in streams:
            deps.state.set_cursor(instance.name, BACKFILL_PREFIX + stream, format_rfc3339(since),
                                  until=format_rfc3339(until), done=False)
        return streams

    def expected_lag(self, instance: Instance, deps: Deps) -> timedelta:
        return self._settle_lag(instance.settings)

    def budget_pools(self, instance: Instance) -> list[tuple[str, str, int | None]]:
        credential = credential_key("tap", instance.settings["principal"])
        pools = sorted({e.pool for e in endpoints_for(instance.settings["event_types"])})
        return [(credential, pool, self.environment.rate_limit_per_day) for pool in pools]

    def _settle_lag(self, settings: dict[str, Any]) -> timedelta:
        raw = settings.get("settle_lag")
        return parse_duration(raw) if raw is not None else self.environment.settle_lag

    def streams(self, instance: Instance) -> list[str]:
        return [endpoint.stream for endpoint in endpoints_for(instance.settings["event_types"])]

    def run(self, ctx: PollContext, stream: str, cursor: Cursor, bounds: Bounds | None) -> Units:
        """Window after window from one cursor (the endpoint's, or its backfill's up to ``bounds.until``),
        while time, budget and data allow."""
        deps, instance, report = ctx.deps, ctx.instance, ctx.report
        settings = instance.settings
        ctx.credentials.require("secret")
        client = TapClient(deps.http, settings["base_url"], settings["principal"], ctx.credentials["secret"],
                           clock=deps.clock)
        credential = credential_key("tap", settings["principal"])
        endpoint = next(e for e in endpoints_for(settings["event_types"]) if e.stream == stream)
        until = bounds.until if bounds is not None else None
        if until is not None and until.microsecond:
            # The API reads whole seconds (queryEndTime has no fraction): a fractional end would never
            # be reached, and its last window would be asked for until the rate budget ran out.
            until = until.replace(microsecond=0) + timedelta(seconds=1)
        settle_lag = self._settle_lag(settings)
        interval = parse_duration(settings["poll_interval"])
        skew = timedelta(seconds=float(cursor.data.get("server_skew_seconds", 0)))
        skew_retried = False
        if cursor.moment is None:
            start = (deps.clock() - parse_duration(settings["initial_lookback"])).replace(microsecond=0)
            cursor = (yield Unit(cursor.stream, position=format_rfc3339(start),
                                 cursor_data={"initialised": True})).cursor
        while True:
            now = deps.clock() + skew  # the server's clock
            plan = self._marked_window(cursor, now) or plan_window(cursor.moment, now, settle_lag, until)
            if plan and plan.gap:
                self._report_gap(ctx, cursor.stream, plan.gap)
            if plan is None:
                if until is not None and cursor.moment >= until - MIN_WINDOW:
                    cursor = (yield Unit(cursor.stream, cursor_data={"done": True})).cursor
                break  # caught up: less than 30 s is ready
            if ctx.deadline.remaining() < WINDOW_RESERVE_SECONDS:
                report.caught_up = False
                break
            catching_up = until is not None or now - settle_lag - plan.end >= interval
            grant = deps.budget.acquire(credential, endpoint.pool, now, catch_up=catching_up,
                                        limit=self.environment.rate_limit_per_day)
            if not grant.granted:
                report.caught_up = False
                if not catching_up:
                    report.paused_reason = grant.reason
                logger.warning(f"tap: window held back: {grant.reason}", extra={"stream": cursor.stream})
                break
            report.api_calls += 1
            try:
                body = client.fetch(endpoint, plan.start, plan.end, settings["threat_status"],
                                    ctx.deadline.remaining() - 15)
            except VendorRequestError:
                # A 400 for a window outside the server's limits, with its clock known to differ from
                # ours: plan again on the server's clock, once per poll.
                if client.server_skew is not None and client.server_skew != skew and not skew_retried:
                    logger.warning("tap: Proofpoint's clock differs from ours; re-planning the window", extra={
                        "stream": cursor.stream, "server_skew_seconds": client.server_skew.total_seconds()})
                    skew, skew_retried = client.server_skew, True
                    continue
                raise
            except VendorThrottled as exc:
                until_at = deps.budget.record_throttle(credential, endpoint.pool, deps.clock(), exc.retry_after)
                raise VendorThrottled(f"{exc} - backing off until {format_rfc3339(until_at)}", exc.http_status,
                                      exc.detail, exc.retry_after) from exc
            deps.budget.record_success(credential, endpoint.pool)
            if client.server_skew is not None:
                skew = client.server_skew
            try:
                cursor = yield from self._window(ctx, endpoint, cursor, plan, body,
                                                 server_skew_seconds=skew.total_seconds())
            finally:
                body.close()

    @staticmethod
    def _marked_window(cursor: Cursor, now: datetime) -> WindowPlan | None:
        """The window a pending marker names: written (perhaps partly), its cursor write never happened.
        Asked for again with the same bounds, so its records go to the same objects. A window that has
        meanwhile passed TAP's 7 days is planned anew (the gap is reported)."""
        pending = pending_of(cursor)  # any marker is this position's: the write that advances clears it
        if pending is None or "start" not in pending:
            return None
        start, end = parse_timestamp(pending["start"]), parse_timestamp(pending["end"])
        return WindowPlan(start, end, None) if start >= now - MAX_LOOKBACK + LOOKBACK_MARGIN else None

    def _window(self, ctx: PollContext, endpoint: Endpoint, cursor: Cursor, plan: WindowPlan, body: WindowBody,
                **cursor_extra: Any) -> Generator[Unit, Delivered, Cursor]:
        """One window as a unit: its records are parsed from the spooled body while the sinks write them;
        the cursor moves to the response's queryEndTime once every sink acknowledged (``deliver``).

        The last window of a poll ends at now - settle lag, so a retry would plan another end and name
        other objects: a window with data is marked first (its bounds), and a retry asks for exactly it.
        """
        deps, instance, stream = ctx.deps, ctx.instance, cursor.stream
        crashpoint(AFTER_FETCH)
        query_end = body.query_end_time(plan.start, plan.end)
        batch = f"{stream}_{format_compact(plan.start)}_{format_compact(plan.end)}"
        rewrite = (pending_of(cursor) or {}).get("batch") == batch
        mark = None if rewrite or body.status == 204 else marker(
            batch, query_end, start=format_rfc3339(plan.start), end=format_rfc3339(plan.end))
        builder = RecordBuilder(source=SOURCE, instance=instance.name, received_time=query_end,
                                collected_time=deps.clock())

        def records() -> Iterator[OutRecord]:
            for event_type, event in body.events(endpoint.keys):
                text = event_time_text(event_type, event)
                yield builder.build(derive_id_from_canonical(SOURCE, event_type, _identity_json(event)),
                                    event_type, event, None, text)

        delivered = yield Unit(stream, batch=batch, records=records(), position=format_rfc3339(query_end),
                               cursor_data=cursor_extra, pending=mark)
        logger.info(f"tap: fetched {delivered.count} events", extra={
            "stream": stream, "window_start": format_rfc3339(plan.start),
            "window_end": format_rfc3339(plan.end), "query_end_time": format_rfc3339(query_end),
            "http_status": body.status, "bytes": body.size, **delivered.stats})
        return delivered.cursor

    def _report_gap(self, ctx: PollContext, stream: str, gap: tuple[datetime, datetime]) -> None:
        record_gap(ctx.deps, ctx.instance, ctx.report, {
            "stream": stream, "start": format_rfc3339(gap[0]), "end": format_rfc3339(gap[1]),
            "why": "TAP serves at most 7 days back; these events can no longer be collected",
            "recorded_at": format_rfc3339(ctx.deps.clock())})
