"""Connectors: one package per Proofpoint feed, found by discovery (no list of them anywhere).

A connector module exposes ``CONNECTOR``, its connector class (``spine.Connector``, with a
``descriptor``: ``descriptor.py``). The built-in ones are this package's subpackages (``tap``,
``casb``, ``pod``); more are the modules named in ``PPCOLLECTOR_CONNECTORS`` (comma-separated, e.g.
``acme_feed.connector``), so a connector kept outside the library needs no edit to it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import cache

from ..descriptor import ConnectorDescriptor
from ..errors import SettingsError
from ..spine import Connector

EXTRA_CONNECTORS_VARIABLE = "PPCOLLECTOR_CONNECTORS"


@cache
def _builtin_modules() -> tuple[str, ...]:
    return tuple(sorted(f"{__name__}.{module.name}" for module in pkgutil.iter_modules(__path__) if module.ispkg))


def connector_modules() -> tuple[str, ...]:
    extra = [name.strip() for name in os.environ.get(EXTRA_CONNECTORS_VARIABLE, "").split(",") if name.strip()]
    return (*_builtin_modules(), *extra)


@cache
def _discover(modules: tuple[str, ...]) -> dict[str, type[Connector]]:
    found: dict[str, type[Connector]] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SettingsError(f"cannot import the connector module {module_name}: {exc}") from exc
        connector = vars(module).get("CONNECTOR")
        if connector is None:
            raise SettingsError(f"connector module {module_name} has no CONNECTOR (its connector class)")
        if not isinstance(connector(), Connector):
            raise SettingsError(f"{module_name}.CONNECTOR does not implement every member of spine.Connector")
        name = connector.descriptor.name
        if name in found:
            raise SettingsError(f"two connectors are named {name!r}: {found[name].__module__} and {module_name}")
        found[name] = connector
    return found


def connector_classes() -> dict[str, type[Connector]]:
    """Every connector, by name: the built-in ones, then those of PPCOLLECTOR_CONNECTORS."""
    return _discover(connector_modules())


def descriptors() -> list[ConnectorDescriptor]:
    return [connector.descriptor for connector in connector_classes().values()]


def get_connector(name: str) -> Connector:
    classes = connector_classes()
    if name not in classes:
        raise SettingsError(f"unknown connector {name!r} (known: {', '.join(classes)})")
    return classes[name]()


def get_descriptor(name: str) -> ConnectorDescriptor:
    return get_connector(name).descriptor
