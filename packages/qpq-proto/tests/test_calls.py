"""Both ends of a call in memory: ClientCall and ServerCall, like aioquic's tests."""

from __future__ import annotations

from typing import Any

import pytest
from proto_samples import (
    CALLS,
    ENVELOPE_1,
    ENVELOPE_2,
    RESULTS,
    TOKEN,
    patch_u16,
    root_data_offset,
)

from qpq_proto import (
    RESULT_OF,
    Ack,
    Acked,
    AckReceived,
    AcksEnded,
    AcksFailed,
    CallAborted,
    CallCompleted,
    CallFailed,
    CallState,
    ClientCall,
    ClientEvent,
    ErrorCode,
    ErrorResponse,
    EventReceived,
    Fetch,
    Health,
    Limits,
    MessageKind,
    Messages,
    Publish,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    ServerCall,
    Subscribe,
    Subscribed,
    SubscribeWithAcks,
    encode_event,
    encode_request,
    encode_response,
)
from qpq_proto import Request as Req
from qpq_proto._calls import _PUBLIC, _TRANSITIONS, _Input, _State
from qpq_proto.errors import (
    BadVersionError,
    LocalProtocolError,
    MalformedMessageError,
    MalformedRequestError,
    MessageTooLargeError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceError,
    StreamResetError,
    TruncatedMessageError,
    UnsupportedCallError,
)

SMALL = Limits(max_payload_bytes=1024, max_message_bytes=1024 + 64 * 1024)
RESULT_BY_TYPE = {type(r): r for r in RESULTS.values()}
UNARY = sorted(
    name for name, call in CALLS.items() if not isinstance(call, Subscribe | SubscribeWithAcks)
)


def _request(call: Any = None) -> Req:
    return Req(call=call if call is not None else CALLS["fetch"], token=TOKEN)


def _received(server: ServerCall, data: bytes) -> RequestReceived:
    events = server.receive_data(data, end_stream=True)
    assert len(events) == 1
    assert isinstance(events[0], RequestReceived)
    assert server.state is CallState.HANDLING
    return events[0]


def _rejected(server: ServerCall, *chunks: bytes) -> ServiceError:
    events: list[Any] = []
    for index, chunk in enumerate(chunks):
        events += server.receive_data(chunk, end_stream=index == len(chunks) - 1)
    assert len(events) == 1, events
    assert isinstance(events[0], RequestRejected)
    assert server.state is CallState.FAILED
    assert server.finished
    return events[0].error


def _failed(events: list[ClientEvent], error_type: type[Exception]) -> None:
    assert isinstance(events[-1], CallFailed)
    assert type(events[-1].error) is error_type


# ---- happy paths --------------------------------------------------------------


@pytest.mark.parametrize("name", UNARY)
def test_unary_call_happy_path(name: str) -> None:
    request = _request(CALLS[name])
    client, server = ClientCall(request), ServerCall()
    assert not client.streaming
    received = _received(server, client.request_bytes())
    assert received.request == request

    result = RESULT_BY_TYPE[RESULT_OF[type(request.call)]]
    answer = server.respond(result)
    assert server.finished
    assert server.state is CallState.DONE
    assert client.receive_data(answer, end_stream=True) == [
        ResponseReceived(result),
        CallCompleted(),
    ]
    assert client.state is CallState.DONE


def test_request_split_over_many_feeds_and_fin_alone() -> None:
    request = _request(CALLS["publish"])
    data = ClientCall(request).request_bytes()
    server = ServerCall()
    for index in range(len(data)):
        assert server.receive_data(data[index : index + 1]) == []
    assert server.state is CallState.WAITING
    assert server.receive_data(b"", end_stream=True) == [RequestReceived(request)]


def test_response_partial_data_then_fin() -> None:
    client = ClientCall(_request())
    client.request_bytes()
    answer = encode_response(RESULTS["messages"])
    for cut in range(1, len(answer)):
        client = ClientCall(_request())
        assert client.receive_data(answer[:cut]) == []
        assert client.state is CallState.WAITING
        assert client.receive_data(answer[cut:]) == [ResponseReceived(RESULTS["messages"])]
        assert client.receive_data(b"", end_stream=True) == [CallCompleted()]


