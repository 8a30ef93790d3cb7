"""What a listening endpoint holds of its answers until the peer reads them.

QUIC keeps every byte written to a stream until the peer acknowledges it,
and the peer acknowledges only what its flow-control credit let through: a
peer that asks and never reads grants no credit, so all its answers stay in
the sender's memory (aioquic buffers whatever ``send_stream_data`` is given).
Eight megabytes of queued messages fetched over and over on one connection
took a server from 115 to 1,243 MiB.

So answers are admitted like requests: bytes are counted before they exist.

- :class:`AnswerBudget` is shared by the connections of one endpoint: the
  answer bytes all of them hold, unacknowledged or reserved. A reservation
  of more than :data:`SMALL_ANSWER_BYTES` may fill it only up to seven
  eighths: the last eighth is kept for small answers (Health, Ack, Publish),
  so that unread large answers never hold up every call.
- :class:`AnswerBook` is one connection's: per stream, the bytes the QUIC
  sender still holds (measured after each write and each datagram, which
  is when acknowledgements arrive) and the bytes reserved for an answer not
  yet written. A call is served once its reservation fits the connection's
  window and the shared budget; a stream whose held bytes make no progress
  for the stall time is reset by the connection (:meth:`AnswerBook.stalled`).

No I/O and no clock here: the connection (:class:`~qpq_proto.quic.CallServerProtocol`)
measures, passes the time in and waits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SMALL_ANSWER_BYTES", "AnswerBook", "AnswerBudget"]

#: An answer at most this large may use the part of the shared budget kept for
#: small answers (an ErrorResponse, Done, a Published or a Fingerprints list).
SMALL_ANSWER_BYTES = 64 * 1024


class AnswerBudget:
    """Answer bytes all connections sharing it may hold: unacknowledged or reserved.

    A reservation of more than :data:`SMALL_ANSWER_BYTES` may fill it only up
    to seven eighths, and when room frees it goes first to the waiting
    connection whose peer let the fewest answers stall, then to the one that
    holds the least, then to the one that waited longest (a connection that
    got room waits behind the others for its next answer): a peer that reads
    its answers is not kept behind those that let theirs pile up.

    Args:
        capacity: the bytes.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("an answer budget must be positive")
        self.capacity = capacity
        self.total = 0
        self._large_limit = capacity - capacity // 8
        self._watchers: set[Callable[[], None]] = set()
        self._pressure_watchers: set[Callable[[], None]] = set()
        #: Connections waiting for room for a large answer, by arrival.
        self._line: dict[AnswerBook, int] = {}
        self._tickets = itertools.count()

    def fits(self, extra: int, *, small: bool, book: AnswerBook | None = None) -> bool:
        """Whether ``extra`` more bytes fit now for ``book``'s connection.

        Always when nothing is held, so that any single answer can go.
        """
        if self.total and self.total + extra > (self.capacity if small else self._large_limit):
            return False
        if small or book is None:
            return True
        mine = (book.stalls, book.windowed, self._line.get(book, math.inf))
        return all(
            (other.stalls, other.windowed, ticket) >= mine
            for other, ticket in self._line.items()
            if other is not book
        )

    @property
    def pressed(self) -> bool:
        """Whether a connection waits for room for a large answer."""
        return bool(self._line)

    def wait_in_line(self, book: AnswerBook) -> None:
        """``book``'s connection waits for room for a large answer."""
        if book in self._line:
            return
        pressed = self.pressed
        self._line[book] = next(self._tickets)
        if not pressed:
            for wake in list(self._pressure_watchers):
                wake()

    def watch_pressure(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever the budget becomes :attr:`pressed` (until unwatched)."""
        self._pressure_watchers.add(wake)

    def unwatch_pressure(self, wake: Callable[[], None]) -> None:
        self._pressure_watchers.discard(wake)

    def leave_line(self, book: AnswerBook) -> None:
        self._line.pop(book, None)

    def served(self, book: AnswerBook) -> None:
        """``book``'s connection got room for a large answer: its other calls wait
        behind the connections already waiting (one answer each, in turn)."""
        if book in self._line:
            self._line[book] = next(self._tickets)

    def change(self, delta: int) -> None:
        """Count ``delta`` more bytes (fewer when negative, which wakes the watchers)."""
        self.total += delta
        if delta < 0:
            for wake in list(self._watchers):
                wake()

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever bytes are released, until :meth:`unwatch`."""
        self._watchers.add(wake)

    def unwatch(self, wake: Callable[[], None]) -> None:
        self._watchers.discard(wake)


@dataclass(slots=True)
class _Held:
    """What the QUIC sender of one stream holds, and when the peer last took some."""

    size: int
    progress_at: float
    #: Counted against the connection's window (a call's answer), or only the
    #: shared budget (a stream of events, bounded on its own).
    windowed: bool


class AnswerBook:
    """One connection's answer bytes: held by QUIC per stream, reserved per call.

    Args:
        window: what the connection's call answers may hold together, held
            and reserved; a reservation always fits when they hold nothing.
        budget: the budget shared with the endpoint's other connections, if any.
    """

    def __init__(self, window: int, budget: AnswerBudget | None) -> None:
        if window <= 0:
            raise ValueError("an answer window must be positive")
        self.window = window
        self._budget = budget
        #: Streams whose senders hold bytes (none with 0).
        self._held: dict[int, _Held] = {}
        self._reserved: dict[int, int] = {}
        #: Event streams: their bytes count against the shared budget only.
        self._unwindowed: set[int] = set()
        #: Held and reserved bytes that count against the window.
        self._windowed = 0
        #: Answers of this connection reset because the peer took none in time.
        self.stalls = 0
        self._closed = False

    @property
    def windowed(self) -> int:
        """Bytes counted against the window now."""
        return self._windowed

    @property
    def held(self) -> int:
        """Bytes the QUIC senders of this connection's streams hold now."""
        return sum(held.size for held in self._held.values())

    def holding(self) -> list[int]:
        """The streams whose senders hold bytes."""
        return list(self._held)

    def held_by(self, stream_id: int) -> int:
        """Bytes ``stream_id``'s sender held when last measured."""
        held = self._held.get(stream_id)
        return 0 if held is None else held.size

    def fits(self, stream_id: int, size: int) -> bool:
        """Whether ``stream_id`` may reserve ``size`` bytes (in all), or write ``size``
        more bytes of an event stream, now.

        A call's answer must fit the window and the shared budget; an event
        stream's (see :meth:`exclude_from_window`) the shared budget only.
        """
        if not self.window_fits(stream_id, size):
            return False
        extra = size - self._reserved.get(stream_id, 0)
        if extra <= 0 or self._budget is None:
            return True
        return self._budget.fits(extra, small=size <= SMALL_ANSWER_BYTES, book=self)

    def window_fits(self, stream_id: int, size: int) -> bool:
        """Whether :meth:`fits` would let ``stream_id`` have ``size`` bytes, but for the
        shared budget."""
        extra = size - self._reserved.get(stream_id, 0)
        if extra <= 0 or stream_id in self._unwindowed:
            return True
        return not self._windowed or self._windowed + extra <= self.window

    def wait_in_line(self) -> None:
        """A call of this connection waits for room in the shared budget."""
        if self._budget is not None:
            self._budget.wait_in_line(self)

    def leave_line(self) -> None:
        """No call of this connection waits any more."""
        if self._budget is not None:
            self._budget.leave_line(self)

    def reserve(self, stream_id: int, size: int) -> None:
        """Set ``stream_id``'s reservation to ``size`` bytes (0 releases it)."""
        if self._closed:
            return
        delta = size - self._reserved.pop(stream_id, 0)
        if size > 0:
            self._reserved[stream_id] = size
        self._windowed += delta
        if self._budget is not None and delta:
            self._budget.change(delta)
            if delta > 0 and size > SMALL_ANSWER_BYTES:
                self._budget.served(self)

    def exclude_from_window(self, stream_id: int) -> None:
        """Count ``stream_id``'s bytes against the shared budget only (an event stream)."""
        self._unwindowed.add(stream_id)
        held = self._held.get(stream_id)
        if held is not None and held.windowed:
            held.windowed = False
            self._windowed -= held.size

    def measure(self, stream_id: int, size: int, now: float) -> bool:
        """Record that ``stream_id``'s sender holds ``size`` bytes; True if it holds fewer.

        Fewer is progress: the peer took some. More (an answer written)
        starts the stall clock only when the sender held none.
        """
        if self._closed:
            return False
        held = self._held.get(stream_id)
        if held is None:
            if size == 0:
                return False
            held = self._held[stream_id] = _Held(0, now, windowed=stream_id not in self._unwindowed)
        elif size < held.size:
            held.progress_at = now
        delta = size - held.size
        held.size = size
        if held.windowed:
            self._windowed += delta
        if self._budget is not None and delta:
            self._budget.change(delta)
        if size == 0:
            del self._held[stream_id]
        return delta < 0

    def stalled(self, now: float, stall_seconds: float, event_stall_seconds: float) -> list[int]:
        """Streams whose senders hold bytes the peer took none of for their stall time:
        ``stall_seconds`` for a call's answer, ``event_stall_seconds`` for an event stream."""
        return [
            stream_id
            for stream_id, held in self._held.items()
            if now - held.progress_at >= (stall_seconds if held.windowed else event_stall_seconds)
        ]

    def next_stall(self, stall_seconds: float, event_stall_seconds: float) -> float | None:
        """When the next stream stalls if the peer takes nothing, or None if none holds bytes."""
        times = [
            held.progress_at + (stall_seconds if held.windowed else event_stall_seconds)
            for held in self._held.values()
        ]
        return min(times) if times else None

    def stream_ended(self, stream_id: int) -> None:
        """The call on ``stream_id`` is over: its reservation goes; its held bytes stay counted."""
        self.reserve(stream_id, 0)
        self._unwindowed.discard(stream_id)

    def forget(self, stream_id: int) -> None:
        """The stream's sending side was reset: its held and reserved bytes are gone."""
        self.stream_ended(stream_id)
        held = self._held.pop(stream_id, None)
        if held is not None:
            if held.windowed:
                self._windowed -= held.size
            if self._budget is not None:
                self._budget.change(-held.size)

    def close(self) -> None:
        """The connection ended: release everything it counted."""
        self.leave_line()
        for stream_id in {*self._held, *self._reserved}:
            self.forget(stream_id)
        self._closed = True
