"""The limits table of docs/protocol.md (§9) states the defaults of ``Limits``.

Every field of ``qpq_proto.Limits`` has a row, and each row's default is the
field's: a default changed in one place fails here until the other follows.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from qpq_proto import DEFAULT_LIMITS, Limits

PROTOCOL_MD = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
_UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "days": 86400, "day": 86400}


def _amount(text: str) -> float:
    """``8 MiB``, ``10,000``, ``60,000``, ``7 days``, ``50/s`` as a number."""
    match = re.fullmatch(r"([\d,.]+)\s*(KiB|MiB|GiB|days?|/s)?", text.strip())
    assert match is not None, f"cannot read the amount {text!r}"
    number = float(match[1].replace(",", ""))
    return number * _UNITS.get(match[2] or "", 1)


def _documented() -> dict[str, float]:
    section = PROTOCOL_MD.read_text("utf-8").split("## 9. Limits", 1)[1].split("\n## ", 1)[0]
    stated: dict[str, float] = {}
    for row in re.findall(r"^\|(.+)\|$", section, flags=re.MULTILINE):
        cells = [cell.strip() for cell in row.split("|")]
        names = [n for n in re.findall(r"`(\w+)`", cells[0]) if n in Limits.__dataclass_fields__]
        if not names:
            continue  # the header, and bounds that are no Limits field
        values = re.split(r",\s*burst\s*", cells[1])
        assert len(values) == len(names), f"one default per limit in {cells[0]!r}"
        for name, value in zip(names, values, strict=True):
            assert name not in stated, f"{name} has two rows"
            stated[name] = _amount(value)
    return stated


def test_every_limit_has_a_row() -> None:
    assert sorted(_documented()) == sorted(Limits.__dataclass_fields__)


def test_every_row_states_the_default() -> None:
    defaults = dataclasses.asdict(DEFAULT_LIMITS)
    assert {name: float(defaults[name]) for name in _documented()} == _documented()


def test_the_traversal_limit_is_stated_as_computed() -> None:
    section = PROTOCOL_MD.read_text("utf-8").split("## 9. Limits", 1)[1]
    assert "`max_message_bytes/8 + 1024` words" in section
    assert DEFAULT_LIMITS.traversal_limit_words == DEFAULT_LIMITS.max_message_bytes // 8 + 1024
