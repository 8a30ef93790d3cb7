"""The one place this package imports aioquic (the listening side).

The calling side goes through :class:`qpq_proto.quic.Transport`. Keeping
aioquic to this module lets an API-compatible backend (qh3) replace it here.
"""

from __future__ import annotations

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

__all__ = [
    "ConnectionTerminated",
    "HandshakeCompleted",
    "QuicConfiguration",
    "QuicConnectionProtocol",
    "QuicEvent",
    "QuicServer",
    "StopSendingReceived",
    "StreamDataReceived",
    "StreamReset",
]