def test_subscribe_events_then_clean_end() -> None:
    request = _request(Subscribe())
    client, server = ClientCall(request), ServerCall()
    assert client.streaming
    _received(server, client.request_bytes())
    wire = server.respond(Subscribed())
    assert not server.finished
    assert server.state is CallState.STREAMING
    wire += server.push(ENVELOPE_1) + server.push(ENVELOPE_2)
    server.close()
    assert server.finished

    expected = [
        ResponseReceived(Subscribed()),
        EventReceived(ENVELOPE_1),
        EventReceived(ENVELOPE_2),
        CallCompleted(),
    ]
    assert client.receive_data(wire, end_stream=True) == expected
    assert client.state is CallState.DONE

    byte_by_byte = ClientCall(request)
    events: list[ClientEvent] = []
    for index in range(len(wire)):
        events += byte_by_byte.receive_data(wire[index : index + 1])
    assert byte_by_byte.state is CallState.STREAMING
    events += byte_by_byte.receive_data(b"", end_stream=True)
    assert events == expected


def test_subscribe_with_acks_is_served_before_fin_and_reads_acks() -> None:
    request = _request(SubscribeWithAcks())
    client, server = ClientCall(request), ServerCall()
    assert client.streaming
    assert client.acking
    # No FIN after the request: the server serves it once it is complete.
    assert server.receive_data(client.request_bytes()) == [RequestReceived(request)]
    assert server.reading_acks
    wire = server.respond(Subscribed()) + server.push(ENVELOPE_1)
    assert client.receive_data(wire) == [
        ResponseReceived(Subscribed()),
        EventReceived(ENVELOPE_1),
    ]
    # Acknowledgements, split anywhere, arrive in order.
    acks = client.ack_bytes(ENVELOPE_1.seq) + client.ack_bytes(ENVELOPE_1.seq + 5)
    events = [e for i in range(len(acks)) for e in server.receive_data(acks[i : i + 1])]
    assert events == [AckReceived(ENVELOPE_1.seq), AckReceived(ENVELOPE_1.seq + 5)]
    confirmation = Acked(removed=1, up_to_seq=ENVELOPE_1.seq + 5)
    assert client.receive_data(server.push(confirmation)) == [EventReceived(confirmation)]
    # The client's FIN ends the subscription; the server closes its side.
    client.end_sending()
    assert server.receive_data(b"", end_stream=True) == [AcksEnded()]
    assert not server.reading_acks
    server.close()
    assert client.receive_data(b"", end_stream=True) == [CallCompleted()]
    with pytest.raises(LocalProtocolError):
        client.ack_bytes(99)  # our side is over


def test_subscribe_with_acks_ended_with_its_request_ends_at_once() -> None:
    request = _request(SubscribeWithAcks())
    server = ServerCall()
    events = server.receive_data(ClientCall(request).request_bytes(), end_stream=True)
    assert events == [RequestReceived(request), AcksEnded()]
    assert not server.reading_acks


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        (b"\xff" * 16, "framing"),
        (encode_request(Req(call=Health(), token="")), "only acknowledgements"),
        (encode_request(Req(call=Ack(up_to_seq=1), token="t" * 300)), "size limit"),
    ],
)
def test_anything_but_acks_after_subscribe_with_acks_fails_the_acks(
    after: bytes, reason: str
) -> None:
    server = ServerCall()
    request = ClientCall(_request(SubscribeWithAcks())).request_bytes()
    assert isinstance(server.receive_data(request)[0], RequestReceived)
    events = server.receive_data(after)
    assert len(events) == 1
    assert isinstance(events[0], AcksFailed)
    assert isinstance(events[0].error, MalformedRequestError)
    assert reason in str(events[0].error)
    # Nothing is read after: a later acknowledgement is dropped.
    assert server.receive_data(encode_request(Req(call=Ack(up_to_seq=2), token=""))) == []


def test_acks_failed_after_the_request_was_served() -> None:
    server = ServerCall()
    server.receive_data(ClientCall(_request(SubscribeWithAcks())).request_bytes())
    server.respond(Subscribed())
    events = server.receive_data(encode_request(Req(call=Health(), token="")))
    assert len(events) == 1
    assert isinstance(events[0], AcksFailed)
    assert isinstance(events[0].error, MalformedRequestError)
    assert not server.reading_acks


def test_other_requests_still_wait_for_fin() -> None:
    server = ServerCall()
    data = ClientCall(_request(Health())).request_bytes()
    assert server.receive_data(data) == []
    assert server.receive_data(b"", end_stream=True) == [RequestReceived(_request(Health()))]


