"""The archive tables and the hunting queries, one definition each for Athena and DuckDB.

- Tables: the ``AWS::Glue::Table`` resources of ``template.yaml`` (columns, partition keys, projection,
  SerDe key mapping) are parsed here and turned into DuckDB views over local copies of the archive
  objects, so the local engine reads exactly what Athena is told the data looks like.
- Queries: ``queries/<name>.sql`` (package data) is the text of each ``AWS::Athena::NamedQuery``
  (tests/unit/test_query.py asserts the template holds the same text). Parameters are ``?``
  placeholders, named in order on the file's ``-- parameters:`` line; both engines bind them.
- Dialect: the SQL is written for Athena (Trino). ``duckdb_sql`` and ``DUCKDB_MACROS`` are the one
  place that adapts it for DuckDB.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ppcollector.errors import CollectorError, SettingsError
from ppcollector.state import validate_name
from ppcollector.timeutil import TimestampError, format_rfc3339, parse_duration, parse_timestamp

QUERIES_DIR = Path(__file__).resolve().parent / "queries"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = PROJECT_ROOT / "template.yaml"


class QueryError(CollectorError):
    """A query or parameter that cannot run; the message says why in one line (ppctl exits 1 with it)."""


# --- the tables ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveTable:
    """One Glue table of template.yaml, as both engines need it."""

    name: str  # tap_messages | tap_clicks | casb | pod
    prefix: str  # the table location under the bucket, e.g. "proofpoint/source=tap/"
    columns: list[tuple[str, str]]  # (name, Hive type), data columns in order
    partition_keys: list[tuple[str, str]]
    event_types: list[str]  # projection.event_type.values
    key_of: dict[str, str] = field(default_factory=dict)  # column -> JSON key (SerDe mapping.<column>)


def load_tables(template_path: Path = TEMPLATE) -> list[ArchiveTable]:
    from .local_deploy import load_template

    resources = load_template(template_path)["Resources"]
    tables = []
    for resource in resources.values():
        if resource["Type"] != "AWS::Glue::Table":
            continue
        spec = resource["Properties"]["TableInput"]
        storage = spec["StorageDescriptor"]
        location = storage["Location"]["Fn::Sub"]  # s3://${RawBucket}/<prefix>
        mapping = {key.removeprefix("mapping."): value
                   for key, value in storage["SerdeInfo"].get("Parameters", {}).items() if key.startswith("mapping.")}
        tables.append(ArchiveTable(
            name=spec["Name"],
            prefix=location.split("}/", 1)[1],
            columns=[(c["Name"], c["Type"]) for c in storage["Columns"]],
            partition_keys=[(c["Name"], c["Type"]) for c in spec["PartitionKeys"]],
            event_types=spec["Parameters"]["projection.event_type.values"].split(","),
            key_of=mapping,
        ))
    if not tables:
        raise QueryError(f"{template_path} defines no AWS::Glue::Table")
    return sorted(tables, key=lambda t: t.name)


def _split_top(text: str) -> list[str]:
    """Split ``a:int,b:struct<c:int,d:int>`` at the commas outside angle brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


_SCALARS = {"string": "VARCHAR", "int": "INTEGER", "bigint": "BIGINT", "double": "DOUBLE", "boolean": "BOOLEAN"}


def duckdb_type(hive_type: str) -> str:
    """A Hive (Glue) column type as DuckDB's: ``array<struct<a:string>>`` -> ``STRUCT("a" VARCHAR)[]``."""
    text = hive_type.strip()
    if text in _SCALARS:
        return _SCALARS[text]
    if text.startswith("array<") and text.endswith(">"):
        return f"{duckdb_type(text[6:-1])}[]"
    if text.startswith("struct<") and text.endswith(">"):
        fields = []
        for item in _split_top(text[7:-1]):
            name, _, inner = item.partition(":")
            fields.append(f'"{name}" {duckdb_type(inner)}')
        return f"STRUCT({', '.join(fields)})"
    raise QueryError(f"unsupported column type {hive_type!r}")


def json_structure(hive_type: str) -> Any:
    """The ``json_transform`` structure of a Hive type: missing keys read as NULL, as in Athena."""
    text = hive_type.strip()
    if text.startswith("array<") and text.endswith(">"):
        return [json_structure(text[6:-1])]
    if text.startswith("struct<") and text.endswith(">"):
        return {name: json_structure(inner) for name, _, inner in
                (item.partition(":") for item in _split_top(text[7:-1]))}
    return duckdb_type(text)


