"""`make demo`: the whole pipeline on loopback.

A local AWS emulator (moto server) and the Proofpoint simulator on 127.0.0.1, `ppctl local deploy`,
demo instances added with `ppctl instance add`, the pollers invoked on their schedule for a few cycles,
then `ppctl status`, what landed in S3 and Kinesis, and the archive as OCSF Parquet rows per class.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STACK = "proofpoint-collector-demo"
TAP_PRINCIPAL = "demo-principal"
TAP_SECRET = "demo-tap-secret-4d2b"
CASB_CLIENT, CASB_SECRET, CASB_KEY = "demo-casb-client", "demo-casb-secret-51c0", "demo-casb-key-77e1"
POD_TOKEN, POD_CLUSTER = "demo-pod-token-9e3f", "demo_hosted"
CYCLES = int(os.environ.get("DEMO_CYCLES", "3"))
CYCLE_SECONDS = float(os.environ.get("DEMO_CYCLE_SECONDS", "31"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def ppctl(*args: str, stdin: str | None = None, quiet: bool = False) -> subprocess.CompletedProcess:
    print(f"$ ppctl {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "ppctl", *args, "--stack", STACK], input=stdin,
                            text=True, capture_output=True, cwd=ROOT, timeout=600)
    if not quiet or result.returncode:
        sys.stdout.write(result.stdout)
    if result.returncode:
        sys.stdout.write(result.stderr)
        raise SystemExit(f"demo: ppctl {args[0]} failed (exit {result.returncode})")
    return result


def landed(outputs: dict[str, str]) -> tuple[dict[str, tuple[int, int]], int]:
    import boto3

    s3, kinesis = boto3.client("s3"), boto3.client("kinesis")
    per_source: dict[str, tuple[int, int]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=outputs["RawBucketName"], Prefix="proofpoint/"):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=outputs["RawBucketName"], Key=obj["Key"])["Body"].read()
            source = obj["Key"].split("/")[1]
            objects, records = per_source.get(source, (0, 0))
            per_source[source] = (objects + 1, records + len(gzip.decompress(body).splitlines()))
    stream_records = 0
    for shard in kinesis.list_shards(StreamName=outputs["EventStreamName"])["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=outputs["EventStreamName"], ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
            stream_records += len(page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return per_source, stream_records


def show_ocsf(outputs: dict[str, str]) -> bool:
    """What landed, as OCSF 1.1.0 Parquet in Security Lake's layout under .demo/securitylake/."""
    import boto3

    from ppocsf.local import convert_archive

    root = ROOT / ".demo" / "securitylake"
    say(f"OCSF 1.1.0: the archive converted to Security Lake Parquet ({root.relative_to(ROOT)}/ext/...)")
    rows = convert_archive(boto3.client("s3"), outputs["RawBucketName"], root, region="us-east-1")
    for class_name, count in sorted(rows.items()):
        print(f"  {class_name}: {count} rows")
    return bool(rows)


