"""``HOST:PORT`` text, written and read by one rule everywhere.

An IPv6 literal takes brackets when a port follows it (``[::1]:7000``, as in
URIs, RFC 3986 §3.2.2), so the last colon of unbracketed text with several
colons is never taken for the port's: such text is an IPv6 literal alone.
"""

from __future__ import annotations

import ipaddress

__all__ = ["format_host_port", "parse_host_port"]

_MAX_PORT = 65535


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets (``[::1]:7000``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Read ``HOST:PORT`` or ``[IPV6]:PORT`` (surrounding blanks ignored).

    With ``default_port``, a host alone (``HOST``, ``[IPV6]`` or an
    unbracketed IPv6 literal) takes that port. The port may be 0 to 65535;
    callers that need a real port refuse 0 themselves.

    Raises:
        ValueError: the text is not such an address; the message says why,
            in one line that quotes the text.
    """
    stripped = text.strip()
    port_text: str | None
    bracketed = stripped.startswith("[")
    if bracketed:
        host, closed, rest = stripped[1:].partition("]")
        if not closed or not (rest.startswith(":") or (not rest and default_port is not None)):
            raise ValueError(f"expected [IPV6]:PORT, got {text!r}")
        port_text = rest[1:] if rest else None
    elif stripped.count(":") > 1:
        if default_port is None:
            raise ValueError(f"expected [IPV6]:PORT (IPv6 takes brackets), got {text!r}")
        host, port_text = stripped, None
    else:
        host, colon, port_text = stripped.rpartition(":")
        if not colon:
            if default_port is None:
                raise ValueError(f"expected HOST:PORT, got {text!r}")
            host, port_text = stripped, None
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if port_text is None:
        port = default_port if default_port is not None else 0
    else:
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"port must be a number, got {port_text!r}")
        port = int(port_text)
    if not 0 <= port <= _MAX_PORT:
        raise ValueError(f"port must be in 0..{_MAX_PORT}, got {port}")
    if bracketed or ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r}") from None
    return host, port
