"""OCSF records → Parquet (zstd) files, one class per file, rows sorted by ``time``, bounded memory.

Records are spooled to a temporary file per (class, eventDay) while only their time, offset and size
stay in memory (24 bytes per record); each file's Arrow schema is derived from the OCSF
definition for exactly the attributes present in its records, so every file has one consistent schema
whatever the records hold. The file is then written row group by row group, reading the spool in time
order: at most ``BATCH_ROWS`` records exist as Python objects at once.

Encoding: OCSF ``json_t`` attributes and free-form objects (``unmapped``, ``enrichments[].data``) are
stored as JSON text, since their shape varies from record to record; an object without any attribute
is stored as null (Parquet has no empty struct).
"""

from __future__ import annotations

import json
import marshal
import tempfile
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import Attribute, attributes_of, classes_by_uid, definition

COMPRESSION = "zstd"
BATCH_ROWS = 4096  # records decoded from the spool at a time
ROW_GROUP_BYTES = 32 * 1024 * 1024  # Arrow bytes per row group: bounds memory (AWS: <= 256 MB compressed)
DATA_PAGE_BYTES = 1024 * 1024  # AWS: data pages at most 1 MB uncompressed
MAX_FILE_ROWS = 1_000_000  # a larger class/day is split into parts (never reached from one 64 MiB raw object)
_SCALARS = {"string_t": pa.string(), "integer_t": pa.int32(), "long_t": pa.int64(), "boolean_t": pa.bool_(),
            "float_t": pa.float64()}
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def event_day(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y%m%d")


def _encode_object(value: dict[str, Any], attributes: dict[str, Attribute],
                   tree: dict[str, Any]) -> dict[str, Any] | None:
    """The record as Parquet stores it; ``tree`` collects the attribute paths present (for the schema)."""
    out = {}
    for name, item in value.items():
        if item is None:
            continue
        attribute = attributes[name]
        node = tree.get(name)
        if node is None:
            node = tree[name] = {}
        if attribute.opaque:
            encoded = [_ENCODER.encode(e) for e in item] if attribute.is_array else _ENCODER.encode(item)
        elif attribute.object_type is not None:
            children = attributes_of("objects", attribute.object_type)
            if attribute.is_array:
                encoded = [_encode_object(element, children, node) for element in item]
            else:
                encoded = _encode_object(item, children, node)
        else:
            encoded = item
        if encoded is not None:
            out[name] = encoded
    return out or None


def arrow_schema(class_uid: int, tree: dict[str, Any]) -> pa.Schema:
    """The Arrow schema of a class's file: the OCSF types of the attributes present in ``tree``."""
    name = classes_by_uid()[class_uid][0]
    return pa.schema(_fields(attributes_of("classes", name), tree),
                     metadata={"ocsf_version": definition()["version"], "ocsf_class_uid": str(class_uid)})


def _fields(attributes: dict[str, Attribute], tree: dict[str, Any]) -> list[pa.Field]:
    fields = []
    for name in sorted(tree):
        arrow_type = _arrow_type(attributes[name], tree[name])
        if arrow_type is not None:
            fields.append(pa.field(name, arrow_type))
    return fields


def _arrow_type(attribute: Attribute, node: dict[str, Any]) -> pa.DataType | None:
    if attribute.opaque:
        arrow_type = pa.string()
    elif attribute.object_type is not None:
        children = _fields(attributes_of("objects", attribute.object_type), node)
        if not children:
            return None
        arrow_type = pa.struct(children)
    else:
        arrow_type = _SCALARS[attribute.base]
    return pa.list_(arrow_type) if attribute.is_array else arrow_type


@dataclass
class _Spool:
    """One (class, eventDay)'s encoded records in a temporary file; time, offset and size per record.

    Records are spooled with ``marshal`` (plain dicts, lists, strings and numbers, written and read back
    by this same process): several times faster than JSON both ways."""

    class_uid: int
    day: str
    file: Any = field(default_factory=lambda: tempfile.TemporaryFile())  # noqa: SIM115 - closed in close()
    times: array = field(default_factory=lambda: array("q"))
    offsets: array = field(default_factory=lambda: array("q"))
    sizes: array = field(default_factory=lambda: array("l"))
    tree: dict[str, Any] = field(default_factory=dict)
    _end: int = 0

    def add(self, row: dict[str, Any], time_ms: int) -> None:
        data = marshal.dumps(row)
        self.times.append(time_ms)
        self.offsets.append(self._end)
        self.sizes.append(len(data))
        self.file.write(data)
        self._end += len(data)

    def sorted_rows(self) -> Iterator[list[dict[str, Any]]]:
        """Batches of at most ``BATCH_ROWS`` records in time order (ties: arrival order; the sort is stable)."""
        order = pc.sort_indices(pa.array(self.times, pa.int64()))
        for start in range(0, len(order), BATCH_ROWS):
            batch = []
            for index in order.slice(start, BATCH_ROWS).to_pylist():
                self.file.seek(self.offsets[index])
                batch.append(marshal.loads(self.file.read(self.sizes[index])))  # noqa: S302 - our own spool
            yield batch

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class WrittenFile:
    class_uid: int
    day: str
    part: int
    rows: int
    path: Path


class ParquetSpooler:
    """Collects OCSF records, then writes them as Parquet files: one per (class, eventDay, part)."""

    def __init__(self) -> None:
        self._spools: dict[tuple[int, str], _Spool] = {}

    def add(self, record: dict[str, Any]) -> None:
        class_uid, time_ms = record["class_uid"], record["time"]
        day = event_day(time_ms)
        spool = self._spools.get((class_uid, day))
        if spool is None:
            spool = self._spools[(class_uid, day)] = _Spool(class_uid, day)
        row = _encode_object(record, attributes_of("classes", classes_by_uid()[class_uid][0]), spool.tree)
        spool.add(row or {}, time_ms)

    def write(self, directory: Path, name: Callable[[int, str, int], str]) -> list[WrittenFile]:
        """Write every file into ``directory``, named by ``name(class_uid, day, part)``."""
        written = []
        for (class_uid, day), spool in sorted(self._spools.items()):
            schema = arrow_schema(class_uid, spool.tree)
            part = _PartWriter(directory / name(class_uid, day, 0), schema)
            for batch in spool.sorted_rows():
                if part.rows >= MAX_FILE_ROWS:
                    written.append(part.close(class_uid, day))
                    part = _PartWriter(directory / name(class_uid, day, part.number + 1), schema, part.number + 1)
                part.add(pa.Table.from_pylist(batch, schema=schema))
            written.append(part.close(class_uid, day))
            spool.close()
        self._spools.clear()
        return written

    def close(self) -> None:
        for spool in self._spools.values():
            spool.close()
        self._spools.clear()


class _PartWriter:
    """One Parquet file; tables are gathered into row groups of about ``ROW_GROUP_BYTES`` (in memory)."""

    def __init__(self, path: Path, schema: pa.Schema, number: int = 0) -> None:
        self.path, self.number, self.rows = path, number, 0
        self._writer = pq.ParquetWriter(path, schema, compression=COMPRESSION, data_page_size=DATA_PAGE_BYTES)
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table, row_group_size=table.num_rows)
            self._pending, self._pending_bytes = [], 0

    def close(self, class_uid: int, day: str) -> WrittenFile:
        self._flush()
        self._writer.close()
        return WrittenFile(class_uid, day, self.number, self.rows, self.path)