def test_a_client_refuses_confirmations_it_did_not_ask_for() -> None:
    confirmation = Acked(removed=1, up_to_seq=7)
    subscribed = encode_response(Subscribed())
    # On a plain subscribe stream, no confirmation is due at all.
    plain = ClientCall(_request(Subscribe()))
    plain.request_bytes()
    events = plain.receive_data(subscribed + encode_event(confirmation))
    _failed(events, MalformedMessageError)
    # On an acknowledged one, not past the highest acknowledgement written.
    acking = ClientCall(_request(SubscribeWithAcks()))
    acking.request_bytes()
    acking.ack_bytes(6)
    events = acking.receive_data(subscribed + encode_event(confirmation))
    _failed(events, MalformedMessageError)
    with pytest.raises(LocalProtocolError):
        plain.ack_bytes(1)  # a plain subscribe writes no acknowledgements


def test_subscribe_without_events() -> None:
    client, server = ClientCall(_request(Subscribe())), ServerCall()
    _received(server, client.request_bytes())
    wire = server.respond(Subscribed())
    server.close()
    assert client.receive_data(wire, end_stream=True) == [
        ResponseReceived(Subscribed()),
        CallCompleted(),
    ]


def test_subscribe_error_event_ends_the_stream() -> None:
    client, server = ClientCall(_request(Subscribe())), ServerCall()
    _received(server, client.request_bytes())
    error = ErrorResponse(ErrorCode.UNAVAILABLE, "shutting down")
    wire = server.respond(Subscribed()) + server.push(ENVELOPE_1) + server.push(error)
    assert server.finished
    with pytest.raises(LocalProtocolError):
        server.push(ENVELOPE_2)
    assert client.receive_data(wire) == [
        ResponseReceived(Subscribed()),
        EventReceived(ENVELOPE_1),
        EventReceived(error),
    ]
    assert client.receive_data(b"", end_stream=True) == [CallCompleted()]


def test_event_after_the_error_event_fails_the_call() -> None:
    client = ClientCall(_request(Subscribe()))
    wire = (
        encode_response(Subscribed())
        + encode_event(ErrorResponse(ErrorCode.INTERNAL, "x"))
        + encode_event(ENVELOPE_1)
    )
    events = client.receive_data(wire, end_stream=True)
    assert events[:2] == [
        ResponseReceived(Subscribed()),
        EventReceived(ErrorResponse(ErrorCode.INTERNAL, "x")),
    ]
    assert len(events) == 3
    _failed(events, MalformedMessageError)


def test_subscribe_refused_with_an_error_response() -> None:
    client, server = ClientCall(_request(Subscribe())), ServerCall()
    _received(server, client.request_bytes())
    refusal = ErrorResponse(ErrorCode.UNAUTHENTICATED, "prove your identity first")
    wire = server.respond(refusal)
    assert server.finished
    assert client.receive_data(wire, end_stream=True) == [
        ResponseReceived(refusal),
        CallCompleted(),
    ]


def test_error_response_answer() -> None:
    client, server = ClientCall(_request(CALLS["fetch_key_package"])), ServerCall()
    _received(server, client.request_bytes())
    wire = server.respond(ErrorResponse.from_exception(NotFoundError("no KeyPackage left")))
    events = client.receive_data(wire, end_stream=True)
    assert events[1] == CallCompleted()
    assert isinstance(events[0], ResponseReceived)
    exc = events[0].response.to_exception()  # type: ignore[union-attr]
    assert type(exc) is NotFoundError
    assert exc.message == "no KeyPackage left"


# ---- the server answers wrongly ------------------------------------------------


@pytest.mark.parametrize(
    "wrong", [RESULTS["done"], RESULTS["acked"], Subscribed()], ids=lambda r: type(r).__name__
)
def test_wrong_result_type_fails_the_call(wrong: Any) -> None:
    client = ClientCall(_request(Fetch(limit=1)))
    events = client.receive_data(encode_response(wrong), end_stream=True)
    assert len(events) == 1
    _failed(events, MalformedMessageError)
    assert client.state is CallState.FAILED
    assert client.receive_data(b"more", end_stream=True) == []


def test_server_refuses_to_send_a_wrong_result_type() -> None:
    server = ServerCall()
    _received(server, ClientCall(_request(Fetch(limit=1))).request_bytes())
    for wrong in (RESULTS["done"], Subscribed(), RESULTS["published"]):
        with pytest.raises(LocalProtocolError):
            server.respond(wrong)
    assert server.state is CallState.HANDLING
    assert server.respond(Messages(())) == encode_response(Messages(()))


