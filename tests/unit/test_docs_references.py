"""Every ``*.md`` the code and docs cite is in the repo, with the section it names.

A fresh clone has nothing but the repo: a comment that cites a Markdown file and a section ("§2.4")
must point at a file that exists (relative to the repo root, or for a Markdown file also to its own folder) and, when a
section is given, at a heading carrying that number. Paths into the team's private kit are refused.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".toml", ".md", ".txt", ".cfg", ".ini"}
NAMES = {"Makefile", "Dockerfile"}

SECTION = r"§\s?\d+(?:\.\d+)*"
# Starts at a whole path token: a path inside a URL or a "repo:path" citation is someone else's file.
REFERENCE = re.compile(
    r"(?<![\w./:-])(?P<path>[\w./-]*\w\.md)(?![\w-])"
    rf"(?P<sections>[`\"']?\s*\(?{SECTION}(?:\s*(?:,|and|&)\s*{SECTION})*)?"
)
SECTION_NUMBER = re.compile(r"§\s?(\d+(?:\.\d+)*)")
HEADING_NUMBER = re.compile(r"^#{1,6}\s+(?:§\s?)?(\d+(?:\.\d+)*)\.?(?:\s|$)", re.MULTILINE)
# Written so that this file does not match itself.
OUTSIDE_REPO = re.compile(r"\.\./(?:shared|reference)\b|/work[/]shared\b")


def scanned(path: Path) -> bool:
    if path.suffix in SUFFIXES or path.name in NAMES:
        return True
    if path.suffix or not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(2) == b"#!"


def tracked_files(root: Path) -> list[Path]:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    paths = (root / name for name in listing.decode().split("\0") if name)
    return [path for path in paths if path.is_file() and scanned(path)]


def section_numbers(doc: Path) -> set[str]:
    return set(HEADING_NUMBER.findall(doc.read_text(encoding="utf-8")))


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def problems_in(root: Path, files: list[Path]) -> list[str]:
    """One line per bad reference: ``file:line: reference: why``."""
    problems = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(root)
        for match in OUTSIDE_REPO.finditer(text):
            problems.append(f"{where}:{line_of(text, match.start())}: {match.group()}: points outside the repo")
        for match in REFERENCE.finditer(text):
            cited = match.group("path")
            bases = [root, path.parent] if path.suffix == ".md" else [root]
            target = next((base / cited for base in bases if (base / cited).is_file()), None)
            reference = " ".join(match.group().split())
            if target is None:
                problems.append(f"{where}:{line_of(text, match.start())}: {reference}: no such file in the repo")
                continue
            wanted = SECTION_NUMBER.findall(match.group("sections") or "")
            missing = [number for number in wanted if number not in section_numbers(target)]
            if missing:
                sections = ", ".join(f"§{number}" for number in missing)
                problems.append(
                    f"{where}:{line_of(text, match.start())}: {reference}: {cited} has no heading {sections}")
    return problems


def test_every_cited_doc_exists_with_its_sections():
    files = tracked_files(ROOT)
    assert any(path.name == "sinks.py" for path in files)  # the scan sees the code, not an empty list
    problems = problems_in(ROOT, files)
    assert not problems, "references to missing docs or sections:\n" + "\n".join(problems)


def test_the_vendor_notes_and_the_contract_are_in_the_repo():
    for name in ("docs/CONTRACT.md", "docs/vendors/tap.md", "docs/vendors/casb.md", "docs/vendors/pod.md",
                 "docs/vendors/aws.md"):
        assert section_numbers(ROOT / name), f"{name} has no numbered sections to cite"


DOC = "# A note\n\n## 1. First\n\n### 1.4 Sessions\n\n## 2. Second\n"
# Kept apart so that the examples below are not references made by this file.
MD = ".md"
UP = ".." + "/"
KIT = "/work" + "/shared"


@pytest.mark.parametrize(
    ("cited_in", "text", "expected"),
    [
        ("code.py", f"# ok (docs/note{MD} §1.4, §2)\n", None),
        (f"docs/other{MD}", f"See note{MD} §1.4 (same folder).\n", None),
        ("code.py", "x = hashlib.md5(b'')  # not a reference\n", None),
        ("code.py", f"# see https://example.org/guide/README{MD} upstream\n", None),
        ("code.py", f"# quirk (nowhere{MD} §1.2)\n", f"code.py:1: nowhere{MD} §1.2: no such file in the repo"),
        ("code.py", f'"""Doc.\n\nUses docs/note{MD}\n§1.5 and more."""\n',
         f"code.py:3: docs/note{MD} §1.5: docs/note{MD} has no heading §1.5"),
        ("code.py", f"# (docs/note{MD} §1.4, §3)\n",
         f"code.py:1: docs/note{MD} §1.4, §3: docs/note{MD} has no heading §3"),
        ("code.py", f"# note{MD} §1\n", f"code.py:1: note{MD} §1: no such file in the repo"),
        ("Makefile", f"# see {UP}shared/docs/STYLE\n", f"Makefile:1: {UP}shared: points outside the repo"),
        ("template.yaml", f"# {UP}reference/tap\n", f"template.yaml:1: {UP}reference: points outside the repo"),
        ("code.py", f"# {KIT}/reference\n", f"code.py:1: {KIT}: points outside the repo"),
    ],
)
def test_the_check_reports_bad_references(tmp_path, cited_in, text, expected):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / f"note{MD}").write_text(DOC, encoding="utf-8")
    citing = tmp_path / cited_in
    citing.write_text(text, encoding="utf-8")
    problems = problems_in(tmp_path, [citing])
    assert problems == ([expected] if expected else [])
