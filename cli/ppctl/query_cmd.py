"""``ppctl query NAME-or-SQL``: a shipped hunting query or any SQL, on Athena or DuckDB."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from ppcollector.http import is_loopback_url

from .engines import ArchiveCache, AthenaEngine, DuckDbEngine, Result, cell_text, default_cache_dir, human_bytes
from .hunting import TEMPLATE, NamedQuery, QueryError, QueryWindow, load_named_queries, load_tables, parameter_values
from .main import CliError, aws_session, load_stack, print_table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    query = sub.add_parser("query", parents=[common], help="run a hunting query (or SQL) over the archive",
                           description="NAME is a shipped query (ppctl query --list) or an SQL string over the "
                                       "tables tap_messages, tap_clicks, casb, pod.")
    query.add_argument("query", nargs="?", help="query name or SQL")
    query.add_argument("--list", action="store_true", help="list the shipped queries")
    query.add_argument("--since", default="24h", help="start of the received-time window: 24h, 7d or ISO 8601")
    query.add_argument("--until", help="end of the window (default now)")
    query.add_argument("--instance", help="only this instance's records")
    query.add_argument("--campaign", help="campaign id (campaign-blast-radius)")
    query.add_argument("--qid", help="queue id (pod-delivery-trace)")
    query.add_argument("--sender", help="envelope sender address (pod-sender-messages)")
    query.add_argument("--csv", action="store_true", help="CSV output")
    query.add_argument("--engine", choices=("athena", "duckdb"),
                       help="default: duckdb when the AWS endpoint is a local emulator (loopback), else athena")
    query.add_argument("--cache-dir", type=Path, help="DuckDB: local copy of the archive (default ~/.cache/ppctl)")
    query.add_argument("--parquet", action="append", default=[], metavar="TABLE=DIR",
                       help="DuckDB: also a table over the Parquet files under DIR")
    query.add_argument("--template", type=Path, default=TEMPLATE, help="where the table definitions are read")
    query.set_defaults(func=cmd_query)


def cmd_query(args: argparse.Namespace) -> int:
    # ppctl's handler knows CollectorError in whatever module copy runs as __main__; CliError it may not.
    try:
        return _query(args)
    except CliError as exc:
        raise QueryError(str(exc)) from exc


def _query(args: argparse.Namespace) -> int:
    queries = load_named_queries()
    if args.list:
        rows = [{"name": q.name, "needs": ", ".join(sorted({"--" + p for p in q.parameters} - _WINDOW)),
                 "description": q.description} for q in queries.values()]
        _emit(args, Result(["name", "needs", "description"], [list(r.values()) for r in rows]))
        return 0
    if not args.query:
        raise CliError("give a query name (ppctl query --list) or an SQL string")
    window = QueryWindow.parse(args.since, args.until)
    named = queries.get(args.query)
    if named is None and " " not in args.query.strip():
        raise QueryError(f"no query named {args.query!r} (ppctl query --list)")
    query = named or NamedQuery("sql", "", args.query, [])
    values = parameter_values(query, window, {"instance": args.instance, "campaign": args.campaign,
                                              "qid": args.qid, "sender": args.sender})
    stack = load_stack(args)
    engine = args.engine or ("duckdb" if is_loopback_url(stack.clients["s3"].meta.endpoint_url) else "athena")
    if engine == "athena":
        result = _athena(stack, args).run(query.sql, values)
    else:
        result = _duckdb(args, stack, window).run(query.sql, values)
    _emit(args, result)
    if result.bytes_scanned is not None:
        print(f"athena: {human_bytes(result.bytes_scanned)} scanned", file=sys.stderr)
    return 0


_WINDOW = {"--since_day", "--until_day", "--since", "--until", "--instance"}


def _athena(stack: Any, args: argparse.Namespace) -> AthenaEngine:
    try:
        workgroup, database = stack.outputs["AthenaWorkGroupName"], stack.outputs["AnalyticsDatabaseName"]
    except KeyError as exc:
        raise CliError(f"stack {stack.name} has no output {exc.args[0]}: deploy this version first") from exc
    return AthenaEngine(aws_session(args.region).client("athena"), workgroup, database.lower())


def _duckdb(args: argparse.Namespace, stack: Any, window: QueryWindow) -> DuckDbEngine:
    bucket = stack.outputs.get("RawBucketName")
    if not bucket:
        raise CliError(f"stack {stack.name} has no output RawBucketName")
    tables = load_tables(args.template)
    root = args.cache_dir or default_cache_dir(bucket)
    stats = ArchiveCache(stack.clients["s3"], bucket, root).sync(tables, window.days())
    print(f"duckdb: {stats['objects']} archive objects for {len(window.days())} day(s), {stats['fetched']} "
          f"fetched ({human_bytes(stats['bytes'])}) into {root}", file=sys.stderr)
    parquet = {}
    for item in args.parquet:
        name, _, directory = item.partition("=")
        if not name.isidentifier() or not directory:
            raise CliError(f"--parquet wants TABLE=DIR, got {item!r}")
        parquet[name] = Path(directory)
    return DuckDbEngine(root, tables, parquet, window.days())


def _emit(args: argparse.Namespace, result: Result) -> None:
    rows = [dict(zip(result.columns, (cell_text(v) for v in row), strict=True)) for row in result.rows]
    if args.json:
        print(json.dumps(rows, indent=2, default=str, ensure_ascii=False))
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([row[c] for c in result.columns] for row in rows)
    else:
        print_table(rows, result.columns)
