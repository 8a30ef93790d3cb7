"""qpq over QUIC: the calling side, and the listening side's shared adapter.

The qpq client library, the server's health check and test harness, and
direct peer-to-peer connections all call through :class:`Transport`, so
stream handling and certificate checks exist once. The qpq server and a
client's direct-delivery listener both answer calls through a subclass of
:class:`CallServerProtocol`, so the bounds on what an untrusted peer can
make a listener hold exist once too. Needs the ``quic`` extra
(``pip install 'qpq-proto[quic]'``, which brings aioquic); importing
:mod:`qpq_proto` alone never imports aioquic.

::

    transport = await Transport.open(host, port, alpn=ALPN, pin=fingerprint)
    status = await call_result(transport, Request(Health()), HealthStatus, answer_within=5)
    await transport.close()

:func:`call_result` returns a call's result or raises the coded error the
peer answered; :func:`subscribe` opens a subscribe stream and yields the
envelopes pushed on it. Every caller reads answers through these two.

Every connection, calling or listening, bounds what a peer can make it hold
with :class:`BoundedQuicConnection` (flow-control credit granted only as data
is taken, never past a window) and, across many connections, a shared
:class:`ReceiveBudget`. A listening endpoint bounds its answers too: what
QUIC holds of them until the peer reads them, per connection and, across
connections, in a shared :class:`AnswerBudget`.
"""

from qpq_proto.quic._answers import SMALL_ANSWER_BYTES, AnswerBudget
from qpq_proto.quic._bounded import DEFAULT_MAX_FRAGMENTS, BoundedQuicConnection, ReceiveBudget
from qpq_proto.quic._listen import CallListener, listen
from qpq_proto.quic._results import (
    AckedSubscription,
    Caller,
    call_result,
    subscribe,
    subscribe_with_acks,
)
from qpq_proto.quic._serve import CallServerProtocol, ServedStream, StreamAcks
from qpq_proto.quic._serve_limits import (
    STREAM_REJECTED,
    STREAM_STALLED,
    AdmissionHub,
    CloseCode,
    ServeLimits,
    address_key,
)
from qpq_proto.quic._transport import AckingStream, Transport, certificate_fingerprint

__all__ = [
    "DEFAULT_MAX_FRAGMENTS",
    "SMALL_ANSWER_BYTES",
    "STREAM_REJECTED",
    "STREAM_STALLED",
    "AckedSubscription",
    "AckingStream",
    "AdmissionHub",
    "AnswerBudget",
    "BoundedQuicConnection",
    "CallListener",
    "CallServerProtocol",
    "Caller",
    "CloseCode",
    "ReceiveBudget",
    "ServeLimits",
    "ServedStream",
    "StreamAcks",
    "Transport",
    "address_key",
    "call_result",
    "certificate_fingerprint",
    "listen",
    "subscribe",
    "subscribe_with_acks",
]
