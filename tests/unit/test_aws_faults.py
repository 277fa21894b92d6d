"""AWS faults the local emulator cannot inject, through the spine with stubs: nothing is lost."""

from __future__ import annotations

from datetime import timedelta

import pytest
from botocore.exceptions import ClientError

from ppcollector.errors import VersionConflict
from ppcollector.kvstore import MemoryKV
from ppcollector.sinks import KinesisSink, S3Sink, SinkSet
from ppcollector.spine import Deadline
from ppcollector.state import ACTIVE, DEGRADED
from tests.fakes import FakeClock, add_tap_instance, gunzip_lines, make_deps
from tests.unit.fake_tap import FakeTap
from tests.unit.test_sinks import StubKinesis, StubS3
from tests.unit.test_tap_poller import message, tick


def aws_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} (injected)"}}, operation)


class FlakyKV(MemoryKV):
    """Fails the next ``failures`` writes matching ``sk_prefix`` as DynamoDB would."""

    def __init__(self, sk_prefix: str, failures: int, code: str = "ProvisionedThroughputExceededException"):
        super().__init__()
        self.sk_prefix, self.failures, self.code = sk_prefix, failures, code

    def put(self, pk, sk, data, expected_version, fence=None):
        if sk.startswith(self.sk_prefix) and self.failures:
            self.failures -= 1
            raise aws_error(self.code, "PutItem")
        return super().put(pk, sk, data, expected_version, fence)


def events(clock, n=20):
    return [message(clock.now - timedelta(minutes=15), id_=f"e{i}", guid=f"g{i}") for i in range(n)]


def s3_ids(s3: StubS3) -> list[str]:
    return sorted(line["raw"]["id"] for body in s3.objects.values() for line in gunzip_lines(body))


@pytest.fixture
def clock():
    return FakeClock()


def test_s3_slowdown_fails_the_poll_and_the_retry_delivers_everything_once(clock):
    tap, s3 = FakeTap(), StubS3(fail=1)
    deps, _ = make_deps(clock, tap)
    deps.sinks = SinkSet([S3Sink(s3, "raw")])
    add_tap_instance(deps, initial_lookback="30m")
    tap.events_by_type["messagesDelivered"] = events(clock)
    [outcome] = tick(deps)
    assert outcome.state == DEGRADED and "SlowDown" in outcome.error
    assert deps.state.get_cursor("acme", "all").moment == clock.now - timedelta(minutes=30)
    clock.advance(minutes=5)
    [outcome] = tick(deps)
    assert outcome.state == ACTIVE and s3_ids(s3) == sorted(f"e{i}" for i in range(20))


def test_kinesis_throughput_exceeded_on_the_whole_call_is_retried_in_the_sink(clock):
    tap = FakeTap()

    class Throttled(StubKinesis):
        calls_failed = 0

        def put_records(self, StreamName, Records):  # noqa: N803
            if self.calls_failed < 2:
                self.calls_failed += 1
                raise aws_error("ProvisionedThroughputExceededException", "PutRecords")
            return super().put_records(StreamName, Records)

    kinesis = Throttled()
    deps, _ = make_deps(clock, tap)
    deps.sinks = SinkSet([KinesisSink(kinesis, "stream", overflow=None, sleep=lambda s: None)])
    add_tap_instance(deps, initial_lookback="30m")
    tap.events_by_type["messagesDelivered"] = events(clock)
    [outcome] = tick(deps)
    assert outcome.state == ACTIVE and len(kinesis.delivered) == 20


@pytest.mark.parametrize("sk_prefix", ["cursor#", "lease", "status"])
def test_dynamodb_throttling_never_advances_past_unwritten_data(clock, sk_prefix):
    tap = FakeTap()
    deps, sink = make_deps(clock, tap)
    kv = FlakyKV(sk_prefix, failures=0)
    kv._items = deps.state.kv._items  # the same table, now able to fail
    deps.state.kv = deps.budget.kv = kv
    add_tap_instance(deps, initial_lookback="30m")
    tap.events_by_type["messagesDelivered"] = events(clock)
    tick(deps)  # initialise the cursor before faults start
    clock.advance(minutes=5)
    tap.events_by_type["messagesDelivered"] += [message(clock.now - timedelta(minutes=8), id_="late", guid="late")]
    kv.failures = 1
    outcome = tick(deps)[0]
    if sk_prefix == "cursor#":
        assert outcome.state == DEGRADED and "ProvisionedThroughputExceeded" in outcome.error
    clock.advance(minutes=5)
    tick(deps)
    ids = [r["raw"]["id"] for r in sink.records]
    assert set(ids) == {f"e{i}" for i in range(20)} | {"late"}


def test_secrets_manager_unavailable_is_degraded_with_a_clear_reason(clock):
    tap = FakeTap()
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")

    def unavailable(secret_id):
        raise aws_error("ServiceUnavailable", "GetSecretValue")

    deps.secrets.get, real = unavailable, deps.secrets.get
    [outcome] = tick(deps)
    assert outcome.state == DEGRADED and "AWS error" in outcome.error and "GetSecretValue" in outcome.error
    deps.secrets.get = real
    clock.advance(minutes=5)
    assert tick(deps)[0].state == ACTIVE


def test_conditional_check_conflicts_on_the_budget_are_retried(clock):
    tap = FakeTap()
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    original_put, conflicts = deps.budget.kv.put, {"left": 3}

    def conflicting(pk, sk, data, expected_version, fence=None):
        if pk.startswith("budget#") and conflicts["left"]:
            conflicts["left"] -= 1
            raise VersionConflict("another writer")
        return original_put(pk, sk, data, expected_version, fence)

    deps.budget.kv.put = conflicting
    tap.events_by_type["messagesDelivered"] = events(clock, 3)
    [outcome] = tick(deps)
    assert outcome.state == ACTIVE and len(sink.records) == 3


def test_the_lambda_time_limit_stops_between_windows_and_the_next_run_resumes(clock):
    tap = FakeTap()
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="3h")
    # Each window takes 30 s of a 60 s invocation: after one, less than the 45 s reserve is left.
    [outcome] = tick(deps, deadline=Deadline(lambda: 60.0 - 30 * len(tap.requests)))
    assert len(tap.requests) == 1
    tick(deps, only="acme", deadline=Deadline(lambda: 30.0))
    assert len(tap.requests) == 1  # under the 45 s reserve: no window started at all
    tick(deps, only="acme")
    assert tap.requests[1].start == tap.requests[0].end  # resumed exactly where it stopped


def test_the_same_event_twice_in_one_response_is_written_once(clock):
    tap = FakeTap()
    deps, sink = make_deps(clock, tap)
    add_tap_instance(deps, initial_lookback="30m")
    twice = message(clock.now - timedelta(minutes=10), id_="dup", guid="dup")
    tap.events_by_type["messagesBlocked"] = [twice, dict(twice)]
    [outcome] = tick(deps)
    assert outcome.events == 1 and [r["raw"]["id"] for r in sink.records] == ["dup"]
