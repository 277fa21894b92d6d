"""``make bench``: the performance benchmarks of the collector, with their targets.

Prints one table (measured figure as median [min-max] over the runs, target, ratio, result) and
exits non-zero when a measured target is missed. A benchmark that cannot be measured yet is shown
as PENDING: it is not counted as a pass, and does not fail the run.

    python tools/bench.py [--runs 3] [--only tap,coldstart,cost,budget,pod,query,ocsf] [--json FILE]

See README.md, "Performance", for what each row measures and how.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "shared", ROOT / "simulator", ROOT / "cli", ROOT / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "shared"), str(ROOT / "simulator"), str(ROOT / "cli"),
     os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

PASS, FAIL, PENDING, INFO = "PASS", "FAIL", "PENDING", "info"
SMALL_HOUR, BIG_HOUR = 40_000, 200_000


@dataclass
class Row:
    benchmark: str
    measured: str
    target: str
    ratio: str
    result: str
    note: str = ""


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """median [min-max]"""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": ram,
            "python": platform.python_version(), "platform": platform.platform()}


# --- TAP: memory and throughput -----------------------------------------------------------------------

def bench_tap(runs: int) -> tuple[list[Row], dict[str, Any]]:
    import bench_tap as bt

    from ppcollector.sinks import GZIP_LEVEL

    bodies = {n: bt.prepare_body(n, log) for n in (SMALL_HOUR, BIG_HOUR)}
    log("  deploying the stack into the local AWS emulator (moto server)")
    stack, server = bt.Stack(), bt.BodyServer()
    parser_name, _ = bt.json_parser()
    per_run: list[dict[str, Any]] = []
    try:
        for run in range(runs):
            small = bt.run_poll(stack, server, bodies[SMALL_HOUR], f"bench-small-{run}")
            big = bt.run_poll(stack, server, bodies[BIG_HOUR], f"bench-big-{run}")
            floor = bt.floor_seconds(bodies[BIG_HOUR], GZIP_LEVEL)
            per_run.append({"small": asdict(small), "big": asdict(big), "floor": floor})
            log(f"  run {run + 1}: {small.events} events {small.peak_rss_mb:.1f} MB {small.poll_seconds:.1f} s | "
                f"{big.events} events ({big.bytes / 1e6:.0f} MB) {big.peak_rss_mb:.1f} MB {big.poll_seconds:.1f} s | "
                f"floor {floor['parse']:.1f} s parse + {floor['gzip']:.1f} s gzip")
    finally:
        server.close()
        stack.close()
    big_rss = [r["big"]["peak_rss_mb"] for r in per_run]
    growth = [r["big"]["peak_rss_mb"] / r["small"]["peak_rss_mb"] for r in per_run]
    mb = bodies[BIG_HOUR].size / 1e6
    poller_mbs = [mb / r["big"]["poll_seconds"] for r in per_run]
    floor_mbs = [mb / r["floor"]["total"] for r in per_run]
    speed = [r["floor"]["total"] / r["big"]["poll_seconds"] for r in per_run]  # = poller MB/s / floor MB/s
    events = per_run[0]["big"]["events"]
    rows = [
        Row(f"TAP memory: peak RSS of the poller, {events:,}-event hour ({mb:.0f} MB)", f"{spread(big_rss)} MB",
            "<= 200 MB", f"{statistics.median(big_rss) / 200:.2f}",
            PASS if statistics.median(big_rss) <= 200 else FAIL),
        Row(f"TAP memory: that peak / peak of a {per_run[0]['small']['events']:,}-event hour "
            f"({spread([r['small']['peak_rss_mb'] for r in per_run])} MB)", spread(growth, "{:.3f}"),
            "<= 1.10", f"{statistics.median(growth) / 1.10:.2f}", PASS if statistics.median(growth) <= 1.10 else FAIL),
        Row("TAP throughput: poller MB/s / floor MB/s (same bytes, same run)",
            f"{spread(poller_mbs)} MB/s vs floor {spread(floor_mbs)} MB/s",
            f">= 0.6 x floor ({parser_name} + zlib-ng gzip level {GZIP_LEVEL})", spread(speed, "{:.2f}"),
            PASS if statistics.median(speed) >= 0.6 else FAIL),
    ]
    return rows, {"runs": per_run, "body_bytes": bodies[BIG_HOUR].size, "events": events}


# --- cold start ----------------------------------------------------------------------------------------

def bench_coldstart(runs: int) -> tuple[list[Row], dict[str, Any]]:
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT / "shared"), "AWS_REGION": "us-east-1"}
    commands = {
        "boto3": ([python, "-c", "import boto3"], ROOT),
        "tap_poller": ([python, "-c", "import app"], ROOT / "functions" / "tap_poller"),
        "casb_poller": ([python, "-c", "import app"], ROOT / "functions" / "casb_poller"),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for cmd, cwd in commands.values():  # warm-up: byte-code compiled, files cached
        subprocess.run(cmd, cwd=cwd, env=env, check=True)
    repeats = max(runs, 1) * 3
    for _ in range(repeats):  # interleaved, so drift hits all alike
        for name, (cmd, cwd) in commands.items():
            started = time.perf_counter()
            subprocess.run(cmd, cwd=cwd, env=env, check=True)
            times[name].append(time.perf_counter() - started)
    rows = []
    for name in ("tap_poller", "casb_poller"):
        ratios = [t / b for t, b in zip(times[name], times["boto3"], strict=True)]
        ratio = statistics.median(times[name]) / statistics.median(times["boto3"])
        rows.append(Row(f"Cold start: import functions/{name}/app.py (process incl.)",
                        f"{spread([t * 1000 for t in times[name]], '{:.0f}')} ms vs boto3 "
                        f"{spread([t * 1000 for t in times['boto3']], '{:.0f}')} ms",
                        "<= 1.3 x boto3", f"{ratio:.2f} (pairs {min(ratios):.2f}-{max(ratios):.2f})",
                        PASS if ratio <= 1.3 else FAIL))
    return rows, {"seconds": times}


# --- cost ----------------------------------------------------------------------------------------------

def bench_cost(tap_data: dict[str, Any] | None) -> tuple[list[Row], dict[str, Any]]:
    import bench_cost as bc
    import bench_tap as bt

    body = bt.prepare_body(BIG_HOUR, log)
    with contextlib.redirect_stdout(io.StringIO()):
        cost = bc.run_cost(body)
    memory_mb = bc.template_memory_mb()
    rows = [
        Row(f"Cost: S3 PUTs per 1M TAP events ({cost['events']:,} events, {cost['windows']} hour windows, "
            f"both sinks)", f"{cost['s3_puts_per_million']:.1f} ({cost['s3_puts']} PUTs; "
            f"{cost['s3_undersized']} parts under 64 MiB before the last)",
            f"<= 1 per (window, type, 64 MiB) = {cost['s3_puts_allowed']}",
            f"{cost['s3_puts'] / cost['s3_puts_allowed']:.2f}",
            PASS if cost["s3_puts"] <= cost["s3_puts_allowed"] and not cost["s3_undersized"] else FAIL),
        Row("Cost: Kinesis PutRecords calls per 1M TAP events", f"{cost['kinesis_calls_per_million']:.0f} "
            f"({cost['kinesis_calls']} calls, up to {cost['kinesis_largest_call']} records)", "<= 2,100",
            f"{cost['kinesis_calls_per_million'] / 2100:.2f}",
            PASS if cost["kinesis_calls_per_million"] <= 2100 else FAIL),
    ]
    if tap_data:
        per_event = [r["big"]["poll_seconds"] / r["big"]["events"] for r in tap_data["runs"]]
        gbs = [p * 1_000_000 * memory_mb / 1024 for p in per_event]
        rows.append(Row(f"Cost: Lambda GB-s per 1M TAP events (S3 sink; MemorySize {memory_mb} MB)",
                        f"{spread(gbs)} GB-s", "reported", "-", INFO,
                        f"{cost['seconds']:.0f} s in-process for the {cost['events']:,} events into both sinks"))
    return rows, cost


# --- rate budget -------------------------------------------------------------------------------------

def bench_budget(tap_data: dict[str, Any] | None) -> tuple[list[Row], dict[str, Any]]:
    import bench_budget as bb

    hour_cost = statistics.median(r["big"]["poll_seconds"] for r in tap_data["runs"]) if tap_data else 15.0
    rows, data = [], []
    for scenario in bb.run_all(hour_cost):
        peak = scenario.max_rolling()
        caught = scenario.caught_up_after
        ok = (caught is not None and caught.total_seconds() <= 86400 and max(peak.values()) <= bb.LIMIT
              and scenario.steady_refused == 0 and scenario.throttled == 0 and not scenario.errors)
        hours = f"{caught.total_seconds() / 3600:.1f} h" if caught else "never"
        first = scenario.first_day(bb.datetime(2026, 11, 20, 12, 0, 0, tzinfo=bb.UTC))
        rows.append(Row(f"Rate budget: {scenario.name}",
                        f"caught up in {hours}; requests in first 24 h {first}; max in any 24 h {peak}; "
                        f"steady refused {scenario.steady_refused}; 429s {scenario.throttled}",
                        "caught up <= 24 h, <= 1800/24 h per pool, steady never refused",
                        f"{(caught.total_seconds() / 86400) if caught else float('inf'):.2f} of 24 h; "
                        f"{max(peak.values()) / bb.LIMIT:.2f} of pool", PASS if ok else FAIL,
                        f"a full hour costs {hour_cost:.1f} s of invocation time "
                        f"({'measured above' if tap_data else 'assumed: TAP not run'})"))
        data.append({"name": scenario.name, "caught_up_seconds": caught.total_seconds() if caught else None,
                     "max_rolling": peak, "first_day": first, "requests": len(scenario.requests),
                     "steady_refused": scenario.steady_refused, "throttled": scenario.throttled,
                     "errors": scenario.errors[:5]})
    return rows, {"scenarios": data}


# --- PoD ---------------------------------------------------------------------------------------------

def bench_pod(runs: int) -> tuple[list[Row], dict[str, Any]]:
    pending = [Row("PoD: message frames over loopback into the sinks", "not measured", ">= 10,000 events/s, "
                   "flush age honoured within 1 s", "-", PENDING)]
    if not (ROOT / "functions" / "pod_streamer" / "streamer.py").exists():
        pending[0].note = "the PoD streamer does not exist yet"
        return pending, {}
    attempts = []
    for _ in range(2):  # once more if it fails: some of its timing checks are sensitive to load
        tests = subprocess.run([sys.executable, "-m", "pytest", "tests/unit/test_pod_streamer.py", "-q", "-p",
                                "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
        attempts.append(tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else "no output")
        if tests.returncode == 0:
            break
    if tests.returncode != 0:
        pending[0].note = f"tests/unit/test_pod_streamer.py does not pass yet ({'; '.join(attempts)})"
        return pending, {"tests": tests.stdout[-2000:]}
    try:
        import bench_pod
    except ImportError:
        pending[0].note = "no PoD benchmark yet (tools/bench_pod.py)"
        return pending, {}
    rows, data = bench_pod.run(runs, log)
    data["pod_tests"] = attempts
    return rows, data


# --- OCSF ------------------------------------------------------------------------------------------------

def bench_ocsf(runs: int) -> tuple[list[Row], dict[str, Any]]:
    import bench_ocsf

    data = bench_ocsf.run(runs, SMALL_HOUR, BIG_HOUR, log)
    big = [r[str(BIG_HOUR)] for r in data["runs"]]
    small = [r[str(SMALL_HOUR)] for r in data["runs"]]
    rate = [r["events"] / r["cpu_seconds"] for r in big]
    rows_rate = [r["rows"] / r["cpu_seconds"] for r in big]
    growth = [b["peak_rss_mb"] / s["peak_rss_mb"] for b, s in zip(big, small, strict=True)]
    events = big[0]["events"]
    rows = [
        Row(f"OCSF: normalisation + validation + zstd Parquet, {events:,}-event TAP hour "
            f"({data['parts'][str(BIG_HOUR)]} raw objects), one core",
            f"{spread(rate, '{:,.0f}')} events per CPU-second ({spread(rows_rate, '{:,.0f}')} OCSF rows/s; "
            f"{big[0]['rows']:,} rows)", "reported", "-", INFO),
        Row(f"OCSF memory: writer peak RSS, {events:,}-event hour / {small[0]['events']:,}-event hour",
            f"{spread([r['peak_rss_mb'] for r in big])} MB / {spread([r['peak_rss_mb'] for r in small])} MB "
            f"= {spread(growth, '{:.3f}')}", "<= 1.10 (flat)", f"{statistics.median(growth) / 1.10:.2f}",
            PASS if statistics.median(growth) <= 1.10 else FAIL),
        Row("OCSF files: Parquet objects of the 200k hour (one per raw object, class and eventDay)",
            f"{big[0]['files']} files, largest {big[0]['max_file_bytes'] / 1e6:.1f} MB, "
            f"total {big[0]['total_bytes'] / 1e6:.1f} MB", "each <= 256 MB (row group limit)",
            f"{big[0]['max_file_bytes'] / 256e6:.2f}", PASS if big[0]["max_file_bytes"] <= 256e6 else FAIL),
    ]
    return rows, data


# --- main ------------------------------------------------------------------------------------------------

QUERY_TARGET_SECONDS = 30  # an analyst's interactive wait for a day of a mid-size tenant


def bench_query(runs: int) -> tuple[list[Row], dict[str, Any]]:
    """DuckDB time of the shipped collection-completeness query over a 1M-event local archive."""
    import bench_query

    data = bench_query.run(runs, log)
    median = statistics.median(data["seconds"])
    rows = [Row(
        f"ppctl query (DuckDB): collection-completeness over {data['events']:,} events, 24 hours "
        f"({data['objects']} gzip NDJSON objects, {data['gzip_bytes'] / 1e6:.0f} MB)",
        f"{spread(data['seconds'], '{:.2f}')} s", f"<= {QUERY_TARGET_SECONDS} s",
        f"{median / QUERY_TARGET_SECONDS:.2f}", PASS if median <= QUERY_TARGET_SECONDS else FAIL,
        "views built from template.yaml, the archive already in the local cache (tools/bench_query.py)")]
    return rows, data


def print_table(rows: list[Row]) -> None:
    headers = ["benchmark", "measured: median [min-max]", "target", "ratio", "result"]
    cells = [[r.benchmark, r.measured, r.target, r.ratio, r.result] for r in rows]
    widths = [min(max(len(h), *(len(c[i]) for c in cells)), 70) for i, h in enumerate(headers)]

    def wrap(text: str, width: int) -> list[str]:
        lines, line = [], ""
        for word in text.split(" "):
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        return [*lines, line]

    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in cells:
        wrapped = [wrap(c, w) for c, w in zip(row, widths, strict=True)]
        for i in range(max(len(w) for w in wrapped)):
            print(" | ".join((w[i] if i < len(w) else "").ljust(width)
                             for w, width in zip(wrapped, widths, strict=True)))
    notes = [f"  - {r.benchmark}: {r.note}" for r in rows if r.note]
    if notes:
        print("notes:")
        print("\n".join(notes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per timed benchmark (median, min, max)")
    parser.add_argument("--only", default="tap,coldstart,cost,budget,pod,query,ocsf",
                        help="comma-separated subset of: tap, coldstart, cost, budget, pod, query, ocsf")
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "results.json", help="where to save the data")
    args = parser.parse_args(argv)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    info = machine()
    started = time.monotonic()
    log(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['ram']} RAM, Python {info['python']}")
    rows: list[Row] = []
    data: dict[str, Any] = {"machine": info, "runs": args.runs}
    tap_data = None
    steps = [("tap", lambda: bench_tap(args.runs)), ("coldstart", lambda: bench_coldstart(args.runs)),
             ("cost", lambda: bench_cost(tap_data)), ("budget", lambda: bench_budget(tap_data)),
             ("pod", lambda: bench_pod(args.runs)), ("query", lambda: bench_query(args.runs)),
             ("ocsf", lambda: bench_ocsf(args.runs))]
    for name, step in steps:
        if name not in wanted:
            continue
        log(f"[{name}]")
        step_started = time.monotonic()
        new_rows, data[name] = step()
        if name == "tap":
            tap_data = data[name]
        rows += new_rows
        log(f"  done in {time.monotonic() - step_started:.0f} s")
    data["rows"] = [asdict(r) for r in rows]
    data["seconds"] = time.monotonic() - started
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2, default=str))
    print(f"\nmachine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, Python {info['python']}; "
          f"{args.runs} runs; {data['seconds'] / 60:.1f} min")
    print_table(rows)
    failed = [r for r in rows if r.result == FAIL]
    pending = [r for r in rows if r.result == PENDING]
    passed = [r for r in rows if r.result == PASS]
    print(f"\n{len(passed)} passed, {len(failed)} failed, {len(pending)} pending (not measured, not a pass)"
          f"; data in {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
