"""What ships is what was tested: the layer and the PoD image install exactly the pinned versions.

Offline and quick: the dependency graph is read from the installed distributions' metadata (the venv
holds exactly the root pins), with the markers evaluated for the target (CPython 3.14, Linux, arm64).
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_REQUIREMENTS = {
    "layer": ROOT / "shared" / "requirements.txt",
    "pod image": ROOT / "functions" / "pod_streamer" / "requirements.txt",
}
# The Lambda runtime and the image: CPython 3.14 on Linux arm64 (template.yaml, Dockerfile).
TARGET = {"python_version": "3.14", "python_full_version": "3.14.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def pins(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            found[canonicalize_name(name)] = version.strip()
    return found


def installed_closure(names: list[str]) -> dict[str, str]:
    """Every distribution pip installs for ``names`` on the target, with the version installed here."""
    seen: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        distribution = metadata.distribution(name)
        seen[name] = distribution.version
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(TARGET):
                todo.append(requirement.name)
    return seen


def test_shipped_constraints_equal_the_root_pins():
    root, shipped = pins(ROOT / "constraints.txt"), pins(ROOT / "shared" / "constraints.txt")
    assert {name: root.get(name) for name in shipped} == shipped


@pytest.mark.parametrize("unit", sorted(SHIPPED_REQUIREMENTS))
def test_every_package_a_shipped_unit_installs_is_pinned(unit):
    requirements = pins(SHIPPED_REQUIREMENTS[unit])
    shipped = pins(ROOT / "shared" / "constraints.txt")
    closure = installed_closure(list(requirements))
    assert {name: shipped.get(name) for name in closure} == closure, (
        "add the missing transitive pins to shared/constraints.txt (the root constraints.txt versions)")
    assert {name: closure[name] for name in requirements} == requirements


def test_layer_build_and_image_install_with_the_constraints():
    makefile = (ROOT / "shared" / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"pip install -r requirements\.txt -c constraints\.txt ", makefile)
    dockerfile = (ROOT / "functions" / "pod_streamer" / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY shared/constraints.txt /build/constraints.txt" in dockerfile
    assert "pip install -r /build/requirements.txt -c /build/constraints.txt" in dockerfile


def test_pyproject_declares_every_runtime_dependency():
    declared = {canonicalize_name(Requirement(text).name)
                for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert set(pins(ROOT / "requirements.txt")) <= declared
