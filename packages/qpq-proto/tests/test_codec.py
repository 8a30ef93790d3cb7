"""Encoding and decoding: round trips, decode-time validation and limits."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from proto_samples import (
    ALICE,
    BOB,
    CALLS,
    EDGE_CALLS,
    EDGE_RESULTS,
    ENVELOPE_1,
    ERRORS,
    NONCE,
    RESULTS,
    SIGNATURE,
    TOKEN,
    patch_u16,
    root_data_offset,
)

from qpq_proto import (
    DEFAULT_LIMITS,
    CreateGroup,
    Endpoint,
    ErrorCode,
    ErrorResponse,
    Fetch,
    FetchGroupInfo,
    FetchWait,
    Health,
    Limits,
    MessageKind,
    PeerDeliver,
    Publish,
    PublishEndpoints,
    RegisterUser,
    Request,
    UploadKeyPackages,
    UploadLastResort,
    check_call_limits,
    decode_event,
    decode_request,
    decode_response,
    encode_event,
    encode_request,
    encode_response,
)
from qpq_proto._schema import schema
from qpq_proto.errors import (
    BadVersionError,
    InvalidArgumentError,
    MalformedMessageError,
    MalformedRequestError,
    MessageTooLargeError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedCallError,
)

MIB = 1024 * 1024
#: Small limits so over-limit messages stay cheap to build.
SMALL = Limits(
    max_payload_bytes=1024,
    max_key_package_bytes=512,
    max_key_packages_per_upload=3,
    max_recipients=3,
    max_username_bytes=8,
    max_group_id_bytes=4,
    max_fetch_limit=10,
    max_fetch_wait_ms=500,
    max_endpoints=2,
    max_message_bytes=1024 + 64 * 1024,
)
#: Request union discriminant, in u16 units from the start of Request's data section.
CALL_DISCRIMINANT = schema().Request.schema.fields["call"].schema.node.struct.discriminantOffset


def raw_request(call: str, version: int = 1, token: str = TOKEN, **params: Any) -> bytes:
    """A Request built with the bare schema, bypassing every dataclass check."""
    message = schema().Request.new_message()
    message.version = version
    message.auth.token = token
    if not params:
        setattr(message.call, call, None)
        return bytes(message.to_bytes())
    target = message.call.init(call)
    for name, value in params.items():
        if isinstance(value, list):
            items = target.init(name, len(value))
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    for key, field_value in item.items():
                        setattr(items[index], key, field_value)
                else:
                    items[index] = item
        else:
            setattr(target, name, value)
    return bytes(message.to_bytes())


def raw_response(result: str, **params: Any) -> bytes:
    message = schema().Response.new_message()
    if not params:
        setattr(message, result, None)
        return bytes(message.to_bytes())
    target = message.init(result)
    for name, value in params.items():
        if isinstance(value, list):
            items = target.init(name, len(value))
            for index, item in enumerate(value):
                for key, field_value in item.items():
                    setattr(items[index], key, field_value)
        else:
            setattr(target, name, value)
    return bytes(message.to_bytes())


def _service_error(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        decode_request(data, limits)
    return info.value


# ---- round trips ------------------------------------------------------------


@pytest.mark.parametrize(
    "name", sorted({**CALLS, **{f"edge_{k}": v for k, v in EDGE_CALLS.items()}})
)
def test_every_call_round_trips(name: str) -> None:
    call = CALLS.get(name) or EDGE_CALLS[name.removeprefix("edge_")]
    request = Request(call=call, token=TOKEN)
    decoded = decode_request(encode_request(request))
    assert decoded == request
    assert type(decoded.call) is type(call)
    assert decoded.token == TOKEN


@pytest.mark.parametrize("token", ["", "x", "ünïcödé-tøken", "t" * 4096])
def test_tokens_round_trip(token: str) -> None:
    request = Request(call=Health(), token=token)
    assert decode_request(encode_request(request)).token == token


@pytest.mark.parametrize(
    "result",
    [*RESULTS.values(), *EDGE_RESULTS.values(), *ERRORS.values()],
    ids=lambda r: type(r).__name__,
)
def test_every_result_and_error_round_trips(result: Any) -> None:
    decoded = decode_response(encode_response(result))
    assert decoded == result
    assert type(decoded) is type(result)


@pytest.mark.parametrize(
    "event",
    [ENVELOPE_1, *EDGE_RESULTS["messages_u64"].messages, *ERRORS.values()],  # type: ignore[union-attr]
    ids=repr,
)
def test_every_event_round_trips(event: Any) -> None:
    decoded = decode_event(encode_event(event))
    assert decoded == event
    assert type(decoded) is type(event)


def test_error_field_and_unicode_message_round_trip() -> None:
    error = ErrorResponse(ErrorCode.INVALID_ARGUMENT, "bad «limit» ✓", field="limit")
    assert decode_response(encode_response(error)) == error
    assert decode_event(encode_event(error)) == error


def test_max_size_payload_round_trips_with_default_limits() -> None:
    payload = bytes(range(256)) * (DEFAULT_LIMITS.max_payload_bytes // 256)
    assert len(payload) == 5 * MIB
    request = Request(call=Publish(b"g", 1, MessageKind.APPLICATION, payload), token=TOKEN)
    data = encode_request(request)
    assert len(data) <= DEFAULT_LIMITS.max_message_bytes
    assert decode_request(data) == request


def test_max_size_key_package_and_batch_round_trip() -> None:
    package = b"\x5a" * DEFAULT_LIMITS.max_key_package_bytes
    for call in (
        UploadLastResort(package=package),
        UploadKeyPackages(packages=tuple(bytes([i % 256]) * 64 for i in range(1000))),
    ):
        request = Request(call=call, token=TOKEN)
        assert decode_request(encode_request(request)) == request


def test_a_commit_with_welcome_and_group_info_at_the_caps_round_trips() -> None:
    big = b"\x5a" * DEFAULT_LIMITS.max_payload_bytes
    call = Publish(b"g" * 256, 1, MessageKind.COMMIT, b"c", welcome=big, group_info=b"i")
    request = Request(call=call, token=TOKEN)
    assert decode_request(encode_request(request)) == request


def test_recipients_sent_by_an_older_client_are_ignored() -> None:
    data = raw_request("publish", groupId=b"g", payload=b"x", recipients=[ALICE, BOB])
    call = decode_request(data).call
    assert call == Publish(b"g", 0, MessageKind.APPLICATION, b"x")


def test_the_retired_enqueue_call_is_unsupported() -> None:
    data = raw_request("enqueue", recipient=BOB, payload=b"welcome")
    assert type(_service_error(data)) is UnsupportedCallError


def test_encoding_is_deterministic() -> None:
    request = Request(call=CALLS["publish"], token=TOKEN)
    assert encode_request(request) == encode_request(request)


def test_encoders_refuse_foreign_types() -> None:
    with pytest.raises(TypeError):
        encode_request(Request(call=RESULTS["done"], token=TOKEN))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_response(Health())  # type: ignore[arg-type]


# ---- decode_request: every request-side code --------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 3,
        b"\x00" * 8,
        b"\xff" * 64,
        b"not a capnp message at all!!!!!",
        bytes(encode_request(Request(call=Health())))[:-8],
        bytes(encode_request(Request(call=Health())))[:-1],
        bytes(encode_request(Request(call=Health()))) + b"\x00",
    ],
    ids=[
        "empty",
        "3-bytes",
        "empty-header",
        "ff",
        "text",
        "short-by-a-word",
        "short-by-a-byte",
        "odd",
    ],
)
def test_undecodable_bytes_are_malformed_request(data: bytes) -> None:
    error = _service_error(data)
    assert type(error) is MalformedRequestError
    assert error.code is ErrorCode.MALFORMED_REQUEST


def test_root_pointing_at_a_list_is_malformed_request() -> None:
    # A root list pointer where a struct is expected.
    data = struct.pack("<II", 0, 2) + struct.pack("<Q", 1 | (2 << 32) | (8 << 35)) + b"\x00" * 8
    assert type(_service_error(data)) is MalformedRequestError


@pytest.mark.parametrize("version", [0, 2, 0xFFFF])
def test_other_versions_are_bad_version(version: int) -> None:
    error = _service_error(raw_request("health", version=version))
    assert type(error) is BadVersionError
    assert error.code is ErrorCode.BAD_VERSION
    assert str(version) in error.message


def test_version_is_checked_before_the_call() -> None:
    data = encode_request(Request(call=Health(), version=2))
    unknown = patch_u16(data, root_data_offset(data) + 2 * CALL_DISCRIMINANT, 0x7FFF)
    assert type(_service_error(unknown)) is BadVersionError


#: Members of the Request.call union: the first discriminant past them is unknown.
CALL_MEMBERS = len(schema().Request.schema.fields["call"].schema.union_fields)


@pytest.mark.parametrize("discriminant", [CALL_MEMBERS, CALL_MEMBERS + 1, 0x7FFF, 0xFFFF])
def test_unknown_union_member_is_unsupported_call(discriminant: int) -> None:
    data = encode_request(Request(call=Health(), token=TOKEN))
    offset = root_data_offset(data) + 2 * CALL_DISCRIMINANT
    assert struct.unpack_from("<H", data, offset) == (0,)  # health is member 0
    assert decode_request(patch_u16(data, offset, 18)).call == CALLS["delete_account"]
    error = _service_error(patch_u16(data, offset, discriminant))
    assert type(error) is UnsupportedCallError
    assert error.code is ErrorCode.UNSUPPORTED_CALL


@pytest.mark.parametrize(
    ("field", "data"),
    [
        ("identity_key", raw_request("authenticate", identityKey=ALICE[:31], signature=SIGNATURE)),
        (
            "identity_key",
            raw_request("authenticate", identityKey=ALICE + b"!", signature=SIGNATURE),
        ),
        ("signature", raw_request("authenticate", identityKey=ALICE, signature=SIGNATURE[:63])),
        ("identity_key", raw_request("resolveIdentity", identityKey=b"")),
        ("identity_key", raw_request("fetchKeyPackage", identityKey=ALICE[:31])),
        ("identity_key", raw_request("resolveEndpoints", identityKey=ALICE + b"!")),
        ("identity_keys", raw_request("resolveIdentities", identityKeys=[])),
        ("identity_keys", raw_request("resolveIdentities", identityKeys=[ALICE, ALICE[:31]])),
        ("identity_keys", raw_request("resolveIdentities", identityKeys=[ALICE] * 1001)),
        ("username", raw_request("registerUser", username="")),
        ("username", raw_request("registerUser", username="a" * 65)),
        ("username", raw_request("registerUser", username="al ice")),
        ("username", raw_request("resolveUser", username="ali\x07ce")),
        ("username", raw_request("resolveUser", username="e\u0301")),
        ("packages", raw_request("uploadKeyPackages", packages=[])),
        ("packages", raw_request("uploadKeyPackages", packages=[b"kp", b""])),
        ("package", raw_request("uploadLastResort", package=b"")),
        ("limit", raw_request("fetch", limit=0)),
        ("limit", raw_request("fetch", limit=1001)),
        ("limit", raw_request("fetchWait", limit=0, timeoutMs=1)),
        ("limit", raw_request("fetchWait", limit=1001, timeoutMs=1)),
        ("timeout_ms", raw_request("fetchWait", limit=1, timeoutMs=60_001)),
        ("endpoints", raw_request("publishEndpoints", endpoints=[{"host": "h", "port": 1}] * 17)),
        ("port", raw_request("publishEndpoints", endpoints=[{"host": "h", "port": 0}])),
        ("host", raw_request("publishEndpoints", endpoints=[{"host": "", "port": 1}])),
        ("host", raw_request("publishEndpoints", endpoints=[{"host": "a b", "port": 1}])),
        ("group_id", raw_request("publish", groupId=b"", epoch=1, payload=b"x")),
        ("group_id", raw_request("publish", groupId=b"g" * 257, epoch=1, payload=b"x")),
        ("payload", raw_request("publish", groupId=b"g", epoch=1, payload=b"")),
        ("group_info", raw_request("publish", groupId=b"g", payload=b"x", groupInfo=b"i")),
        ("group_id", raw_request("fetchGroupInfo", groupId=b"")),
        ("group_info", raw_request("createGroup", groupInfo=b"")),
        ("kind", raw_request("publish", groupId=b"g", kind=3, payload=b"x")),
        ("kind", raw_request("publish", groupId=b"g", kind=0xFFFF, payload=b"x")),
        ("payload", raw_request("peerDeliver", payload=b"")),
        (
            "nonce",
            raw_request(
                "peerAuthenticate", identityKey=ALICE, nonce=NONCE[:31], signature=SIGNATURE
            ),
        ),
        (
            "signature",
            raw_request("peerAuthenticate", identityKey=ALICE, nonce=NONCE, signature=b""),
        ),
    ],
)
def test_invalid_fields_are_invalid_argument_naming_the_field(field: str, data: bytes) -> None:
    error = _service_error(data)
    assert type(error) is InvalidArgumentError
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert error.field == field


def test_invalid_utf8_text_is_malformed_request() -> None:
    data = bytearray(raw_request("registerUser", username="alice"))
    data[data.index(b"alice")] = 0xFF
    assert type(_service_error(bytes(data))) is MalformedRequestError


@pytest.mark.parametrize(
    ("field", "error_type", "call"),
    [
        ("payload", PayloadTooLargeError, Publish(b"g", 1, MessageKind.APPLICATION, b"x" * 1025)),
        (
            "welcome",
            PayloadTooLargeError,
            Publish(b"g", 1, MessageKind.COMMIT, b"x", welcome=b"w" * 1025),
        ),
        (
            "group_info",
            PayloadTooLargeError,
            Publish(b"g", 1, MessageKind.COMMIT, b"x", group_info=b"i" * 1025),
        ),
        ("group_info", PayloadTooLargeError, CreateGroup(group_info=b"i" * 1025)),
        ("payload", PayloadTooLargeError, PeerDeliver(payload=b"m" * 1025)),
        ("packages", PayloadTooLargeError, UploadKeyPackages(packages=(b"k", b"k" * 513))),
        ("package", PayloadTooLargeError, UploadLastResort(package=b"k" * 513)),
        ("packages", InvalidArgumentError, UploadKeyPackages(packages=(b"k",) * 4)),
        ("group_id", InvalidArgumentError, Publish(b"g" * 5, 1, MessageKind.COMMIT, b"x")),
        ("group_id", InvalidArgumentError, FetchGroupInfo(group_id=b"g" * 5)),
        ("username", InvalidArgumentError, RegisterUser(username="a" * 9)),
        ("limit", InvalidArgumentError, Fetch(limit=11)),
        ("limit", InvalidArgumentError, FetchWait(limit=11, timeout_ms=1)),
        ("timeout_ms", InvalidArgumentError, FetchWait(limit=1, timeout_ms=501)),
        (
            "endpoints",
            InvalidArgumentError,
            PublishEndpoints(endpoints=(Endpoint("a", 1), Endpoint("b", 2), Endpoint("c", 3))),
        ),
    ],
)
def test_configured_limits_are_enforced(
    field: str, error_type: type[ServiceError], call: Any
) -> None:
    with pytest.raises(error_type) as direct:
        check_call_limits(call, SMALL)
    assert direct.value.field == field
    error = _service_error(encode_request(Request(call=call, token=TOKEN)), SMALL)
    assert type(error) is error_type
    assert error.field == field
    # The same call passes the default limits.
    assert decode_request(encode_request(Request(call=call, token=TOKEN))).call == call


@pytest.mark.parametrize(
    "call",
    [
        Publish(b"gggg", 1, MessageKind.COMMIT, b"x" * 1024, b"w" * 1024, b"i" * 1024),
        CreateGroup(group_info=b"i" * 1024),
        PeerDeliver(payload=b"m" * 1024),
        UploadKeyPackages(packages=(b"k" * 512,) * 3),
        UploadLastResort(package=b"k" * 512),
        RegisterUser(username="a" * 8),
        Fetch(limit=10),
        FetchWait(limit=10, timeout_ms=500),
        PublishEndpoints(endpoints=(Endpoint("a", 1), Endpoint("b", 2))),
    ],
    ids=lambda c: type(c).__name__,
)
def test_calls_exactly_at_the_limits_pass(call: Any) -> None:
    check_call_limits(call, SMALL)
    assert decode_request(encode_request(Request(call=call, token=TOKEN)), SMALL).call == call


def test_default_payload_cap_is_exact() -> None:
    payload = b"\x00" * (DEFAULT_LIMITS.max_payload_bytes + 1)
    over = Publish(b"g", 1, MessageKind.APPLICATION, payload)
    error = _service_error(encode_request(Request(call=over, token=TOKEN)))
    assert type(error) is PayloadTooLargeError
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert error.field == "payload"


def test_message_over_the_byte_cap_is_payload_too_large_before_decoding() -> None:
    data = encode_request(Request(call=Health(), token=TOKEN))
    tight = Limits(max_payload_bytes=1, max_message_bytes=64 * 1024 + 1)
    assert decode_request(data, tight).call == Health()
    # Trailing bytes are otherwise ignored by the decoder; here they only push it over the cap.
    assert decode_request(data + b"\x00" * 8, tight).call == Health()
    error = _service_error(data + b"\x00" * (64 * 1024), tight)
    assert type(error) is PayloadTooLargeError
    assert error.field == ""


# ---- decoding limits: traversal and nesting ------------------------------------


def _aliased_packages(count: int, blob_bytes: int) -> bytes:
    """uploadKeyPackages whose ``count`` list entries all point at one blob.

    Small on the wire, large to traverse: the traversal limit must stop it.
    """
    words = [
        0 | (1 << 32) | (2 << 48),  # root: struct at word 1, 1 data word, 2 pointers
        1 | (6 << 16),  # version 1; call discriminant 6 = uploadKeyPackages
        0,  # auth: null
        0 | (1 << 48),  # call: struct right after, 0 data words, 1 pointer
        1 | (6 << 32) | (count << 35),  # packages: list of `count` pointers
    ]
    words += [1 | ((count - i - 1) << 2) | (2 << 32) | (blob_bytes << 35) for i in range(count)]
    body = b"".join(struct.pack("<Q", w) for w in words) + b"\xab" * blob_bytes
    return struct.pack("<II", 0, len(body) // 8) + body


def test_traversal_limit_stops_pointer_amplification() -> None:
    limits = Limits(
        max_payload_bytes=1024, max_key_package_bytes=4096, max_message_bytes=1024 + 64 * 1024
    )
    blob = 1024
    fits = limits.traversal_limit_words * 8 // blob // 2
    request = decode_request(_aliased_packages(fits, blob), limits)
    assert request.call == UploadKeyPackages(packages=(b"\xab" * blob,) * fits)
    amplified = _aliased_packages(fits * 3, blob)
    assert len(amplified) < limits.max_message_bytes // 10
    assert type(_service_error(amplified, limits)) is MalformedRequestError


def test_nesting_limit_is_applied() -> None:
    data = encode_request(Request(call=CALLS["publish_endpoints"], token=TOKEN))
    assert decode_request(data).call == CALLS["publish_endpoints"]
    # Request -> call -> endpoints list -> Endpoint -> host: deeper than 2.
    assert type(_service_error(data, Limits(nesting_limit=2))) is MalformedRequestError
    with pytest.raises(MalformedMessageError):
        decode_response(encode_response(RESULTS["messages"]), Limits(nesting_limit=2))


# ---- decode_response / decode_event -----------------------------------------------


@pytest.mark.parametrize("discriminant", [16, 0x7FFF, 0xFFFF])
def test_unknown_response_kind_is_malformed(discriminant: int) -> None:
    data = encode_response(RESULTS["done"])
    offset = root_data_offset(data)  # Response's union discriminant is at offset 0
    assert decode_response(patch_u16(data, offset, 15)) == RESULTS["peer_endpoints"].__class__(
        (), None
    )
    with pytest.raises(MalformedMessageError):
        decode_response(patch_u16(data, offset, discriminant))


@pytest.mark.parametrize("discriminant", [3, 0x7FFF, 0xFFFF])
def test_unknown_event_kind_is_malformed(discriminant: int) -> None:
    data = encode_event(ENVELOPE_1)
    with pytest.raises(MalformedMessageError):
        decode_event(patch_u16(data, root_data_offset(data), discriminant))


@pytest.mark.parametrize(
    "data",
    [
        raw_response("enqueued", seq=1),
        raw_response("groupSnapshot", groupId=b"", epoch=1, groupInfo=b"i"),
        raw_response("challenge", nonce=b"n" * 31),
        raw_response("userKey", identityKey=b"k" * 33),
        raw_response("username", username=""),
        raw_response("username", username="bad name"),
        raw_response("keyPackage", package=b""),
        raw_response("fingerprint", fingerprint=b""),
        raw_response("messages", messages=[{"seq": 0, "sender": ALICE, "payload": b"x"}]),
        raw_response("messages", messages=[{"seq": 1, "sender": ALICE[:5], "payload": b"x"}]),
        raw_response("messages", messages=[{"seq": 1, "sender": ALICE, "payload": b""}]),
        raw_response("peerEndpoints", endpoints=[{"host": "h", "port": 0}]),
        b"",
        b"\x00" * 16,
        b"\xff" * 40,
    ],
)
def test_invalid_responses_are_malformed_message(data: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        decode_response(data)


def test_invalid_event_is_malformed_message() -> None:
    message = schema().Event.new_message()
    message.init("message").seq = 0
    with pytest.raises(MalformedMessageError):
        decode_event(bytes(message.to_bytes()))
    with pytest.raises(MalformedMessageError):
        decode_event(b"\x00" * 24)


def test_oversize_response_and_event_are_message_too_large() -> None:
    limits = Limits(max_payload_bytes=1, max_message_bytes=64 * 1024 + 1)
    big = ENVELOPE_1.__class__(seq=1, sender=ALICE, payload=b"p" * 70_000, enqueued_at_ms=0)
    with pytest.raises(MessageTooLargeError):
        decode_response(encode_response(RESULTS["messages"].__class__((big,))), limits)
    with pytest.raises(MessageTooLargeError):
        decode_event(encode_event(big), limits)


@pytest.mark.parametrize("decode", [decode_response, decode_event])
def test_unknown_error_code_from_a_newer_peer_is_internal(decode: Callable[[bytes], Any]) -> None:
    root = schema().Response if decode is decode_response else schema().Event
    message = root.new_message()
    error = message.init("error")
    error.code = 200
    error.message = "from the future"
    error.field = "x"
    decoded = decode(bytes(message.to_bytes()))
    assert decoded.code is ErrorCode.INTERNAL
    assert "200" in decoded.message
    assert "from the future" in decoded.message
    assert decoded.field == "x"
    assert type(decoded.to_exception()).__name__ == "InternalError"