def test_early_fin_without_a_response() -> None:
    client = ClientCall(_request())
    events = client.receive_data(b"", end_stream=True)
    assert len(events) == 1
    _failed(events, TruncatedMessageError)


def test_early_fin_inside_the_response() -> None:
    answer = encode_response(RESULTS["messages"])
    for cut in (1, 4, 8, len(answer) - 1):
        client = ClientCall(_request())
        events = client.receive_data(answer[:cut], end_stream=True)
        assert len(events) == 1
        _failed(events, TruncatedMessageError)


def test_early_fin_inside_an_event() -> None:
    client = ClientCall(_request(Subscribe()))
    wire = encode_response(Subscribed()) + encode_event(ENVELOPE_1)[:-3]
    events = client.receive_data(wire, end_stream=True)
    assert events[0] == ResponseReceived(Subscribed())
    _failed(events, TruncatedMessageError)


def test_trailing_message_after_the_response() -> None:
    client = ClientCall(_request())
    answer = encode_response(RESULTS["messages"])
    events = client.receive_data(answer + answer, end_stream=True)
    assert events[0] == ResponseReceived(RESULTS["messages"])
    assert len(events) == 2
    _failed(events, MalformedMessageError)


def test_trailing_bytes_after_the_response() -> None:
    client = ClientCall(_request())
    events = client.receive_data(encode_response(RESULTS["messages"]) + b"\x00\x00", True)
    assert events[0] == ResponseReceived(RESULTS["messages"])
    _failed(events, TruncatedMessageError)


def test_garbage_response_fails_the_call() -> None:
    client = ClientCall(_request())
    events = client.receive_data(b"\x00\x00\x00\x00\x01\x00\x00\x00" + b"\xff" * 8)
    assert len(events) == 1
    _failed(events, MalformedMessageError)
    client = ClientCall(_request())
    _failed(client.receive_data(b"HTTP/1.1 200 OK\r\n"), MalformedMessageError)


def test_oversize_response_fails_before_the_body() -> None:
    client = ClientCall(_request(), SMALL)
    header = b"\x00\x00\x00\x00" + (SMALL.max_message_bytes // 8).to_bytes(4, "little")
    events = client.receive_data(header)
    assert len(events) == 1
    _failed(events, MessageTooLargeError)


# ---- resets --------------------------------------------------------------------


def test_server_reset_fails_the_client_call() -> None:
    client = ClientCall(_request())
    client.receive_data(encode_response(RESULTS["messages"])[:10])
    events = client.receive_reset(0x101)
    assert len(events) == 1
    _failed(events, StreamResetError)
    assert events[0].error.error_code == 0x101  # type: ignore[union-attr]
    assert client.state is CallState.FAILED
    assert client.receive_reset() == []
    assert client.receive_data(encode_response(RESULTS["messages"]), True) == []


def test_reset_after_completion_is_ignored_by_the_client() -> None:
    client = ClientCall(_request())
    client.receive_data(encode_response(RESULTS["messages"]), end_stream=True)
    assert client.receive_reset() == []
    assert client.state is CallState.DONE


@pytest.mark.parametrize("stage", ["waiting", "handling", "streaming"])
def test_client_reset_aborts_the_server_call(stage: str) -> None:
    server = ServerCall()
    call = Subscribe() if stage == "streaming" else CALLS["fetch"]
    if stage != "waiting":
        _received(server, ClientCall(_request(call)).request_bytes())
    if stage == "streaming":
        server.respond(Subscribed())
    events = server.receive_reset(7)
    assert len(events) == 1
    assert isinstance(events[0], CallAborted)
    assert events[0].error.error_code == 7
    assert server.finished
    assert server.receive_reset() == []
    assert server.receive_data(b"x", end_stream=True) == []
    with pytest.raises(LocalProtocolError):
        server.respond(ErrorResponse(ErrorCode.INTERNAL, "x"))
    with pytest.raises(LocalProtocolError):
        server.push(ENVELOPE_1)


def test_reset_after_the_server_finished_is_ignored() -> None:
    server = ServerCall()
    _received(server, ClientCall(_request()).request_bytes())
    server.respond(Messages(()))
    assert server.receive_reset() == []
    assert server.state is CallState.DONE


# ---- the client sends something wrong ------------------------------------------


def test_oversize_request_is_rejected_from_its_header() -> None:
    server = ServerCall(SMALL)
    header = b"\x00\x00\x00\x00" + (SMALL.max_message_bytes // 8).to_bytes(4, "little")
    events = server.receive_data(header)  # no FIN, no body
    assert len(events) == 1
    assert isinstance(events[0], RequestRejected)
    assert type(events[0].error) is PayloadTooLargeError
    assert server.receive_data(b"\x00" * 64, end_stream=True) == []


def test_request_with_an_oversize_payload_is_rejected() -> None:
    server = ServerCall(SMALL)
    data = encode_request(_request(Publish(b"g", 1, MessageKind.APPLICATION, b"p" * 1025)))
    error = _rejected(server, data)
    assert type(error) is PayloadTooLargeError
    assert error.field == "payload"


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x00\x00\x00\x00\x02\x00\x00\x00" + b"\xff" * 16,
        b"\x00\x00\x00\x00\x00\x00\x00\x00",
        b"\xff\xff\xff\xff",
    ],
)
def test_garbage_is_rejected_as_malformed(garbage: bytes) -> None:
    assert type(_rejected(ServerCall(), garbage)) is MalformedRequestError


