"""The Security Lake writer's status in the state table (pk ``ocsf``): a summary item and one item per
raw object whose last conversion failed, removed when a later attempt converts it. Read by
``ppctl ocsf status``; no pyarrow needed here."""

from __future__ import annotations

from typing import Any

from ppcollector.kvstore import KeyValueStore
from ppcollector.timeutil import format_rfc3339, utcnow

STATUS_PK = "ocsf"
SUMMARY_SK = "status"
FAILED_SK_PREFIX = "failed#"


def record_failure(store: KeyValueStore, raw_key: str, error: str) -> None:
    now = format_rfc3339(utcnow())
    previous = store.get(STATUS_PK, FAILED_SK_PREFIX + raw_key)
    attempts = (previous.data.get("attempts", 0) if previous else 0) + 1
    store.put(STATUS_PK, FAILED_SK_PREFIX + raw_key,
              {"raw_key": raw_key, "error": error[:500], "attempts": attempts, "last_attempt": now}, None)
    _update_summary(store, last_error=error[:500], last_error_time=now, last_error_key=raw_key)


def record_success(store: KeyValueStore, raw_key: str) -> None:
    if store.get(STATUS_PK, FAILED_SK_PREFIX + raw_key) is not None:
        store.delete(STATUS_PK, FAILED_SK_PREFIX + raw_key)
    _update_summary(store, last_success=format_rfc3339(utcnow()), last_success_key=raw_key)


def _update_summary(store: KeyValueStore, **values: Any) -> None:
    current = store.get(STATUS_PK, SUMMARY_SK)
    store.put(STATUS_PK, SUMMARY_SK, {**(current.data if current else {}), **values}, None)


def summary(store: KeyValueStore) -> dict[str, Any]:
    item = store.get(STATUS_PK, SUMMARY_SK)
    return dict(item.data) if item else {}


def failed_objects(store: KeyValueStore) -> list[dict[str, Any]]:
    """The raw objects whose last conversion failed, oldest key first."""
    return sorted((item.data for item in store.query(STATUS_PK) if item.sk.startswith(FAILED_SK_PREFIX)),
                  key=lambda data: data["raw_key"])
