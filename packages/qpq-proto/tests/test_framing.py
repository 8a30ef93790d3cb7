"""MessageSplitter: Cap'n Proto standard stream framing, incrementally."""

from __future__ import annotations

import struct

import pytest
from proto_samples import CALLS, RESULTS, TOKEN

from qpq_proto import (
    MessageKind,
    MessageSplitter,
    Publish,
    Request,
    decode_request,
    encode_request,
    encode_response,
)
from qpq_proto._framing import MAX_SEGMENTS
from qpq_proto._schema import schema
from qpq_proto.errors import MalformedMessageError, MessageTooLargeError

CAP = 1024 * 1024
MESSAGES = [
    encode_request(Request(call=CALLS["publish"], token=TOKEN)),
    encode_response(RESULTS["messages"]),
    encode_request(Request(call=CALLS["health"])),
]
STREAM = b"".join(MESSAGES)


def _multi_segment() -> bytes:
    message = schema().Request.new_message(num_first_segment_words=2)
    message.version = 1
    params = message.call.init("publish")
    params.groupId = b"g"
    params.epoch = 1
    params.payload = b"y" * 100
    return bytes(message.to_bytes())


def test_one_message_in_one_feed() -> None:
    splitter = MessageSplitter(CAP)
    assert splitter.feed(MESSAGES[0]) == [MESSAGES[0]]
    assert splitter.buffered == 0


def test_several_messages_in_one_feed() -> None:
    splitter = MessageSplitter(CAP)
    assert splitter.feed(STREAM) == MESSAGES
    assert splitter.buffered == 0


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_split_at_every_byte_boundary(cut: int) -> None:
    splitter = MessageSplitter(CAP)
    first = splitter.feed(STREAM[:cut])
    second = splitter.feed(STREAM[cut:])
    assert first + second == MESSAGES
    assert first == [m for i, m in enumerate(MESSAGES) if len(b"".join(MESSAGES[: i + 1])) <= cut]
    assert splitter.buffered == 0


def test_byte_by_byte() -> None:
    splitter = MessageSplitter(CAP)
    out: list[bytes] = []
    for index in range(len(STREAM)):
        out += splitter.feed(STREAM[index : index + 1])
        assert splitter.buffered == len(STREAM[: index + 1]) - sum(len(m) for m in out)
    assert out == MESSAGES


def test_empty_feed_is_a_no_op() -> None:
    splitter = MessageSplitter(CAP)
    assert splitter.feed(b"") == []
    assert splitter.feed(MESSAGES[2][:5]) == []
    assert splitter.feed(b"") == []
    assert splitter.buffered == 5


def test_multi_segment_message() -> None:
    data = _multi_segment()
    (count_minus_one,) = struct.unpack_from("<I", data)
    assert count_minus_one >= 1
    for cut in range(len(data) + 1):
        splitter = MessageSplitter(CAP)
        assert splitter.feed(data[:cut]) + splitter.feed(data[cut:] + MESSAGES[2]) == [
            data,
            MESSAGES[2],
        ]
    assert decode_request(data).call == Publish(b"g", 1, MessageKind.APPLICATION, b"y" * 100)


def test_even_segment_count_header_is_padded() -> None:
    # Two segments: 4 + 2*4 = 12 header bytes, padded to 16.
    data = struct.pack("<III", 1, 1, 2) + b"\x00" * 4 + b"\x11" * 24
    splitter = MessageSplitter(CAP)
    assert splitter.feed(data + b"\x00\x00") == [data]
    assert splitter.buffered == 2


def test_message_exactly_at_the_cap_is_accepted() -> None:
    data = struct.pack("<II", 0, 3) + b"\x00" * 24
    assert MessageSplitter(len(data)).feed(data) == [data]
    with pytest.raises(MessageTooLargeError):
        MessageSplitter(len(data) - 1).feed(data)


def test_oversize_header_is_refused_before_the_body_arrives() -> None:
    header = struct.pack("<II", 0, CAP // 8)  # declares CAP + 8 bytes in total
    splitter = MessageSplitter(CAP)
    assert splitter.feed(header[:7]) == []
    with pytest.raises(MessageTooLargeError):
        splitter.feed(header[7:])
    assert splitter.buffered == len(header)


def test_oversize_sum_of_segments_is_refused() -> None:
    header = struct.pack("<IIII", 2, CAP // 16, CAP // 16, 1)
    with pytest.raises(MessageTooLargeError):
        MessageSplitter(CAP).feed(header)


def test_huge_segment_words_are_refused_not_allocated() -> None:
    header = struct.pack("<II", 0, 0xFFFF_FFFF)
    with pytest.raises(MessageTooLargeError):
        MessageSplitter(CAP).feed(header)


@pytest.mark.parametrize("count_minus_one", [MAX_SEGMENTS, 0xFFFF, 0xFFFF_FFFF])
def test_absurd_segment_count_is_malformed(count_minus_one: int) -> None:
    splitter = MessageSplitter(CAP)
    with pytest.raises(MalformedMessageError):
        splitter.feed(struct.pack("<I", count_minus_one))


def test_max_segment_count_is_accepted() -> None:
    segments = MAX_SEGMENTS
    table = struct.pack(f"<I{segments}I", segments - 1, *([1] * segments))
    table += b"\x00" * (-len(table) % 8)
    data = table + b"\x00" * 8 * segments
    assert MessageSplitter(CAP).feed(data) == [data]


def test_segment_table_larger_than_the_cap_is_too_large() -> None:
    with pytest.raises(MessageTooLargeError):
        MessageSplitter(64).feed(struct.pack("<I", 99))


def test_message_without_content_is_malformed() -> None:
    with pytest.raises(MalformedMessageError):
        MessageSplitter(CAP).feed(struct.pack("<II", 0, 0))
    with pytest.raises(MalformedMessageError):
        MessageSplitter(CAP).feed(struct.pack("<IIII", 2, 0, 0, 0))
