"""How one server setting is named, kept secret and read from text.

Each field of :class:`qpq_server.ServerConfig` that an operator may set
carries a :class:`Setting` in its metadata (declared with :func:`setting`),
so a new setting is one field: its TOML key is the field's name, its
environment variable ``QPQ_`` and that name in capitals, and a secret one
also has a ``_file`` / ``_FILE`` variant and stays out of ``repr``. The
parsers here turn what the TOML file or the environment holds into the
field's value, and raise :class:`~qpq_server.ConfigError` naming the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, field
from pathlib import Path
from typing import Any

from qpq_proto import parse_host_port
from qpq_server._database_url import is_postgres_url
from qpq_server._errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "Parse",
    "Setting",
    "choice",
    "database_url",
    "host_port",
    "number",
    "optional_host_port",
    "optional_path",
    "path",
    "setting",
    "setting_of",
    "text",
    "truth",
]

ENV_PREFIX = "QPQ_"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

#: Reads a raw value (a TOML value, or the text of a variable) for the
#: setting named by the second argument.
Parse = Callable[[Any, str], Any]

_METADATA_KEY = "qpq_setting"


class Setting:
    """One setting: how it is named, read, and whether it is a secret.

    Attributes:
        parse: reads a raw value into the field's value.
        secret: kept out of ``repr``; may be given as a file (``NAME_file``,
            ``QPQ_NAME_FILE``) so that it never sits in the environment.
        name: the setting's name when it is not the field's (``listen``
            sets ``listen_host`` and ``listen_port``); None otherwise.
        fills: the fields its parsed value (a tuple) fills, in order, when
            there are several; empty for the field it is declared on.
    """

    __slots__ = ("fills", "name", "parse", "secret")

    def __init__(
        self, parse: Parse, *, secret: bool, name: str | None, fills: tuple[str, ...]
    ) -> None:
        self.parse = parse
        self.secret = secret
        self.name = name
        self.fills = fills


def setting(
    default: Any,
    parse: Parse,
    *,
    secret: bool = False,
    name: str | None = None,
    fills: tuple[str, ...] = (),
) -> Any:
    """A ``ServerConfig`` field that an operator sets (see the module docstring)."""
    spec = Setting(parse, secret=secret, name=name, fills=fills)
    return field(default=default, repr=not secret, metadata={_METADATA_KEY: spec})


def setting_of(config_field: Field[Any]) -> Setting | None:
    """The setting a field was declared with, or None for a field no one sets alone."""
    spec = config_field.metadata.get(_METADATA_KEY)
    return spec if isinstance(spec, Setting) else None


# ---- parsers ----------------------------------------------------------------


def text(value: Any, _setting: str) -> str:
    return str(value)


def path(value: Any, _setting: str) -> Path:
    return Path(str(value))


def optional_path(value: Any, _setting: str) -> Path | None:
    """Empty means "not set": the default (the data dir's file) applies."""
    return Path(str(value)) if value else None


def truth(value: Any, setting: str) -> bool:
    if isinstance(value, bool):
        return value
    spelled = str(value).strip().lower()
    if spelled in ("1", "true", "yes", "on"):
        return True
    if spelled in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(setting, f"expected a boolean (1/0, true/false), got {value!r}")


def number(kind: type[int] | type[float], *, positive: bool = False) -> Parse:
    """A number of ``kind``, never negative; with ``positive``, never zero
    either (a zero would refuse every connection or call)."""

    def parse(value: Any, setting: str) -> Any:
        if isinstance(value, bool):
            raise ConfigError(setting, f"expected a number, got {value!r}")
        try:
            parsed = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(setting, f"expected a number, got {value!r}") from None
        if parsed < 0:
            raise ConfigError(setting, f"must not be negative, got {value!r}")
        if positive and parsed == 0:
            raise ConfigError(setting, "must be greater than zero")
        return parsed

    return parse


def choice(choices: tuple[str, ...], *, empty: bool = False) -> Parse:
    """One of ``choices``, in any case (stored as ``choices`` spell it); with
    ``empty``, also the empty text (not set: the field's default applies)."""
    by_case = {option.casefold(): option for option in choices}

    def parse(value: Any, setting: str) -> str:
        if empty and str(value).strip() == "":
            return ""
        chosen = by_case.get(str(value).casefold())
        if chosen is None:
            raise ConfigError(setting, f"must be one of {', '.join(choices)}")
        return chosen

    return parse


def host_port(value: Any, setting: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (:func:`qpq_proto.parse_host_port`); port 0 = any."""
    try:
        return parse_host_port(str(value))
    except ValueError as error:
        raise ConfigError(setting, str(error)) from None


def optional_host_port(value: Any, setting: str) -> tuple[str, int] | None:
    """Empty means off."""
    return host_port(value, setting) if value else None


def database_url(value: Any, setting: str) -> str:
    url = str(value)
    if url and not is_postgres_url(url):
        # Never the value itself: it may hold a password.
        raise ConfigError(
            setting, "must be a postgresql:// URL, or empty for SQLCipher in data_dir"
        )
    return url
