"""The CASB connector: alert windows and event pages, each delivered through the spine."""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from ...crashpoints import AFTER_FETCH, crashpoint
from ...delivery import Delivered, Unit, marker, pending_of
from ...descriptor import ConnectorDescriptor, SecretField, SettingFlag
from ...errors import SettingsError, VendorRequestError, VendorThrottled, VendorTransientError
from ...http import allow_custom_endpoint
from ...observability import logger
from ...records import OutRecord, build_record, canonical_json, derive_id
from ...secrets import Credentials
from ...settings import duration_setting
from ...spine import BACKFILL_PREFIX, Bounds, Deps, PollContext, Units
from ...state import Cursor, Instance
from ...timeutil import TimestampError, format_rfc3339, parse_duration, parse_timestamp
from .alerts import (
    AlertWindow,
    WindowRead,
    _alert_identity,
    _pending_window,
    alert_ms,
    from_ms,
    plan_alert_window,
    read_alert_window,
    to_ms,
)
from .client import CasbClient, Page
from .gate import CallGate, _NoTimeLeft, _OutOfCalls, budget_credential
from .settings import (
    _HEADER,
    _PARAM,
    _PATH,
    _PREFIX,
    ALERTS_STREAM,
    AUTH_MODES,
    BUDGET_POOL,
    CALL_RESERVE_SECONDS,
    CASB_HOSTS,
    MAX_LOOKBACK,
    RECENT_EVENT_IDS,
    SETTING_NAMES,
    SETTINGS,
    SOURCE,
    _endpoint_setting,
    _int_setting,
    _text_setting,
    validate_feeds,
)

# --- the connector ----------------------------------------------------------------------------------

DESCRIPTOR = ConnectorDescriptor(
    name="casb",
    source=SOURCE,
    title="a CASB tenant (client secret and API key from prompt or stdin, one per line)",
    secrets=(SecretField("client_secret", "CASB client secret"),
             SecretField("api_key", "CASB API key", optional=True)),  # the oauth2 auth mode needs no API key
    flags=(
        SettingFlag("client_id", "CASB API client id", required=True),
        SettingFlag("api_fqdn", f"auth + alerts host (default {SETTINGS['api_fqdn']})"),
        SettingFlag("events_fqdn", f"activity events host (default {SETTINGS['events_fqdn']})"),
        SettingFlag("feeds", "alerts,events (default both)"),
        SettingFlag("auth_mode", "legacy (default) | oauth2"),
        SettingFlag("poll_interval", "polling interval (default 5m)", flag="--interval"),
        SettingFlag("settle_lag", "how far behind now an alert window ends (60s)"),
        SettingFlag("initial_lookback", "how far back a new instance starts (1h)"),
    ),
    other_settings_help="any other API-contract setting (paths, headers, paging keys); see the README",
    function="CasbPollerFunction",
    log_group_output="CasbPollerLogGroupName",
    event_types=("alert", "event"),
)


