"""Where ``ppctl query`` runs SQL: Athena in AWS, DuckDB over a local copy of the archive.

DuckDB's s3:// support (httpfs) is an extension downloaded at run time, which a machine without
internet cannot do; so ``ArchiveCache`` copies the archive objects of the queried days with boto3
(only those not already copied) and DuckDB reads local files.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ppcollector.timeutil import format_rfc3339

from .hunting import DUCKDB_MACROS, ArchiveTable, QueryError, duckdb_sql, duckdb_view_sql


@dataclass
class Result:
    columns: list[str]
    rows: list[list[Any]]
    bytes_scanned: int | None = None  # Athena's figure; None for DuckDB


def default_cache_dir(bucket: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ppctl" / "archive" / bucket


class ArchiveCache:
    """A local mirror of the archive, filled by partition (source, event type, day)."""

    def __init__(self, s3: Any, bucket: str, root: Path) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.root = root

    def sync(self, tables: list[ArchiveTable], days: list[str]) -> dict[str, int]:
        """Copy the objects of ``days`` that are missing or changed (size or time); returns counts."""
        stats = {"objects": 0, "fetched": 0, "bytes": 0}
        paginator = self.s3.get_paginator("list_objects_v2")
        for table in tables:
            for event_type in table.event_types:
                for day in days:
                    prefix = f"{table.prefix}event_type={event_type}/dt={day}/"
                    for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                        for obj in page.get("Contents", []):
                            stats["objects"] += 1
                            if self._fetch(obj):
                                stats["fetched"] += 1
                                stats["bytes"] += obj["Size"]
        return stats

    def _fetch(self, obj: dict[str, Any]) -> bool:
        if not obj["Key"].endswith(".json.gz") or ".." in obj["Key"].split("/"):
            return False
        path = self.root / obj["Key"]
        modified = obj["LastModified"].timestamp()
        if path.exists():
            stat = path.stat()
            if stat.st_size == obj["Size"] and stat.st_mtime == modified:
                return False
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        self.s3.download_file(self.bucket, obj["Key"], str(partial))
        os.utime(partial, (modified, modified))
        partial.replace(path)  # a crash never leaves a truncated object behind
        return True


class DuckDbEngine:
    """The archive tables as DuckDB views over ``root``; extra tables over local Parquet files."""

    def __init__(self, root: Path, tables: list[ArchiveTable], parquet: dict[str, Path] | None = None,
                 days: list[str] | None = None) -> None:
        import duckdb

        self.connection = duckdb.connect()
        self.connection.execute("SET TimeZone = 'UTC'")
        for macro in DUCKDB_MACROS:
            self.connection.execute(macro)
        for table in tables:
            self.connection.execute(duckdb_view_sql(table, root, days))
        for name, directory in (parquet or {}).items():
            # name is an identifier (checked by the caller), the path a quoted literal: nothing user-given runs.
            files = str(directory).replace("'", "''")
            self.connection.execute(f"CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM read_parquet("  # noqa: S608
                                    f"'{files}/**/*.parquet', hive_partitioning=true, union_by_name=true)")

    def run(self, sql: str, parameters: list[str]) -> Result:
        import duckdb

        try:
            cursor = self.connection.execute(duckdb_sql(sql), parameters)
        except duckdb.Error as exc:
            raise QueryError(f"DuckDB: {' '.join(str(exc).split())}") from exc
        columns = [d[0] for d in cursor.description]
        return Result(columns, [list(row) for row in cursor.fetchall()])


class AthenaEngine:
    """Start, wait (a progress line on stderr), page the results, report the bytes scanned."""

    def __init__(self, client: Any, workgroup: str, database: str, *, poll_seconds: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, progress: TextIO | None = None) -> None:
        self.client = client
        self.workgroup = workgroup
        self.database = database
        self.poll_seconds = poll_seconds
        self.sleep = sleep
        self.progress = progress or sys.stderr

    def run(self, sql: str, parameters: list[str]) -> Result:
        from .hunting import athena_literal

        request: dict[str, Any] = {"QueryString": sql, "WorkGroup": self.workgroup,
                                   "QueryExecutionContext": {"Database": self.database}}
        if parameters:
            request["ExecutionParameters"] = [athena_literal(p) for p in parameters]
        execution_id = self.client.start_query_execution(**request)["QueryExecutionId"]
        try:
            execution = self._wait(execution_id)
        except KeyboardInterrupt:
            self.client.stop_query_execution(QueryExecutionId=execution_id)
            raise
        scanned = int(execution.get("Statistics", {}).get("DataScannedInBytes", 0))
        status = execution["Status"]
        if status["State"] != "SUCCEEDED":
            reason = " ".join(str(status.get("StateChangeReason", "no reason given")).split())
            raise QueryError(f"Athena query {execution_id} {status['State']}: {reason}")
        columns: list[str] = []
        rows: list[list[Any]] = []
        request = {"QueryExecutionId": execution_id}
        first = True
        while True:
            page = self.client.get_query_results(**request)
            result_set = page["ResultSet"]
            if not columns:
                columns = [c["Name"] for c in result_set["ResultSetMetadata"]["ColumnInfo"]]
            page_rows = [[cell.get("VarCharValue") for cell in row["Data"]] for row in result_set.get("Rows", [])]
            if first and page_rows and page_rows[0] == columns:  # a SELECT's first row repeats the header
                page_rows = page_rows[1:]
            first = False
            rows += page_rows
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]
        return Result(columns, rows, scanned)

    def _wait(self, execution_id: str) -> dict[str, Any]:
        started = time.monotonic()
        while True:
            execution = self.client.get_query_execution(QueryExecutionId=execution_id)["QueryExecution"]
            state = execution["Status"]["State"]
            scanned = int(execution.get("Statistics", {}).get("DataScannedInBytes", 0))
            self.progress.write(f"\rathena: {state.lower()} {time.monotonic() - started:.0f}s, "
                                f"{human_bytes(scanned)} scanned ")
            self.progress.flush()
            if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
                self.progress.write("\n")
                return execution
            self.sleep(self.poll_seconds)


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def cell_text(value: Any) -> Any:
    """A DuckDB value as the JSON-able value ppctl prints (times in RFC 3339 UTC)."""
    import json

    if isinstance(value, datetime):
        return format_rfc3339(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, list | dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    return value
