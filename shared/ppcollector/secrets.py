"""The credentials port: one Secrets Manager secret per instance, JSON, never logged.

Values come back as ``Credentials``: a mapping whose ``repr`` never shows the values, so a stray
log line or exception cannot print a secret.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from .errors import SettingsError

CACHE_SECONDS = 300.0
# A forced deletion completes asynchronously (usually within seconds): until it has, Secrets Manager
# refuses to create a secret of the same name, so create() waits this long for it.
CREATE_AFTER_DELETE_SECONDS = 30.0


class Credentials(Mapping[str, str]):
    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Credentials(fields={sorted(self._values)}, values=<redacted>)"

    __str__ = __repr__

    def require(self, *fields: str) -> None:
        missing = [f for f in fields if not self._values.get(f)]
        if missing:
            raise SettingsError(f"the instance's secret lacks the field(s) {', '.join(missing)}")


class SecretStore(Protocol):
    def get(self, secret_id: str) -> Credentials: ...

    def create(self, name: str, values: Mapping[str, str]) -> str: ...

    def adopt(self, name: str) -> str | None: ...

    def update(self, secret_id: str, values: Mapping[str, str]) -> None: ...

    def delete(self, secret_id: str) -> None: ...


class SecretsManagerStore:
    """Secrets Manager adapter with a small in-memory cache (warm Lambdas reuse it for 5 minutes)."""

    def __init__(self, client: Any, cache_seconds: float = CACHE_SECONDS) -> None:
        self._client = client
        self._cache: dict[str, tuple[float, Credentials]] = {}
        self._cache_seconds = cache_seconds

    def get(self, secret_id: str) -> Credentials:
        cached = self._cache.get(secret_id)
        if cached and time.monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        try:
            response = self._client.get_secret_value(SecretId=secret_id)
        except self._client.exceptions.ResourceNotFoundException as exc:
            raise SettingsError(f"the instance's secret {secret_id} does not exist") from exc
        try:
            values = json.loads(response["SecretString"])
        except (KeyError, ValueError) as exc:
            raise SettingsError(f"the secret {secret_id} is not a JSON object of credential fields") from exc
        if not isinstance(values, dict):
            raise SettingsError(f"the secret {secret_id} is not a JSON object of credential fields")
        creds = Credentials({str(k): str(v) for k, v in values.items()})
        self._cache[secret_id] = (time.monotonic(), creds)
        return creds

    def create(self, name: str, values: Mapping[str, str]) -> str:
        deadline = time.monotonic() + CREATE_AFTER_DELETE_SECONDS
        while True:
            try:
                response = self._client.create_secret(
                    Name=name, SecretString=json.dumps(dict(values)),
                    Description="Proofpoint collector instance credentials (managed by ppctl)",
                )
                return response["ARN"]
            except self._client.exceptions.InvalidRequestException as exc:
                if "scheduled for deletion" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def adopt(self, name: str) -> str | None:
        """The ARN of a secret already stored under ``name`` (an earlier stack's, or one a previous
        ppctl scheduled for deletion: restored), or None when there is none to take over."""
        try:
            described = self._client.describe_secret(SecretId=name)
        except self._client.exceptions.ResourceNotFoundException:
            return None
        if described.get("DeletedDate"):
            try:
                self._client.restore_secret(SecretId=name)
            except self._client.exceptions.InvalidRequestException:
                return None  # a forced deletion still completing: create() waits for it to finish
        return described["ARN"]

    def update(self, secret_id: str, values: Mapping[str, str]) -> None:
        self._client.put_secret_value(SecretId=secret_id, SecretString=json.dumps(dict(values)))
        self._cache.pop(secret_id, None)

    def delete(self, secret_id: str) -> None:
        # No recovery window: a removed instance's credentials must not linger, and its name must be
        # usable again at once (a secret in its recovery window blocks creating one of the same name).
        self._client.delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)
        self._cache.pop(secret_id, None)


class MemorySecrets:
    """In-memory fake for unit tests."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, str]] = {}

    def get(self, secret_id: str) -> Credentials:
        if secret_id not in self.values:
            raise SettingsError(f"the instance's secret {secret_id} does not exist")
        return Credentials(self.values[secret_id])

    def create(self, name: str, values: Mapping[str, str]) -> str:
        self.values[name] = dict(values)
        return name

    def adopt(self, name: str) -> str | None:
        return name if name in self.values else None

    def update(self, secret_id: str, values: Mapping[str, str]) -> None:
        self.values[secret_id] = dict(values)

    def delete(self, secret_id: str) -> None:
        self.values.pop(secret_id, None)
