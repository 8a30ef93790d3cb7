"""The exceptions of qpq-p2p, under :class:`qpq_proto.errors.QpqError`::

    QpqError
    └── PeerError                     a direct path to a peer did not work
        ├── PeerUnreachableError      no address known, or none answered
        ├── PeerAuthenticationError   a side did not prove the identity key it
        │                             claims, or is no member of a shared group
        │                             (``code``: unauthenticated or forbidden)
        ├── PeerRefusedError          the peer answered a delivery with a coded error
        └── DeliveryDeferredError     raised by a host: it cannot take this
                                      message now (say, an epoch it has not
                                      reached); the sender goes through the server

A listening peer answers what it refuses with the wire codes of
:class:`qpq_proto.errors.ServiceError`; the dialing peer sees them as
:class:`PeerAuthenticationError` or :class:`PeerRefusedError` carrying the
same code. Messages never hold keys, payloads or addresses' secrets.
"""

from __future__ import annotations

from qpq_proto.errors import ErrorCode, QpqError

__all__ = [
    "DeliveryDeferredError",
    "PeerAuthenticationError",
    "PeerError",
    "PeerRefusedError",
    "PeerUnreachableError",
]


class PeerError(QpqError):
    """A direct path to a peer did not work; a message then goes through the server."""


class PeerUnreachableError(PeerError):
    """No address of the peer is known, or none answered in time."""


class _Coded(PeerError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{message} ({code.name.lower()})")
        self.code = code
        self.message = message


class PeerAuthenticationError(_Coded):
    """A side of a peer connection did not prove the identity key it claims.

    Attributes:
        code: ``UNAUTHENTICATED`` for a proof that does not verify on this
            connection (an impostor, a replay, a relay), ``FORBIDDEN`` for a
            key that is no member of a group both sides are in, or another
            identity than the one dialed.
    """


class PeerRefusedError(_Coded):
    """The peer answered a delivery with a coded error (``code``); nothing was persisted."""


class DeliveryDeferredError(PeerError):
    """Raised by a host's receiver: it cannot process this message now.

    The peer answers ``unavailable`` and the sender sends the message through
    the server, which orders it after whatever it depends on.
    """
