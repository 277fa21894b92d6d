"""Proofpoint CASB connector: the legacy PCASB API, alerts and activity events (docs/vendors/casb.md §2, §7).

No public spec exists (docs/vendors/casb.md §0), so every path, header and paging key is a per-instance setting
whose default is today's corroborated value (``SETTINGS`` below).

- Auth (§2.2-2.3): ``legacy`` posts JSON client_id/client_secret with the API key header and sends
  the returned ``auth_token`` raw in ``Authorization`` with the API key on every call; ``oauth2``
  (the Data Security platform, §3.1) is a form-encoded client_credentials grant and a Bearer token.
  The token is cached across warm invocations and reused until a call gets 401 (then one
  re-authentication and one retry of the same request) or, for oauth2, until ``expires_in``.
- Every call, auth included, is granted by the persisted daily budget first (``daily_call_limit``
  per API key, §2.7), so the quota is never exceeded, even by overlapping invocations.
- Alerts (``POST /v1/alerts``, newest first, 0-based pages of 50, ``from``/``to`` inclusive): one
  time window at a time, read completely before anything is written; see ``read_alert_window`` for
  the paging and de-duplication rule.
- Activity events (``GET /v2/events``): the latest ``nextPageToken`` is the cursor (persisted even
  for empty pages, §2.6); each page is written, committed and checkpointed on its own.
- Backfill (``ppctl backfill``, ``start_backfill``): a bounded ``backfill-<feed>`` cursor per enabled
  feed, run after the live feeds as catch-up (it never spends the budget's reserve for steady polling)
  and never touching the live cursors. Alerts: the live window reader over ``[since, until]``. Events:
  a separate page-token chain from ``startTime = since`` (the API has no end parameter) that writes
  events stamped ``<= until`` and ends where a page passes ``until`` or the chain reaches its tail.
  Records keep the live ids (``derive_id`` on the vendor id); batch names carry the stream name.

Retries rewrite the same objects (docs/CONTRACT.md §5). An S3 key is the batch name plus the partition of
each record's ``received_time`` (sinks.py), so both must be the same when a window or page is written
again after a failure between the sink write and the cursor write (a crash, a sink or state-table
error, a lost conditional write). Neither can be recomputed: an alerts window ends at ``now - settle
lag`` and the page time is the time of the call. So each window or page is a unit with a *pending*
marker (``delivery.marker``, the format every feed shares), which the spine's ``delivery.deliver``
stores in the cursor before anything is written: a fenced conditional write at the same position,
every other field unchanged.

- alerts: ``pending = {"from", "to", "floor", "fetched_at", "batch"}``: the window's bounds (ms), the
  oldest timestamp written (``from`` for a complete read), the page time and the batch name. Every
  record of a window carries one ``received_time``: the time of the last page the read needed (all of
  the window's alerts had been served by then). A poll that finds the marker plans exactly that window
  again (``plan_alert_window``), reads it whole, and writes it under the same batch name with the same
  ``received_time``: same keys, each object overwritten with a superset (late alerts inside the window
  are added; alerts are never removed). A re-read less certain than the first write (it stopped with a
  higher floor, or with no usable part) writes nothing and keeps the marker: the window is read again
  next poll. Alerts outside the window follow the normal rules in later windows.
- events: ``pending = {"request", "fetched_at", "batch"}``. The page identity is the request (the page
  token, or ``startTime``); the cursor is unchanged, so the retry sends the same request and its page
  is written under the marker's batch name and ``fetched_at``. The marker stays until a page with new
  events is written under it; so if the token was refused meanwhile (the chain restarts from
  ``startTime``), the first page with new events of the restarted chain overwrites the objects the
  lost write left, and the events of that page that it does not hold come in later pages.
- The write that advances the cursor clears the marker (``pending = None``), in the same conditional
  write (``deliver`` clears it with a unit that wrote a batch; a page without new events leaves it).
  Nothing is written to a sink before the marker is stored, and nothing is written for a read
  that failed (a 401 after re-authentication, a 429, a malformed page: the whole window is discarded),
  so a window re-planned after such a failure cannot meet objects of its own. A failure while a marked
  window is re-read keeps the marker, hence the bounds, for the next poll.
"""

from __future__ import annotations

from .alerts import AlertWindow, WindowRead, alert_key, alert_ms, from_ms, plan_alert_window, read_alert_window, to_ms
from .client import CasbClient, Page, clear_token_cache
from .connector import DESCRIPTOR, CasbConnector
from .gate import CallGate, budget_credential
from .settings import FEEDS, MAX_ALERT_WINDOW, MAX_LOOKBACK, SETTING_NAMES, SETTINGS, SOURCE, base_url, validate_feeds

CONNECTOR = CasbConnector

__all__ = [
    "CONNECTOR", "DESCRIPTOR", "FEEDS", "MAX_ALERT_WINDOW", "MAX_LOOKBACK", "SETTINGS", "SETTING_NAMES", "SOURCE",
    "AlertWindow", "CallGate", "CasbClient", "CasbConnector", "Page", "WindowRead", "alert_key", "alert_ms", "base_url",
    "budget_credential", "clear_token_cache", "from_ms", "plan_alert_window", "read_alert_window", "to_ms",
    "validate_feeds",
]
