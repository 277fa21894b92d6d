"""The CASB daily call budget: every call, auth included, is granted by the shared budget first."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ...budget import credential_key
from ...spine import Deps
from .settings import BUDGET_POOL

# --- the daily call budget --------------------------------------------------------------------------

class _OutOfCalls(Exception):
    """The persisted daily budget refused a call: stop this poll cleanly, resume at the next one."""

    def __init__(self, reason: str, steady: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.steady = steady


class _NoTimeLeft(Exception):
    """Too little invocation time is left to start another call: stop cleanly, resume next poll."""


class CallGate:
    """Every CASB call, auth included, asks the shared budget first (``daily_call_limit`` per API key)."""

    def __init__(self, deps: Deps, credential: str, limit: int, on_call: Callable[[], None]) -> None:
        self.deps = deps
        self.credential = credential
        self.limit = limit
        self._on_call = on_call

    def spend(self, catch_up: bool) -> None:
        grant = self.deps.budget.acquire(self.credential, BUDGET_POOL, self.deps.clock(), catch_up=catch_up,
                                         limit=self.limit)
        if not grant.granted:
            raise _OutOfCalls(grant.reason, steady=not catch_up)
        self._on_call()

    def throttled(self, retry_after: float | None) -> datetime:
        return self.deps.budget.record_throttle(self.credential, BUDGET_POOL, self.deps.clock(), retry_after)

    def succeeded(self) -> None:
        self.deps.budget.record_success(self.credential, BUDGET_POOL)


def budget_credential(settings: dict[str, Any]) -> str:
    """The budget key. The quota is presumably per API key (docs/vendors/casb.md §2.7), and Proofpoint issues the API
    key together with one client id, so the client id stands for it: the spine's budget metrics can
    then name the pool from the settings alone, without reading the secret."""
    return credential_key("casb", settings["client_id"])