def _field_names(hive_type: str) -> set[str]:
    return set(re.findall(r"(?:<|,)([A-Za-z_][A-Za-z0-9_]*):", hive_type))


def duckdb_view_sql(table: ArchiveTable, root: Path, days: list[str] | None = None) -> str:
    """``CREATE VIEW`` for ``table`` over the objects cached under ``root`` (the bucket's layout),
    only the partitions of ``days`` when given.

    Columns and types come from the table definition; the partition keys from the object's path
    (``event_type=``, ``dt=``, ``hour=``; DuckDB's own hive partitioning would also take the
    ``source=`` folder over the record's ``source``); a struct column is read from the record's JSON
    with keys matched regardless of case, as the OpenX SerDe does (``case.insensitive``), and a
    missing key reads as NULL."""
    patterns = []
    for event_type in table.event_types:
        for day in days or ["*"]:
            pattern = f"{table.prefix}event_type={event_type}/dt={day}/hour=*/*.json.gz"
            if next(iter(root.glob(pattern)), None) is not None:
                patterns.append(f"{root}/{pattern}")
    if not patterns:  # nothing cached: the same columns, no rows
        select = [f"CAST(NULL AS {duckdb_type(t)}) AS \"{c}\"" for c, t in table.columns + table.partition_keys]
        return f"CREATE OR REPLACE VIEW {table.name} AS SELECT {', '.join(select)} WHERE false"
    json_keys: dict[str, str] = {}
    for column, hive_type in table.columns:
        key = table.key_of.get(column, column)
        complex_type = not hive_type.startswith(tuple(_SCALARS))
        shared = sum(1 for c, _ in table.columns if table.key_of.get(c, c) == key) > 1
        json_keys[key] = "JSON" if complex_type or shared else duckdb_type(hive_type)
    read_columns = ", ".join(f"'{key}': '{kind}'" for key, kind in json_keys.items())
    select = []
    for column, hive_type in table.columns:
        key = table.key_of.get(column, column)
        if json_keys[key] != "JSON":
            select.append(f'"{key}" AS "{column}"')
        elif hive_type == "string":
            select.append(f'CAST("{key}" AS VARCHAR) AS "{column}"')
        else:
            text = f'CAST("{key}" AS VARCHAR)'
            for name in sorted(n for n in _field_names(hive_type) if n != n.lower()):
                text = f"regexp_replace({text}, '\"(?i:{name})\"\\s*:', '\"{name}\":', 'g')"
            structure = json.dumps(json_structure(hive_type)).replace("'", "''")
            select.append(f"json_transform({text}, '{structure}') AS \"{column}\"")
    select += [f"CAST(regexp_extract(filename, '/{name}=([^/]+)/', 1) AS {duckdb_type(kind)}) AS \"{name}\""
               for name, kind in table.partition_keys]
    files = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in patterns) + "]"
    # Built from template.yaml's table definition and the cache's own paths (quoted), no user input.
    return (f"CREATE OR REPLACE VIEW {table.name} AS SELECT {', '.join(select)} FROM read_json({files}, "  # noqa: S608
            f"format='newline_delimited', compression='gzip', columns={{{read_columns}}}, "
            f"hive_partitioning=false, filename=true)")


# --- the dialect -----------------------------------------------------------------------------------

# Athena (Trino) functions the shipped SQL uses that DuckDB spells differently.
DUCKDB_MACROS = (
    "CREATE OR REPLACE MACRO from_iso8601_timestamp(text) AS CAST(text AS TIMESTAMPTZ)",
    "CREATE OR REPLACE MACRO array_join(items, separator) AS array_to_string(items, separator)",
    "CREATE OR REPLACE MACRO sequence(first, last, step) AS generate_series(first, last, step)",
)
_UNNEST = re.compile(r"\bUNNEST\(", re.IGNORECASE)
_ALIAS = re.compile(r"\s+AS\s+(\w+)\s*\(([^()]*)\)", re.IGNORECASE)


