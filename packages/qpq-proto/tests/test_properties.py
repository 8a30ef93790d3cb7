"""Property-based tests: hostile bytes only ever yield the codec's coded errors.

Inputs are capped (a few KiB, or just over a small ``Limits`` cap), example
counts are bounded and each example has a deadline, so a hang or unbounded
allocation shows up as a failure rather than a stuck run.
"""

from __future__ import annotations

import contextlib
import struct
import unicodedata
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_samples import ENCODERS, VECTORS

from qpq_proto import (
    Ack,
    AckReceived,
    AcksEnded,
    AcksFailed,
    Authenticate,
    Challenge,
    ClientCall,
    CountKeyPackages,
    CreateGroup,
    DeleteAccount,
    Endpoint,
    Envelope,
    ErrorCode,
    ErrorResponse,
    Fetch,
    FetchGroupInfo,
    FetchKeyPackage,
    FetchWait,
    Health,
    Limits,
    MessageKind,
    Messages,
    MessageSplitter,
    PeerEndpoints,
    Publish,
    PublishEndpoints,
    RegisterUser,
    Request,
    ResolveEndpoints,
    ResolveIdentity,
    ResolveUser,
    Subscribe,
    Subscribed,
    UploadKeyPackages,
    UploadLastResort,
    check_username,
    decode_event,
    decode_request,
    decode_response,
    encode_event,
    encode_request,
    encode_response,
)
from qpq_proto._calls import (
    _TRANSITIONS,
    CallAborted,
    CallCompleted,
    CallFailed,
    CallState,
    EventReceived,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    ServerCall,
    _Input,
)
from qpq_proto._framing import MAX_SEGMENTS
from qpq_proto.errors import (
    BadVersionError,
    InvalidArgumentError,
    LocalProtocolError,
    MalformedMessageError,
    MalformedRequestError,
    MessageTooLargeError,
    PayloadTooLargeError,
    RemoteProtocolError,
    UnsupportedCallError,
)

FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: A small cap so "oversize" inputs stay cheap: 65 KiB + 1 KiB.
SMALL = Limits(max_payload_bytes=1024, max_message_bytes=1024 + 64 * 1024)
MAX_INPUT = 4096

REQUEST_ERRORS = (
    MalformedRequestError,
    BadVersionError,
    UnsupportedCallError,
    InvalidArgumentError,
    PayloadTooLargeError,
)
PEER_ERRORS = (MalformedMessageError, MessageTooLargeError)

ENCODED: dict[str, list[bytes]] = {"request": [], "response": [], "event": []}
for _kind, _value in VECTORS.values():
    ENCODED[_kind].append(ENCODERS[_kind](_value))


# ---- strategies -------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32)
u64 = st.integers(0, 2**64 - 1)
small_bytes = st.binary(min_size=1, max_size=128)


def _valid_username(text: str) -> bool:
    try:
        check_username(text)
    except InvalidArgumentError:
        return False
    return True


usernames = (
    st.text(st.characters(categories=["L", "N", "P", "S", "M"]), min_size=1, max_size=20)
    .map(lambda t: unicodedata.normalize("NFC", t))
    .filter(_valid_username)
)
hosts = st.text(
    st.characters(categories=["L", "N", "P"], max_codepoint=0x2FF), min_size=1, max_size=40
)
endpoints = st.builds(Endpoint, host=hosts, port=st.integers(1, 0xFFFF))

