"""Fixed sample messages shared by the tests and the golden-vector generator.

Every value here is deterministic: the golden vectors in ``vectors/`` are the
encodings of :data:`VECTORS`, so changing a value here means regenerating them
(see the package README) and that is a wire-format change to review.
"""

from __future__ import annotations

import struct
import typing
from typing import Any

from qpq_proto import (
    NO_SENDER,
    AccountStatus,
    Ack,
    Acked,
    Authenticate,
    Call,
    Challenge,
    ChallengeNonce,
    ClaimedKeyPackage,
    CountKeyPackages,
    CreateGroup,
    DeleteAccount,
    Devices,
    Done,
    Endpoint,
    Envelope,
    ErrorCode,
    ErrorResponse,
    Fetch,
    FetchGroupInfo,
    FetchKeyPackage,
    FetchLink,
    FetchWait,
    Fingerprint,
    Fingerprints,
    GroupSnapshot,
    Health,
    HealthStatus,
    KeyPackageCount,
    LinkPayload,
    ListDevices,
    MessageKind,
    Messages,
    PeerAuthenticate,
    PeerChallenge,
    PeerDeliver,
    PeerEndpoints,
    PeerProof,
    PostLink,
    Publish,
    Published,
    PublishEndpoints,
    RegisterDevice,
    RegisterUser,
    ReplaceGroupInfo,
    Request,
    ResolveEndpoints,
    ResolveIdentities,
    ResolveIdentity,
    ResolveUser,
    Result,
    RevokeDevice,
    Subscribe,
    Subscribed,
    SubscribeWithAcks,
    SuiteKeyPackageCount,
    UploadKeyPackages,
    UploadLastResort,
    UserKey,
    Username,
    Usernames,
    decode_event,
    decode_request,
    decode_response,
    encode_event,
    encode_request,
    encode_response,
)

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

ALICE = bytes(range(32))
BOB = bytes(range(32, 64))
CAROL = bytes([0xC0]) * 32
SIGNATURE = bytes(range(64))
NONCE = bytes(range(100, 132))
FINGERPRINT_A = bytes([0xF1]) * 32
FINGERPRINT_B = bytes([0xF2]) * 32
TOKEN = "s3cret-token-value"

ENVELOPE_1 = Envelope(
    seq=1, sender=ALICE, payload=b"mls-message-1", enqueued_at_ms=1_700_000_000_000
)
ENVELOPE_2 = Envelope(seq=2, sender=BOB, payload=b"mls-message-2", enqueued_at_ms=1_700_000_000_500)
GAP = Envelope(
    seq=3, sender=NO_SENDER, payload=b"", enqueued_at_ms=1_700_000_000_900, gap_group_id=b"group-1"
)
COMMIT_ENVELOPE = Envelope(
    seq=4,
    sender=BOB,
    payload=b"commit-bytes",
    enqueued_at_ms=1_700_000_001_000,
    group_id=b"group-1",
    group_info_digest=bytes([0xD1]) * 32,
)

DELETION_NOTICE = Envelope(
    seq=5,
    sender=NO_SENDER,
    payload=CAROL,
    enqueued_at_ms=1_700_000_002_000,
    group_id=b"group-1",
    account_deleted=CAROL,
)

#: One typical instance of every call, in schema ordinal order.
CALLS: dict[str, Call] = {
    "health": Health(),
    "challenge": Challenge(),
    "authenticate": Authenticate(identity_key=ALICE, signature=SIGNATURE),
    "register_user": RegisterUser(username="alice", invite="qpqi-4KQ3-9JXW-TRD2-6MZV"),
    "resolve_user": ResolveUser(username="bob"),
    "resolve_identity": ResolveIdentity(identity_key=BOB),
    "upload_key_packages": UploadKeyPackages(packages=(b"kp-one", b"kp-two")),
    "upload_last_resort": UploadLastResort(package=b"kp-last-resort"),
    "fetch_key_package": FetchKeyPackage(identity_key=BOB),
    "count_key_packages": CountKeyPackages(),
    "publish": Publish(
        group_id=b"group-1",
        epoch=7,
        kind=MessageKind.COMMIT,
        payload=b"commit-bytes",
        welcome=b"welcome-bytes",
        group_info=b"group-info-bytes",
    ),
    "fetch": Fetch(limit=100),
    "fetch_wait": FetchWait(limit=50, timeout_ms=30_000),
    "ack": Ack(up_to_seq=42),
    "subscribe": Subscribe(),
    "subscribe_with_acks": SubscribeWithAcks(),
    "publish_endpoints": PublishEndpoints(
        endpoints=(Endpoint(host="192.0.2.1", port=7001), Endpoint(host="2001:db8::1", port=7002))
    ),
    "resolve_endpoints": ResolveEndpoints(identity_key=BOB),
    "delete_account": DeleteAccount(),
    "create_group": CreateGroup(group_info=b"group-info-epoch-0"),
    "fetch_group_info": FetchGroupInfo(group_id=b"group-1"),
    "peer_challenge": PeerChallenge(),
    "peer_authenticate": PeerAuthenticate(identity_key=ALICE, nonce=NONCE, signature=SIGNATURE),
    "peer_deliver": PeerDeliver(payload=b"mls-private-message"),
    "replace_group_info": ReplaceGroupInfo(group_id=b"group-1", group_info=b"group-info-bytes"),
    "resolve_identities": ResolveIdentities(identity_keys=(ALICE, BOB)),
    "register_device": RegisterDevice(certificate=b"qpqD\x01device-certificate"),
    "list_devices": ListDevices(account_key=ALICE),
    "revoke_device": RevokeDevice(device_key=BOB),
    "post_link": PostLink(mailbox=FINGERPRINT_A, username="alice", payload=b"link-request"),
    "fetch_link": FetchLink(mailbox=FINGERPRINT_A),
}

