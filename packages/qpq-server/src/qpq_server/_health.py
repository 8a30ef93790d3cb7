"""``qpq-server health``: one Health call, printed; exit 0 only when healthy."""

from __future__ import annotations

import asyncio
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
    try:
        ca_pem = ca_cert.read_text("ascii") if ca_cert is not None else None
        status = asyncio.run(asyncio.wait_for(_ask(host, port, ca_pem, pin), timeout))
    except (TimeoutError, ConnectionError, OSError, UnicodeDecodeError, QpqError) as error:
        where = format_host_port(host, port)
        print(f"unhealthy: cannot reach {where}: {type(error).__name__}: {error}")
        return 1
    print(
        f"{status.status}: version {status.version}, up {status.uptime_seconds}s, "
        f"storage {status.storage}"
    )
    return 0 if status.status == "ok" else 1
