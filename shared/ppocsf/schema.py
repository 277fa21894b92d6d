"""Offline validation against the OCSF 1.1.0 definition in ``ocsf_1_1_0.json``.

The definition is derived from the official schema (source named in the file and in docs/ocsf.md) by
``tools/ocsf_schema_extract.py``. ``validate`` checks what Security Lake and OCSF consumers rely on:
required attributes at every level, attribute types, enum values, the ``type_uid`` and ``category_uid``
arithmetic, and that no attribute is emitted that the class or object (with the profiles the record
declares in ``metadata.profiles``) does not define.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("ocsf_1_1_0.json")
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
FREE_FORM_OBJECT = "object"  # ``unmapped`` and other "Object" attributes hold anything


class OcsfValidationError(ValueError):
    """A record that is not valid OCSF 1.1.0; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@functools.cache
def definition() -> dict[str, Any]:
    with SCHEMA_FILE.open(encoding="utf-8") as f:
        return json.load(f)


@functools.cache
def classes_by_uid() -> dict[int, tuple[str, dict[str, Any]]]:
    return {spec["uid"]: (name, spec) for name, spec in definition()["classes"].items()}


def class_name(class_uid: int) -> str:
    return classes_by_uid()[class_uid][0]


def validate(record: dict[str, Any]) -> list[str]:
    """Every problem of ``record`` as an OCSF 1.1.0 event; empty when it is valid."""
    errors: list[str] = []
    class_uid = record.get("class_uid")
    if class_uid not in classes_by_uid():
        return [f"class_uid {class_uid!r} is not one of the classes this project emits"]
    spec_name, spec = classes_by_uid()[class_uid]
    metadata = record.get("metadata")
    profiles = set(metadata.get("profiles") or []) if isinstance(metadata, dict) else set()
    unknown_profiles = profiles - set(spec["profiles"])
    if unknown_profiles:
        errors.append(f"metadata.profiles: {sorted(unknown_profiles)} not defined for this class")
    _check_object(record, "classes", spec_name, "", profiles, errors)
    if record.get("category_uid") != spec["category_uid"]:
        errors.append(f"category_uid: {record.get('category_uid')!r}, the class is in {spec['category_uid']}")
    activity_id = record.get("activity_id", 0)
    if isinstance(activity_id, int) and record.get("type_uid") != class_uid * 100 + activity_id:
        errors.append(f"type_uid: {record.get('type_uid')!r} != class_uid * 100 + activity_id")
    return errors


def check(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` when valid, else ``OcsfValidationError``."""
    errors = validate(record)
    if errors:
        raise OcsfValidationError(errors)
    return record


@dataclass(frozen=True)
class Attribute:
    """One attribute's definition, prepared once for the per-record checks."""

    name: str
    base: str  # string_t, integer_t, long_t, float_t, boolean_t, json_t or object_t
    type: str
    required: bool
    is_array: bool
    enum: frozenset[str] | None
    object_type: str | None
    profiles: frozenset[str] | None
    opaque: bool  # json_t or a free-form object: stored as JSON text in Parquet


@functools.cache
def attributes_of(kind: str, name: str) -> dict[str, Attribute]:
    """The prepared attributes of class ``name`` (kind "classes") or object ``name`` (kind "objects")."""
    base_types = definition()["base_types"]
    out = {}
    for attr_name, spec in definition()[kind][name]["attributes"].items():
        base = base_types.get(spec["type"], spec["type"])
        out[attr_name] = Attribute(
            name=attr_name, base=base, type=spec["type"], required=spec["requirement"] == "required",
            is_array=bool(spec.get("is_array")), enum=frozenset(spec["enum"]) if "enum" in spec else None,
            object_type=spec.get("object_type"), profiles=frozenset(spec["profiles"]) if spec.get("profiles") else None,
            opaque=base == "json_t" or (base == "object_t" and spec.get("object_type") == FREE_FORM_OBJECT))
    return out


@functools.cache
def _required(kind: str, name: str) -> tuple[Attribute, ...]:
    return tuple(a for a in attributes_of(kind, name).values() if a.required)


def _applies(attribute: Attribute, profiles: set[str]) -> bool:
    return attribute.profiles is None or not attribute.profiles.isdisjoint(profiles)


def _check_object(value: dict[str, Any], kind: str, name: str, path: str, profiles: set[str],
                  errors: list[str]) -> None:
    """``path``: where ``value`` is ("" for the record, else ending with "."); error texts only are built
    from it, so a valid record costs no string work."""
    for attribute in _required(kind, name):
        if value.get(attribute.name) is None and _applies(attribute, profiles):
            errors.append(f"{path}{attribute.name}: required attribute missing")
    attributes = attributes_of(kind, name)
    for key, item in value.items():
        attribute = attributes.get(key)
        if attribute is None:
            errors.append(f"{path}{key}: not an attribute of this class/object (put it in unmapped)")
        elif attribute.profiles is not None and not _applies(attribute, profiles):
            errors.append(f"{path}{key}: needs profile {sorted(attribute.profiles)} in metadata.profiles")
        elif item is not None:
            if attribute.is_array:
                if type(item) is not list:
                    errors.append(f"{path}{key}: expected an array")
                    continue
                for index, element in enumerate(item):
                    _check_value(element, attribute, path, key, index, profiles, errors)
            else:
                _check_value(item, attribute, path, key, None, profiles, errors)


def _check_value(value: Any, attribute: Attribute, path: str, key: str, index: int | None, profiles: set[str],
                 errors: list[str]) -> None:
    base = attribute.base
    if base == "object_t":
        if type(value) is not dict:
            errors.append(f"{_where(path, key, index)}: expected an object")
        elif not attribute.opaque:
            if attribute.object_type not in definition()["objects"]:
                errors.append(f"{_where(path, key, index)}: object {attribute.object_type} is not in the schema file")
            else:
                _check_object(value, "objects", attribute.object_type, f"{_where(path, key, index)}.", profiles,
                              errors)
        return
    if not _TYPE_CHECKS[base](value):
        errors.append(f"{_where(path, key, index)}: {type(value).__name__} {value!r:.60} is not {attribute.type}")
    elif attribute.enum is not None and str(value) not in attribute.enum:
        errors.append(f"{_where(path, key, index)}: {value!r} is not one of the enum values {sorted(attribute.enum)}")


def _where(path: str, key: str, index: int | None) -> str:
    return f"{path}{key}" if index is None else f"{path}{key}[{index}]"


_TYPE_CHECKS = {
    "string_t": lambda v: type(v) is str,
    "boolean_t": lambda v: type(v) is bool,
    "integer_t": lambda v: type(v) is int and INT_MIN <= v <= INT_MAX,
    "long_t": lambda v: type(v) is int and LONG_MIN <= v <= LONG_MAX,
    "float_t": lambda v: type(v) in (int, float),
    "json_t": lambda v: True,
}