class CasbConnector:
    descriptor = DESCRIPTOR
    name = DESCRIPTOR.name
    source = DESCRIPTOR.source
    endpoints = {"api_fqdn": CASB_HOSTS, "events_fqdn": CASB_HOSTS}

    def validate_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        clean = dict(settings)
        unknown = set(clean) - set(SETTING_NAMES)
        if unknown:
            raise SettingsError(f"unknown CASB setting(s): {', '.join(sorted(unknown))} "
                                '(README "CASB instance settings" lists the known ones)')
        client_id = str(clean.get("client_id", "")).strip()
        if not client_id:
            raise SettingsError("client_id (the CASB API client id) is required")
        clean["client_id"] = client_id
        custom = allow_custom_endpoint(clean)
        clean["api_fqdn"] = _endpoint_setting("api_fqdn", clean.get("api_fqdn", SETTINGS["api_fqdn"]), custom)
        clean["events_fqdn"] = _endpoint_setting("events_fqdn", clean.get("events_fqdn", SETTINGS["events_fqdn"]),
                                                 custom)
        clean["feeds"] = validate_feeds(clean.get("feeds", SETTINGS["feeds"]))
        duration_setting(clean, "poll_interval", SETTINGS["poll_interval"], timedelta(minutes=1), timedelta(hours=24))
        duration_setting(clean, "settle_lag", SETTINGS["settle_lag"], timedelta(0), timedelta(hours=1))
        duration_setting(clean, "initial_lookback", SETTINGS["initial_lookback"], timedelta(minutes=1), MAX_LOOKBACK)
        mode = str(clean.get("auth_mode", SETTINGS["auth_mode"])).strip().lower()
        if mode not in AUTH_MODES:
            raise SettingsError(f"auth_mode={mode!r} is not one of {', '.join(AUTH_MODES)}")
        clean["auth_mode"] = mode
        for key in ("auth_path", "alerts_path", "events_path", "oauth_token_path"):
            _text_setting(clean, key, _PATH, 'a path starting with "/" (no query string)')
        for key in ("token_field", "alerts_items_key", "events_items_key", "events_cursor_key"):
            _text_setting(clean, key, None, "a JSON key")
        for key in ("token_header", "api_key_header"):
            _text_setting(clean, key, _HEADER, "an HTTP header name")
        for key in ("events_page_param", "events_start_param"):
            _text_setting(clean, key, _PARAM, "a query parameter name")
        if clean["events_page_param"] == clean["events_start_param"]:
            raise SettingsError("events_page_param and events_start_param must differ")
        prefix = str(clean.get("token_prefix", SETTINGS["token_prefix"])).strip()
        if prefix and not _PREFIX.match(prefix):
            raise SettingsError(f"token_prefix={prefix!r}: use an empty prefix (the default) or a scheme such as "
                                "'Bearer '")
        clean["token_prefix"] = f"{prefix} " if prefix else ""
        _int_setting(clean, "page_size", 1, 1000)
        _int_setting(clean, "max_pages_per_poll", 1, 1000)
        _int_setting(clean, "daily_call_limit", 1, 1_000_000)
        self._check_budget(clean)
        return clean

    @staticmethod
    def _check_budget(settings: dict[str, Any]) -> None:
        """Refuse a steady state that alone (one call per feed per poll) would use 90% of the daily cap."""
        per_day = timedelta(days=1) / parse_duration(settings["poll_interval"])
        need = int(per_day * len(settings["feeds"]))
        limit = settings["daily_call_limit"]
        if need > limit * 0.9:
            raise SettingsError(
                f"poll_interval={settings['poll_interval']} with feeds {','.join(settings['feeds'])} needs {need} "
                f"calls/day; Proofpoint allows daily_call_limit={limit} per API key (keep 10% for catch-up and "
                "re-authentication): poll less often or select fewer feeds")

    # --- ppctl validate -------------------------------------------------------------------------
    def test_call(self, instance: Instance, credentials: Credentials, deps: Deps) -> str:
        settings = instance.settings
        self._require_secrets(settings, credentials)
        gate = CallGate(deps, budget_credential(settings), settings["daily_call_limit"], lambda: None)
        client = CasbClient(deps, instance.name, settings, credentials, gate, lambda: 60.0)
        try:
            client.authenticate()
        except _OutOfCalls as exc:
            raise VendorThrottled(f"not sent: {exc.reason}", None) from None
        path = settings["oauth_token_path"] if settings["auth_mode"] == "oauth2" else settings["auth_path"]
        return f"Proofpoint accepted the credentials (HTTP 200 from {path}, {settings['auth_mode']} auth)"

    # --- what the spine asks of every connector besides polling ---------------------------------
    def expected_lag(self, instance: Instance, deps: Deps) -> timedelta:
        return parse_duration(instance.settings["settle_lag"])  # the alerts cursor trails now by this much

    def budget_pools(self, instance: Instance) -> list[tuple[str, str, int | None]]:
        return [(budget_credential(instance.settings), BUDGET_POOL, instance.settings["daily_call_limit"])]

    @staticmethod
    def _require_secrets(settings: dict[str, Any], credentials: Credentials) -> None:
        if settings["auth_mode"] == "legacy":
            credentials.require("client_secret", "api_key")
        else:
            credentials.require("client_secret")

    # --- ppctl backfill -----------------------------------------------------------------------------
    def start_backfill(self, deps: Deps, instance: Instance, since: datetime, until: datetime,
                       feeds: list[str] | None = None) -> list[str]:
        """Queue a re-collection of ``[since, until]`` (both inclusive) for ``feeds`` (default: every
        enabled feed): one bounded ``backfill-<feed>`` cursor each, run by the next polls as catch-up.

        Refused (SettingsError, with the reason) when a feed is not enabled on the instance, the range
        is empty or reaches into the future, or ``since`` is more than ``MAX_LOOKBACK`` (7 days) back:
        how long the API keeps alerts and events is not documented (docs/vendors/casb.md §8), so the connector does
        not promise more than its own initial_lookback limit. A new backfill replaces a running one.
        """
        enabled = list(instance.settings.get("feeds") or ())
        if not enabled:
            raise SettingsError(f"instance {instance.name} has no CASB feed enabled: nothing to backfill "
                                "(set feeds=alerts,events with ppctl instance set)")
        wanted = enabled if feeds is None else validate_feeds(feeds)
        missing = [f for f in wanted if f not in enabled]
        if missing:
            raise SettingsError(f"the {', '.join(missing)} feed is not enabled on instance {instance.name} "
                                f"(feeds={','.join(enabled)}): enable it first (ppctl instance set "
                                f"{instance.name} feeds=...), or backfill only {', '.join(enabled)}")
        now = deps.clock()
        since, until = from_ms(to_ms(since)), from_ms(to_ms(until))  # whole milliseconds: the alerts unit
        if until <= since:
            raise SettingsError("--until must be after --since (CASB backfills are cut to whole milliseconds)")
        if until > now:
            raise SettingsError("--until is in the future; the CASB API only serves the past")
        earliest = now - MAX_LOOKBACK
        if since < earliest:
            raise SettingsError(
                f"CASB backfills reach at most {MAX_LOOKBACK.days} days back: --since must be at or after "
                f"{format_rfc3339(earliest)}. How long Proofpoint keeps CASB alerts and events is not documented "
                f"(docs/vendors/casb.md §8), so the collector asks for no older data than its "
                f"{MAX_LOOKBACK.days}-day lookback limit (the initial_lookback maximum)")
        common = {"since": format_rfc3339(since), "until": format_rfc3339(until), "done": False,
                  "requested_at": format_rfc3339(now)}
        # set_cursor keeps what a previous backfill left in the item: reset every reading field.
        fresh_state = {
            "alerts": {"boundary_ids": [], "resume_to_ms": None, "resume_ids": None, "window_to_ms": None,
                       "window_to_ids": None, "pending": None},
            "events": {"page_token": None, "recent_ids": [], "largest_page": 0, "pending": None},
        }
        streams = []
        for feed in wanted:
            stream = BACKFILL_PREFIX + feed
            deps.state.set_cursor(instance.name, stream, format_rfc3339(since), **common, **fresh_state[feed])
            streams.append(stream)
        logger.info("casb: backfill queued", extra={"since": common["since"], "until": common["until"],
                                                   "streams": streams})
        return streams

    # --- polling ----------------------------------------------------------------------------------
    def streams(self, instance: Instance) -> list[str]:
        return list(instance.settings["feeds"])  # "alerts" and/or "events": one cursor each

    def run(self, ctx: PollContext, stream: str, cursor: Cursor, bounds: Bounds | None) -> Units:
        """One feed from its cursor (live, or a backfill's within ``bounds``). A budget refusal ends the run
        cleanly: steady polling resumes at the next tick; a backfill waits for the next regular poll (only
        calls leaving the 24 h window free the catch-up share, and every extra poll spends steady calls)."""
        settings = ctx.instance.settings
        self._require_secrets(settings, ctx.credentials)
        report = ctx.report

        def count_call() -> None:
            report.api_calls += 1

        gate = CallGate(ctx.deps, budget_credential(settings), settings["daily_call_limit"], count_call)
        client = CasbClient(ctx.deps, ctx.instance.name, settings, ctx.credentials, gate, ctx.deadline.remaining)
        if cursor.moment is None:
            start = ctx.deps.clock() - parse_duration(settings["initial_lookback"])
            start = from_ms(to_ms(start))  # whole milliseconds: the alerts API's unit
            cursor = (yield Unit(cursor.stream, position=format_rfc3339(start),
                                 cursor_data={"initialised": True})).cursor
        try:
            if stream == ALERTS_STREAM:
                yield from self._run_alerts(ctx, client, cursor, bounds)
            else:
                yield from self._run_events(ctx, client, cursor, bounds)
        except _OutOfCalls as exc:
            if bounds is not None:
                logger.warning(f"casb: backfill held back: {exc.reason} (the rest of the budget is kept for steady "
                               "polling); it continues at a later poll", extra={"stream": cursor.stream})
            else:
                self._held_back(ctx, stream, exc)

    @staticmethod
    def _held_back(ctx: PollContext, feed: str, exc: _OutOfCalls) -> None:
        ctx.report.caught_up = False
        if exc.steady:
            ctx.report.paused_reason = exc.reason
        logger.warning(f"casb: call held back: {exc.reason}", extra={"stream": feed})

    def _settle_lag(self, settings: dict[str, Any]) -> timedelta:
        return parse_duration(settings["settle_lag"])

    def _call_allowed(self, ctx: PollContext) -> None:
        if ctx.deadline.remaining() < CALL_RESERVE_SECONDS:
            raise _NoTimeLeft()

    # --- alerts ---------------------------------------------------------------------------------
    def _run_alerts(self, ctx: PollContext, client: CasbClient, cursor: Cursor,
                    bounds: Bounds | None) -> Generator[Unit, Delivered, Cursor]:
        """Window after window from one cursor: the live one, or a backfill's (``bounds``: every call is
        catch-up, no window reaches past ``until``, and the cursor is ``done`` once it is there)."""
        deps, settings = ctx.deps, ctx.instance.settings
        until_ms = to_ms(bounds.until) if bounds is not None else None
        backfill = bounds is not None
        pages_left = settings["max_pages_per_poll"]
        calls = 0
        # One "now" per poll: windows reach now - settle lag as it was when the poll began, so a caught-up
        # instance reads one window per poll instead of chasing the clock with ever-smaller windows.
        poll_now = deps.clock()
        while True:
            window = plan_alert_window(cursor, poll_now, self._settle_lag(settings), until_ms)
            if window is None:
                break
            if pages_left <= 0:
                ctx.report.caught_up = False  # the page cap stopped a read with windows still ready
                break

            def fetch(page: int, window: AlertWindow = window) -> Page:
                nonlocal calls
                self._call_allowed(ctx)
                result = client.call("POST", client.api_base, settings["alerts_path"], catch_up=backfill or calls > 0,
                                     json_body={"page": page, "time_range": {"from": window.start_ms,
                                                                              "to": window.end_ms}})
                calls += 1
                return result

            read = read_alert_window(fetch, window, settings["alerts_items_key"], settings["page_size"], pages_left)
            pages_left -= read.pages
            if read.pages:
                cursor = yield from self._alerts_unit(ctx, window, read, cursor)
            if read.held_back is not None:
                raise read.held_back
            if not read.complete:
                ctx.report.caught_up = False
                break
        if until_ms is not None and cursor.data.get("resume_to_ms") is None and to_ms(cursor.moment) >= until_ms:
            cursor = (yield Unit(cursor.stream, cursor_data={"done": True})).cursor
        return cursor

    def _alerts_unit(self, ctx: PollContext, window: AlertWindow, read: WindowRead,
                     cursor: Cursor) -> Generator[Unit, Delivered, Cursor]:
        """The window (or its certain newer part) was read: deliver it as one unit with a pending marker
        (``deliver`` stores it before writing and clears it with the cursor write).

        A window already marked (a previous write whose cursor write never happened) is written under the
        marker's batch name and received_time, so it overwrites the same objects (module docstring).
        """
        deps = ctx.deps
        stream = cursor.stream  # "alerts", or "backfill-alerts": part of the batch name, so never the same objects
        crashpoint(AFTER_FETCH)
        pending = _pending_window(cursor)
        if pending is not None and int(pending["to"]) != window.end_ms:
            pending = None  # not this window's (cannot happen: plan_alert_window plans the marked window)
        window_fields = {"stream": stream, "window_start": format_rfc3339(from_ms(window.start_ms)),
                         "window_end": format_rfc3339(from_ms(window.end_ms)), "resumed": window.resume,
                         "rewrite": pending is not None, "pages": read.pages, "passes": read.passes,
                         "repeats": read.repeats, "bytes": read.bytes}
        if not read.complete and read.floor_ms is None:
            logger.warning("casb: alerts window not read completely and no part of it is certain; nothing written, "
                           "read again next poll", extra={**window_fields, "stopped_by": read.stopped_by})
            return cursor
        if not read.complete and read.floor_ms == window.end_ms:
            raise VendorRequestError(
                f"more than {read.pages} pages of alerts share the timestamp {window.end_ms}: the window cannot be "
                "split; raise max_pages_per_poll")
        floor = window.start_ms if read.complete else read.floor_ms
        if pending is not None and floor > int(pending["floor"]):
            # Writing the newer part only would overwrite the first write's objects with fewer alerts.
            logger.warning("casb: re-read of a written alerts window is less complete than its first write; "
                           "nothing written, read again next poll",
                           extra={**window_fields, "stopped_by": read.stopped_by,
                                  "floor": format_rfc3339(from_ms(floor)),
                                  "written_floor": format_rfc3339(from_ms(int(pending["floor"])))})
            return cursor
        chosen = [(key, alert) for key, (alert, _) in read.alerts.items()
                  if not window.already_written(alert, key) and _at_or_after(alert, floor)]
        mark = None
        if pending is not None:
            name, received = str(pending["batch"]), parse_timestamp(pending["fetched_at"])
        else:
            name = f"{stream}_{window.start_ms}_{window.end_ms}"
            fetched = read.fetched_at or deps.clock()
            if chosen:
                mark = marker(name, fetched, **{"from": window.start_ms, "to": window.end_ms, "floor": floor})
            received = parse_timestamp(format_rfc3339(fetched))  # exactly what a retry reuses
        position, extra_data = self._next_alert_cursor(window, read)
        delivered = yield Unit(stream, batch=name, position=position, cursor_data=extra_data, pending=mark,
                               records=self._records(ctx, "alert", (
                                   (derive_id(SOURCE, "alert", _alert_identity(alert)), alert, _alert_time(alert))
                                   for _, alert in chosen), received))
        extra = {**window_fields, "complete": read.complete, "batch": name, "received_time": format_rfc3339(received),
                 **delivered.stats}
        if not read.complete:
            extra.update(stopped_by=read.stopped_by, resume_to=format_rfc3339(from_ms(floor)))
        logger.info(f"casb: fetched {delivered.count} events", extra=extra)
        return delivered.cursor

    @staticmethod
    def _next_alert_cursor(window: AlertWindow, read: WindowRead) -> tuple[str, dict[str, Any]]:
        def ids_at(ms: int) -> list[str]:
            return sorted(key for key, (alert, _) in read.alerts.items() if alert_ms(alert) == ms)

        if read.complete:
            # from = previous to, inclusive: remember which alerts stamped `to` were already delivered.
            if window.resume:
                position_ms, boundary = window.final_end_ms, sorted(window.final_end_ids)
            else:
                position_ms, boundary = window.end_ms, ids_at(window.end_ms)
            return format_rfc3339(from_ms(position_ms)), {
                "boundary_ids": boundary, "resume_to_ms": None, "resume_ids": None, "window_to_ms": None,
                "window_to_ids": None}
        # Not complete: [start, floor] (floor inclusive, its delivered ids known) is still to be read.
        floor = read.floor_ms
        final_end = window.final_end_ms if window.resume else window.end_ms
        final_ids = sorted(window.final_end_ids) if window.resume else ids_at(window.end_ms)
        return format_rfc3339(from_ms(window.start_ms)), {
            "boundary_ids": sorted(window.written_at_start), "resume_to_ms": floor, "resume_ids": ids_at(floor),
            "window_to_ms": final_end, "window_to_ids": final_ids}

    # --- activity events ------------------------------------------------------------------------
    def _run_events(self, ctx: PollContext, client: CasbClient, cursor: Cursor,
                    bounds: Bounds | None) -> Generator[Unit, Delivered, Cursor]:
        """Page after page from the cursor's token while pages are not empty (see the tail rule in
        ``_events_unit``), within ``max_pages_per_poll``, the invocation's time and the budget.

        ``bounds`` makes it a backfill chain: every call is catch-up, it starts from ``startTime = since``
        and ends (``done``) at the page that passes ``until`` or at an empty page.
        """
        settings = ctx.instance.settings
        backfill = bounds is not None
        token_refused = False
        for page_number in range(settings["max_pages_per_poll"]):
            token = cursor.data.get("page_token")
            if token:
                params = {settings["events_page_param"]: token}
            else:
                # First call: startTime is whole minutes, UTC, no zone designator (docs/vendors/casb.md §2.6).
                params = {settings["events_start_param"]: cursor.moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")}
            try:
                self._call_allowed(ctx)
            except _NoTimeLeft:
                ctx.report.caught_up = False
                return cursor
            try:
                page = client.call("GET", client.events_base, settings["events_path"],
                                   catch_up=backfill or page_number > 0, params=params)
            except VendorRequestError as exc:
                if not token or token_refused:
                    raise
                # How long a token stays valid is unknown (docs/vendors/casb.md §8 #5): restart once from the newest
                # event's minute; the overlap is dropped by eventId.
                token_refused = True
                logger.warning(f"casb: the events page token was refused ({exc}); restarting from startTime",
                               extra={"stream": cursor.stream})
                cursor = (yield Unit(cursor.stream, cursor_data={"page_token": None})).cursor
                continue
            crashpoint(AFTER_FETCH)
            cursor, more = yield from self._events_unit(ctx, page, params, cursor, page_number, bounds)
            if not more:
                return cursor  # caught up (or the backfill is done): the next poll starts from this page's token
        ctx.report.caught_up = False  # max_pages_per_poll reached with pages still coming
        return cursor

    def _events_unit(self, ctx: PollContext, page: Page, params: dict[str, str], cursor: Cursor,
                     page_number: int, bounds: Bounds | None) -> Generator[Unit, Delivered, tuple[Cursor, bool]]:
        """One page as a unit: its new records, then its nextPageToken as the cursor (``deliver``).

        Returns the new cursor and whether more pages should be read now. With ``bounds`` (a backfill)
        only events stamped within ``[since, until]`` are written (an event without a usable timestamp
        is written, as live collection does); the page that holds an event past ``until``, or an empty
        page, ends the backfill: ``done`` is set with that page's checkpoint. A page without new events
        writes nothing and leaves a pending marker in place (module docstring).
        """
        settings = ctx.instance.settings
        stream = cursor.stream
        items = page.body.get(settings["events_items_key"])
        next_token = page.body.get(settings["events_cursor_key"])
        if not isinstance(items, list) or not all(isinstance(e, dict) for e in items):
            raise VendorTransientError(f"malformed events page: {settings['events_items_key']!r} is not a "
                                       "list of objects")
        if not isinstance(next_token, str) or not next_token:
            raise VendorTransientError(f"malformed events page: no {settings['events_cursor_key']}")
        recent = list(cursor.data.get("recent_ids") or ())
        known = set(recent)
        fresh: list[tuple[str, dict[str, Any]]] = []
        outside, passed_until = 0, False
        in_range: list[datetime] = []
        for event in items:
            key = _event_key(event)
            if key in known:  # re-served events (the previous page, or twice in this one) are dropped
                continue
            known.add(key)
            when = _event_time(event)
            if bounds is not None and when is not None:
                if when > bounds.until:
                    passed_until = True  # the live chain collects it
                    outside += 1
                    continue
                if when < bounds.since:  # startTime is whole minutes: the part of its minute before since
                    outside += 1
                    continue
                in_range.append(when)
            fresh.append((key, event))
        extra: dict[str, Any] = {}
        if bounds is None:
            # The page token is the cursor (persisted for empty pages too); the position only says how far
            # the collected data reaches: the newest event seen, or the page time once a page is empty.
            newest = max((t for t in map(_event_time, items) if t), default=cursor.moment)
            position = max(cursor.moment, newest if items else page.fetched_at)
            # The events page size is unknown (docs/vendors/casb.md §2.6). A page shorter than the largest seen, with
            # recent events, is taken as the tail: that saves the trailing empty call of every poll (the
            # daily cap). A short page whose newest event is older than the settle lag is not the tail but
            # a page of a chain still behind: read on now (as catch-up calls, within the page cap, the time
            # and the budget), so a poll ends caught up and the lag stays under interval + settle lag.
            largest = max(int(cursor.data.get("largest_page") or 0), len(items))
            behind = page.fetched_at - newest > self._settle_lag(settings)
            more = bool(items) and (len(items) >= largest or behind)
            extra["largest_page"] = largest
        else:
            # A backfill runs once: no tail guess from a short page, only an empty page or one past
            # `until` ends it. The position is how far the range is covered (the token-restart point).
            more = bool(items) and not passed_until
            position = max([cursor.moment, *in_range]) if more else bounds.until
            if not more:
                extra["done"] = True
        extra.update(page_token=next_token, recent_ids=(recent + [k for k, _ in fresh])[-RECENT_EVENT_IDS:])
        unit = Unit(stream, position=format_rfc3339(position), cursor_data=extra)
        pending = pending_of(cursor)
        if fresh:
            if pending is not None:
                # The write of this request's page (or, after a refused token, of the page the restarted
                # chain stands at) was not checkpointed: the same objects again (module docstring).
                unit.batch, received = str(pending["batch"]), parse_timestamp(pending["fetched_at"])
            else:
                # Per request, and per backfill range: a backfill's objects never overwrite the live chain's,
                # nor those of an earlier backfill of another range that read the same page.
                basis: Any = params if bounds is None else {"params": params, "since": format_rfc3339(bounds.since),
                                                            "until": format_rfc3339(bounds.until)}
                unit.batch = f"{stream}_" + hashlib.sha256(canonical_json(basis).encode()).hexdigest()[:24]
                unit.pending = marker(unit.batch, page.fetched_at, request=params)
                received = parse_timestamp(unit.pending["fetched_at"])  # exactly what a retry reuses
            unit.records = self._records(ctx, "event", ((derive_id(SOURCE, "event", key), event, _event_time(event))
                                                        for key, event in fresh), received)
        delivered = yield unit
        logger.info(f"casb: fetched {len(fresh)} events", extra={
            "stream": stream, "page": page_number, "request": next(iter(params)),
            "start_time": params.get(settings["events_start_param"]), "items": len(items),
            "duplicates": len(items) - len(fresh) - outside, "outside_range": outside, "bytes": page.size,
            "rewrite": bool(fresh) and pending is not None, **delivered.stats})
        return delivered.cursor, more

    # --- records ----------------------------------------------------------------------------------
    def _records(self, ctx: PollContext, event_type: str, rows: Iterable[tuple[str, dict[str, Any], datetime | None]],
                 received: datetime) -> Iterator[OutRecord]:
        collected = ctx.deps.clock()
        for record_id, raw, event_time in rows:
            yield build_record(record_id=record_id, source=SOURCE, instance=ctx.instance.name, event_type=event_type,
                               raw=raw, event_time=event_time, received_time=received, collected_time=collected)


def _at_or_after(alert: dict[str, Any], floor_ms: int) -> bool:
    ts = alert_ms(alert)
    return ts is None or ts >= floor_ms  # an alert without a usable timestamp is delivered when seen


def _alert_time(alert: dict[str, Any]) -> datetime | None:
    ts = alert_ms(alert)
    return from_ms(ts) if ts is not None else None


def _event_key(event: dict[str, Any]) -> str:
    value = event.get("eventId")
    return str(value) if isinstance(value, str) and value else \
        "sha256:" + hashlib.sha256(canonical_json(event).encode()).hexdigest()


def _event_time(event: dict[str, Any]) -> datetime | None:
    try:
        return parse_timestamp(event.get("timestamp"))
    except TimestampError:
        return None


