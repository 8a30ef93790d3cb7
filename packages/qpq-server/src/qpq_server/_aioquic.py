"""The one place this package imports aioquic.

Each connection is a :class:`qpq_proto.quic.CallServerProtocol`, bound by
:func:`qpq_proto.quic.listen` (both take aioquic through qpq-proto's own
module); what the server adds, reading a stream's send buffer, is here, so
an API-compatible backend (qh3) can be swapped in by changing this module.
"""

from __future__ import annotations

from aioquic.asyncio.protocol import QuicConnectionProtocol

__all__ = ["QuicConnectionProtocol", "send_buffered_bytes"]


def send_buffered_bytes(protocol: QuicConnectionProtocol, stream_id: int) -> int | None:
    """Bytes written to ``stream_id`` that the peer has not acknowledged yet.

    That is what aioquic holds in memory for the stream's send side: data
    not yet sent (blocked by flow or congestion control) plus data in
    flight. aioquic has no public accessor; this reads its stream table and
    returns None (callers must then assume the buffer is full) if a future
    version or an API-compatible backend keeps them elsewhere. A stream
    aioquic has already discarded holds nothing (0).
    """
    streams = getattr(protocol._quic, "_streams", None)
    if not isinstance(streams, dict):
        return None
    stream = streams.get(stream_id)
    if stream is None:
        return 0
    buffer = getattr(getattr(stream, "sender", None), "_buffer", None)
    if not isinstance(buffer, bytearray | bytes):
        return None
    return len(buffer)
