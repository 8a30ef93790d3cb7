"""The one place this package imports aioquic (the listening side).

The calling side goes through :class:`qpq_proto.quic.Transport`, each
incoming connection through :class:`qpq_proto.quic.CallServerProtocol`;
what is left here binds the socket. Keeping aioquic to this module lets an
API-compatible backend (qh3) replace it here.
"""

from __future__ import annotations

from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration

__all__ = ["QuicConfiguration", "QuicServer"]
