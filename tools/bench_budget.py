"""Rate-budget benchmark: a 7-day TAP backlog for one instance, caught up within Proofpoint's
1800 requests per rolling 24 h and pool while steady polling goes on (used by tools/bench.py).

The real TAP connector and spine (``dispatch_tick`` with inline dispatch, the ``RateBudget`` on an
in-memory state table, the in-memory fakes of tests/fakes.py) poll the TAP simulator, called
in-process (its ``handle``; no sockets, so thousands of polls take seconds); the simulator enforces
the pools (a request over 1800/24 h gets a 429). Time is simulated: a
scheduled tick every minute (the template's rate), each invocation with the Lambda's 300 s deadline
on the simulated clock, and each request taking simulated time in proportion to its window (a full
hour costs what the TAP benchmark measured for a 200,000-event, ~420 MB hour: the worst case).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as the local emulator setup does (http.running_locally): the loopback base_url of the simulated
# Proofpoint is then allowed; no AWS call goes there (state and sinks are in-memory stubs).
os.environ.setdefault("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
for path in (ROOT, ROOT / "shared", ROOT / "simulator", ROOT / "cli"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from ppcollector.connectors.tap.settings import DAILY_LIMIT  # noqa: E402 - after the path set-up

PRINCIPAL = "svc-principal"
SECRET = "s3cr3t-value"  # the fakes' default test credential (tests/fakes.py), not a real one
TICK = timedelta(minutes=1)  # template.yaml: ScheduleExpression rate(1 minute)
INVOCATION_SECONDS = 300.0  # template.yaml: the TAP poller's Timeout
LIMIT = DAILY_LIMIT  # Proofpoint's limit, as the TAP package knows it
BACKLOG = timedelta(days=7) - timedelta(minutes=15)  # all the API still serves (7 d less the margin)


@dataclass
class Scenario:
    name: str
    event_types: str
    backfill: bool  # True: a 7-day `ppctl backfill` beside the live cursor; False: a cursor 7 days old
    caught_up_after: timedelta | None = None
    requests: list[tuple[datetime, str, bool]] = field(default_factory=list)  # (time, pool, catching up)
    steady_refused: int = 0
    throttled: int = 0
    errors: list[str] = field(default_factory=list)

    def max_rolling(self) -> dict[str, int]:
        """The most requests of each pool in any 24 h."""
        result: dict[str, int] = {}
        by_pool: dict[str, list[datetime]] = defaultdict(list)
        for moment, pool, _ in self.requests:
            by_pool[pool].append(moment)
        for pool, times in by_pool.items():
            times.sort()
            best, lo = 0, 0
            for hi, moment in enumerate(times):
                while times[lo] <= moment - timedelta(hours=24):
                    lo += 1
                best = max(best, hi - lo + 1)
            result[pool] = best
        return result

    def first_day(self, start: datetime) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for moment, pool, _ in self.requests:
            if moment < start + timedelta(hours=24):
                counts[pool] += 1
        return dict(counts)


def run_scenario(scenario: Scenario, seconds_per_full_hour: float, simulate: timedelta = timedelta(hours=36),
                 events_per_hour: int = 60) -> Scenario:
    import base64
    from email.message import Message

    from ppcollector.connectors.tap import ENDPOINTS, TapConnector
    from ppcollector.dispatch import InlineDispatcher, dispatch_tick
    from ppcollector.observability import logger
    from ppcollector.spine import Deadline
    from ppcollector.timeutil import parse_timestamp
    from ppsim.httpserver import Request
    from ppsim.tap import TapSimulator
    from tests.fakes import FakeClock, add_tap_instance, make_deps
    from tests.unit.fake_tap import FakeResponse

    clock = FakeClock(datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC))
    start = clock.now
    pools = {e.path: e.pool for e in ENDPOINTS.values()}
    sim = TapSimulator({PRINCIPAL: SECRET}, seed=3, events_per_hour=events_per_hour,
                       clock=lambda: clock.now.timestamp(), rate_limit_per_day=LIMIT)
    connector = TapConnector()

    class TimedSession:
        """``requests.Session.get`` answered by the simulator in-process; each request takes simulated
        time in proportion to its window, and is counted."""

        def get(self, url: str, params: list[tuple[str, str]], auth: tuple[str, str], **_: Any) -> Any:
            path = "/" + url.split("/", 3)[3]
            query: dict[str, list[str]] = defaultdict(list)
            for key, value in params:
                query[key].append(value)
            headers = Message()
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
            begin, end = (parse_timestamp(p) for p in query["interval"][0].split("/"))
            scenario.requests.append((clock.now, pools[path], clock.now - end > timedelta(minutes=10)))
            answer = sim.handle(Request("GET", path, dict(query), headers, b"", "127.0.0.1"))
            if answer.status == 429:
                scenario.throttled += 1
            body = answer.body if isinstance(answer.body, bytes) else b"".join(answer.body)
            clock.advance(seconds=seconds_per_full_hour * (end - begin) / timedelta(hours=1))
            return FakeResponse(answer.status, body)

    logging.disable(logging.WARNING)  # thousands of polls: keep the bench output readable
    logger.setLevel("ERROR")
    with contextlib.redirect_stdout(io.StringIO()) as sink:
        deps, _ = make_deps(clock, TimedSession())  # TAP's default settle lag, 300 s
        deps.new_http = TimedSession
        acquire = deps.budget.acquire

        def counted_acquire(*args: Any, **kwargs: Any) -> Any:
            grant = acquire(*args, **kwargs)
            if not grant.granted and not kwargs.get("catch_up"):
                scenario.steady_refused += 1
            return grant

        deps.budget.acquire = counted_acquire  # type: ignore[method-assign]
        settings: dict[str, Any] = {"event_types": scenario.event_types, "poll_interval": "5m",
                                   "base_url": "http://127.0.0.1:9"}  # never dialled: TimedSession answers
        if not scenario.backfill:
            settings["initial_lookback"] = "6d23h45m"
        instance = add_tap_instance(deps, "backlog", principal=PRINCIPAL, secret=SECRET, **settings)
        if scenario.backfill:
            dispatch_tick(connector, deps, InlineDispatcher(), Deadline.fixed(INVOCATION_SECONDS))  # live cursor
            connector.start_backfill(deps, instance, clock.now - BACKLOG, clock.now)
        streams = [e.stream for e in connector_endpoints(instance)]
        while clock.now - start < simulate:
            tick_end = clock.now + timedelta(seconds=INVOCATION_SECONDS)
            deadline = Deadline(lambda end=tick_end: (end - clock.now).total_seconds())
            outcomes = dispatch_tick(connector, deps, InlineDispatcher(workers=1), deadline)
            for outcome in outcomes:
                if outcome.error:
                    scenario.errors.append(outcome.error)
            if scenario.caught_up_after is None and _caught_up(deps, instance.name, streams, scenario.backfill,
                                                               clock.now):
                scenario.caught_up_after = clock.now - start
            sink.seek(0)
            sink.truncate()
            # The next scheduled minute after this invocation ended (overlapping ones skip: the lease).
            nxt = start + TICK * -(-(clock.now - start) // TICK)
            clock.now = nxt if nxt > clock.now else clock.now + TICK
    logging.disable(logging.NOTSET)
    return scenario


def connector_endpoints(instance: Any) -> list[Any]:
    from ppcollector.connectors.tap import endpoints_for

    return endpoints_for(instance.settings["event_types"])


def _caught_up(deps: Any, name: str, streams: list[str], backfill: bool, now: datetime) -> bool:
    from ppcollector.timeutil import parse_timestamp

    for stream in streams:
        if backfill:
            cursor = deps.state.get_cursor(name, f"backfill-{stream}")
            if not cursor.data.get("done"):
                return False
        else:
            cursor = deps.state.get_cursor(name, stream)
            if cursor.moment is None or now - parse_timestamp(cursor.position) > timedelta(minutes=20):
                return False
    return True


SCENARIOS = (
    ("cursor 7 days behind, event_types=all", "all", False),
    ("7-day backfill beside live polling, 4 separate event types", "messages-delivered,messages-blocked,"
     "clicks-permitted,clicks-blocked", True),
)


def run_all(seconds_per_full_hour: float) -> list[Scenario]:
    return [run_scenario(Scenario(name, types, backfill), seconds_per_full_hour) for name, types, backfill in SCENARIOS]


if __name__ == "__main__":
    for result in run_all(float(sys.argv[1]) if len(sys.argv) > 1 else 15.0):
        print(result.name, result.caught_up_after, len(result.requests), result.max_rolling(),
              result.steady_refused, result.throttled, result.errors[:3])
