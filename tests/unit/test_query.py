"""ppctl query: every shipped query over a small archive with known events gives exactly the rows an
analyst expects; the template holds the same SQL; the DuckDB dialect shim; the Athena path with a
fake client; parameters refused before any query runs."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ppcollector.records import build_record
from ppcollector.sinks import BatchInfo, S3Sink, parse_archive_key
from ppctl.engines import AthenaEngine, DuckDbEngine, cell_text
from ppctl.hunting import (
    TEMPLATE,
    QueryError,
    QueryWindow,
    duckdb_sql,
    duckdb_type,
    load_named_queries,
    load_tables,
    parameter_values,
)
from ppctl.local_deploy import load_template

QUERIES = load_named_queries()
WINDOW = QueryWindow(datetime(2026, 11, 20, 9, tzinfo=UTC), datetime(2026, 11, 20, 12, tzinfo=UTC))


class FileS3:
    """put_object into files under ``root`` with the key as the path: the layout ArchiveCache makes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put_object(self, *, Bucket: str, Key: str, Body: Any, **_: Any) -> None:  # noqa: N803 - boto3's names
        path = self.root / Key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(Body.read() if hasattr(Body, "read") else Body)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def write(root: Path, source: str, instance: str, received: str, events: list[tuple[str, str, str, dict]]) -> None:
    """events: (id, event_type, event_time, raw), all received at ``received``, through the real S3 sink."""
    batch = S3Sink(FileS3(root), "archive").open_batch(BatchInfo(source, instance, f"w{received[11:13]}"))
    for record_id, event_type, event_time, raw in events:
        batch.add(build_record(record_id=record_id, source=source, instance=instance, event_type=event_type,
                               raw=raw, event_time=at(event_time), received_time=at(received),
                               collected_time=at(received)))
    batch.commit()


def threat(campaign: str, threat_id: str, when: str, status: str = "active", kind: str = "phish") -> dict:
    return {"campaignID": campaign, "classification": kind, "threat": f"http://evil.example/{threat_id}",
            "threatID": threat_id, "threatStatus": status, "threatTime": when, "threatType": "url",
            "threatUrl": "https://threatinsight.example/t"}


