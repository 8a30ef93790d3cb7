"""The documentation names files and functions that exist.

The docs point readers at the code (``qpq_server/_mls.py``, "`_sending.py`
`stage_text`"); a module renamed or a function moved makes such a pointer
false without anything failing. Read as text, like the other repository
checks: every ``.py`` path a document names is a file of the repository,
and every "file function" pair of docs/message-path.md is defined there.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "packages").glob("*/README.md")]
)
_SKIP = {".tox", "target", ".wheelhouse", ".git", "node_modules"}


@cache
def _python_files() -> tuple[Path, ...]:
    return tuple(
        path
        for path in ROOT.rglob("*.py")
        if not _SKIP.intersection(part for part in path.relative_to(ROOT).parts)
    )


def _files_named(reference: str) -> list[Path]:
    """Repository files whose path ends with ``reference`` (``a/b.py`` or ``b.py``)."""
    suffix = "/" + reference.lstrip("./")
    return [path for path in _python_files() if ("/" + path.as_posix()).endswith(suffix)]


@pytest.mark.parametrize("document", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_python_file_a_document_names_exists(document: Path) -> None:
    text = document.read_text("utf-8")
    named = set(re.findall(r"(?<![\w/.-])([\w/.-]*\w\.py)\b", text))
    missing = sorted(reference for reference in named if not _files_named(reference))
    assert missing == []


def _defines(path: Path, name: str) -> bool:
    source = path.read_text("utf-8")
    *owners, leaf = name.split(".")
    for owner in owners:
        if not re.search(rf"^class {re.escape(owner)}\b", source, flags=re.MULTILINE):
            return False
    pattern = rf"^\s*(async def|def|class) {re.escape(leaf)}\b"
    return re.search(pattern, source, flags=re.MULTILINE) is not None


def test_every_step_of_the_message_path_names_a_definition() -> None:
    text = (ROOT / "docs" / "message-path.md").read_text("utf-8")
    # "`_sending.py` `stage_text`": a file and what it defines, side by side.
    pairs = re.findall(r"`([\w/]+\.py)`\s+`([A-Za-z_][\w.]*)`", text)
    assert len(pairs) >= 15, "the message path names its steps as `file.py` `function`"
    undefined = []
    for reference, name in pairs:
        files = _files_named(reference)
        if not any(_defines(path, name) for path in files):
            undefined.append(f"{reference} {name}")
    assert undefined == []