def test_fin_before_any_request_is_malformed() -> None:
    assert type(_rejected(ServerCall(), b"")) is MalformedRequestError


def test_fin_inside_the_request_is_malformed() -> None:
    data = encode_request(_request())
    assert type(_rejected(ServerCall(), data[:-1])) is MalformedRequestError
    assert type(_rejected(ServerCall(), data[:3])) is MalformedRequestError


def test_trailing_bytes_after_the_request_are_malformed() -> None:
    data = encode_request(_request())
    assert type(_rejected(ServerCall(), data + b"\x00")) is MalformedRequestError


def test_two_requests_on_one_stream() -> None:
    data = encode_request(_request())
    assert type(_rejected(ServerCall(), data + data)) is MalformedRequestError
    assert type(_rejected(ServerCall(), data, data)) is MalformedRequestError


def test_coded_request_errors_reach_the_client() -> None:
    health = encode_request(Req(call=CALLS["health"]))
    unsupported = patch_u16(health, root_data_offset(health) + 2, 0x0100)
    cases: list[tuple[bytes, type[ServiceError]]] = [
        (encode_request(Req(call=CALLS["health"], version=2)), BadVersionError),
        (unsupported, UnsupportedCallError),
        (b"\x00" * 16, MalformedRequestError),
    ]
    for data, error_type in cases:
        server = ServerCall()
        error = _rejected(server, data)
        assert type(error) is error_type
        answer = server.respond(ErrorResponse.from_exception(error))
        with pytest.raises(LocalProtocolError):
            server.respond(ErrorResponse.from_exception(error))
        client = ClientCall(_request(CALLS["health"]))
        events = client.receive_data(answer, end_stream=True)
        assert events[1] == CallCompleted()
        assert isinstance(events[0], ResponseReceived)
        rebuilt = events[0].response.to_exception()  # type: ignore[union-attr]
        assert type(rebuilt) is error_type
        assert rebuilt.code is error_type.code


def test_rejected_request_cannot_be_answered_with_a_result() -> None:
    server = ServerCall()
    _rejected(server, b"\x00" * 16)
    with pytest.raises(LocalProtocolError):
        server.respond(RESULTS["done"])


def test_data_after_a_complete_request_is_ignored() -> None:
    server = ServerCall()
    _received(server, encode_request(_request()))
    assert server.receive_data(b"\x00" * 8, end_stream=True) == []
    assert server.state is CallState.HANDLING


# ---- local misuse ----------------------------------------------------------------


def test_respond_in_the_wrong_state() -> None:
    server = ServerCall()
    with pytest.raises(LocalProtocolError):
        server.respond(Messages(()))
    with pytest.raises(LocalProtocolError):
        server.push(ENVELOPE_1)
    with pytest.raises(LocalProtocolError):
        server.close()
    _received(server, encode_request(_request()))
    with pytest.raises(LocalProtocolError):
        server.push(ENVELOPE_1)
    with pytest.raises(LocalProtocolError):
        server.close()
    server.respond(Messages(()))
    for action in (
        lambda: server.respond(Messages(())),
        lambda: server.respond(ErrorResponse(ErrorCode.INTERNAL, "late")),
        lambda: server.push(ENVELOPE_1),
        server.close,
    ):
        with pytest.raises(LocalProtocolError):
            action()