def start_streamer(outputs: dict[str, str]) -> subprocess.Popen:
    """The PoD streamer exactly as its Dockerfile runs it, with the environment the task definition sets."""
    env = {**os.environ, "STATE_TABLE": outputs["StateTableName"], "RAW_BUCKET": outputs["RawBucketName"],
           "EVENT_STREAM": outputs["EventStreamName"], "SINKS": outputs["SinkMode"],
           "SECRET_PREFIX": outputs["SecretPrefix"], "POD_FLUSH_AGE_SECONDS": "5",
           "POD_REGISTRY_REFRESH_SECONDS": "2"}
    log = open(ROOT / ".demo" / "pod-streamer.log", "w")  # noqa: SIM115 - the process writes it until the end
    print(f"$ python functions/pod_streamer/streamer.py   (log: {log.name})")
    return subprocess.Popen([sys.executable, str(ROOT / "functions" / "pod_streamer" / "streamer.py")],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def main() -> int:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulator's per-request lines

    from ppsim.casb import CasbSimulator
    from ppsim.pod import PodSimulator
    from ppsim.tap import TapSimulator

    (ROOT / ".demo").mkdir(exist_ok=True)
    say("starting the local AWS emulator and the Proofpoint simulator (127.0.0.1 only)")
    port = free_port()
    emulator = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    emulator.start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "demo",
                       "AWS_SECRET_ACCESS_KEY": "demo", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"})
    os.environ.pop("AWS_PROFILE", None)
    tap = TapSimulator({TAP_PRINCIPAL: TAP_SECRET}, seed=42, events_per_hour=900)
    tap.start()
    casb = CasbSimulator({CASB_CLIENT: CASB_SECRET}, {"demo": CASB_KEY}, seed=42, alerts_per_hour=60,
                         events_per_hour=600)
    casb.start()
    pod = PodSimulator({POD_TOKEN: POD_CLUSTER}, seed=42, events_per_minute=120, duplicate_rate=0.02)
    pod.start()
    streamer = None
    print(f"AWS emulator: http://127.0.0.1:{port}\nTAP simulator: {tap.url}\nCASB simulator: {casb.url}\n"
          f"PoD simulator: {pod.url}")
    try:
        say("deploying template.yaml into the emulator")
        outputs = json.loads(ppctl("local", "deploy", "--json", quiet=True).stdout)
        for key in ("StateTableName", "RawBucketName", "EventStreamName", "TapPollerFunctionName"):
            print(f"  {key}: {outputs[key]}")

        say("adding a TAP instance (the secret comes from stdin, never the command line)")
        ppctl("instance", "add", "tap", "demo-tap", "--principal", TAP_PRINCIPAL, "--base-url", tap.url,
              "--interval", "1m", "--settle-lag", "1m", "--initial-lookback", "2h", "--secret-stdin",
              stdin=TAP_SECRET + "\n")
        say("adding a CASB instance (client secret and API key from stdin, one per line)")
        ppctl("instance", "add", "casb", "demo-casb", "--client-id", CASB_CLIENT, "--api-fqdn", casb.url,
              "--events-fqdn", casb.url, "--interval", "5m", "--initial-lookback", "2h", "--secret-stdin",
              stdin=f"{CASB_SECRET}\n{CASB_KEY}\n")
        say("adding a PoD instance (the token from stdin) and starting the PoD streamer process")
        ppctl("instance", "add", "pod", "demo-pod", "--cluster-id", POD_CLUSTER, "--types", "message,maillog",
              "--url", pod.url, "--secret-stdin", stdin=POD_TOKEN + "\n")
        streamer = start_streamer(outputs)
        ppctl("status")

        say(f"running the pollers on their schedule: {CYCLES} ticks, {CYCLE_SECONDS:.0f} s apart")
        for cycle in range(1, CYCLES + 1):
            for function, name in (("TapPollerFunction", "tap_poller"), ("CasbPollerFunction", "casb_poller")):
                event = str(ROOT / "events" / f"{name}_scheduled.json")
                result = ppctl("local", "invoke", function, "--event", event, quiet=True)
                summary = json.loads(result.stdout)
                fetched = [line for line in result.stderr.splitlines()
                           if f'"message":"{summary["connector"]}: fetched' in line]
                skipped = [o["skipped_reason"] for o in summary["outcomes"] if not o["polled"]]
                print(f"  tick {cycle} {summary['connector']}: polled {summary['polled']} instance(s), "
                      f"{summary['events']} events in {len(fetched)} batch(es)"
                      + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
            if cycle < CYCLES:
                time.sleep(CYCLE_SECONDS)

        say("stopping the PoD streamer (SIGTERM: flush, checkpoint, release the sessions)")
        streamer.send_signal(signal.SIGTERM)
        print(f"  streamer exited with {streamer.wait(60)}")
        say("status")
        ppctl("status")
        say("what landed")
        per_source, stream_records = landed(outputs)
        for source, (objects, records) in sorted(per_source.items()):
            print(f"  S3 {source}: {records} records in {objects} objects (gzip NDJSON)")
        print(f"  Kinesis {outputs['EventStreamName']}: {stream_records} records")
        ok = {"source=tap", "source=casb", "source=pod"} <= set(per_source) and stream_records > 0
        say("hunting over what was collected (ppctl query: DuckDB over the archive, the stack's Athena SQL)")
        with tempfile.TemporaryDirectory(prefix="ppctl-demo-cache-") as cache:
            for query in ("collection-completeness", "most-attacked-people"):
                result = ppctl("query", query, "--since", "2h", "--cache-dir", cache, quiet=True)
                lines = result.stdout.splitlines()
                print("\n".join(lines[:13]) + (f"\n  ... {len(lines) - 13} more rows" if len(lines) > 13 else ""))
        ok = show_ocsf(outputs) and ok
        print("\ndemo finished: " + ("events flowed into S3 and Kinesis" if ok else "NO DATA LANDED"))
        return 0 if ok else 1
    finally:
        if streamer and streamer.poll() is None:
            streamer.kill()
        tap.stop()
        casb.stop()
        pod.stop()
        emulator.stop()


if __name__ == "__main__":
    sys.exit(main())
