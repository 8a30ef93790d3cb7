"""The one place this package imports aioquic.

Everything QUIC-specific that the adapters use is re-exported from here, so
an API-compatible backend (qh3) can be swapped in by changing this module.
"""

from __future__ import annotations

from aioquic.asyncio.client import connect
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
from aioquic.quic.packet import QuicErrorCode
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = [
    "ConnectionTerminated",
    "HandshakeCompleted",
    "QuicConfiguration",
    "QuicConnectionProtocol",
    "QuicErrorCode",
    "QuicEvent",
    "QuicServer",
    "StopSendingReceived",
    "StreamDataReceived",
    "StreamReset",
    "connect",
    "peer_certificate_der",
]


def peer_certificate_der(protocol: QuicConnectionProtocol) -> bytes | None:
    """The DER of the certificate the server presented, after the handshake.

    aioquic has no public accessor; this reads its TLS context's attribute
    and fails closed (None) if a future version moves it.
    """
    tls = getattr(protocol._quic, "tls", None)
    certificate = getattr(tls, "_peer_certificate", None)
    if certificate is None:
        return None
    der: bytes = certificate.public_bytes(Encoding.DER)
    return der
