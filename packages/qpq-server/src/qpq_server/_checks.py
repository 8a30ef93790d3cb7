"""Configuration checks: what production refuses and development warns about.

Secrets are judged by an estimate of how many guesses they would take,
``zxcvbn``'s (it finds words, repeats, sequences, keyboard walks, dates and
common passwords), in bits: ``log2(guesses)``. Character counts alone let
``abcdefghij...`` or a repeated word through.

The token is an optional gate in front of every call: production runs
without one when registration is by invitation (``registration = invite``,
its default there), since the invite codes then admit people one by one;
with ``open`` registration it must be set. The token rule (documented in the
README): a production ``auth_token``, when set or needed, must
be at least 32 characters long, contain at least 10 distinct characters, not
be ``devtoken``, and be estimated at :data:`MIN_TOKEN_BITS` or more. The token
can only be guessed online, against the rate limits; the ``db_key`` protects a
file that can be attacked offline once stolen, so it needs
:data:`MIN_DB_KEY_BITS`. ``python -c "import secrets;
print(secrets.token_urlsafe(32))"`` makes a value that passes both.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from zxcvbn import zxcvbn

from qpq_server._config import REGISTRATION_INVITE, ServerConfig
from qpq_server._database_url import nonlocal_hosts, sslmode

__all__ = [
    "MIN_DB_KEY_BITS",
    "MIN_TOKEN_BITS",
    "MIN_TOKEN_CHARS",
    "MIN_TOKEN_DISTINCT",
    "Problem",
    "Severity",
    "check_config",
    "db_key_weakness",
    "estimated_bits",
    "refusal",
    "token_weakness",
]

MIN_TOKEN_CHARS = 32
MIN_TOKEN_DISTINCT = 10
MIN_TOKEN_BITS = 64
MIN_DB_KEY_BITS = 128
#: The most characters zxcvbn analyses; a longer secret is judged by its start.
_ESTIMATE_CHARS = 72
#: The smallest unauthenticated budget that still carries Challenge and Authenticate.
MIN_UNAUTHENTICATED_BUFFER = 4096
_KNOWN_WEAK = frozenset({"devtoken", "changeme", "secret", "password", "token"})
_GENERATE = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


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
    return _pattern_weakness(token, MIN_TOKEN_BITS)


def estimated_bits(secret: str) -> float:
    """zxcvbn's estimate of ``secret``'s strength in bits: log2 of the guesses it needs.

    Only the first 72 characters are analysed (zxcvbn's own bound on its
    work), which can only underestimate a longer secret.
    """
    if not secret:
        return 0.0
    guesses_log10 = float(zxcvbn(secret[:_ESTIMATE_CHARS])["guesses_log10"])
    return guesses_log10 * math.log2(10)


def _pattern_weakness(secret: str, minimum: int) -> str | None:
    bits = estimated_bits(secret)
    if bits >= minimum:
        return None
    return (
        f"is too weak: about {bits:.0f} bits by a strength estimate, at least {minimum} "
        f"needed (words, repeats, sequences and keyboard patterns are cheap to guess); "
        f"{_GENERATE}"
    )


def db_key_weakness(db_key: str) -> str | None:
    """Why a non-empty ``db_key`` is too weak for production, or None."""
    return _pattern_weakness(db_key, MIN_DB_KEY_BITS)


def _database_url_problems(config: ServerConfig, prod: Severity) -> list[Problem]:
    """A PostgreSQL database on another host must be reached over verified TLS.

    ``sslmode=verify-full`` in the URL itself: TLS with the server's
    certificate checked against a trusted CA and its name against the host,
    so neither an eavesdropper nor an impostor sees the stored messages.
    """
    remote = nonlocal_hosts(config.database_url)
    mode = sslmode(config.database_url)
    if remote and mode != "verify-full":
        return [
            Problem(
                "database_url",
                f"reaches {', '.join(remote)} with sslmode={mode}: add sslmode=verify-full "
                "(and sslrootcert) so the database connection is encrypted and its server "
                "verified",
                prod,
            )
        ]
    return []


def check_config(config: ServerConfig) -> list[Problem]:
    """Every problem with ``config``; in production the security ones are errors."""
    prod = Severity.ERROR if config.production else Severity.WARNING
    problems: list[Problem] = []
    if config.auth_token or config.registration_mode != REGISTRATION_INVITE:
        # The token is an optional gate in front of every call; where
        # registration is open it is the only thing between the internet
        # and a new account, so then it must be set (and strong) as before.
        weakness = token_weakness(config.auth_token)
        if weakness is not None:
            if not config.auth_token:
                weakness += " (or register by invitation: registration = invite)"
            problems.append(Problem("auth_token", weakness, prod))
    if config.auth_token_next:
        if not config.auth_token:
            problems.append(
                Problem(
                    "auth_token_next",
                    "is set but auth_token is empty: set it only during a rotation, beside "
                    "the token in use",
                    Severity.ERROR,
                )
            )
        elif (weak_next := token_weakness(config.auth_token_next)) is not None:
            problems.append(Problem("auth_token_next", weak_next, prod))
    if config.database_url:
        problems.extend(_database_url_problems(config, prod))
    elif not config.db_key:
        problems.append(
            Problem(
                "db_key",
                "is empty: the database is stored unencrypted; set QPQ_DB_KEY or QPQ_DB_KEY_FILE",
                prod,
            )
        )
    elif "\x00" in config.db_key:
        problems.append(Problem("db_key", "must not contain NUL characters", Severity.ERROR))
    elif (weak_key := db_key_weakness(config.db_key)) is not None:
        problems.append(Problem("db_key", weak_key, prod))
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
    if config.unauthenticated_buffer_bytes < MIN_UNAUTHENTICATED_BUFFER:
        problems.append(
            Problem(
                "unauthenticated_buffer_bytes",
                f"must be at least {MIN_UNAUTHENTICATED_BUFFER} to carry Challenge and "
                "Authenticate",
                Severity.ERROR,
            )
        )
    if config.receive_budget_bytes < config.receive_window:
        problems.append(
            Problem(
                "receive_budget_bytes",
                f"must be at least the connection window ({config.receive_window} bytes, "
                "receive_window_bytes)",
                Severity.ERROR,
            )
        )
    return problems


def refusal(problems: Iterable[Problem]) -> Problem | None:
    """The first of ``problems`` that stops the server from starting, or None."""
    for problem in problems:
        if problem.severity is Severity.ERROR:
            return problem
    return None
