"""The state table port: a versioned key-value store with conditional writes.

Everything the spine keeps (registry, cursors, leases, status, rate budgets) is a JSON document under
``(pk, sk)`` with a ``version`` that increments on every write. A write names the version it read
(``expected_version``; 0 means "must not exist"), so two writers never both win: the loser gets
``VersionConflict``. A write may also carry a fencing token (``fence``: the version of the writer's
lease): it is stored with the item, and a write whose token is lower than the stored one is refused
(``FenceRefused``) whatever version it names, so a holder whose lease was taken over cannot write once
the new holder has fenced the item. One conditional write of one item: no transaction. ``DynamoKV`` is
the real adapter; ``MemoryKV`` is the honest in-memory fake the unit tests use.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import FenceRefused, VersionConflict
from .timeutil import format_rfc3339, utcnow


@dataclass(frozen=True)
class Item:
    pk: str
    sk: str
    data: dict[str, Any]
    version: int
    fence: int | None = None  # the highest fencing token a write of this item carried


class KeyValueStore(Protocol):
    def get(self, pk: str, sk: str) -> Item | None: ...

    def put(self, pk: str, sk: str, data: dict[str, Any], expected_version: int | None,
            fence: int | None = None) -> Item: ...

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
            return Item(item.pk, item.sk, json.loads(json.dumps(item.data)), item.version,
                        item.fence) if item else None

    def put(self, pk: str, sk: str, data: dict[str, Any], expected_version: int | None,
            fence: int | None = None) -> Item:
        with self._lock:
            current = self._items.get((pk, sk))
            current_version = current.version if current else 0
            stored_fence = current.fence if current else None
            if fence is not None and stored_fence is not None and stored_fence > fence:
                raise FenceRefused(f"{pk}/{sk}: fenced by token {stored_fence}, this writer holds {fence}")
            if expected_version is not None and expected_version != current_version:
                raise VersionConflict(f"{pk}/{sk}: expected version {expected_version}, found {current_version}")
            item = Item(pk, sk, json.loads(json.dumps(data)), current_version + 1,
                        fence if fence is not None else stored_fence)
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
            fence: int | None = None) -> Item:
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
            if fence is not None:
                raise ValueError("a fenced write names the version it read")
            # Unconditional writes still increment: read the version inside one conditional retry loop.
            return self._put_unconditional(pk, sk, data, kwargs)
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        if expected_version == 0:
            condition = "attribute_not_exists(pk)"
        else:
            condition, names["#v"] = "#v = :expected", "version"
            values[":expected"] = {"N": str(expected_version)}
        if fence is not None:
            condition = f"({condition}) AND (attribute_not_exists(#f) OR #f <= :fence)"
            names["#f"], values[":fence"] = "fence", {"N": str(fence)}
            kwargs["Item"]["fence"] = {"N": str(fence)}
        kwargs["ConditionExpression"] = condition
        if names:
            kwargs["ExpressionAttributeNames"], kwargs["ExpressionAttributeValues"] = names, values
        kwargs["Item"]["version"] = {"N": str(new_version)}
        kwargs["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"  # to tell a fence from a version
        try:
            self._client.put_item(**kwargs)
        except self._client.exceptions.ConditionalCheckFailedException as exc:
            old = exc.response.get("Item") or {}
            stored = int(old["fence"]["N"]) if "fence" in old else None
            if fence is not None and stored is not None and stored > fence:
                raise FenceRefused(f"{pk}/{sk}: fenced by token {stored}, this writer holds {fence}") from exc
            raise VersionConflict(f"{pk}/{sk}: expected version {expected_version}") from exc
        return Item(pk, sk, data, new_version, fence)

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
            int(raw["fence"]["N"]) if "fence" in raw else None,
        )