def test_close_after_close_is_refused() -> None:
    server = ServerCall()
    _received(server, encode_request(_request(Subscribe())))
    server.respond(Subscribed())
    server.close()
    with pytest.raises(LocalProtocolError):
        server.close()
    with pytest.raises(LocalProtocolError):
        server.push(ENVELOPE_1)


def test_request_bytes_only_once() -> None:
    client = ClientCall(_request(Publish(b"g", 1, MessageKind.APPLICATION, b"x")))
    assert client.request_bytes() == encode_request(client.request)
    with pytest.raises(LocalProtocolError):
        client.request_bytes()


# ---- refusing a request that is still arriving -----------------------------------


def test_reject_while_the_request_is_still_arriving() -> None:
    data = encode_request(_request(CALLS["publish"]))
    server = ServerCall()
    assert server.receive_data(data[:10]) == []
    assert server.state is CallState.WAITING
    error = PayloadTooLargeError("too many request bytes in flight on this connection")
    answer = server.reject(error)
    assert server.state is CallState.FAILED
    assert server.finished
    # The rest of the request is dropped unread; nothing more may be sent.
    assert server.receive_data(data[10:], end_stream=True) == []
    assert server.receive_reset() == []
    for action in (
        lambda: server.reject(error),
        lambda: server.respond(ErrorResponse.from_exception(error)),
        lambda: server.push(ENVELOPE_1),
        server.close,
    ):
        with pytest.raises(LocalProtocolError):
            action()
    events = ClientCall(_request(CALLS["publish"])).receive_data(answer, end_stream=True)
    assert events == [ResponseReceived(ErrorResponse.from_exception(error)), CallCompleted()]


def test_reject_answers_a_rejected_request_once() -> None:
    server = ServerCall()
    error = _rejected(server, b"\x00" * 16)
    assert server.reject(error) == encode_response(ErrorResponse.from_exception(error))
    with pytest.raises(LocalProtocolError):
        server.reject(error)
    with pytest.raises(LocalProtocolError):
        server.respond(ErrorResponse.from_exception(error))


@pytest.mark.parametrize("stage", ["handling", "streaming", "done", "reset"])
def test_reject_once_the_request_is_complete_is_refused(stage: str) -> None:
    server = ServerCall()
    _received(server, encode_request(_request(Subscribe())))
    if stage in ("streaming", "done"):
        server.respond(Subscribed())
    if stage == "done":
        server.close()
    if stage == "reset":
        server.receive_reset()
    before = server.state
    with pytest.raises(LocalProtocolError):
        server.reject(MalformedRequestError("late"))
    assert server.state is before


# ---- the transition table ----------------------------------------------------------

STARTS = (_State.UNSENT, _State.AWAITING_ANSWER, _State.RECEIVING_REQUEST)


def test_every_state_has_a_row_and_a_public_state() -> None:
    assert set(_TRANSITIONS) == set(_State)
    assert set(_PUBLIC) == set(_State)
    targets = {following for row in _TRANSITIONS.values() for following in row.values()}
    assert targets <= set(_State)
    used = {move for row in _TRANSITIONS.values() for move in row}
    assert used == set(_Input)


def test_terminal_states_have_no_way_out() -> None:
    for state, row in _TRANSITIONS.items():
        terminal = _PUBLIC[state] in (CallState.DONE, CallState.FAILED)
        if state is _State.REJECTED:
            # Refused but not yet answered: the coded error is still owed.
            assert row
        elif state is _State.SENT:
            assert not row  # the request goes out once
        else:
            assert terminal == (not row), state


def test_every_state_is_reachable() -> None:
    seen = set(STARTS)
    frontier = list(STARTS)
    while frontier:
        for following in _TRANSITIONS[frontier.pop()].values():
            if following not in seen:
                seen.add(following)
                frontier.append(following)
    assert seen == set(_State)


def test_every_live_state_can_end() -> None:
    for state in _State:
        if state in (_State.UNSENT, _State.SENT, _State.ACKING):
            # The client's own side: the request goes out once, then nothing
            # (after acknowledgements, for SubscribeWithAcks).
            assert state is _State.SENT or _State.SENT in _TRANSITIONS[state].values()
            continue
        reachable, frontier = {state}, [state]
        while frontier:
            for following in _TRANSITIONS[frontier.pop()].values():
                if following not in reachable:
                    reachable.add(following)
                    frontier.append(following)
        assert reachable & {_State.DONE, _State.FAILED}, state