#: One typical instance of every result.
RESULTS: dict[str, Result] = {
    "done": Done(),
    "health": HealthStatus(status="ok", version="0.1.0", uptime_seconds=3600, storage="ok"),
    "challenge": ChallengeNonce(
        nonce=NONCE,
        max_payload_bytes=5 * 1024 * 1024,
        max_message_bytes=8 * 1024 * 1024,
        message_ttl_seconds=7 * 24 * 3600,
        stream_acks=True,
    ),
    "user_key": UserKey(identity_key=ALICE),
    "username": Username(username="alice"),
    "fingerprints": Fingerprints(fingerprints=(FINGERPRINT_A, FINGERPRINT_B)),
    "fingerprint": Fingerprint(fingerprint=FINGERPRINT_A),
    "key_package": ClaimedKeyPackage(package=b"kp-one"),
    "key_package_count": KeyPackageCount(count=12, has_last_resort=True, last_resort_served=3),
    "published": Published(recipients=2, epoch=8),
    "messages": Messages(messages=(ENVELOPE_1, ENVELOPE_2)),
    "acked": Acked(removed=2, up_to_seq=42),
    "subscribed": Subscribed(),
    "peer_endpoints": PeerEndpoints(
        endpoints=(Endpoint(host="192.0.2.1", port=7001),),
        observed=Endpoint(host="198.51.100.7", port=51234),
    ),
    "group_snapshot": GroupSnapshot(
        group_id=b"group-1", epoch=8, group_info=b"group-info-bytes", ratchet_tree=b"tree"
    ),
    "peer_proof": PeerProof(identity_key=BOB, signature=SIGNATURE),
    "usernames": Usernames(
        usernames=("alice", "", "bob"),
        statuses=(AccountStatus.ACTIVE, AccountStatus.DELETED, AccountStatus.SUSPENDED),
    ),
    "devices": Devices(device_keys=(ALICE, BOB), certificates=(b"", b"qpqD\x01certificate")),
    "link_payload": LinkPayload(payload=b"link-request", device_key=BOB),
}

#: An ErrorResponse for every code; invalid-argument names its field.
ERRORS: dict[str, ErrorResponse] = {
    code.name.lower(): ErrorResponse(
        code=code,
        message=f"{code.name.lower().replace('_', ' ')} happened",
        field="limit" if code is ErrorCode.INVALID_ARGUMENT else "",
        accepted_commit=FINGERPRINT_B if code is ErrorCode.EPOCH_CONFLICT else b"",
        epoch=8 if code is ErrorCode.EPOCH_CONFLICT else 0,
    )
    for code in ErrorCode
}

#: Edge values: empty lists, caps, integer maxima.
EDGE_CALLS: dict[str, Call] = {
    "publish_application": Publish(
        group_id=b"g", epoch=0, kind=MessageKind.APPLICATION, payload=b"x"
    ),
    "publish_u64_epoch": Publish(
        group_id=b"\x00" * 256,
        epoch=U64_MAX,
        kind=MessageKind.PROPOSAL,
        payload=b"\x00",
    ),
    "publish_endpoints_empty": PublishEndpoints(endpoints=()),
    "publish_endpoints_max": PublishEndpoints(
        endpoints=tuple(Endpoint(host="h" * 253, port=U16_MAX - i) for i in range(16))
    ),
    "ack_zero": Ack(up_to_seq=0),
    "ack_u64_max": Ack(up_to_seq=U64_MAX),
    "fetch_max": Fetch(limit=1000),
    "fetch_wait_max": FetchWait(limit=1000, timeout_ms=60_000),
    "fetch_wait_zero_timeout": FetchWait(limit=1, timeout_ms=0),
    "username_64_bytes": RegisterUser(username="é" * 32),
    "username_unicode": ResolveUser(username="Zoë_日本"),
    "one_key_package": UploadKeyPackages(packages=(b"k",)),
    "fetch_key_package_pq": FetchKeyPackage(identity_key=BOB, ciphersuite=0x004D),
    "publish_one_byte_payload": Publish(b"g", 1, MessageKind.APPLICATION, b"\x00"),
    "resolve_identities_one": ResolveIdentities(identity_keys=(BOB,)),
}

