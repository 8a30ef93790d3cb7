"""``qpq-server health``: one Health call, printed; exit 0 only when healthy."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from qpq_proto import Health, HealthStatus, format_host_port
from qpq_proto.errors import QpqError
from qpq_server._call_client import open_client

__all__ = ["check_health"]


async def _ask(host: str, port: int, ca_pem: str | None, pin: str | None) -> HealthStatus:
    async with open_client(host, port, ca_pem=ca_pem, pin=pin) as client:
        status: HealthStatus = await client.call(Health())
        return status


def check_health(
    host: str, port: int, *, ca_cert: Path | None, pin: str | None, timeout: float
) -> int:
    """Print the server's health; 0 when ``ok``, 1 when degraded or unreachable."""
    # aioquic logs a failed handshake itself (to stderr, through logging's
    # last resort); the one line below says it, with what to do about it.
    transport = logging.getLogger("quic")
    transport.addHandler(logging.NullHandler())
    transport.propagate = False
    where = format_host_port(host, port)
    try:
        ca_pem = ca_cert.read_text("ascii") if ca_cert is not None else None
        status = asyncio.run(asyncio.wait_for(_ask(host, port, ca_pem, pin), timeout))
    except TimeoutError:
        # QUIC over UDP: a closed port or a dropped packet look the same, silence.
        print(
            f"unhealthy: cannot reach {where}: no answer within {timeout:g} s"
            " (no server listens there, or a firewall drops the packets)"
        )
        return 1
    except (ConnectionError, OSError, UnicodeDecodeError, QpqError) as error:
        reason = str(error) or type(error).__name__
        hint = ""
        if ca_cert is None and pin is None and "certificate" in reason:
            hint = " (pass --pin SHA256 or --ca-cert PEM: the server's certificate is not"
            hint += " one this system trusts)"
        print(f"unhealthy: cannot reach {where}: {reason}{hint}")
        return 1
    print(
        f"{status.status}: version {status.version}, up {status.uptime_seconds}s, "
        f"storage {status.storage}"
    )
    return 0 if status.status == "ok" else 1
