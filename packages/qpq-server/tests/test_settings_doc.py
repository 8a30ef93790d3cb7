"""The server README's settings table lists what ``ServerConfig`` reads.

Every setting (its TOML key, its ``QPQ_`` variable, the ``_file`` variants of
a secret) and every limit has a row, no row names something the server does
not read, and each row's default is the field's: a setting added, renamed or
given another default in the code fails here until the README follows.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from qpq_proto import DEFAULT_LIMITS
from qpq_server import ServerConfig
from qpq_server._config import LIMIT_ENV, SETTINGS

README = Path(__file__).resolve().parents[1] / "README.md"
_UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "days": 86400, "d": 86400, "h": 3600}
_TERM = r"(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|days|d|h)?"


def _rows() -> list[list[str]]:
    text = README.read_text("utf-8")
    table = text.split("| setting (TOML) | environment | default | meaning |", 1)[1]
    table = table.split("\n\n", 1)[0]
    rows = [line.strip("|").split("|") for line in table.strip().splitlines()[1:]]
    return [[cell.strip() for cell in row] for row in rows]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _amount(text: str) -> float:
    """``64 KiB``, ``1 GiB``, ``7 days``, ``84 d + 1 h``, ``10000`` as a number."""
    total = 0.0
    for term in text.split("+"):
        match = re.fullmatch(_TERM, term.strip())
        assert match is not None, f"cannot read the amount {text!r}"
        total += float(match[1]) * _UNITS.get(match[2] or "", 1)
    return total


def _default(cell: str) -> Any:
    """What the default column states, as the value ServerConfig would hold."""
    stated = cell.replace("`", "").split(" = ", 1)[0].strip()
    if stated == "empty":
        return ""
    if stated == "off" or stated.startswith("data_dir/"):
        return None  # off; or, for the TLS files, "the data dir's" (None)
    if stated in ("true", "false"):
        return stated == "true"
    if re.fullmatch(rf"{_TERM}(\s*\+\s*{_TERM})*", stated):
        return _amount(stated)
    return stated


def _config_value(name: str) -> Any:
    config = ServerConfig()
    if name == "listen":
        return config.listen
    if name == "data_dir":
        return f"./{config.data_dir}"
    value = getattr(config, name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def test_every_setting_and_limit_has_a_row_and_no_row_more() -> None:
    documented_keys: set[str] = set()
    documented_env: set[str] = set()
    for setting, env, *_ in _rows():
        documented_keys.update(name.removeprefix("[limits] ") for name in _names(setting))
        documented_env.update(_names(env))
    expected_keys = set(SETTINGS) | set(LIMIT_ENV.values())
    expected_keys |= {f"{name}_file" for name, (_, _, secret) in SETTINGS.items() if secret}
    expected_env = {env for env, _, _ in SETTINGS.values()} | set(LIMIT_ENV)
    expected_env |= {f"{env}_FILE" for env, _, secret in SETTINGS.values() if secret}
    assert documented_keys == expected_keys
    assert documented_env == expected_env


def test_every_row_pairs_a_setting_with_its_variable() -> None:
    for setting, env, *_ in _rows():
        keys = [name.removeprefix("[limits] ") for name in _names(setting)]
        variables = _names(env)
        assert len(keys) == len(variables), setting
        for key, variable in zip(keys, variables, strict=True):
            assert variable == "QPQ_" + key.upper(), (key, variable)


def test_every_row_states_the_default() -> None:
    limits = dataclasses.asdict(DEFAULT_LIMITS)
    for setting, _env, default, _meaning in _rows():
        for name in _names(setting):
            if name.endswith("_file"):
                continue
            if name.startswith("[limits] "):
                expected: Any = float(limits[name.removeprefix("[limits] ")])
            else:
                expected = _config_value(name)
            assert _default(default) == expected, f"{name}: README says {default!r}"
