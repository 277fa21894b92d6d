"""Security Lake layout and the conversion of one raw archive object into its Parquet objects.

Security Lake takes one OCSF class per custom source ("deliver each unique OCSF event class as a
separate source"), under ``ext/<source>/region=<region>/accountId=<account>/eventDay=<YYYYMMDD>/``.
Object names are derived from the raw object's key, the class, the day and a part number only, so
converting the same raw object again writes exactly the same keys (idempotent, never a second copy).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ppcollector.sinks import parse_archive_key

from .normalize import normalize
from .parquet import ParquetSpooler, WrittenFile
from .schema import OcsfValidationError, class_name, validate

# The custom source name of each class (Security Lake: at most 20 characters).
SOURCE_NAMES = {
    4009: "pp_email_activity",
    4011: "pp_email_file",
    4012: "pp_email_url",
    6001: "pp_web_resources",
    2004: "pp_detection",
    6003: "pp_api_activity",
    3002: "pp_authentication",
}
ARCHIVE_PREFIX = "proofpoint/source="  # where the archive objects are listed from (sinks.partition_path)
ARCHIVE_SUFFIX = ".json.gz"


class ConversionError(ValueError):
    """A raw object that cannot be converted (bad line, a record that fails OCSF validation)."""


MAPPED_SOURCES = ("tap", "casb", "pod")  # the archive's source= of the feeds normalize.MAPPERS maps


def is_archive_object(key: str) -> bool:
    """An archive object of a feed this writer maps (not an oversize copy, anything else in the bucket, or
    the objects of a connector that has no OCSF mapping: out of scope, not a conversion failure). The
    archive's key layout is read by ``sinks.parse_archive_key`` only."""
    parsed = parse_archive_key(key) if key.startswith(ARCHIVE_PREFIX) else None
    return parsed is not None and parsed.source in MAPPED_SOURCES


def object_key(raw_key: str, class_uid: int, day: str, part: int, *, region: str, account: str,
               prefix: str = "ext", source_version: str = "") -> str:
    """The Security Lake key of one part of one class and day converted from ``raw_key``.

    ``source_version``: when the source's location that create-custom-log-source returned ends with
    its version (``ext/<source>/<version>/``), the partitions go below it."""
    stem = raw_key.rsplit("/", 1)[-1].removesuffix(ARCHIVE_SUFFIX)
    digest = hashlib.sha256(raw_key.encode("utf-8")).hexdigest()[:16]
    location = f"{prefix}/{SOURCE_NAMES[class_uid]}/" + (f"{source_version}/" if source_version else "")
    return (f"{location}region={region}/accountId={account}/eventDay={day}/"
            f"{digest}_{stem}_{class_uid}_{part:04d}.zstd.parquet")


@dataclass(frozen=True)
class Converted:
    raw_key: str
    records_in: int
    rows_by_class: dict[str, int]
    keys: list[str]


def archive_lines(body: IO[bytes]) -> Iterator[bytes]:
    """The NDJSON lines of a gzip archive object, read as a stream."""
    with gzip.GzipFile(fileobj=body) as lines:
        for line in lines:
            if line.strip():
                yield line


def convert(raw_key: str, lines: Iterable[bytes], put: Callable[[str, Path], None], *, region: str,
            account: str, include_raw: bool = False, prefix: str = "ext", source_version: str = "") -> Converted:
    """Normalise every record of one raw object, validate each OCSF record, write the Parquet files and
    hand each to ``put(key, path)``. Any bad line or invalid record fails the whole object (nothing
    written), so the caller reports and retries it."""
    spooler = ParquetSpooler()
    records_in = 0
    try:
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                for event in normalize(record, include_raw):
                    errors = validate(event)
                    if errors:
                        raise OcsfValidationError(errors)
                    spooler.add(event)
            except Exception as exc:
                raise ConversionError(f"{raw_key} line {number}: {type(exc).__name__}: {_short(exc)}") from exc
            records_in += 1
        with tempfile.TemporaryDirectory(prefix="ocsf-") as directory:
            written = spooler.write(Path(directory), lambda class_uid, day, part: f"{class_uid}_{day}_{part}.parquet")
            keys = []
            for item in written:
                key = object_key(raw_key, item.class_uid, item.day, item.part, region=region, account=account,
                                 prefix=prefix, source_version=source_version)
                put(key, item.path)
                keys.append(key)
    finally:
        spooler.close()
    return Converted(raw_key, records_in, _rows_by_class(written), keys)


def _rows_by_class(written: list[WrittenFile]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for item in written:
        name = class_name(item.class_uid)
        rows[name] = rows.get(name, 0) + item.rows
    return rows


def _short(exc: Exception) -> str:
    """The error without record content (a vendor event may carry personal data): errors name paths."""
    if isinstance(exc, OcsfValidationError):
        return "; ".join(exc.errors[:5])
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return str(exc)[:200]


def s3_put(client: Any, bucket: str) -> Callable[[str, Path], None]:
    def put(key: str, path: Path) -> None:
        with path.open("rb") as body:
            client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/vnd.apache.parquet")
    return put


def local_put(root: Path) -> Callable[[str, Path], None]:
    """Write under ``root`` with the same key layout (the local path: ``make demo``, ``ppctl query``)."""
    def put(key: str, path: Path) -> None:
        target = root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    return put
