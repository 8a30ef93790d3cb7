"""A QUIC connection whose receive buffers stay bounded, whatever the peer sends.

aioquic (1.x) grants flow-control credit as data *arrives*: once half of a
window is used it doubles the window, whether or not the application took
anything out, and it reassembles out-of-order STREAM data in a zero-filled
buffer as long as the highest offset received. A peer that places single
bytes at the far end of each new window makes it allocate, and double,
without end (docs/aioquic-flow-control.md has the figures).

:class:`BoundedQuicConnection` grants credit as the application *takes* data
instead, which RFC 9000 section 4.2 leaves to the receiver: a stream may run
``stream_window`` bytes, and all streams together ``connection_window``
bytes, ahead of what the application has taken out with :meth:`next_event`;
never more. So what aioquic holds for one connection never exceeds its
connection window, and a peer that sends past its credit breaks flow
control: aioquic closes the connection with FLOW_CONTROL_ERROR.

By default data counts as taken as :meth:`next_event` hands it out: right
for an owner that drains events into buffers it bounds itself (the
server's, whose request bytes are capped). With ``take_on_delivery=False``
nothing counts until the owner calls :meth:`take` for it, so the windows
also bound what the owner holds after :meth:`next_event`, until its own
consumer has taken it (the calling side's event queues). A new limit is
sent once ``grant_step`` bytes (default: half the window) were taken since
the last one (:meth:`take` says when, and the owner transmits then): so
the peer may always send at least ``window - grant_step`` bytes past what
was taken, which is what an owner that only takes whole messages must size
its windows by. This class also closes, with
FLOW_CONTROL_ERROR and a reason phrase,

- a connection that scatters one stream into more than ``max_fragments``
  out-of-order pieces (aioquic scans all pieces on every frame), and
- through a :class:`ReceiveBudget` shared by many connections, the one that
  holds the most when all of them together would hold more than the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from qpq_proto.quic._aioquic import (
    ConnectionTerminated,
    Epoch,
    QuicConfiguration,
    QuicConnection,
    QuicErrorCode,
    QuicEvent,
    QuicFrameType,
    QuicStream,
    StreamDataReceived,
    StreamReset,
    ack_with_next_packet,
    drop_handshake_buffer,
    drop_receive_buffer,
    drop_send_buffer,
    receive_fragments,
    send_buffered,
    set_ack_delay,
    validated_peer_address,
)

__all__ = ["DEFAULT_MAX_FRAGMENTS", "BoundedQuicConnection", "ReceiveBudget"]

#: Out-of-order pieces one stream may arrive in at once. Real reordering and
#: loss leave a handful; each piece costs aioquic a scan on every frame.
DEFAULT_MAX_FRAGMENTS = 256

#: How long a received packet may wait for its acknowledgement: below the
#: 25 ms every connection announces as its max_ack_delay (RFC 9000 section
#: 18.2), long enough that most acknowledgements ride in a packet that
#: carries data anyway (:meth:`BoundedQuicConnection.send_stream_data`)
#: instead of one of their own, which both ends would pay for.
ACK_DELAY_SECONDS = 0.010

#: Reason phrase when a connection is closed to keep a shared budget.
OVER_BUDGET = "receive buffers over the budget of this endpoint"


class ReceiveBudget:
    """Bytes that all connections sharing it may hold in receive buffers.

    Two kinds count: what aioquic holds for each :class:`BoundedQuicConnection`
    (reported after every datagram), and what the application holds of
    requests still arriving (:meth:`reserve`, :meth:`release`). A reservation
    that would go over the capacity is refused; when aioquic's bytes would,
    the connection holding the most is closed and its buffers freed.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a receive budget must be positive")
        self.capacity = capacity
        self._held: dict[BoundedQuicConnection, int] = {}
        self._held_total = 0
        self._reserved = 0

    @property
    def total(self) -> int:
        """Bytes held now, by aioquic and by the application."""
        return self._held_total + self._reserved

    def reserve(self, size: int) -> bool:
        """Count ``size`` more application bytes; False (nothing counted) if over capacity."""
        if self.total + size > self.capacity:
            return False
        self._reserved += size
        return True

    def release(self, size: int) -> None:
        """Stop counting ``size`` application bytes that :meth:`reserve` counted."""
        self._reserved = max(0, self._reserved - size)

    def settle(self, connection: BoundedQuicConnection, held: int) -> list[BoundedQuicConnection]:
        """Record that ``connection`` holds ``held`` bytes; the connections to close.

        Those are the largest holders, taken off the books until the rest fit.
        """
        self._held_total += held - self._held.get(connection, 0)
        if held:
            self._held[connection] = held
        else:
            self._held.pop(connection, None)
        victims: list[BoundedQuicConnection] = []
        while self.total > self.capacity and self._held:
            victim = max(self._held, key=self._held.__getitem__)
            self._held_total -= self._held.pop(victim)
            victims.append(victim)
        return victims

    def forget(self, connection: BoundedQuicConnection) -> None:
        """Take a closed connection off the books."""
        self._held_total -= self._held.pop(connection, 0)


