"""The ``database_url`` setting: what it names, how it is shown, whether its transport is safe.

A PostgreSQL URL may carry a password, so it is a secret: it is shown only
through :func:`redact_url`. Reading it needs no database driver (the
configuration checks run before any is imported).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["is_postgres_url", "nonlocal_hosts", "redact_url", "scrub", "sslmode"]

_SCHEMES = ("postgresql://", "postgres://")
_USERINFO_PASSWORD = re.compile(r"^([a-z]+://[^:/@?#]*):([^@/?#]*)@", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?i)(password=)([^&\s]*)")


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database."""
    return url.lower().startswith(_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` without its password (user, hosts, port and database stay)."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url))


def scrub(text: str, url: str) -> str:
    """``text`` with the password that ``url`` carries masked (driver messages may echo it)."""
    secrets = [m.group(2) for m in [_USERINFO_PASSWORD.match(url)] if m and m.group(2)]
    secrets += [m.group(2) for m in _QUERY_PASSWORD.finditer(url) if m.group(2)]
    for secret in secrets:
        text = text.replace(secret, "***")
        text = text.replace(unquote(secret), "***")
    return text


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def sslmode(url: str) -> str:
    """The ``sslmode`` the URL asks for; libpq's default (``prefer``) when it names none."""
    return _query(url).get("sslmode", ["prefer"])[-1]


def _is_local(host: str) -> bool:
    if not host or host.startswith("/") or host == "localhost":
        return True  # a unix socket directory, or the loopback name
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def nonlocal_hosts(url: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The hosts ``url`` connects to that are not this machine (no socket, no loopback).

    libpq also connects where ``hostaddr`` says (whatever ``host`` names),
    where the environment's ``PGHOST`` / ``PGHOSTADDR`` say when the URL
    names no host, and where a ``service`` entry says: each counts, and a
    service, which this check cannot read, counts as another machine.
    """
    env = os.environ if environ is None else environ
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    query = _query(url)
    hosts: list[str] = []
    for part in netloc.split(","):
        if part.startswith("["):
            hosts.append(part[1 : part.find("]")])
        else:
            hosts.append(unquote(part.partition(":")[0]))
    for name in ("host", "hostaddr"):
        for value in query.get(name, []):
            hosts.extend(value.split(","))
    if not any(hosts):
        for name in ("PGHOST", "PGHOSTADDR"):
            hosts.extend(env.get(name, "").split(","))
    services = query.get("service", []) + ([env["PGSERVICE"]] if env.get("PGSERVICE") else [])
    return [host for host in hosts if not _is_local(host)] + [
        f"service {name}" for name in services
    ]
