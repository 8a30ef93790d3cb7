"""The one place qpq-proto imports aioquic.

Everything QUIC-specific that the calling and listening adapters and the
bounded connection use comes through here, so that an API-compatible
backend (qh3) can be swapped in by changing this module alone. The facts aioquic has no
public accessor for are read here and nowhere else, failing closed when a
future version moves them.
"""

from __future__ import annotations

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from aioquic.quic.stream import QuicStream
from aioquic.tls import Epoch
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = [
    "ConnectionTerminated",
    "Epoch",
    "HandshakeCompleted",
    "QuicConfiguration",
    "QuicConnection",
    "QuicConnectionProtocol",
    "QuicErrorCode",
    "QuicEvent",
    "QuicFrameType",
    "QuicServer",
    "QuicStream",
    "StopSendingReceived",
    "StreamDataReceived",
    "StreamReset",
    "ack_with_next_packet",
    "bytes_in_flight",
    "connection_ids",
    "drop_handshake_buffer",
    "drop_receive_buffer",
    "drop_send_buffer",
    "peer_certificate_der",
    "receive_fragments",
    "send_buffered",
    "set_ack_delay",
    "validated_peer_address",
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


def receive_fragments(stream: QuicStream) -> int:
    """Separate ranges of out-of-order data ``stream`` holds for reassembly.

    aioquic keeps them in a list it scans linearly on every frame, so their
    count costs CPU as well as memory. A future version that keeps them
    elsewhere reads as holding none: the byte bounds still apply.
    """
    ranges = getattr(stream.receiver, "_ranges", None)
    try:
        return len(ranges) if ranges is not None else 0
    except TypeError:
        return 0


def drop_handshake_buffer(connection: QuicConnection, epoch: Epoch) -> None:
    """Free the TLS output buffer of ``epoch`` (Initial or Handshake) once its keys are gone.

    aioquic gives each of the Initial, Handshake and 1-RTT epochs a 16 KiB
    buffer for the TLS messages it sends there, and keeps all three for the
    connection's life: two thirds of what an idle connection holds after
    its handshake. Once an epoch's keys are discarded nothing is ever sent
    in it again (RFC 9001 section 4.9), and TLS writes only 1-RTT messages
    after the handshake, so its buffer goes. A version that keeps the
    buffers elsewhere keeps them.
    """
    if epoch not in (Epoch.INITIAL, Epoch.HANDSHAKE):
        return
    buffers = getattr(connection, "_crypto_buffers", None)
    if isinstance(buffers, dict):
        buffers.pop(epoch, None)


def drop_receive_buffer(stream: QuicStream) -> None:
    """Free what ``stream`` holds for reassembly; only for a connection being closed.

    aioquic keeps a closing connection's streams until its draining period
    ends (RFC 9000 section 10.2); their buffers need not wait that long.
    The receive side is marked finished first, so that nothing arriving
    before the close is sent can be reassembled into a freed buffer.
    """
    stream.receiver.is_finished = True
    if isinstance(getattr(stream.receiver, "_buffer", None), bytearray):
        stream.receiver._buffer = bytearray()


def send_buffered(stream: QuicStream) -> int | None:
    """Bytes written to ``stream`` that the peer has not acknowledged yet.

    That is what aioquic holds for the stream's sending side: data not yet
    sent (blocked by flow or congestion control) and data in flight. None
    when a future version keeps them elsewhere: callers then keep counting
    what they wrote until the stream is discarded.
    """
    buffer = getattr(stream.sender, "_buffer", None)
    return len(buffer) if isinstance(buffer, bytearray | bytes) else None


def drop_send_buffer(stream: QuicStream, *, connection_closed: bool = False) -> None:
    """Free what ``stream`` keeps of data written to it, once nothing of it will be sent.

    That is once its sending side was reset, or its connection closed.
    aioquic keeps the buffer of a reset sender until the stream is
    discarded, which waits for the peer's acknowledgement of the reset (and
    its side of the stream), and a closed connection's streams until the
    connection object goes: a peer that never reads would keep them alive.
    Once reset or closed, aioquic never reads the buffer again.
    """
    sender = stream.sender
    if not connection_closed and getattr(sender, "_reset_error_code", None) is None:
        return
    if isinstance(getattr(sender, "_buffer", None), bytearray):
        sender._buffer = bytearray()


def validated_peer_address(connection: QuicConnection) -> tuple[str, int] | None:
    """The peer's address on the active path once that path is validated, else None.

    aioquic moves a server's active path to a new peer address as soon as a
    non-probing packet arrives from it, and validates the address afterwards
    (RFC 9000 section 9.3); it raises no event for either. Until the new
    path is validated (a PATH_RESPONSE came back, so the peer can receive
    there) its address may be spoofed. None also when a future version keeps
    paths elsewhere: callers then keep the address they had.
    """
    paths = getattr(connection, "_network_paths", None)
    if not isinstance(paths, list) or not paths:
        return None
    path = paths[0]
    if getattr(path, "is_validated", False) is not True:
        return None
    addr = getattr(path, "addr", None)
    if not isinstance(addr, tuple) or len(addr) < 2:
        return None
    return str(addr[0]), int(addr[1])


def set_ack_delay(connection: QuicConnection, seconds: float) -> None:
    """Acknowledge received packets within ``seconds`` (aioquic: 1 ms, fixed).

    It must stay below the ``max_ack_delay`` the connection announces (25
    ms, RFC 9000 section 18.2). A version that keeps the delay elsewhere
    keeps its own.
    """
    if isinstance(getattr(connection, "_ack_delay", None), float):
        connection._ack_delay = seconds


def ack_with_next_packet(connection: QuicConnection) -> None:
    """Carry the acknowledgement that is due in the next packet sent.

    aioquic writes an ACK frame only once its delay has passed, so data sent
    just before goes without it, and the ACK follows in a packet of its own
    (RFC 9000 section 13.2.1 allows it in any 1-RTT packet). A version that
    keeps the due time elsewhere sends its ACKs as it does.
    """
    spaces = getattr(connection, "_spaces", None)
    space = spaces.get(Epoch.ONE_RTT) if isinstance(spaces, dict) else None
    if space is not None and getattr(space, "ack_at", None) is not None:
        space.ack_at = 0.0


def connection_ids(connection: QuicConnection) -> set[bytes] | None:
    """The connection IDs a listener may have filed ``connection`` under.

    aioquic's ``QuicServer`` files a connection under the client's original
    destination ID and each ID it issued; it drops the ones the peer
    retires. So those still filed are the original one and the host IDs
    still in use. None when a future version keeps them elsewhere: the
    listener then searches all of them, as aioquic does.
    """
    host_cids = getattr(connection, "_host_cids", None)
    if not isinstance(host_cids, list):
        return None
    ids = {getattr(host_cid, "cid", None) for host_cid in host_cids}
    ids.add(getattr(connection, "host_cid", None))
    ids.add(getattr(connection, "original_destination_connection_id", None))
    return {cid for cid in ids if isinstance(cid, bytes)}


def bytes_in_flight(connection: QuicConnection) -> int | None:
    """Bytes sent and neither acknowledged nor declared lost yet; None where unknown.

    An acknowledgement that frees stream data always lowers it, so a
    listener re-reads what its streams hold only when it went down.
    """
    loss = getattr(connection, "_loss", None)
    value = getattr(loss, "bytes_in_flight", None)
    return value if isinstance(value, int) else None