def click(recipient: str, threat_id: str, status: str, when: str, campaign: str = "camp-1",
          campaign_key: str = "campaignId") -> dict:
    return {"GUID": f"g-{recipient}", "id": f"c-{recipient}-{threat_id}", campaign_key: campaign,
            "classification": "phish", "clickIP": "198.51.100.7", "clickTime": when, "recipient": recipient,
            "sender": "bad@evil.example", "threatID": threat_id, "threatStatus": status,
            "threatURL": "https://threatinsight.example/t", "url": f"http://evil.example/{threat_id}/a"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    tap = "proofpoint_tap"
    write(root, tap, "acme", "2026-11-20T10:00:00Z", [
        ("m1", "messagesDelivered", "2026-11-20T09:10:00Z",
         {"GUID": "g1", "QID": "q1", "sender": "bad@evil.example", "subject": "Invoice 7",
          "recipient": ["alice@acme.example", "bob@acme.example"], "spamScore": 4, "impostorScore": 0.5,
          "threatsInfoMap": [threat("camp-1", "t1", "2026-11-20T09:40:00.000Z")]}),
        ("m2", "messagesDelivered", "2026-11-20T09:20:00Z",
         {"GUID": "g2", "QID": "q2", "sender": "x@evil.example", "subject": "Hello",
          "recipient": ["carol@acme.example"], "threatsInfoMap": [threat("camp-2", "t2", "2026-11-20T09:00:00.000Z")]}),
        ("m3", "messagesBlocked", "2026-11-20T09:30:00Z",
         {"GUID": "g3", "QID": "q3", "sender": "bad@evil.example", "subject": "Invoice 8",
          "recipient": ["Alice@acme.example"],
          "threatsInfoMap": [threat("camp-1", "t3", "2026-11-20T09:30:00.000Z", kind="malware")]}),
        ("c1", "clicksPermitted", "2026-11-20T09:45:00Z",
         click("alice@acme.example", "t1", "active", "2026-11-20T09:45:00.000Z")),
        ("c2", "clicksPermitted", "2026-11-20T09:46:00Z",
         click("bob@acme.example", "t4", "active", "2026-11-20T09:46:00.000Z", campaign="camp-4")),
    ])
    write(root, tap, "acme", "2026-11-20T11:00:00Z", [
        # t4 was cleared later: bob's permitted click no longer points at an active threat.
        ("c3", "clicksBlocked", "2026-11-20T10:30:00Z",
         click("erin@acme.example", "t4", "cleared", "2026-11-20T10:30:00.000Z", campaign="camp-4")),
        # The doc's spelling campaignID, in a click: the table matches it anyway.
        ("c4", "clicksBlocked", "2026-11-20T10:40:00Z",
         click("carol@acme.example", "t1", "active", "2026-11-20T10:40:00.000Z", campaign_key="campaignID")),
    ])
    write(root, tap, "other", "2026-11-20T10:00:00Z", [
        ("o1", "clicksPermitted", "2026-11-20T09:50:00Z",
         click("dave@acme.example", "t1", "active", "2026-11-20T09:50:00.000Z")),
    ])
    write(root, tap, "acme", "2026-11-19T10:00:00Z", [  # before the window: never counted
        ("old", "clicksPermitted", "2026-11-19T09:00:00Z",
         click("old@acme.example", "t1", "active", "2026-11-19T09:00:00.000Z")),
    ])
    write(root, "proofpoint_casb", "acme-casb", "2026-11-20T10:00:00Z", [
        ("a1", "alert", "2026-11-20T09:05:00Z",
         {"id": "A1", "timestamp": 1795165500000, "severity": "HIGH", "title": "Login from a suspicious location",
          "type": "Threat", "sub_type": "Suspicious Login",
          "related_events": [{"event_id": "e1", "cloud_service": "Office 365", "timestamp": 1795165440000,
                              "user_email": "Eve@acme.example",
                              "event_classification": {"id": "12", "category": "Login"}}]}),
        ("a2", "alert", "2026-11-20T09:06:00Z",
         {"id": "A2", "severity": "MID", "title": "Mass download", "type": "Footprint", "sub_type": "Data Leakage",
          "related_events": [{"event_id": "e9", "user_email": "frank@acme.example"}]}),
        ("e1", "event", "2026-11-20T09:04:00Z",
         {"eventId": "E1", "cloudService": "Office 365", "timestamp": "2026-11-20T09:04:00.000Z",
          "action": "Successful Login", "userEmail": "eve@acme.example", "requestIp": "203.0.113.5",
          "geographicalContextCountry": "Narnia", "systemEvent": False}),
        ("e2", "event", "2026-11-20T09:07:00Z",
         {"eventId": "E2", "cloudService": "Box", "action": "Download File", "userEmail": "frank@acme.example"}),
    ])
    write(root, "proofpoint_pod", "acme-pod", "2026-11-20T10:00:05Z", [
        ("p1", "message", "2026-11-20T09:30:00Z",
         {"guid": "G1", "ts": "2026-11-20T02:30:00.000000-0700",
          "envelope": {"from": "Sender@Evil.example", "rcpts": ["x@acme.example", "Y@acme.example"]},
          "msg": {"normalizedHeader": {"subject": ["Invoice"], "message-id": ["m@evil"]}, "sizeBytes": 2048},
          "filter": {"qid": "QA1", "disposition": "reject", "routeDirection": "inbound"}}),
        ("p2", "maillog", "2026-11-20T09:30:02Z",
         {"id": "L1", "ts": "2026-11-20T02:30:02.000000-0700", "data": "sendmail: QA1: to=<x@acme.example>",
          "sm": {"qid": "QA1", "from": "<sender@evil.example>", "to": ["<x@acme.example>"], "stat": "Sent",
                 "relay": "mx.acme.example [192.0.2.1]", "dsn": "2.0.0", "pri": 35342}}),
        ("p3", "maillog", "2026-11-20T09:31:00Z",
         {"id": "L2", "sm": {"qid": "QB2", "stat": "Deferred", "to": ["<z@acme.example>"]}}),
    ])
    return root


@pytest.fixture(scope="module")
def engine(archive) -> DuckDbEngine:
    return DuckDbEngine(archive, load_tables())


def run(engine: DuckDbEngine, name: str, **options: str) -> list[dict[str, Any]]:
    query = QUERIES[name]
    result = engine.run(query.sql, parameter_values(query, WINDOW, options))
    return [dict(zip(result.columns, (cell_text(v) for v in row), strict=True)) for row in result.rows]


def test_permitted_clicks_on_urls_still_active(engine):
    rows = run(engine, "permitted-clicks-active")
    assert [(r["click_time"], r["instance"], r["recipient"], r["url"], r["campaign_id"]) for r in rows] == [
        ("2026-11-20T09:45:00Z", "acme", "alice@acme.example", "http://evil.example/t1/a", "camp-1"),
        ("2026-11-20T09:50:00Z", "other", "dave@acme.example", "http://evil.example/t1/a", "camp-1"),
    ]
    assert [r["recipient"] for r in run(engine, "permitted-clicks-active", instance="acme")] == ["alice@acme.example"]


def test_retroactive_deliveries(engine):
    assert run(engine, "retroactive-deliveries") == [{
        "message_time": "2026-11-20T09:10:00Z", "instance": "acme", "qid": "q1", "sender": "bad@evil.example",
        "subject": "Invoice 7", "recipients": "alice@acme.example, bob@acme.example",
        "threat_time": "2026-11-20T09:40:00.000Z", "classification": "phish", "threat_status": "active",
        "campaign_id": "camp-1",
    }]


def test_campaign_blast_radius(engine):
    rows = run(engine, "campaign-blast-radius", campaign="camp-1")
    assert [(r["recipient"], r["delivered"], r["blocked"], r["clicks_permitted"], r["clicks_blocked"])
            for r in rows] == [
        ("alice@acme.example", 1, 1, 1, 0),
        ("dave@acme.example", 0, 0, 1, 0),
        ("bob@acme.example", 1, 0, 0, 0),
        ("carol@acme.example", 0, 0, 0, 1),
    ]


def test_most_attacked_people(engine):
    rows = run(engine, "most-attacked-people")
    assert [(r["recipient"], r["messages"], r["delivered"], r["threats"], r["campaigns"]) for r in rows] == [
        ("alice@acme.example", 2, 1, 2, 1),
        ("bob@acme.example", 1, 1, 1, 1),
        ("carol@acme.example", 1, 1, 1, 1),
    ]


def test_pod_sender_messages(engine):
    rows = run(engine, "pod-sender-messages", sender="sender@evil.example")
    assert [(r["message_time"], r["qid"], r["recipient"], r["subject"], r["disposition"]) for r in rows] == [
        ("2026-11-20T09:30:00Z", "QA1", "x@acme.example", "Invoice", "reject"),
        ("2026-11-20T09:30:00Z", "QA1", "y@acme.example", "Invoice", "reject"),
    ]


def test_pod_delivery_trace(engine):
    rows = run(engine, "pod-delivery-trace", qid="QA1")
    assert [(r["event_time"], r["event_type"], r["sender"], r["recipients"], r["status"], r["relay"])
            for r in rows] == [
        ("2026-11-20T09:30:00Z", "message", "Sender@Evil.example", "x@acme.example, Y@acme.example", "reject", None),
        ("2026-11-20T09:30:02Z", "maillog", "<sender@evil.example>", "<x@acme.example>", "Sent",
         "mx.acme.example [192.0.2.1]"),
    ]


def test_casb_compromised_accounts_with_their_activity(engine):
    rows = run(engine, "casb-compromised-accounts")
    assert [(r["alert_id"], r["severity"], r["user_email"], r["activity_time"], r["action"], r["request_ip"],
             r["country"]) for r in rows] == [
        ("A1", "HIGH", "eve@acme.example", "2026-11-20T09:04:00Z", "Successful Login", "203.0.113.5", "Narnia"),
    ]


def test_collection_completeness_shows_hours_with_none(engine):
    rows = run(engine, "collection-completeness")
    assert [(r["instance"], r["source"], r["hour_start"], r["events"]) for r in rows] == [
        ("acme", "tap", "2026-11-20T09:00:00Z", 0),
        ("acme", "tap", "2026-11-20T10:00:00Z", 5),
        ("acme", "tap", "2026-11-20T11:00:00Z", 2),
        ("acme-casb", "casb", "2026-11-20T09:00:00Z", 0),
        ("acme-casb", "casb", "2026-11-20T10:00:00Z", 4),
        ("acme-casb", "casb", "2026-11-20T11:00:00Z", 0),
        ("acme-pod", "pod", "2026-11-20T09:00:00Z", 0),
        ("acme-pod", "pod", "2026-11-20T10:00:00Z", 3),
        ("acme-pod", "pod", "2026-11-20T11:00:00Z", 0),
        ("other", "tap", "2026-11-20T09:00:00Z", 0),
        ("other", "tap", "2026-11-20T10:00:00Z", 1),
        ("other", "tap", "2026-11-20T11:00:00Z", 0),
    ]


def test_every_shipped_query_has_a_test_above():
    tested = {"permitted-clicks-active", "retroactive-deliveries", "campaign-blast-radius", "most-attacked-people",
              "pod-sender-messages", "pod-delivery-trace", "casb-compromised-accounts", "collection-completeness"}
    assert set(QUERIES) == tested


def test_tables_carry_the_envelope_the_raw_event_and_the_partitions(engine):
    result = engine.run("SELECT id, source, instance, event_type, dt, hour, raw.QID AS qid, raw_json "
                        "FROM tap_messages WHERE id = 'm1'", [])
    row = dict(zip(result.columns, result.rows[0], strict=True))
    assert row["source"] == "proofpoint_tap" and row["event_type"] == "messagesDelivered"
    assert (row["dt"], row["hour"], row["qid"]) == ("2026-11-20", "10", "q1")
    assert '"impostorScore":0.5' in row["raw_json"]  # the whole vendor event, fields not in the struct too
    counts = engine.run("SELECT count(*) FROM tap_clicks", []).rows[0][0], engine.run(
        "SELECT count(*) FROM tap_messages", []).rows[0][0]
    assert counts == (6, 3)  # each TAP table reads only its own event types


def test_every_object_key_names_its_partition_and_instance(archive):
    keys = [parse_archive_key(str(p.relative_to(archive))) for p in archive.rglob("*.json.gz")]
    assert all(keys) and {k.instance for k in keys} == {"acme", "other", "acme-casb", "acme-pod"}


# --- one SQL text: the template's NamedQuery resources hold the package's files ----------------------

def test_template_named_queries_are_the_shipped_sql_files():
    resources = load_template(TEMPLATE)["Resources"]
    named = {r["Properties"]["Name"]: r["Properties"] for r in resources.values()
             if r["Type"] == "AWS::Athena::NamedQuery"}
    assert set(named) == set(QUERIES) and len(named) >= 8
    for name, query in QUERIES.items():
        assert named[name]["QueryString"] == query.sql, f"template.yaml's {name} differs from queries/{name}.sql"
        assert named[name]["Description"] == query.description
        assert named[name]["WorkGroup"] == {"Ref": "AnalyticsWorkGroup"}


def test_readme_lists_every_shipped_query():
    readme = (TEMPLATE.parent / "README.md").read_text()
    for name in QUERIES:
        assert f"`{name}`" in readme


def test_every_table_is_projected_on_the_sinks_key_layout():
    from ppcollector.sinks import partition_prefix

    resources = load_template(TEMPLATE)["Resources"]
    for resource in resources.values():
        if resource["Type"] != "AWS::Glue::Table":
            continue
        spec = resource["Properties"]["TableInput"]
        params = spec["Parameters"]
        location = params["storage.location.template"]["Fn::Sub"].replace("${!", "${")
        prefix = partition_prefix(f"proofpoint_{spec['Name'].split('_')[0]}", "acme", "EV", "2026-11-20T07")
        filled = location.replace("${event_type}", "EV").replace("${dt}", "2026-11-20").replace("${hour}", "07")
        assert filled == "s3://${RawBucket}/" + prefix.removesuffix("acme."), spec["Name"]
        assert params["projection.enabled"] == "true" and params["projection.dt.format"] == "yyyy-MM-dd"
        assert params["projection.hour.digits"] == "2"
        assert [k["Name"] for k in spec["PartitionKeys"]] == ["event_type", "dt", "hour"]


# --- the dialect shim ---------------------------------------------------------------------------------

def test_duckdb_sql_rewrites_only_row_unnests():
    sql = "SELECT a FROM t CROSS JOIN UNNEST(t.raw.items) AS i(x, y) CROSS JOIN UNNEST(t.raw.list) AS r(one)"
    assert duckdb_sql(sql) == ("SELECT a FROM t CROSS JOIN LATERAL (SELECT unnest(t.raw.items, recursive := true)) "
                               "AS i(x, y) CROSS JOIN UNNEST(t.raw.list) AS r(one)")
    nested = "FROM UNNEST(f(g(1), 2)) AS h(a,\n b)"
    assert duckdb_sql(nested) == "FROM LATERAL (SELECT unnest(f(g(1), 2), recursive := true)) AS h(a,\n b)"
    with pytest.raises(QueryError):
        duckdb_sql("FROM UNNEST(f(1) AS h(a, b)")


def test_hive_types_become_duckdb_types():
    assert duckdb_type("array<struct<a:string,b:struct<c:int,from:bigint>>>") == (
        'STRUCT("a" VARCHAR, "b" STRUCT("c" INTEGER, "from" BIGINT))[]')
    with pytest.raises(QueryError):
        duckdb_type("map<string,string>")


# --- parameters ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"campaign": "x' OR '1'='1"}, "not a valid --campaign"),
    ({"campaign": "camp-1", "instance": "Acme Tap"}, "invalid instance name"),
    ({}, "campaign-blast-radius needs --campaign"),
])
def test_bad_parameters_are_refused(options, message):
    with pytest.raises(QueryError, match=message):
        parameter_values(QUERIES["campaign-blast-radius"], WINDOW, options)


