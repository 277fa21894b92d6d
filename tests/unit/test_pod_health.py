"""The PoD streamer reports its connector health with the heartbeat: what the PoD alarms watch."""

from __future__ import annotations

import pytest

from ppcollector.timeutil import utcnow
from tests.fakes import make_deps
from tests.unit.test_pod_streamer import TOKEN, WRONG_TOKEN, Running, make_sim, register, wait_for  # noqa: F401

pytestmark = pytest.mark.usefixtures("local_run")


def health(running: Running) -> dict[str, float]:
    return {name: value for name, (value, _) in running.streamer.health().items()}


def test_a_streaming_instance_is_active_and_a_rejected_one_failed_and_out_of_service(make_sim):  # noqa: F811
    sim = make_sim(events_per_minute=600)
    deps, _ = make_deps(utcnow, None)
    register(deps, sim, name="good")
    register(deps, sim, name="rejected", token=WRONG_TOKEN)
    running = Running(deps)
    try:
        wait_for(lambda: health(running)["InstancesActive"] == 1 and health(running)["InstancesFailed"] == 1)
        before = health(running)["WorstCollectionLag"]
        wait_for(lambda: health(running)["WorstCollectionLag"] > before + 0.5, 5)
    finally:
        running.stop()
    assert health(running)["InstancesDegraded"] == 0


def test_the_heartbeat_carries_the_health_with_the_alarm_dimensions(make_sim):  # noqa: F811
    sim = make_sim()
    deps, _ = make_deps(utcnow, None)
    register(deps, sim, name="good")

    class CloudWatch:
        calls: list[list[dict]] = []

        def put_metric_data(self, Namespace, MetricData):  # noqa: N803 (boto3 names)
            assert Namespace == "ProofpointCollector"
            self.calls.append(MetricData)

    running = Running(deps)
    running.streamer.cloudwatch = CloudWatch()
    try:
        wait_for(lambda: health(running)["InstancesActive"] == 1)
        running.streamer.heartbeat()
    finally:
        running.stop()
    data = {d["MetricName"]: d for d in CloudWatch.calls[-1]}
    assert {"PodHeartbeat", "InstancesFailed", "InstancesActive", "WorstCollectionLag"} <= set(data)
    assert data["InstancesActive"]["Value"] == 1 and data["InstancesFailed"]["Value"] == 0
    for datum in data.values():
        assert {d["Name"]: d["Value"] for d in datum["Dimensions"]} == {"connector": "pod",
                                                                        "service": "proofpoint-collector"}
