"""The state table port: a versioned key-value store with conditional writes.

Everything the spine keeps (registry, cursors, leases, status, rate budgets) is a JSON document under
``(pk, sk)`` with a ``version`` that increments on every write. A write names the version it read
(``expected_version``; 0 means "must not exist"), so two writers never both win: the loser gets
``VersionConflict``. A write may also name another item whose version must be unchanged
(``also_check``, checked and written atomically): a cursor write checks its writer's lease, so a holder
whose lease was taken over cannot write (fencing; ``CheckFailed``). ``DynamoKV`` is the real adapter;
``MemoryKV`` is the honest in-memory fake the unit tests use.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import CheckFailed, VersionConflict
from .timeutil import format_rfc3339, utcnow


@dataclass(frozen=True)
class Item:
    pk: str
    sk: str
    data: dict[str, Any]
    version: int


@dataclass(frozen=True)
class Check:
    """Another item that must still be at ``version`` for a write to happen (and is left unchanged)."""

    pk: str
    sk: str
    version: int


class KeyValueStore(Protocol):
    def get(self, pk: str, sk: str) -> Item | None: ...

    def put(self, pk: str, sk: str, data: dict[str, Any], expected_version: int | None,
            also_check: Check | None = None) -> Item: ...

    def delete(self, pk: str, sk: str) -> None: ...

    def query(self, pk: str) -> list[Item]: ...

    def get_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Item]: ...


class MemoryKV:
    """In-memory store with the same conditional semantics as DynamoDB."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Item] = {}
        self._lock = threading.Lock()

    def get(self, pk: str, sk: str) -> Item | None:
        with self._lock:
            item = self._items.get((pk, sk))
            return Item(item.pk, item.sk, json.loads(json.dumps(item.data)), item.version) if item else None

    def put(self, pk: str, sk: str, data: dict[str, Any], expected_version: int | None,
            also_check: Check | None = None) -> Item:
        with self._lock:
            if also_check is not None:
                checked = self._items.get((also_check.pk, also_check.sk))
                found = checked.version if checked else 0
                if found != also_check.version:
                    raise CheckFailed(f"{also_check.pk}/{also_check.sk}: expected version {also_check.version}, "
                                      f"found {found}")
            current = self._items.get((pk, sk))
            current_version = current.version if current else 0
            if expected_version is not None and expected_version != current_version:
                raise VersionConflict(f"{pk}/{sk}: expected version {expected_version}, found {current_version}")
            item = Item(pk, sk, json.loads(json.dumps(data)), current_version + 1)
            self._items[(pk, sk)] = item
            return item

    def delete(self, pk: str, sk: str) -> None:
        with self._lock:
            self._items.pop((pk, sk), None)

    def query(self, pk: str) -> list[Item]:
        with self._lock:
            keys = sorted(k for k in self._items if k[0] == pk)
        return [item for item in (self.get(*k) for k in keys) if item]

    def get_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        return {key: item for key in keys if (item := self.get(*key))}


class DynamoKV:
    """DynamoDB adapter. Items: ``pk``, ``sk``, ``version`` (N), ``data`` (JSON string), ``updated_at``."""

    def __init__(self, table_name: str, client: Any) -> None:
        self.table_name = table_name
        self._client = client

    def get(self, pk: str, sk: str) -> Item | None:
        response = self._client.get_item(
            TableName=self.table_name, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
        )
        raw = response.get("Item")
        return self._to_item(raw) if raw else None

    def put(self, pk: str, sk: str, data: dict[str, Any], expected_version: int | None,
            also_check: Check | None = None) -> Item:
        new_version = (expected_version or 0) + 1
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "Item": {
                "pk": {"S": pk},
                "sk": {"S": sk},
                "data": {"S": json.dumps(data, separators=(",", ":"), sort_keys=True)},
                "updated_at": {"S": format_rfc3339(utcnow())},
            },
        }
        if expected_version is None:
            if also_check is not None:
                raise ValueError("also_check needs an expected version")
            # Unconditional writes still increment: read the version inside one conditional retry loop.
            return self._put_unconditional(pk, sk, data, kwargs)
        if expected_version == 0:
            kwargs["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            kwargs["ConditionExpression"] = "#v = :expected"
            kwargs["ExpressionAttributeNames"] = {"#v": "version"}
            kwargs["ExpressionAttributeValues"] = {":expected": {"N": str(expected_version)}}
        kwargs["Item"]["version"] = {"N": str(new_version)}
        if also_check is not None:
            self._transact_put(kwargs, also_check, f"{pk}/{sk}: expected version {expected_version}")
            return Item(pk, sk, data, new_version)
        try:
            self._client.put_item(**kwargs)
        except self._client.exceptions.ConditionalCheckFailedException as exc:
            raise VersionConflict(f"{pk}/{sk}: expected version {expected_version}") from exc
        return Item(pk, sk, data, new_version)

    def _transact_put(self, put: dict[str, Any], check: Check, conflict: str) -> None:
        """The put and a condition on another item, all or nothing (TransactWriteItems)."""
        condition = {
            "TableName": self.table_name,
            "Key": {"pk": {"S": check.pk}, "sk": {"S": check.sk}},
            "ConditionExpression": "#v = :expected",
            "ExpressionAttributeNames": {"#v": "version"},
            "ExpressionAttributeValues": {":expected": {"N": str(check.version)}},
        }
        try:
            self._client.transact_write_items(TransactItems=[{"ConditionCheck": condition}, {"Put": put}])
        except self._client.exceptions.TransactionCanceledException as exc:
            codes = [reason.get("Code") for reason in exc.response.get("CancellationReasons", [])]
            if codes[:1] == ["ConditionalCheckFailed"]:
                raise CheckFailed(f"{check.pk}/{check.sk}: expected version {check.version}") from exc
            if "ConditionalCheckFailed" in codes or "TransactionConflict" in codes:
                # The put's own condition, or a concurrent write to one of the items: the loser stops.
                raise VersionConflict(conflict) from exc
            raise

    def _put_unconditional(self, pk: str, sk: str, data: dict[str, Any], kwargs: dict[str, Any]) -> Item:
        for _ in range(10):
            current = self.get(pk, sk)
            try:
                return self.put(pk, sk, data, current.version if current else 0)
            except VersionConflict:
                continue
        raise VersionConflict(f"{pk}/{sk}: too many concurrent writers")

    def delete(self, pk: str, sk: str) -> None:
        self._client.delete_item(TableName=self.table_name, Key={"pk": {"S": pk}, "sk": {"S": sk}})

    def query(self, pk: str) -> list[Item]:
        items: list[Item] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        while True:
            response = self._client.query(**kwargs)
            items.extend(self._to_item(raw) for raw in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return items
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def get_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """BatchGetItem in chunks of 100 (the API's limit), retrying unprocessed keys."""
        found: dict[tuple[str, str], Item] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 100):
            request = {self.table_name: {
                "Keys": [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in unique[start:start + 100]],
                "ConsistentRead": True}}
            for _ in range(10):
                response = self._client.batch_get_item(RequestItems=request)
                for raw in response.get("Responses", {}).get(self.table_name, []):
                    item = self._to_item(raw)
                    found[(item.pk, item.sk)] = item
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
        return found

    @staticmethod
    def _to_item(raw: dict[str, Any]) -> Item:
        return Item(
            raw["pk"]["S"],
            raw["sk"]["S"],
            json.loads(raw.get("data", {}).get("S", "{}")),
            int(raw.get("version", {}).get("N", "0")),
        )
