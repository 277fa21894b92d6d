"""Parsing helpers for instance settings, shared by every connector (one way to read a list or a duration)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from .errors import SettingsError
from .timeutil import format_duration, parse_duration


def env_integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer environment variable (``default`` when unset or empty), within ``low..high``."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"environment variable {name}={raw!r} is not an integer") from exc
    if not low <= value <= high:
        raise SettingsError(f"environment variable {name}={value} is outside {low}..{high}")
    return value


def as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(part).strip() for part in value]
    raise SettingsError(f"expected a comma-separated list, got {value!r}")


def duration_setting(settings: dict[str, Any], key: str, default: str | None,
                      low: timedelta, high: timedelta) -> None:
    raw = settings.get(key)
    if raw is None or raw == "":
        raw = default  # absent, null or empty: the default (None: no value at all)
    if raw is None:
        settings.pop(key, None)
        return
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise SettingsError(f"{key}: {exc}") from exc
    if not low <= value <= high:
        raise SettingsError(f"{key}={raw} is outside {format_duration(low)} .. {format_duration(high)}")
    settings[key] = format_duration(value)