EDGE_RESULTS: dict[str, Result] = {
    "messages_empty": Messages(messages=()),
    "messages_u64": Messages(
        messages=(Envelope(seq=U64_MAX, sender=ALICE, payload=b"z", enqueued_at_ms=U64_MAX),)
    ),
    "fingerprints_empty": Fingerprints(fingerprints=()),
    "peer_endpoints_empty": PeerEndpoints(endpoints=(), observed=None),
    "health_empty_text": HealthStatus(status="", version="", uptime_seconds=0, storage=""),
    "health_u64": HealthStatus(
        status="degraded", version="9.9.9", uptime_seconds=U64_MAX, storage="disk full"
    ),
    "count_zero": KeyPackageCount(count=0, has_last_resort=False),
    "count_u32": KeyPackageCount(count=U32_MAX, has_last_resort=True),
    "count_suites": KeyPackageCount(
        count=12,
        has_last_resort=True,
        last_resort_served=3,
        suites=(
            SuiteKeyPackageCount(
                ciphersuite=0x0001, count=12, has_last_resort=True, last_resort_served=3
            ),
            SuiteKeyPackageCount(ciphersuite=0x004D, count=5, has_last_resort=False),
        ),
    ),
    "published_max": Published(recipients=U32_MAX, epoch=U64_MAX),
    "acked_zero": Acked(removed=0),
    "username_64_bytes": Username(username="é" * 32),
    "usernames_empty": Usernames(usernames=()),
    "usernames_without_statuses": Usernames(usernames=("alice", "")),
    "challenge_not_announced": ChallengeNonce(nonce=NONCE),
}

#: Golden vectors: file stem -> (kind, value). Kinds: request, response, event.
VECTORS: dict[str, tuple[str, Any]] = {
    **{
        f"request_{name}": ("request", Request(call=call, token=TOKEN))
        for name, call in CALLS.items()
    },
    "request_health_no_token": ("request", Request(call=Health())),
    "request_ack_u64_max": ("request", Request(call=Ack(up_to_seq=U64_MAX), token=TOKEN)),
    "request_fetch_key_package_pq": (
        "request",
        Request(call=EDGE_CALLS["fetch_key_package_pq"], token=TOKEN),
    ),
    **{f"response_{name}": ("response", result) for name, result in RESULTS.items()},
    "response_messages_empty": ("response", Messages(messages=())),
    "response_key_package_count_suites": ("response", EDGE_RESULTS["count_suites"]),
    "response_peer_endpoints_no_observed": ("response", PeerEndpoints((), None)),
    **{f"response_error_{name}": ("response", error) for name, error in ERRORS.items()},
    "event_message": ("event", ENVELOPE_1),
    "event_message_u64": ("event", EDGE_RESULTS["messages_u64"].messages[0]),  # type: ignore[union-attr]
    "event_error": ("event", ERRORS["unavailable"]),
    "event_gap": ("event", GAP),
    "event_commit": ("event", COMMIT_ENVELOPE),
    "event_deletion": ("event", DELETION_NOTICE),
    "event_acked": ("event", Acked(removed=3, up_to_seq=42)),
    "request_register_user_no_invite": (
        "request",
        Request(call=RegisterUser(username="alice"), token=TOKEN),
    ),
}

ENCODERS = {"request": encode_request, "response": encode_response, "event": encode_event}
DECODERS = {"request": decode_request, "response": decode_response, "event": decode_event}


def union_members(alias: Any) -> set[type[Any]]:
    """The classes of a ``A | B | ...`` alias."""
    return set(typing.get_args(alias))


def root_data_offset(data: bytes) -> int:
    """Byte offset of the root struct's data section in a one-segment message."""
    (segments_minus_one,) = struct.unpack_from("<I", data, 0)
    assert segments_minus_one == 0, "helper handles single-segment messages only"
    (pointer,) = struct.unpack_from("<q", data, 8)
    assert pointer & 3 == 0, "root is a struct pointer"
    offset_words = pointer >> 2 & 0x3FFF_FFFF
    return 8 + 8 * (1 + offset_words)


def patch_u16(data: bytes, byte_offset: int, value: int) -> bytes:
    """``data`` with one little-endian u16 replaced."""
    patched = bytearray(data)
    struct.pack_into("<H", patched, byte_offset, value)
    return bytes(patched)