class BoundedQuicConnection(QuicConnection):
    """An aioquic ``QuicConnection`` that grants credit only as data is taken.

    Build one directly (a client), or :meth:`adopt` one that aioquic's
    ``QuicServer`` built. ``wake``, when set, is called after this
    connection decided to close on its own outside its own datagram
    handling (a shared budget picked it): the owner should transmit then.
    """

    _stream_window: int
    _connection_window: int
    _budget: ReceiveBudget | None
    _max_fragments: int
    _take_on_delivery: bool
    _grant_step: int | None
    _delivered: dict[int, int]
    _taken: dict[int, int]
    _taken_total: int
    _refused: bool
    wake: Callable[[], None] | None

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        stream_window: int,
        connection_window: int,
        budget: ReceiveBudget | None = None,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
        take_on_delivery: bool = True,
        grant_step: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(configuration=configuration, **kwargs)
        self._bound(stream_window, connection_window, budget, max_fragments)
        self._take_on_delivery = take_on_delivery
        if grant_step is not None and not 0 < grant_step <= min(stream_window, connection_window):
            raise ValueError("grant_step must be positive and at most each window")
        self._grant_step = grant_step

    @classmethod
    def adopt(
        cls,
        connection: QuicConnection,
        *,
        stream_window: int,
        connection_window: int,
        budget: ReceiveBudget | None = None,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
    ) -> BoundedQuicConnection:
        """Bound ``connection``, which must not have received anything yet.

        aioquic's ``QuicServer`` builds a plain ``QuicConnection`` and offers
        no way to build another class; the protocol factory it calls gets
        the connection before its first datagram, which is when this runs.
        The object becomes an instance of this class (it adds state only).

        Raises:
            ValueError: ``connection`` already received data, or is not a
                plain ``QuicConnection``.
        """
        if type(connection) is not QuicConnection:
            raise ValueError("only a plain QuicConnection can be adopted")
        if connection._streams or connection._local_max_data.used:
            raise ValueError("a connection must be bounded before it receives data")
        connection.__class__ = cls
        bounded = cast(BoundedQuicConnection, connection)
        bounded._bound(stream_window, connection_window, budget, max_fragments)
        return bounded

    def _bound(
        self,
        stream_window: int,
        connection_window: int,
        budget: ReceiveBudget | None,
        max_fragments: int,
    ) -> None:
        if min(stream_window, connection_window, max_fragments) <= 0:
            raise ValueError("windows and max_fragments must be positive")
        self._stream_window = stream_window
        self._connection_window = connection_window
        self._budget = budget
        self._max_fragments = max_fragments
        self._take_on_delivery = True
        self._grant_step = None
        #: Bytes handed out by next_event, per stream still receiving.
        self._delivered = {}
        #: Bytes the application took, per stream still receiving, and in all.
        self._taken = {}
        self._taken_total = 0
        self._refused = False
        self.wake = None
        set_ack_delay(self, ACK_DELAY_SECONDS)
        # The initial credit, sent in the transport parameters (RFC 9000 section 18.2).
        self._local_max_data.value = self._local_max_data.sent = connection_window
        self._local_max_stream_data_bidi_local = stream_window
        self._local_max_stream_data_bidi_remote = stream_window
        self._local_max_stream_data_uni = stream_window

    @property
    def held_bytes(self) -> int:
        """Stream bytes received and not yet taken: out of order, or not yet read."""
        held: int = self._local_max_data.used - self._taken_total
        return held

    @property
    def stream_window(self) -> int:
        """How far one stream may run ahead of what was taken of it."""
        return self._stream_window

    @property
    def connection_window(self) -> int:
        """How far all streams together may run ahead of what was taken."""
        return self._connection_window

    def set_connection_window(self, size: int) -> None:
        """Let the peer run ``size`` bytes ahead from now on.

        A larger window is granted with the next packet sent (transmit
        after calling this); credit already granted is never taken back.
        """
        if size <= 0 or (self._grant_step is not None and size < self._grant_step):
            raise ValueError("a window must be positive and at least the grant step")
        self._connection_window = size

    def validated_peer(self) -> tuple[str, int] | None:
        """The peer's address on the active path, once that path is validated.

        After a migration the active path may carry a spoofed source address
        until the peer answered a PATH_CHALLENGE there (RFC 9000 section
        9.3): None meanwhile, so callers keep the address they had.
        """
        return validated_peer_address(self)

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` on ``stream_id``; the acknowledgement due goes with it."""
        super().send_stream_data(stream_id, data, end_stream)
        ack_with_next_packet(self)

    def unacknowledged(self, stream_id: int, written: int) -> int:
        """Bytes written to ``stream_id`` that the peer has not acknowledged.

        0 once aioquic discarded the stream; ``written`` (what the caller
        counted) when this aioquic keeps them where they cannot be read.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        buffered = send_buffered(stream)
        return written if buffered is None else buffered

    def abandon_sending(self, stream_id: int, error_code: int) -> None:
        """Reset the sending side of ``stream_id`` and free what it buffered at once."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        try:
            self.reset_stream(stream_id, error_code)
        except (AssertionError, RuntimeError, ValueError):
            return
        drop_send_buffer(stream)

    def _discard_epoch(self, epoch: Epoch) -> None:
        super()._discard_epoch(epoch)
        # What an idle connection costs the server: its Initial and Handshake
        # TLS buffers are 32 KiB of it, and unused once their keys are gone.
        drop_handshake_buffer(self, epoch)

    def drop_send_buffers(self) -> None:
        """Free what every stream keeps of data written to it; only for a closed connection."""
        for stream in self._streams.values():
            drop_send_buffer(stream, connection_closed=True)

    def next_event(self) -> QuicEvent | None:
        """The next event; stream data handed out here counts as taken unless
        the connection was built with ``take_on_delivery=False``."""
        event = super().next_event()
        if isinstance(event, StreamDataReceived):
            stream_id, size = event.stream_id, len(event.data)
            if event.end_stream:
                # Nothing more arrives: no limit is sent for this stream again.
                self._delivered.pop(stream_id, None)
                self._taken.pop(stream_id, None)
            else:
                self._delivered[stream_id] = self._delivered.get(stream_id, 0) + size
                self._taken.setdefault(stream_id, 0)
            if self._take_on_delivery:
                self._count_taken(stream_id, size)
        elif isinstance(event, StreamReset):
            # Up to the final size, what was not handed out never will be:
            # its credit returns to the connection. What was handed out is
            # the owner's to take (already taken, by default).
            delivered = self._delivered.pop(event.stream_id, 0)
            self._taken.pop(event.stream_id, None)
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                self._taken_total += max(0, stream.receiver.highest_offset - delivered)
        elif isinstance(event, ConnectionTerminated) and self._budget is not None:
            self._budget.forget(self)
        return event

    def take(self, stream_id: int, size: int) -> bool:
        """Count ``size`` bytes of ``stream_id`` that :meth:`next_event` handed
        out as taken by the application (``take_on_delivery=False`` only).

        Returns:
            True when a new limit is due: the owner should transmit, so that
            it leaves now rather than with the next packet sent for another
            reason.

        Raises:
            ValueError: the connection takes data on delivery, or ``size`` is negative.
        """
        if self._take_on_delivery or size < 0:
            raise ValueError("take() is for a connection built with take_on_delivery=False")
        self._count_taken(stream_id, size)
        stream = self._streams.get(stream_id)
        stream_due = stream is not None and self._stream_target(stream) is not None
        return stream_due or self._connection_target() is not None

    def _count_taken(self, stream_id: int, size: int) -> None:
        self._taken_total += size
        if stream_id in self._taken:
            self._taken[stream_id] += size

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        super().receive_datagram(data, addr, now)
        if self._refused:
            return
        for stream in self._streams.values():
            if receive_fragments(stream) > self._max_fragments:
                self._refuse(
                    f"stream {stream.stream_id} arrived in more than "
                    f"{self._max_fragments} out-of-order pieces"
                )
                return
        if self._budget is not None:
            for victim in self._budget.settle(self, self.held_bytes):
                victim._refuse(OVER_BUDGET)
                if victim is not self and victim.wake is not None:
                    victim.wake()

    def _refuse(self, reason: str) -> None:
        """Close with FLOW_CONTROL_ERROR and free what the streams hold right away."""
        self._refused = True
        self.close(
            error_code=QuicErrorCode.FLOW_CONTROL_ERROR,
            frame_type=QuicFrameType.STREAM_BASE,
            reason_phrase=reason,
        )
        for stream in self._streams.values():
            drop_receive_buffer(stream)
        if self._budget is not None:
            self._budget.forget(self)

    # aioquic grows a window once half of it is *used* (received); these
    # grant credit from what was *taken* instead, and hide the use from the
    # base class while it writes the MAX_DATA / MAX_STREAM_DATA frames.

    def _step(self, window: int) -> int:
        # Half a window (rounded up): one new limit per half window taken.
        return (window + 1) // 2 if self._grant_step is None else self._grant_step

    def _connection_target(self) -> int | None:
        """The new MAX_DATA, once enough was taken since the last one (batched)."""
        target = self._taken_total + self._connection_window
        due = target - self._local_max_data.value >= self._step(self._connection_window)
        return target if due else None

    def _stream_target(self, stream: QuicStream) -> int | None:
        """The new MAX_STREAM_DATA of a stream still receiving, once due."""
        stream_id = stream.stream_id
        if stream_id is None or not stream.max_stream_data_local or stream.receiver.is_finished:
            return None
        target = self._taken.get(stream_id, 0) + self._stream_window
        due = target - stream.max_stream_data_local >= self._step(self._stream_window)
        return target if due else None

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        max_data = self._local_max_data
        target = self._connection_target()
        if target is not None:
            max_data.value = target
        used, max_data.used = max_data.used, 0
        try:
            super()._write_connection_limits(builder=builder, space=space)
        finally:
            max_data.used = used

    def _write_stream_limits(self, builder: Any, space: Any, stream: QuicStream) -> None:
        receiver = stream.receiver
        target = self._stream_target(stream)
        if target is not None:
            stream.max_stream_data_local = target
        highest, receiver.highest_offset = receiver.highest_offset, 0
        try:
            super()._write_stream_limits(builder=builder, space=space, stream=stream)
        finally:
            receiver.highest_offset = highest
