"""The local path: every archive object of a bucket (the emulator's, in ``make demo``) converted to
Security Lake Parquet on disk, in the same layout as in the lake:
``<root>/ext/<source>/region=<region>/accountId=<account>/eventDay=<YYYYMMDD>/*.zstd.parquet``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .lake import ARCHIVE_PREFIX, archive_lines, convert, is_archive_object, local_put

LOCAL_ACCOUNT = "local"  # the lake's accountId partition for files made on this machine


def convert_archive(client: Any, bucket: str, root: Path, *, region: str, include_raw: bool = False) -> Counter[str]:
    """Rows written per OCSF class name; converting again rewrites the same files."""
    rows: Counter[str] = Counter()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=ARCHIVE_PREFIX):
        for item in page.get("Contents", []):
            if not is_archive_object(item["Key"]):
                continue
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
            converted = convert(item["Key"], archive_lines(body), local_put(root), region=region,
                                account=LOCAL_ACCOUNT, include_raw=include_raw)
            rows.update(converted.rows_by_class)
    return rows
