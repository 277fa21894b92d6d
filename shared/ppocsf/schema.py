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
    _, spec = classes_by_uid()[class_uid]
    metadata = record.get("metadata")
    profiles = set(metadata.get("profiles") or []) if isinstance(metadata, dict) else set()
    unknown_profiles = profiles - set(spec["profiles"])
    if unknown_profiles:
        errors.append(f"metadata.profiles: {sorted(unknown_profiles)} not defined for this class")
    _check_object(record, spec["attributes"], "", profiles, errors)
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


def _applies(attribute: dict[str, Any], profiles: set[str]) -> bool:
    wanted = attribute.get("profiles")
    return not wanted or bool(profiles.intersection(wanted))


def _check_object(value: dict[str, Any], attributes: dict[str, Any], path: str, profiles: set[str],
                  errors: list[str]) -> None:
    for name, attribute in attributes.items():
        if attribute["requirement"] == "required" and _applies(attribute, profiles) and value.get(name) is None:
            errors.append(f"{path}{name}: required attribute missing")
    for name, item in value.items():
        attribute = attributes.get(name)
        where = f"{path}{name}"
        if attribute is None:
            errors.append(f"{where}: not an attribute of this class/object (put it in unmapped)")
        elif not _applies(attribute, profiles):
            errors.append(f"{where}: needs profile {attribute['profiles']} in metadata.profiles")
        elif item is not None:
            if attribute.get("is_array"):
                if not isinstance(item, list):
                    errors.append(f"{where}: expected an array")
                    continue
                for index, element in enumerate(item):
                    _check_value(element, attribute, f"{where}[{index}]", profiles, errors)
            else:
                _check_value(item, attribute, where, profiles, errors)


def _check_value(value: Any, attribute: dict[str, Any], where: str, profiles: set[str], errors: list[str]) -> None:
    base = definition()["base_types"].get(attribute["type"], attribute["type"])
    if base == "object_t":
        if not isinstance(value, dict):
            errors.append(f"{where}: expected an object")
        elif attribute["object_type"] != FREE_FORM_OBJECT:
            spec = definition()["objects"].get(attribute["object_type"])
            if spec is None:
                errors.append(f"{where}: object {attribute['object_type']} is not in the schema file")
            else:
                _check_object(value, spec["attributes"], f"{where}.", profiles, errors)
        return
    if not _type_ok(value, base):
        errors.append(f"{where}: {type(value).__name__} {value!r:.60} is not {attribute['type']}")
        return
    enum = attribute.get("enum")
    if enum is not None and str(value) not in enum:
        errors.append(f"{where}: {value!r} is not one of the enum values {enum}")


def _type_ok(value: Any, base: str) -> bool:
    if base == "string_t":
        return isinstance(value, str)
    if base == "boolean_t":
        return isinstance(value, bool)
    if base == "integer_t":
        return isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX
    if base == "long_t":
        return isinstance(value, int) and not isinstance(value, bool) and LONG_MIN <= value <= LONG_MAX
    if base == "float_t":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return base == "json_t"
