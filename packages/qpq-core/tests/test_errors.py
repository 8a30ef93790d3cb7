"""The Rust engine's error kinds and the Python classes they are raised as agree.

``ErrorKind::class_name`` (rust/errors.rs) names, for each kind, the class of
``qpq_core.errors`` the extension looks up by name when it raises. A kind
whose name has no class would raise an ``AttributeError`` from inside the
binding instead of a coded MLS error; a class no kind names is dead. The
source is read here, so adding a kind on one side only fails this test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qpq_core import Identity, errors, peek_message, verify_signature
from qpq_proto.errors import QpqError

ERRORS_RS = Path(__file__).resolve().parents[1] / "rust" / "errors.rs"


def _source() -> str:
    return ERRORS_RS.read_text("utf-8")


def _variants() -> list[str]:
    body = re.search(r"pub enum ErrorKind \{(?P<body>[^}]*)\}", _source())
    assert body is not None, "ErrorKind not found in errors.rs"
    return re.findall(r"^\s*(\w+),\s*$", body["body"], flags=re.MULTILINE)


def _class_names() -> dict[str, str]:
    pattern = r"fn class_name\(self\) -> &'static str \{(?P<body>.*?)\n    \}"
    body = re.search(pattern, _source(), re.S)
    assert body is not None, "ErrorKind::class_name not found in errors.rs"
    arms = re.findall(r"Self::(\w+) => \"(\w+)\"", body["body"])
    assert len(arms) == len(dict(arms)), "a kind has two arms"
    return dict(arms)


def test_every_kind_names_a_class() -> None:
    variants = _variants()
    names = _class_names()
    assert variants, "no ErrorKind variants parsed"
    assert sorted(names) == sorted(variants)
    assert len(set(names.values())) == len(names), "two kinds name one class"


def test_every_named_class_is_an_exported_qpq_error() -> None:
    for kind, name in _class_names().items():
        assert name in errors.__all__, f"{kind} names {name}, which qpq_core.errors lacks"
        cls = getattr(errors, name)
        assert isinstance(cls, type), kind
        assert issubclass(cls, QpqError), kind


def test_every_exported_class_but_the_root_is_named_by_a_kind() -> None:
    named = set(_class_names().values())
    assert set(errors.__all__) - {"MlsError"} == named


@pytest.mark.parametrize(
    ("raise_it", "expected"),
    [
        (lambda: peek_message(b""), errors.MalformedMlsMessageError),
        (
            lambda: verify_signature(Identity.generate().public_key, b"m", bytes(64)),
            errors.InvalidSignatureError,
        ),
    ],
)
def test_kinds_raised_from_rust_are_those_classes(raise_it, expected) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(expected):
        raise_it()
