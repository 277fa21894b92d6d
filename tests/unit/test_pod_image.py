"""The PoD streamer image runs the same module the tests run, on a pinned base, as a non-root user."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "functions" / "pod_streamer" / "Dockerfile"
TESTED_MODULE = "functions/pod_streamer/streamer.py"  # what tests/integration/test_pod_streamer.py runs


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_entrypoint_runs_the_module_the_tests_run():
    steps = instructions()
    entrypoints = [args for op, args in steps if op == "ENTRYPOINT"]
    assert entrypoints == ['["python", "/app/streamer.py"]']
    copies = [shlex.split(args) for op, args in steps if op == "COPY" and "--from" not in args]
    assert [TESTED_MODULE, "/app/streamer.py"] in copies
    assert ("WORKDIR", "/app") in steps
    assert (ROOT / TESTED_MODULE).is_file()


def test_base_image_is_pinned_by_digest_and_stages_are_split():
    steps = instructions()
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    froms = [a for op, a in steps if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS builder"), "multi-stage: builder + runtime"
    for base in froms:
        image = base.split()[0]
        resolved = args.get(image[2:-1], image) if image.startswith("${") else image
        assert re.fullmatch(r"python:3\.14-slim@sha256:[0-9a-f]{64}", resolved), resolved
    runtime = steps[[i for i, (op, _) in enumerate(steps) if op == "FROM"][1]:]
    assert not any(op == "RUN" and ("pip install" in a or "apt-get" in a) for op, a in runtime), \
        "the final stage has no build tools"
    assert any(op == "COPY" and a.startswith("--from=builder") for op, a in runtime)


def test_runs_as_a_non_root_user():
    users = [a for op, a in instructions() if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
