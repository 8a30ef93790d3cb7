"""The one place qpq-proto imports aioquic.

Everything QUIC-specific that the client-side adapter uses comes through
here, so that an API-compatible backend (qh3) can be swapped in by changing
this module alone. Two facts aioquic has no public accessor for are read
here and nowhere else, failing closed when a future version moves them.
"""

from __future__ import annotations

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = [
    "ConnectionTerminated",
    "HandshakeCompleted",
    "QuicConfiguration",
    "QuicConnection",
    "QuicConnectionProtocol",
    "QuicEvent",
    "StreamDataReceived",
    "StreamReset",
    "peer_certificate_der",
]


def peer_certificate_der(connection: QuicConnection) -> bytes | None:
    """The DER of the certificate the peer presented, once the handshake is done.

    aioquic keeps it only on its TLS context; ``None`` when there is none (or
    a future version moved it: callers then refuse, as for a wrong pin).
    """
    certificate = getattr(getattr(connection, "tls", None), "_peer_certificate", None)
    if certificate is None:
        return None
    der: bytes = certificate.public_bytes(Encoding.DER)
    return der
