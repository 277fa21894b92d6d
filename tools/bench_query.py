"""``ppctl query`` locally: DuckDB time of the collection-completeness query over a 1M-event archive.

The archive is written once (cached in ``.bench/query-archive``) through the collector's own record
builder and S3 sink (gzip NDJSON objects, the real key layout): 24 hours, one object per instance,
event type and hour, realistic TAP click and message events for three TAP instances, CASB events for
one and PoD maillog lines for another. Then the shipped query runs through the same engine as
``ppctl query`` (views built from template.yaml), after the archive is in the local cache.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "shared", ROOT / "cli"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

ARCHIVE = ROOT / ".bench" / "query-archive"
EVENTS = 1_000_000
HOURS = 24
START = datetime(2026, 11, 20, tzinfo=UTC)
# (source, instance, event type, share of the events)
STREAMS = [
    ("proofpoint_tap", "tap-eu", "clicksPermitted", 0.10), ("proofpoint_tap", "tap-eu", "messagesDelivered", 0.15),
    ("proofpoint_tap", "tap-us", "clicksPermitted", 0.10), ("proofpoint_tap", "tap-us", "messagesDelivered", 0.15),
    ("proofpoint_tap", "tap-apac", "messagesBlocked", 0.10),
    ("proofpoint_casb", "casb-main", "event", 0.20),
    ("proofpoint_pod", "pod-main", "maillog", 0.20),
]


class FileS3:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put_object(self, *, Bucket: str, Key: str, Body: Any, **_: Any) -> None:  # noqa: N803 - boto3's names
        path = self.root / Key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(Body.read())


def raw_event(rng: random.Random, event_type: str, n: int, when: datetime) -> dict[str, Any]:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    user = f"user{rng.randrange(5000)}@acme.example"
    if event_type.startswith("clicks"):
        return {"GUID": f"{rng.getrandbits(128):032x}", "id": f"{rng.getrandbits(128):032x}", "campaignId": None,
                "classification": "phish", "clickIP": f"198.51.100.{rng.randrange(255)}", "clickTime": stamp,
                "messageID": f"<{n}@mail.example>", "recipient": user, "sender": "bounce@mailer.example.net",
                "senderIP": "203.0.113.9", "threatID": f"{rng.getrandbits(256):064x}", "threatStatus": "active",
                "threatTime": stamp, "threatURL": "https://threatinsight.proofpoint.com/#/t",
                "url": f"https://secure-docs.example.org/login/{n}", "userAgent": "Mozilla/5.0 (Windows NT 10.0)"}
    if event_type.startswith("messages"):
        return {"GUID": f"{rng.getrandbits(128):032x}", "QID": f"r{n:013d}", "messageTime": stamp,
                "sender": "bounce@mailer.example.net", "senderIP": "203.0.113.9", "recipient": [user],
                "subject": f"Invoice #{n} from Contoso", "spamScore": 4, "phishScore": 90, "malwareScore": 0,
                "impostorScore": 0.0, "policyRoutes": ["default_inbound"], "modulesRun": ["spam", "urldefense"],
                "threatsInfoMap": [{"campaignID": None, "classification": "phish", "threat": "https://x.example/",
                                    "threatID": f"{rng.getrandbits(256):064x}", "threatStatus": "active",
                                    "threatTime": stamp, "threatType": "url"}]}
    if event_type == "event":
        return {"eventId": f"flevent_{rng.getrandbits(128):032x}", "cloudService": "Office 365", "timestamp": stamp,
                "resource": "Login Service", "action": "Successful Login", "userEmail": user,
                "requestIp": "192.0.2.44", "geographicalContextCountry": "Germany", "systemEvent": False}
    qid = f"4{n:012d}"
    return {"data": f"sendmail[17416]: {qid}: to=<{user}>, stat=Sent (Ok: queued)", "id": f"{rng.getrandbits(96):x}",
            "pps": {"agent": "m0000123.ppops.net", "cid": "acme_hosted"}, "ts": stamp,
            "sm": {"qid": qid, "to": [f"<{user}>"], "stat": "Sent (Ok: queued)", "dsn": "2.0.0", "mailer": "esmtp"}}


def build_archive(log: Callable[[str], None]) -> int:
    from ppcollector.records import build_record
    from ppcollector.sinks import BatchInfo, S3Sink

    marker = ARCHIVE / f"complete-{EVENTS}"
    if marker.exists():
        return int(marker.read_text())
    rng = random.Random(11)
    sink = S3Sink(FileS3(ARCHIVE), "bench")
    written = 0
    for hour in range(HOURS):
        received = START + timedelta(hours=hour, minutes=5)
        for source, instance, event_type, share in STREAMS:
            batch = sink.open_batch(BatchInfo(source, instance, f"bench_{received:%Y%m%dT%H%M%SZ}"))
            for n in range(int(EVENTS * share / HOURS)):
                when = received - timedelta(seconds=rng.randrange(3600))
                batch.add(build_record(record_id=f"{rng.getrandbits(128):032x}", source=source, instance=instance,
                                       event_type=event_type, raw=raw_event(rng, event_type, n, when),
                                       event_time=when, received_time=received, collected_time=received))
                written += 1
            batch.commit()
        log(f"  archive: hour {hour + 1}/{HOURS}, {written:,} events")
    marker.write_text(str(written))
    return written


def run(runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    from ppctl.engines import DuckDbEngine
    from ppctl.hunting import QueryWindow, load_named_queries, load_tables, parameter_values

    events = build_archive(log)
    objects = list(ARCHIVE.rglob("*.json.gz"))
    size = sum(p.stat().st_size for p in objects)
    window = QueryWindow(START, START + timedelta(hours=HOURS))
    query = load_named_queries()["collection-completeness"]
    values = parameter_values(query, window, {})
    seconds, rows = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        engine = DuckDbEngine(ARCHIVE, load_tables(), days=window.days())
        result = engine.run(query.sql, values)
        seconds.append(time.perf_counter() - started)
        rows = len(result.rows)
        total = sum(row[3] for row in result.rows)
        if total != events:
            raise SystemExit(f"bench_query: the query counted {total} events, the archive holds {events}")
    return {"events": events, "objects": len(objects), "gzip_bytes": size, "seconds": seconds, "rows": rows}


if __name__ == "__main__":
    print(run(1, lambda text: print(text, file=sys.stderr)))
