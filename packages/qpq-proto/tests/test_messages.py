"""Construction-time validation of the frozen message dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from proto_samples import (
    ALICE,
    CALLS,
    NONCE,
    RESULTS,
    SIGNATURE,
    TOKEN,
    U16_MAX,
    U64_MAX,
    union_members,
)

from qpq_proto import (
    ACCESS,
    NO_SENDER,
    RESULT_OF,
    Access,
    AccountStatus,
    Ack,
    Authenticate,
    Call,
    ChallengeNonce,
    ClaimedKeyPackage,
    CreateGroup,
    Endpoint,
    Envelope,
    ErrorCode,
    ErrorResponse,
    Fetch,
    FetchGroupInfo,
    FetchKeyPackage,
    FetchWait,
    Fingerprint,
    Fingerprints,
    GroupSnapshot,
    Health,
    KeyPackageCount,
    MessageKind,
    PeerAuthenticate,
    PeerChallenge,
    PeerDeliver,
    PeerProof,
    Publish,
    Published,
    PublishEndpoints,
    RegisterUser,
    ReplaceGroupInfo,
    Request,
    ResolveEndpoints,
    ResolveIdentity,
    ResolveUser,
    Result,
    UploadKeyPackages,
    UploadLastResort,
    UserKey,
    Username,
    Usernames,
    check_username,
)
from qpq_proto.errors import InvalidArgumentError


def _raises_field(field: str, build: Callable[[], Any]) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        build()
    assert info.value.field == field


def test_access_names_every_call() -> None:
    assert set(ACCESS) == union_members(Call)
    assert [call for call, access in ACCESS.items() if access is Access.PUBLIC] == [Health]
    # Single-use KeyPackages are claimed only by a proven identity.
    assert ACCESS[FetchKeyPackage] is Access.IDENTITY
    # The peer calls, and only they, are for peers (a server refuses them).
    assert {call for call, access in ACCESS.items() if access is Access.PEER} == {
        PeerChallenge,
        PeerAuthenticate,
        PeerDeliver,
    }


def test_result_of_maps_every_call_to_a_result() -> None:
    assert set(RESULT_OF) == union_members(Call)
    assert set(RESULT_OF.values()) == union_members(Result)


@pytest.mark.parametrize(
    "value",
    [v for v in (*CALLS.values(), *RESULTS.values()) if dataclasses.fields(v)],
    ids=lambda v: type(v).__name__,
)
def test_messages_are_frozen(value: Any) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, dataclasses.fields(value)[0].name, None)


# ---- identity keys and fixed-size bytes ----------------------------------


KEYED: list[tuple[str, Callable[[bytes], Any]]] = [
    ("identity_key", lambda k: Authenticate(identity_key=k, signature=SIGNATURE)),
    ("identity_key", lambda k: ResolveIdentity(identity_key=k)),
    ("identity_key", lambda k: FetchKeyPackage(identity_key=k)),
    ("identity_key", lambda k: ResolveEndpoints(identity_key=k)),
    ("identity_key", lambda k: UserKey(identity_key=k)),
    ("sender", lambda k: Envelope(seq=1, sender=k, payload=b"x", enqueued_at_ms=0)),
    ("identity_key", lambda k: PeerAuthenticate(identity_key=k, nonce=NONCE, signature=SIGNATURE)),
    ("identity_key", lambda k: PeerProof(identity_key=k, signature=SIGNATURE)),
]


@pytest.mark.parametrize(("field", "build"), KEYED)
@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_keys_must_be_32_bytes(field: str, build: Callable[[bytes], Any], length: int) -> None:
    _raises_field(field, lambda: build(b"\x01" * length))


@pytest.mark.parametrize(("field", "build"), KEYED)
def test_keys_must_be_bytes(field: str, build: Callable[[Any], Any]) -> None:
    _raises_field(field, lambda: build(bytearray(32)))
    _raises_field(field, lambda: build("a" * 32))


@pytest.mark.parametrize(("field", "build"), KEYED)
def test_keys_of_32_bytes_are_accepted(field: str, build: Callable[[bytes], Any]) -> None:
    assert build(ALICE) is not None


@pytest.mark.parametrize("length", [0, 63, 65])
def test_signature_must_be_64_bytes(length: int) -> None:
    _raises_field("signature", lambda: Authenticate(identity_key=ALICE, signature=b"s" * length))
    _raises_field(
        "signature",
        lambda: PeerAuthenticate(identity_key=ALICE, nonce=NONCE, signature=b"s" * length),
    )
    _raises_field("signature", lambda: PeerProof(identity_key=ALICE, signature=b"s" * length))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_nonce_and_fingerprints_are_32_bytes(length: int) -> None:
    _raises_field("nonce", lambda: ChallengeNonce(nonce=b"n" * length))
    _raises_field(
        "nonce",
        lambda: PeerAuthenticate(identity_key=ALICE, nonce=b"n" * length, signature=SIGNATURE),
    )
    _raises_field("fingerprint", lambda: Fingerprint(fingerprint=b"f" * length))
    _raises_field("fingerprints", lambda: Fingerprints(fingerprints=(NONCE, b"f" * length)))


# ---- usernames ------------------------------------------------------------


BAD_USERNAMES = [
    pytest.param("", id="empty"),
    pytest.param("a" * 65, id="65-ascii-bytes"),
    pytest.param("é" * 33, id="66-utf8-bytes"),
    pytest.param("日" * 22, id="66-utf8-bytes-cjk"),
    pytest.param("al ice", id="space"),
    pytest.param("alice\t", id="tab"),
    pytest.param("\u3000alice", id="ideographic-space"),
    pytest.param("ali\nce", id="newline"),
    pytest.param("ali\x00ce", id="nul"),
    pytest.param("ali\x7fce", id="del"),
    pytest.param("ali\u200bce", id="zero-width-space-format"),
    pytest.param("ali\u202ece", id="bidi-override"),
    pytest.param("ali\u2028ce", id="line-separator"),
    pytest.param("e\u0301", id="non-nfc-combining"),
    pytest.param("\u212b", id="non-nfc-angstrom"),
    pytest.param("ali\ue000", id="private-use"),
    pytest.param("ali\U000e0001", id="tag-format"),
    pytest.param("ali\u0378", id="unassigned"),
    pytest.param("ali\ud800", id="lone-surrogate"),
]


@pytest.mark.parametrize("username", BAD_USERNAMES)
def test_bad_usernames_are_refused_everywhere(username: str) -> None:
    _raises_field("username", lambda: check_username(username))
    _raises_field("username", lambda: RegisterUser(username=username))
    _raises_field("username", lambda: ResolveUser(username=username))
    _raises_field("username", lambda: Username(username=username))


def test_username_must_be_text() -> None:
    _raises_field("username", lambda: check_username(b"alice"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "username", ["a", "alice", "a" * 64, "é" * 32, "日" * 21, "Zoë", "ñandú", "x-y_z.1", "😀" * 16]
)
def test_good_usernames_are_accepted(username: str) -> None:
    check_username(username)
    assert RegisterUser(username=username).username == username


def test_username_byte_cap_is_configurable() -> None:
    check_username("abcd", max_bytes=4)
    _raises_field("username", lambda: check_username("abcde", max_bytes=4))


# ---- integers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "build"),
    [
        ("limit", lambda: Fetch(limit=0)),
        ("limit", lambda: Fetch(limit=-1)),
        ("limit", lambda: Fetch(limit=2**32)),
        ("limit", lambda: Fetch(limit=True)),
        ("limit", lambda: Fetch(limit=1.0)),
        ("limit", lambda: FetchWait(limit=0, timeout_ms=10)),
        ("timeout_ms", lambda: FetchWait(limit=1, timeout_ms=-1)),
        ("timeout_ms", lambda: FetchWait(limit=1, timeout_ms=2**32)),
        ("up_to_seq", lambda: Ack(up_to_seq=-1)),
        ("up_to_seq", lambda: Ack(up_to_seq=U64_MAX + 1)),
        ("seq", lambda: Envelope(seq=0, sender=ALICE, payload=b"x", enqueued_at_ms=0)),
        ("seq", lambda: Envelope(seq=U64_MAX + 1, sender=ALICE, payload=b"x", enqueued_at_ms=0)),
        ("enqueued_at_ms", lambda: Envelope(seq=1, sender=ALICE, payload=b"x", enqueued_at_ms=-1)),
        ("epoch", lambda: Publish(b"g", -1, MessageKind.COMMIT, b"x")),
        ("epoch", lambda: Publish(b"g", U64_MAX + 1, MessageKind.COMMIT, b"x")),
        ("epoch", lambda: Published(recipients=1, epoch=-1)),
        ("epoch", lambda: GroupSnapshot(b"g", U64_MAX + 1, b"i", b"t")),
        ("epoch", lambda: ErrorResponse(ErrorCode.EPOCH_CONFLICT, "m", epoch=-1)),
        ("count", lambda: KeyPackageCount(count=-1, has_last_resort=False)),
        ("version", lambda: Request(call=CALLS["health"], version=-1)),
        ("version", lambda: Request(call=CALLS["health"], version=U16_MAX + 1)),
    ],
)
def test_integers_out_of_range(field: str, build: Callable[[], Any]) -> None:
    _raises_field(field, build)


# ---- payloads, lists, endpoints --------------------------------------------


@pytest.mark.parametrize(
    ("field", "build"),
    [
        ("payload", lambda: Publish(b"g", 1, MessageKind.COMMIT, b"")),
        ("payload", lambda: Envelope(seq=1, sender=ALICE, payload=b"", enqueued_at_ms=0)),
        (
            "gap_group_id",
            lambda: Envelope(
                seq=1, sender=ALICE, payload=b"x", enqueued_at_ms=0, gap_group_id=b"g"
            ),
        ),
        ("group_id", lambda: Publish(b"", 1, MessageKind.COMMIT, b"x")),
        ("kind", lambda: Publish(b"g", 1, 2, b"x")),
        ("group_info", lambda: Publish(b"g", 1, MessageKind.APPLICATION, b"x", group_info=b"i")),
        ("welcome", lambda: Publish(b"g", 1, MessageKind.COMMIT, b"x", welcome="w")),
        ("group_info", lambda: CreateGroup(group_info=b"")),
        ("group_id", lambda: FetchGroupInfo(group_id=b"")),
        ("group_id", lambda: ReplaceGroupInfo(group_id=b"", group_info=b"i")),
        ("group_info", lambda: ReplaceGroupInfo(group_id=b"g", group_info=b"")),
        (
            "group_info_digest",
            lambda: Envelope(
                seq=1, sender=ALICE, payload=b"x", enqueued_at_ms=0, group_info_digest=b"short"
            ),
        ),
        ("payload", lambda: PeerDeliver(payload=b"")),
        ("group_info", lambda: GroupSnapshot(b"g", 1, b"", b"t")),
        (
            "accepted_commit",
            lambda: ErrorResponse(ErrorCode.EPOCH_CONFLICT, "m", accepted_commit=b"short"),
        ),
        ("packages", lambda: UploadKeyPackages(packages=())),
        ("packages", lambda: UploadKeyPackages(packages=[b"kp"])),
        ("packages", lambda: UploadKeyPackages(packages=(b"kp", b""))),
        ("package", lambda: UploadLastResort(package=b"")),
        ("package", lambda: ClaimedKeyPackage(package=b"")),
        ("endpoints", lambda: PublishEndpoints(endpoints=[Endpoint("h", 1)])),
        ("endpoints", lambda: PublishEndpoints(endpoints=(("h", 1),))),
        ("token", lambda: Request(call=CALLS["health"], token=b"tok")),
    ],
)
def test_invalid_values_name_their_field(field: str, build: Callable[[], Any]) -> None:
    _raises_field(field, build)


@pytest.mark.parametrize(
    ("field", "host", "port"),
    [
        ("host", "", 7000),
        ("host", "h" * 254, 7000),
        ("host", "é" * 127, 7000),
        ("host", "a b", 7000),
        ("host", "a\x00b", 7000),
        ("host", "a\nb", 7000),
        ("host", "a\ud800b", 7000),
        ("port", "h", 0),
        ("port", "h", U16_MAX + 1),
        ("port", "h", -1),
    ],
)
def test_bad_endpoints(field: str, host: str, port: int) -> None:
    _raises_field(field, lambda: Endpoint(host=host, port=port))


def test_edge_endpoints_are_accepted() -> None:
    assert Endpoint(host="h" * 253, port=U16_MAX).port == U16_MAX
    assert Endpoint(host="::1", port=1).host == "::1"


# ---- secrets never in repr -------------------------------------------------


def test_request_repr_hides_the_token() -> None:
    request = Request(call=CALLS["fetch"], token=TOKEN)
    assert TOKEN not in repr(request)
    assert TOKEN not in str(request)
    assert "Fetch(limit=100)" in repr(request)


@pytest.mark.parametrize(
    "call",
    [
        Authenticate(identity_key=ALICE, signature=SIGNATURE),
        PeerAuthenticate(identity_key=ALICE, nonce=NONCE, signature=SIGNATURE),
        PeerProof(identity_key=ALICE, signature=SIGNATURE),
    ],
    ids=lambda v: type(v).__name__,
)
def test_identity_proofs_hide_the_signature(call: Any) -> None:
    texts = [repr(call)]
    if not isinstance(call, PeerProof):  # a result travels in no Request
        texts.append(repr(Request(call=call, token=TOKEN)))
    for text in texts:
        assert repr(SIGNATURE) not in text
        assert SIGNATURE.hex() not in text
        assert "signature" not in text
        assert repr(ALICE) in text


@pytest.mark.parametrize(
    "value",
    [
        CALLS["publish"],
        CALLS["upload_key_packages"],
        CALLS["upload_last_resort"],
        CALLS["create_group"],
        CALLS["peer_deliver"],
        RESULTS["key_package"],
        RESULTS["group_snapshot"],
        Envelope(seq=1, sender=ALICE, payload=b"secret-ciphertext", enqueued_at_ms=0),
    ],
    ids=lambda v: type(v).__name__,
)
def test_payloads_are_not_in_repr(value: Any) -> None:
    text = repr(value)
    for name in ("payload", "package", "packages", "welcome", "group_info", "ratchet_tree"):
        assert f"{name}=" not in text


@pytest.mark.parametrize("invite", ["a b", "code\n", "\x00", "\u200b" + "x", "x" * 129, "é" * 65])
def test_bad_invite_codes_are_refused_with_their_field(invite: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        RegisterUser(username="alice", invite=invite)
    assert refused.value.field == "invite"


def test_an_invite_code_stays_out_of_repr() -> None:
    call = RegisterUser(username="alice", invite="qpqi-SECRET-CODE")
    assert "SECRET" not in repr(call)
    assert RegisterUser(username="alice").invite == ""


def test_a_deletion_notice_carries_the_deleted_key_as_its_payload() -> None:
    deleted = bytes([0xC0]) * 32
    notice = Envelope(
        seq=1,
        sender=NO_SENDER,
        payload=deleted,
        enqueued_at_ms=0,
        group_id=b"g",
        account_deleted=deleted,
    )
    assert notice.is_deletion
    assert not notice.is_gap
    for payload in (b"", b"other"):
        with pytest.raises(InvalidArgumentError) as refused:
            Envelope(
                seq=1, sender=NO_SENDER, payload=payload, enqueued_at_ms=0, account_deleted=deleted
            )
        assert refused.value.field in ("account_deleted", "payload")
    with pytest.raises(InvalidArgumentError):
        Envelope(seq=1, sender=NO_SENDER, payload=b"x", enqueued_at_ms=0, account_deleted=b"short")


def test_statuses_come_one_per_username_or_not_at_all() -> None:
    assert Usernames(usernames=("a",), statuses=(AccountStatus.SUSPENDED,)).statuses
    with pytest.raises(InvalidArgumentError) as refused:
        Usernames(usernames=("a", "b"), statuses=(AccountStatus.ACTIVE,))
    assert refused.value.field == "statuses"
