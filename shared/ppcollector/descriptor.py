"""What a connector declares about itself, so the spine, ``ppctl`` and the stack need no list of connectors.

Each connector class carries a ``descriptor`` (``connectors/tap/connector.py``, ...): its name and
source, the secret fields ``ppctl`` asks for, the settings ``ppctl instance add <name>`` takes as flags,
the stack outputs naming its function and log group, the event types it writes, and any state-table
partitions of its own that go when an instance is removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import SettingsError

SOURCE_PREFIX = "proofpoint_"  # a record's source is proofpoint_<connector> (docs/CONTRACT.md §4)
_NAME = re.compile(r"^[a-z]{1,30}$")  # part of S3 keys (sinks.ARCHIVE_KEY), metric dimensions, ppctl commands


def source_partition(source: str) -> str:
    """The ``source=`` partition of an S3 key: the connector's name (``proofpoint_tap`` -> ``tap``)."""
    return source.removeprefix(SOURCE_PREFIX)


@dataclass(frozen=True)
class SecretField:
    key: str  # the key in the instance's secret, e.g. "client_secret"
    prompt: str  # what ppctl asks for, e.g. "CASB client secret"
    optional: bool = False  # may be left empty (e.g. CASB's API key under oauth2)


@dataclass(frozen=True)
class SettingFlag:
    """A setting ``ppctl instance add`` takes as a flag (any other goes through ``instance set``)."""

    setting: str  # the settings key, e.g. "event_types"
    help: str
    required: bool = False
    flag: str = ""  # default: --<setting with dashes>, e.g. --event-types

    @property
    def option(self) -> str:
        return self.flag or "--" + self.setting.replace("_", "-")


def _no_partitions(instance: str) -> list[str]:
    return []


@dataclass(frozen=True)
class ConnectorDescriptor:
    name: str  # "tap": `ppctl instance add tap`, the S3 key's source=tap, the metrics' connector dimension
    source: str  # "proofpoint_tap": every record's source
    title: str  # what one instance is, for `ppctl instance add --help`: "a TAP SIEM API tenant"
    secrets: tuple[SecretField, ...]  # asked in this order; --secret-stdin reads one line each
    flags: tuple[SettingFlag, ...]
    log_group_output: str  # the stack output naming its log group (`ppctl logs`)
    function: str | None = None  # its Lambda's template resource; the stack output <function>Name names it
    event_types: tuple[str, ...] = ()  # the event_type values its records carry
    other_settings_help: str = ""  # non-empty: `instance add` also takes --set KEY=VALUE, with this help
    # State-table partitions of its own (besides inst#<name>), deleted with the instance.
    state_partitions: Callable[[str], list[str]] = field(default=_no_partitions)
    # (environment variable, stack output): deployment knobs its pollers read from their environment and
    # the stack also outputs, so ppctl builds the connector as the pollers run it (e.g. TAP's rate limit).
    environment: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise SettingsError(f"connector name {self.name!r}: use 1-30 lower-case letters")
        if self.source != SOURCE_PREFIX + self.name:
            raise SettingsError(f"connector {self.name}: its source must be {SOURCE_PREFIX}{self.name} "
                             "(S3 keys name the source by the connector's name)")

    @property
    def function_output(self) -> str | None:
        return f"{self.function}Name" if self.function else None
