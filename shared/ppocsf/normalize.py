"""One collector record (the archive's NDJSON line) → its OCSF 1.1.0 records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import casb, pod, tap

MAPPERS = {"proofpoint_tap": tap.map_record, "proofpoint_pod": pod.map_record, "proofpoint_casb": casb.map_record}


def normalize(record: dict[str, Any], include_raw: bool = False) -> Iterator[dict[str, Any]]:
    """The OCSF records of one collector record; ``include_raw`` adds the vendor event as ``raw_data``."""
    return MAPPERS[record["source"]](record, include_raw)
