"""Configuration checks: what production refuses and development warns about.

The token rule (documented in the README): a production ``auth_token`` must
be at least 32 characters long, contain at least 10 distinct characters, and
not be ``devtoken``. A token made by ``python -c "import secrets;
print(secrets.token_urlsafe(32))"`` (43 characters, 256 bits) passes; a
repeated word or a short password does not.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from qpq_server._config import ServerConfig

__all__ = [
    "MIN_TOKEN_CHARS",
    "MIN_TOKEN_DISTINCT",
    "Problem",
    "Severity",
    "check_config",
    "refusal",
    "token_weakness",
]

MIN_TOKEN_CHARS = 32
MIN_TOKEN_DISTINCT = 10
_KNOWN_WEAK = frozenset({"devtoken", "changeme", "secret", "password", "token"})


class Severity(enum.Enum):
    """A problem refuses startup (ERROR) or is logged loudly (WARNING)."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about a setting; ``message`` never contains the secret."""

    setting: str
    message: str
    severity: Severity

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}"


def token_weakness(token: str) -> str | None:
    """Why ``token`` is too weak for production, or None."""
    if not token:
        return "is empty; set QPQ_AUTH_TOKEN or QPQ_AUTH_TOKEN_FILE"
    if token.strip().lower() in _KNOWN_WEAK:
        return f"is the well-known value {token.strip().lower()!r}"
    if len(token) < MIN_TOKEN_CHARS:
        return f"is too weak: it needs at least {MIN_TOKEN_CHARS} characters"
    if len(set(token)) < MIN_TOKEN_DISTINCT:
        return f"is too weak: it needs at least {MIN_TOKEN_DISTINCT} distinct characters"
    return None


def check_config(config: ServerConfig) -> list[Problem]:
    """Every problem with ``config``; in production the security ones are errors."""
    prod = Severity.ERROR if config.production else Severity.WARNING
    problems: list[Problem] = []
    weakness = token_weakness(config.auth_token)
    if weakness is not None:
        problems.append(Problem("auth_token", weakness, prod))
    if not config.db_key:
        problems.append(
            Problem(
                "db_key",
                "is empty: the database is stored unencrypted; set QPQ_DB_KEY or QPQ_DB_KEY_FILE",
                prod,
            )
        )
    elif "\x00" in config.db_key:
        problems.append(Problem("db_key", "must not contain NUL characters", Severity.ERROR))
    if (config.tls_cert is None) != (config.tls_key is None):
        problems.append(
            Problem("tls_cert", "set both tls_cert and tls_key, or neither", Severity.ERROR)
        )
    for setting, path in (("tls_cert", config.tls_cert), ("tls_key", config.tls_key)):
        if path is not None and not path.is_file():
            problems.append(Problem(setting, f"file {path} does not exist", Severity.ERROR))
    if config.production and config.tls_cert is None:
        problems.append(
            Problem(
                "tls_cert",
                "is not set: production never generates a certificate; set QPQ_TLS_CERT "
                "and QPQ_TLS_KEY",
                Severity.ERROR,
            )
        )
    wait_seconds = config.limits.max_fetch_wait_ms / 1000
    if config.idle_timeout_seconds <= wait_seconds:
        problems.append(
            Problem(
                "idle_timeout_seconds",
                f"must exceed the longest fetchWait ({wait_seconds:g} s)",
                Severity.ERROR,
            )
        )
    if config.cleanup_interval_seconds <= 0:
        problems.append(Problem("cleanup_interval_seconds", "must be positive", Severity.ERROR))
    return problems


def refusal(problems: Iterable[Problem]) -> Problem | None:
    """The first of ``problems`` that stops the server from starting, or None."""
    for problem in problems:
        if problem.severity is Severity.ERROR:
            return problem
    return None
