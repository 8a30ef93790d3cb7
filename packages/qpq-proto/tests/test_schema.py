"""The schema ships as package data and is loaded once, explicitly."""

from __future__ import annotations

import sys
from importlib import resources

from qpq_proto._schema import schema


def test_schema_is_loaded_once() -> None:
    assert schema() is schema()


def test_schema_text_is_the_shipped_file() -> None:
    text = (resources.files("qpq_proto") / "schema" / "qpq.capnp").read_text("utf-8")
    assert text.startswith("@0xd1a8c6f3e2b47a95;")
    for name in ("struct Request", "struct Response", "struct Event", "enum ErrorCode"):
        assert name in text


def test_no_import_hook_is_installed() -> None:
    schema()
    assert not any(type(finder).__name__ == "_Importer" for finder in sys.meta_path)
