"""Derive shared/ppocsf/ocsf_1_1_0.json, the compact OCSF 1.1.0 definition the validator reads.

Input: the schema compiled by the OCSF project's own compiler from the official repository at tag
v1.1.0 (docs/ocsf.md, "Schema", gives the exact commands). Output: for the classes the mappers emit and
every object reachable from them, each attribute's type, requirement, array flag, enum values, object
type and the profiles that bring it in; descriptions and captions are left out. Nothing else is kept.

    python tools/ocsf_schema_extract.py COMPILED.json SCHEMA_DICTIONARY.json > shared/ppocsf/ocsf_1_1_0.json
"""

from __future__ import annotations

import json
import sys

CLASSES = [
    "email_activity", "email_file_activity", "email_url_activity", "web_resources_activity",
    "detection_finding", "api_activity", "authentication",
]
SOURCE = {
    "repository": "github.com/ocsf/ocsf-schema",
    "tag": "v1.1.0",
    "commit": "8ea34523a316c4bad7e360e870a23a8e5cb29bd5",
    "compiler": "ocsf-schema-compiler 1.1.1 (PyPI), run with -i (no platform extensions)",
}


def compact_attributes(attributes: dict) -> dict:
    out = {}
    for name, spec in sorted(attributes.items()):
        entry = {"type": spec["type"], "requirement": spec.get("requirement", "optional")}
        if spec.get("is_array"):
            entry["is_array"] = True
        if "object_type" in spec:
            entry["object_type"] = spec["object_type"]
        if "enum" in spec:
            entry["enum"] = sorted(spec["enum"], key=lambda v: (len(v), v))
        if spec.get("profiles"):
            entry["profiles"] = sorted(spec["profiles"])
        out[name] = entry
    return out


def main(compiled_path: str, dictionary_path: str) -> None:
    with open(compiled_path, encoding="utf-8") as f:
        compiled = json.load(f)
    with open(dictionary_path, encoding="utf-8") as f:
        types = json.load(f)["types"]["attributes"]
    classes, objects, todo = {}, {}, []
    for name in CLASSES:
        spec = compiled["classes"][name]
        classes[name] = {"uid": spec["uid"], "category_uid": spec["category_uid"],
                         "profiles": sorted(spec.get("profiles", [])),
                         "attributes": compact_attributes(spec["attributes"])}
        todo.extend(a["object_type"] for a in classes[name]["attributes"].values() if "object_type" in a)
    while todo:
        name = todo.pop()
        if name in objects:
            continue
        objects[name] = {"attributes": compact_attributes(compiled["objects"][name]["attributes"])}
        todo.extend(a["object_type"] for a in objects[name]["attributes"].values() if "object_type" in a)
    base_types = {name: spec.get("type") or name for name, spec in types.items()}
    base_types["object_t"] = "object_t"
    json.dump({"version": compiled["version"], "source": SOURCE, "base_types": base_types,
               "classes": classes, "objects": dict(sorted(objects.items()))},
              sys.stdout, separators=(",", ":"), sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