def duckdb_sql(sql: str) -> str:
    """Athena SQL as DuckDB runs it. The one construct macros cannot cover: Trino's
    ``UNNEST(array_of_rows) AS t(a, b, ...)`` gives one column per row field, DuckDB's UNNEST one
    struct column; DuckDB's ``unnest(..., recursive := true)`` in a lateral subquery gives the fields."""
    out, position = [], 0
    for match in _UNNEST.finditer(sql):
        if match.start() < position:
            continue
        depth, end = 1, match.end()
        while depth:
            if end >= len(sql):
                raise QueryError("unbalanced parentheses after UNNEST")
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            end += 1
        alias = _ALIAS.match(sql, end)
        if alias is None or "," not in alias.group(2):
            continue
        argument = sql[match.end():end - 1]
        out.append(sql[position:match.start()])
        out.append(f"LATERAL (SELECT unnest({argument}, recursive := true)) AS {alias.group(1)}({alias.group(2)})")
        position = alias.end()
    out.append(sql[position:])
    return "".join(out)


# --- the queries -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str  # the file's first comment line
    sql: str
    parameters: list[str]  # one name per ``?``, in order


def _parameters(name: str, sql: str) -> list[str]:
    match = re.search(r"^-- parameters: (.*)$", sql, re.MULTILINE)
    names = [p.strip() for p in match.group(1).split(",")] if match else []
    code = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    if code.count("?") != len(names):
        raise QueryError(f"query {name}: {code.count('?')} placeholders but {len(names)} named parameters")
    return names


def load_named_queries() -> dict[str, NamedQuery]:
    queries = {}
    for path in sorted(QUERIES_DIR.glob("*.sql")):
        sql = path.read_text(encoding="utf-8")
        queries[path.stem] = NamedQuery(path.stem, sql.splitlines()[0].removeprefix("--").strip(), sql,
                                        _parameters(path.stem, sql))
    return queries


_CAMPAIGN = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_QID = re.compile(r"^[A-Za-z0-9]{1,40}$")
_SENDER = re.compile(r"^[A-Za-z0-9._%+=/!#$&*^`{|}~-]{1,128}@[A-Za-z0-9.-]{1,253}$")


def parse_moment(value: str, now: datetime) -> datetime:
    """``24h``-style durations (before ``now``) or an ISO 8601 timestamp."""
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        return parse_timestamp(value)
    except TimestampError as exc:
        raise QueryError(f"not a duration or timestamp: {value!r} (use e.g. 24h, 7d or 2026-11-20T00:00:00Z)") from exc


@dataclass(frozen=True)
class QueryWindow:
    since: datetime
    until: datetime

    @classmethod
    def parse(cls, since: str, until: str | None, now: datetime | None = None) -> QueryWindow:
        now = now or datetime.now(UTC)
        start = parse_moment(since, now)
        end = parse_moment(until, now) if until else now
        if end <= start:
            raise QueryError(f"--until ({format_rfc3339(end)}) must be after --since ({format_rfc3339(start)})")
        return cls(start, end)

    def days(self) -> list[str]:
        """The ``dt`` partitions the window touches."""
        day, last = self.since.date(), (self.until - timedelta(microseconds=1)).date()
        out = []
        while day <= last:
            out.append(day.isoformat())
            day += timedelta(days=1)
        return out


def parameter_values(query: NamedQuery, window: QueryWindow, options: dict[str, Any]) -> list[str]:
    """The values for ``query``'s placeholders, validated (instance names, ids, addresses)."""
    days = window.days()
    known: dict[str, str] = {
        "since_day": days[0], "until_day": days[-1],
        "since": format_rfc3339(window.since), "until": format_rfc3339(window.until),
        "instance": "",
    }
    if options.get("instance"):
        try:
            known["instance"] = validate_name(options["instance"])
        except SettingsError as exc:
            raise QueryError(str(exc)) from exc
    for name, pattern in (("campaign", _CAMPAIGN), ("qid", _QID), ("sender", _SENDER)):
        value = options.get(name)
        if value is None:
            continue
        if not pattern.match(value):
            raise QueryError(f"not a valid --{name}: {value!r}")
        known[name] = value
    missing = sorted({p for p in query.parameters if p not in known})
    if missing:
        raise QueryError(f"{query.name} needs {', '.join('--' + m for m in missing)}")
    return [known[p] for p in query.parameters]


def athena_literal(value: str) -> str:
    """A value as the SQL string literal Athena's ExecutionParameters expect (inserted as text)."""
    return "'" + value.replace("'", "''") + "'"
