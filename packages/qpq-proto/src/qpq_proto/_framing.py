"""Incremental splitting of a byte stream into Cap'n Proto messages.

Standard stream framing (capnproto.org/encoding.html#serialization-over-a-stream):
a little-endian u32 holding (segment count - 1), one u32 word count per
segment, padding to an 8-byte boundary, then the segments. The total size is
known from the header alone, so an oversize message is refused before its
body is buffered.
"""

from __future__ import annotations

import struct

from qpq_proto.errors import MalformedMessageError, MessageTooLargeError

__all__ = ["MAX_SEGMENTS", "MessageSplitter"]

#: Cap'n Proto's own reader refuses more segments than this.
MAX_SEGMENTS = 512


class MessageSplitter:
    """Feed stream bytes in, take whole message byte strings out.

    Args:
        max_message_bytes: the largest framed message accepted.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        self._buffer = bytearray()
        self._expected: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole message."""
        return len(self._buffer)

    def lower_cap(self, max_message_bytes: int) -> None:
        """Accept messages of at most ``max_message_bytes`` from now on,
        the one still arriving included."""
        self._max = min(self._max, max_message_bytes)
        self._expected = None  # measured again against the new cap

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every message it completes, in order.

        Raises:
            MessageTooLargeError: a header declares more than the cap.
            MalformedMessageError: a header is impossible.
        """
        self._buffer += data
        messages: list[bytes] = []
        while True:
            size = self._message_size()
            if size is None or len(self._buffer) < size:
                return messages
            messages.append(bytes(self._buffer[:size]))
            del self._buffer[:size]
            self._expected = None

    def _message_size(self) -> int | None:
        if self._expected is not None:
            return self._expected
        if len(self._buffer) < 4:
            return None
        (count_minus_one,) = struct.unpack_from("<I", self._buffer, 0)
        segments: int = count_minus_one + 1
        if segments > MAX_SEGMENTS:
            raise MalformedMessageError(f"message declares {segments} segments")
        header = 4 + 4 * segments
        header += header % 8  # pad to a word boundary
        if header > self._max:
            raise MessageTooLargeError(f"message exceeds {self._max} bytes")
        if len(self._buffer) < 4 + 4 * segments:
            return None
        words: int = sum(struct.unpack_from(f"<{segments}I", self._buffer, 4))
        size = header + 8 * words
        if size > self._max:
            raise MessageTooLargeError(f"message exceeds {self._max} bytes")
        if words == 0:
            raise MalformedMessageError("message has no content")
        self._expected = size
        return size
