"""What a listening endpoint promises its peers: codes, the bounds of a connection, admission.

The values and small types :class:`~qpq_proto.quic.CallServerProtocol`
(``_serve.py``) works with, apart from its logic: the application error
codes it resets streams and closes connections with, :class:`ServeLimits`
(what one connection may make the endpoint hold, and for how long), and
:class:`AdmissionHub`, what an endpoint's connections share to count
themselves by source address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from qpq_proto._limits import Limits
from qpq_proto._messages import Endpoint

__all__ = [
    "STREAM_REJECTED",
    "STREAM_STALLED",
    "AdmissionHub",
    "CloseCode",
    "ServeLimits",
    "address_key",
    "endpoint_of",
]

#: Application error code on STOP_SENDING for a stream whose request was rejected.
STREAM_REJECTED = 0x10
#: Application error code on RESET_STREAM for an answer the peer took nothing of in time.
STREAM_STALLED = 0x12


class CloseCode(IntEnum):
    """Application error codes a listening endpoint closes a connection with."""

    SHUTDOWN = 0x0
    BAD_ALPN = 0x11
    TOO_MANY = 0x13
    UNAUTHENTICATED = 0x14


@dataclass(frozen=True, slots=True)
class ServeLimits:
    """What one connection may make a listening endpoint hold, and for how long.

    Attributes:
        limits: message size caps for each stream's :class:`~qpq_proto.ServerCall`.
        unproven_bytes: what a connection may make the listener hold until
            the peer proved an identity: QUIC credit beyond what was taken,
            and request bytes buffered across its unfinished requests alike.
        proven_window: QUIC credit per connection after the proof.
        authenticate_timeout_seconds: to prove an identity after opening.
        request_timeout_seconds: for a request to arrive in full after its first byte.
        stream_window: QUIC credit per stream beyond what was taken; None:
            one whole message (``limits.max_message_bytes``).
        proven_request_bytes: request bytes buffered across a proven
            connection's unfinished requests; None: ``proven_window``.
        answer_window: answer bytes one connection may hold, unacknowledged
            by the peer or reserved for answers being produced; None: twice
            ``limits.max_message_bytes``.
        answer_stall_seconds: how long the peer may take none of an answer
            before its stream is reset.
        event_stall_seconds: the same for a stream of events (see
            :meth:`CallServerProtocol._exclude_from_answer_window`); None:
            ``answer_stall_seconds``.
        pressed_stall_seconds: how long the peer may take none of an
            answer to a call while another connection waits for room in the
            shared answer budget (an honest peer takes some every round trip).
    """

    limits: Limits
    unproven_bytes: int
    proven_window: int
    authenticate_timeout_seconds: float
    request_timeout_seconds: float
    stream_window: int | None = None
    proven_request_bytes: int | None = None
    answer_window: int | None = None
    answer_stall_seconds: float = 10.0
    event_stall_seconds: float | None = None
    pressed_stall_seconds: float = 1.0

    @property
    def stream_credit(self) -> int:
        """``stream_window``, or one whole message."""
        return self.stream_window or self.limits.max_message_bytes

    @property
    def proven_request_budget(self) -> int:
        """``proven_request_bytes``, or the proven window."""
        return self.proven_request_bytes or self.proven_window

    @property
    def answer_window_bytes(self) -> int:
        """``answer_window``, or two whole messages."""
        return self.answer_window or 2 * self.limits.max_message_bytes

    @property
    def event_stall(self) -> float:
        """``event_stall_seconds``, or ``answer_stall_seconds``."""
        return self.event_stall_seconds or self.answer_stall_seconds


class AdmissionHub(Protocol):
    """What the connections of one listening endpoint share: whether it accepts, its caps."""

    accepting: bool

    def admit(self, key: str) -> str | None:
        """Count a new connection from address ``key``; the refusal reason if over a cap."""
        ...

    def release(self, key: str) -> None:
        """Forget a connection that :meth:`admit` counted."""
        ...

    def move(self, old: str, new: str) -> None:
        """Count a connection that :meth:`admit` counted under ``old`` under ``new``."""
        ...


def address_key(host: str) -> str:
    """The key a peer is counted under: the host, or its /64 for IPv6.

    One IPv6 host normally owns a whole /64 and can send from any address
    in it; keyed by full address, it would get a fresh count per address.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return host


def endpoint_of(addr: Any) -> Endpoint | None:
    """The endpoint of a socket address, IPv4-mapped IPv6 as IPv4; None if it is none."""
    try:
        host, port = str(addr[0]), int(addr[1])
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except (TypeError, ValueError, IndexError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        host = str(ip.ipv4_mapped)
    return Endpoint(host=host, port=port) if port > 0 else None