def test_window_parsing():
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    window = QueryWindow.parse("36h", None, now)
    assert window.days() == ["2026-11-19", "2026-11-20"] and window.until == now
    with pytest.raises(QueryError, match="must be after"):
        QueryWindow.parse("2026-11-20T00:00:00Z", "2026-11-19T00:00:00Z", now)
    with pytest.raises(QueryError, match="not a duration or timestamp"):
        QueryWindow.parse("yesterday", None, now)


# --- Athena -------------------------------------------------------------------------------------------

class FakeAthena:
    def __init__(self, states: list[str], pages: list[list[list[str | None]]], reason: str = "") -> None:
        self.states = states
        self.pages = pages
        self.reason = reason
        self.started: dict[str, Any] = {}
        self.result_calls: list[dict[str, Any]] = []

    def start_query_execution(self, **request: Any) -> dict[str, Any]:
        self.started = request
        return {"QueryExecutionId": "q-1"}

    def get_query_execution(self, QueryExecutionId: str) -> dict[str, Any]:  # noqa: N803
        state = self.states.pop(0)
        return {"QueryExecution": {"Status": {"State": state, "StateChangeReason": self.reason},
                                   "Statistics": {"DataScannedInBytes": 3 * 1024 * 1024}}}

    def get_query_results(self, **request: Any) -> dict[str, Any]:
        self.result_calls.append(request)
        index = int(request.get("NextToken", "0"))
        page = {"ResultSet": {"ResultSetMetadata": {"ColumnInfo": [{"Name": "recipient"}, {"Name": "n"}]},
                              "Rows": [{"Data": [{} if v is None else {"VarCharValue": v} for v in row]}
                                       for row in self.pages[index]]}}
        if index + 1 < len(self.pages):
            page["NextToken"] = str(index + 1)
        return page


