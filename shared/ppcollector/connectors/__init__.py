"""Connectors: one module per Proofpoint feed. Adding a feed means one module here plus one entry below."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..spine import Connector


def get_connector(name: str) -> Connector:
    if name == "tap":
        from .tap import TapConnector

        return TapConnector()
    if name == "casb":
        from .casb import CasbConnector

        return CasbConnector()
    if name == "pod":
        from .pod import PodConnector

        return PodConnector()
    from ..errors import SettingsError

    raise SettingsError(f"unknown connector {name!r} (known: tap, casb, pod)")


CONNECTOR_NAMES = ("tap", "casb", "pod")