calls = st.one_of(
    st.sampled_from([Health(), Challenge(), CountKeyPackages(), Subscribe(), DeleteAccount()]),
    st.builds(Authenticate, identity_key=keys, signature=st.binary(min_size=64, max_size=64)),
    st.builds(RegisterUser, username=usernames),
    st.builds(ResolveUser, username=usernames),
    st.builds(ResolveIdentity, identity_key=keys),
    st.builds(UploadKeyPackages, packages=st.lists(small_bytes, min_size=1, max_size=5).map(tuple)),
    st.builds(UploadLastResort, package=small_bytes),
    st.builds(FetchKeyPackage, identity_key=keys),
    st.builds(
        Publish,
        group_id=st.binary(min_size=1, max_size=256),
        epoch=u64,
        kind=st.just(MessageKind.COMMIT),
        payload=small_bytes,
        welcome=st.binary(max_size=64),
        group_info=st.binary(max_size=64),
    ),
    st.builds(
        Publish,
        group_id=st.binary(min_size=1, max_size=256),
        epoch=u64,
        kind=st.sampled_from([MessageKind.APPLICATION, MessageKind.PROPOSAL]),
        payload=small_bytes,
    ),
    st.builds(CreateGroup, group_info=small_bytes),
    st.builds(FetchGroupInfo, group_id=st.binary(min_size=1, max_size=256)),
    st.builds(Fetch, limit=st.integers(1, 1000)),
    st.builds(FetchWait, limit=st.integers(1, 1000), timeout_ms=st.integers(0, 60_000)),
    st.builds(Ack, up_to_seq=u64),
    st.builds(PublishEndpoints, endpoints=st.lists(endpoints, max_size=16).map(tuple)),
    st.builds(ResolveEndpoints, identity_key=keys),
)
requests = st.builds(Request, call=calls, token=st.text(max_size=64))
envelopes = st.one_of(
    st.builds(
        Envelope,
        seq=st.integers(1, 2**64 - 1),
        sender=keys,
        payload=small_bytes,
        enqueued_at_ms=u64,
        group_id=st.binary(max_size=256),
        group_info_digest=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    ),
    st.builds(
        Envelope,
        seq=st.integers(1, 2**64 - 1),
        sender=keys,
        payload=st.just(b""),
        enqueued_at_ms=u64,
        gap_group_id=st.binary(min_size=1, max_size=256),
    ),
)
errors = st.builds(
    ErrorResponse,
    code=st.sampled_from(ErrorCode),
    message=st.text(max_size=100),
    field=st.text(max_size=20),
    accepted_commit=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    epoch=u64,
)
responses = st.one_of(
    errors,
    st.builds(Messages, messages=st.lists(envelopes, max_size=5).map(tuple)),
    st.builds(
        PeerEndpoints,
        endpoints=st.lists(endpoints, max_size=4).map(tuple),
        observed=st.none() | endpoints,
    ),
)


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes:
    """A valid encoding, then truncated, bit-flipped, extended or spliced."""
    data = bytearray(draw(st.sampled_from(ENCODED[kind])))
    how = draw(st.sampled_from(["truncate", "flip", "overwrite", "extend", "random"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if how == "overwrite":
        index = draw(st.integers(0, len(data) - 1))
        patch = draw(st.binary(min_size=1, max_size=8))
        data[index : index + len(patch)] = patch
        return bytes(data)
    if how == "extend":
        return bytes(data) + draw(st.binary(max_size=64))
    return draw(st.binary(max_size=MAX_INPUT))


def oversize(kind: str) -> st.SearchStrategy[bytes]:
    """Valid encodings padded past ``SMALL.max_message_bytes``."""
    return st.tuples(st.sampled_from(ENCODED[kind]), st.integers(1, 64)).map(
        lambda pair: pair[0] + b"\x00" * (SMALL.max_message_bytes - len(pair[0]) + pair[1])
    )


# ---- decoders ---------------------------------------------------------------------


def _decode_request_only_coded(data: bytes, limits: Limits) -> None:
    # Anything but these request-side ServiceErrors propagates and fails the test.
    try:
        request = decode_request(data, limits)
    except REQUEST_ERRORS:
        return
    assert isinstance(request, Request)


@FUZZ
@given(st.binary(max_size=MAX_INPUT))
def test_decode_request_random_bytes(data: bytes) -> None:
    _decode_request_only_coded(data, SMALL)


@FUZZ
@given(mutated("request"))
def test_decode_request_mutations(data: bytes) -> None:
    _decode_request_only_coded(data, SMALL)


@settings(FUZZ, max_examples=50)
@given(oversize("request"))
def test_decode_request_oversize(data: bytes) -> None:
    try:
        decode_request(data, SMALL)
    except PayloadTooLargeError:
        return
    raise AssertionError("an oversize request decoded")


@FUZZ
@given(st.binary(max_size=MAX_INPUT) | mutated("response"))
def test_decode_response_only_peer_errors(data: bytes) -> None:
    with contextlib.suppress(PEER_ERRORS):
        decode_response(data, SMALL)


@FUZZ
@given(st.binary(max_size=MAX_INPUT) | mutated("event"))
def test_decode_event_only_peer_errors(data: bytes) -> None:
    with contextlib.suppress(PEER_ERRORS):
        decode_event(data, SMALL)


@settings(FUZZ, max_examples=50)
@given(oversize("response") | oversize("event"))
def test_oversize_responses_and_events_are_too_large(data: bytes) -> None:
    for decode in (decode_response, decode_event):
        try:
            decode(data, SMALL)
        except MessageTooLargeError:
            continue
        raise AssertionError("an oversize message decoded")


# ---- round trips of generated messages --------------------------------------------


@FUZZ
@given(requests)
def test_generated_requests_round_trip(request: Request) -> None:
    assert decode_request(encode_request(request)) == request


@FUZZ
@given(responses)
def test_generated_responses_round_trip(response: Any) -> None:
    assert decode_response(encode_response(response)) == response


@FUZZ
@given(envelopes | errors)
def test_generated_events_round_trip(event: Any) -> None:
    assert decode_event(encode_event(event)) == event


# ---- framing ------------------------------------------------------------------------


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    return [*pieces, data[start:]]


@FUZZ
@given(
    st.lists(st.sampled_from(ENCODED["request"]) | st.binary(max_size=64), max_size=6),
    st.lists(st.integers(0, 10**6), max_size=8),
)
def test_splitter_never_loses_bytes_or_raises_foreign_errors(
    parts: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(parts)
    splitter = MessageSplitter(SMALL.max_message_bytes)
    out: list[bytes] = []
    fed = 0
    try:
        for chunk in _chunks(stream, cuts):
            out += splitter.feed(chunk)
            fed += len(chunk)
            assert sum(map(len, out)) + splitter.buffered == fed
            assert splitter.buffered < max(SMALL.max_message_bytes, 8 + 4 * MAX_SEGMENTS)
    except PEER_ERRORS:
        return
    assert b"".join(out) == stream[: sum(map(len, out))]


@FUZZ
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 2**32 - 1), max_size=8))
def test_splitter_headers_never_allocate_beyond_the_cap(
    count_minus_one: int, words: list[int]
) -> None:
    header = struct.pack(f"<I{len(words)}I", count_minus_one, *words)
    splitter = MessageSplitter(SMALL.max_message_bytes)
    try:
        assert splitter.feed(header) == []
    except PEER_ERRORS:
        return
    assert splitter.buffered == len(header)


# ---- state machines -------------------------------------------------------------------

CLIENT_EVENTS = (ResponseReceived, EventReceived, CallCompleted, CallFailed)
SERVER_EVENTS = (RequestReceived, RequestRejected, CallAborted, AckReceived, AcksEnded, AcksFailed)
REQUEST_FOR_CLIENT = [Request(call=Fetch(limit=10), token="t"), Request(call=Subscribe())]

wire_chunks = st.lists(
    st.sampled_from(ENCODED["response"] + ENCODED["event"] + ENCODED["request"])
    | mutated("response")
    | mutated("event")
    | mutated("request")
    | st.binary(max_size=256),
    max_size=5,
)
endings = st.sampled_from(["fin", "reset", "open"])


@FUZZ
@given(st.sampled_from(REQUEST_FOR_CLIENT), wire_chunks, endings)
def test_client_call_only_coded_outcomes(request: Request, chunks: list[bytes], end: str) -> None:
    call = ClientCall(request, SMALL)
    events: list[Any] = []
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        events += call.receive_data(chunk, end_stream=last and end == "fin")
    if end == "reset":
        events += call.receive_reset(1)
    if not chunks and end == "fin":
        events += call.receive_data(b"", end_stream=True)
    assert all(isinstance(event, CLIENT_EVENTS) for event in events)
    terminal = [i for i, e in enumerate(events) if isinstance(e, CallFailed | CallCompleted)]
    assert len(terminal) <= 1
    if terminal:
        assert terminal[0] == len(events) - 1
        assert call.state in (CallState.DONE, CallState.FAILED)
    for event in events:
        if isinstance(event, CallFailed):
            assert isinstance(event.error, RemoteProtocolError)
    if end != "open":
        assert terminal, "FIN or reset must end the call"
        assert call.receive_data(b"\x00" * 8, end_stream=True) == []


@FUZZ
@given(wire_chunks, endings)
def test_server_call_only_coded_outcomes(chunks: list[bytes], end: str) -> None:
    call = ServerCall(SMALL)
    events: list[Any] = []
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        events += call.receive_data(chunk, end_stream=last and end == "fin")
    if not chunks and end == "fin":
        events += call.receive_data(b"", end_stream=True)
    if end == "reset":
        events += call.receive_reset(1)
    assert all(isinstance(event, SERVER_EVENTS) for event in events)
    decided = [e for e in events if isinstance(e, RequestReceived | RequestRejected)]
    assert len(decided) <= 1
    for event in events:
        if isinstance(event, AcksFailed):
            # After a SubscribeWithAcks request: its stream ends with a coded error event.
            assert isinstance(event.error, REQUEST_ERRORS)
        if isinstance(event, RequestRejected):
            assert isinstance(event.error, REQUEST_ERRORS)
            # Every rejection can be answered on the wire, unless the client reset.
            if end != "reset":
                answer = call.respond(ErrorResponse.from_exception(event.error))
                assert decode_response(answer) == ErrorResponse.from_exception(event.error)
    if end == "fin":
        assert decided, "a FIN always gets the request decided"


@FUZZ
@given(requests, st.lists(st.integers(0, 10**6), max_size=6))
def test_any_request_survives_any_chunking(request: Request, cuts: list[int]) -> None:
    client, server = ClientCall(request), ServerCall()
    chunks = _chunks(client.request_bytes(), cuts)
    events: list[Any] = []
    for index, chunk in enumerate(chunks):
        events += server.receive_data(chunk, end_stream=index == len(chunks) - 1)
    assert events == [RequestReceived(request)]


#: Each step a server-side adapter or its peer can take, and the table input it is.
SERVER_STEPS: dict[str, _Input] = {
    "request": _Input.PEER_REQUEST,
    "bad request": _Input.PEER_BAD_REQUEST,
    "reset": _Input.PEER_RESET,
    "reject": _Input.REJECT,
    "answer": _Input.RESPOND_RESULT,
    "error": _Input.RESPOND_ERROR,
    "push": _Input.PUSH,
    "push error": _Input.PUSH_ERROR,
    "close": _Input.CLOSE,
}
_ENVELOPE = Envelope(seq=1, sender=bytes(32), payload=b"x", enqueued_at_ms=1)
_INTERNAL = ErrorResponse(ErrorCode.INTERNAL, "x")


def _server_step(call: ServerCall, request: Request, step: str) -> object:
    """Take ``step``; returns the events (peer steps) or the bytes to send (local ones)."""
    if step == "request":
        return call.receive_data(encode_request(request), end_stream=True)
    if step == "bad request":
        return call.receive_data(b"\xff\xff\xff\xff", end_stream=True)
    if step == "reset":
        return call.receive_reset(3)
    if step == "reject":
        return call.reject(MalformedRequestError("x"))
    if step == "answer":
        return call.respond(Subscribed() if isinstance(request.call, Subscribe) else Messages(()))
    if step == "error":
        return call.respond(_INTERNAL)
    if step == "push":
        return call.push(_ENVELOPE)
    if step == "push error":
        return call.push(_INTERNAL)
    call.close()
    return b""


@settings(max_examples=400, deadline=timedelta(seconds=2))
@given(
    st.sampled_from([Request(call=Fetch(limit=1), token="t"), Request(call=Subscribe())]),
    st.lists(st.sampled_from(sorted(SERVER_STEPS)), max_size=8),
)
def test_server_call_moves_only_as_the_table_says(request: Request, steps: list[str]) -> None:
    call = ServerCall()
    for step in steps:
        before = call._state
        move = SERVER_STEPS[step]
        if move is _Input.RESPOND_RESULT and isinstance(request.call, Subscribe):
            move = _Input.ACCEPT_SUBSCRIBE
        following = _TRANSITIONS[before].get(move)
        local = not move.name.startswith("PEER_")
        if following is None and local:
            with contextlib.suppress(LocalProtocolError):
                _server_step(call, request, step)
                raise AssertionError(f"{step} in {before} must be refused")
            assert call._state is before
            continue
        outcome = _server_step(call, request, step)
        if following is None:
            assert outcome == [], (step, before)  # the peer's input is dropped
            assert call._state is before
            continue
        assert call._state is following, (step, before)
        if local:
            assert isinstance(outcome, bytes)
        else:
            assert isinstance(outcome, list)
            assert len(outcome) == 1
            expected = {
                _Input.PEER_REQUEST: RequestReceived,
                _Input.PEER_BAD_REQUEST: RequestRejected,
                _Input.PEER_RESET: CallAborted,
            }[move]
            assert isinstance(outcome[0], expected)
        assert call.finished == (call.state in (CallState.DONE, CallState.FAILED))