def test_athena_waits_pages_and_reports_bytes_scanned():
    client = FakeAthena(["QUEUED", "RUNNING", "SUCCEEDED"],
                        [[["recipient", "n"], ["a@x", "2"]], [["b@x", None]]])
    progress = io.StringIO()
    engine = AthenaEngine(client, "wg", "db", sleep=lambda _: None, progress=progress)
    query = QUERIES["campaign-blast-radius"]
    result = engine.run(query.sql, parameter_values(query, WINDOW, {"campaign": "camp-1"}))
    assert result.columns == ["recipient", "n"] and result.rows == [["a@x", "2"], ["b@x", None]]
    assert result.bytes_scanned == 3 * 1024 * 1024
    assert client.started["WorkGroup"] == "wg" and client.started["QueryExecutionContext"] == {"Database": "db"}
    assert client.started["ExecutionParameters"][:5] == [
        "'2026-11-20'", "'2026-11-20'", "'2026-11-20T09:00:00Z'", "'2026-11-20T12:00:00Z'", "''"]
    assert client.started["ExecutionParameters"][5] == "'camp-1'"
    assert [c.get("NextToken") for c in client.result_calls] == [None, "1"]
    assert "athena: running" in progress.getvalue() and "3.0 MB scanned" in progress.getvalue()


def test_athena_failure_is_one_line_with_the_reason():
    client = FakeAthena(["RUNNING", "FAILED"], [], reason="Query exhausted resources:\n bytes scanned limit")
    engine = AthenaEngine(client, "wg", "db", sleep=lambda _: None, progress=io.StringIO())
    with pytest.raises(QueryError, match="FAILED: Query exhausted resources: bytes scanned limit"):
        engine.run("SELECT 1", [])
