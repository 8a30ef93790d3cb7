"""Encode and decode messages: frozen dataclasses to and from Cap'n Proto bytes.

Decoding untrusted bytes always sets a byte cap, a traversal limit and a
nesting limit, and only ever raises this package's errors:

- :func:`decode_request` (server side) raises :class:`ServiceError`
  subclasses, ready to be answered: ``MalformedRequestError`` for bytes that
  do not decode, ``BadVersionError``, ``UnsupportedCallError``,
  ``InvalidArgumentError`` (with the field) and ``PayloadTooLargeError``.
- :func:`decode_response` and :func:`decode_event` (client side) raise
  :class:`MalformedMessageError` or :class:`MessageTooLargeError`: a server
  that sends those is broken, not the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import capnp

from qpq_proto import _messages as m
from qpq_proto._limits import DEFAULT_LIMITS, PROTOCOL_VERSION, Limits
from qpq_proto._schema import schema
from qpq_proto.errors import (
    BadVersionError,
    ErrorCode,
    InvalidArgumentError,
    MalformedMessageError,
    MalformedRequestError,
    MessageTooLargeError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedCallError,
)

__all__ = [
    "check_call_limits",
    "decode_event",
    "decode_request",
    "decode_response",
    "encode_event",
    "encode_request",
    "encode_response",
]

# Anything pycapnp or our own field conversion can raise on hostile bytes.
_DECODE_FAILURES = (
    capnp.KjException,
    UnicodeDecodeError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
)


# ---- per-call wire mapping --------------------------------------------------
# Each entry: schema union name, writer(builder union, call), reader(reader union) -> call.

_Writer = Callable[[Any, Any], None]
_Reader = Callable[[Any], Any]


def _void(name: str) -> _Writer:
    def write(union: Any, _call: Any) -> None:
        setattr(union, name, None)

    return write


def _write_list(builder: Any, name: str, items: tuple[bytes, ...]) -> None:
    target = builder.init(name, len(items))
    for index, item in enumerate(items):
        target[index] = item


def _write_endpoint(builder: Any, endpoint: m.Endpoint) -> None:
    builder.host = endpoint.host
    builder.port = endpoint.port


def _read_endpoint(reader: Any) -> m.Endpoint:
    return m.Endpoint(host=str(reader.host), port=int(reader.port))


def _write_envelope(builder: Any, envelope: m.Envelope) -> None:
    builder.seq = envelope.seq
    builder.sender = envelope.sender
    builder.payload = envelope.payload
    builder.enqueuedAtMs = envelope.enqueued_at_ms
    if envelope.gap_group_id:
        builder.gapGroupId = envelope.gap_group_id
    if envelope.group_id:
        builder.groupId = envelope.group_id
    if envelope.group_info_digest:
        builder.groupInfoDigest = envelope.group_info_digest
    if envelope.account_deleted:
        builder.accountDeleted = envelope.account_deleted


def _read_envelope(reader: Any) -> m.Envelope:
    return m.Envelope(
        seq=int(reader.seq),
        sender=bytes(reader.sender),
        payload=bytes(reader.payload),
        enqueued_at_ms=int(reader.enqueuedAtMs),
        gap_group_id=bytes(reader.gapGroupId),
        group_id=bytes(reader.groupId),
        group_info_digest=bytes(reader.groupInfoDigest),
        account_deleted=bytes(reader.accountDeleted),
    )


def _w_authenticate(union: Any, call: m.Authenticate) -> None:
    params = union.init("authenticate")
    params.identityKey = call.identity_key
    params.signature = call.signature


def _w_username(name: str) -> _Writer:
    def write(union: Any, call: Any) -> None:
        union.init(name).username = call.username

    return write


def _w_register_user(union: Any, call: m.RegisterUser) -> None:
    params = union.init("registerUser")
    params.username = call.username
    if call.invite:
        params.invite = call.invite


def _w_identity(name: str) -> _Writer:
    def write(union: Any, call: Any) -> None:
        union.init(name).identityKey = call.identity_key

    return write


def _w_fetch_key_package(union: Any, call: m.FetchKeyPackage) -> None:
    builder = union.init("fetchKeyPackage")
    builder.identityKey = call.identity_key
    builder.ciphersuite = int(call.ciphersuite)  # an IntEnum (qpq_core.Suite) too


def _w_resolve_identities(union: Any, call: m.ResolveIdentities) -> None:
    _write_list(union.init("resolveIdentities"), "identityKeys", call.identity_keys)


def _w_register_device(union: Any, call: m.RegisterDevice) -> None:
    union.init("registerDevice").certificate = call.certificate


def _w_list_devices(union: Any, call: m.ListDevices) -> None:
    union.init("listDevices").accountKey = call.account_key


def _w_revoke_device(union: Any, call: m.RevokeDevice) -> None:
    union.init("revokeDevice").deviceKey = call.device_key


def _w_post_link(union: Any, call: m.PostLink) -> None:
    params = union.init("postLink")
    params.mailbox = call.mailbox
    params.username = call.username
    params.payload = call.payload


def _w_fetch_link(union: Any, call: m.FetchLink) -> None:
    union.init("fetchLink").mailbox = call.mailbox


def _w_upload(union: Any, call: m.UploadKeyPackages) -> None:
    _write_list(union.init("uploadKeyPackages"), "packages", call.packages)


def _w_last_resort(union: Any, call: m.UploadLastResort) -> None:
    union.init("uploadLastResort").package = call.package


def _w_publish(union: Any, call: m.Publish) -> None:
    params = union.init("publish")
    params.groupId = call.group_id
    params.epoch = call.epoch
    params.kind = int(call.kind)
    params.payload = call.payload
    params.welcome = call.welcome
    params.groupInfo = call.group_info


def _w_create_group(union: Any, call: m.CreateGroup) -> None:
    union.init("createGroup").groupInfo = call.group_info


def _w_fetch_group_info(union: Any, call: m.FetchGroupInfo) -> None:
    union.init("fetchGroupInfo").groupId = call.group_id


def _w_replace_group_info(union: Any, call: m.ReplaceGroupInfo) -> None:
    params = union.init("replaceGroupInfo")
    params.groupId = call.group_id
    params.groupInfo = call.group_info


def _w_fetch(union: Any, call: m.Fetch) -> None:
    union.init("fetch").limit = call.limit


def _w_fetch_wait(union: Any, call: m.FetchWait) -> None:
    params = union.init("fetchWait")
    params.limit = call.limit
    params.timeoutMs = call.timeout_ms


def _w_ack(union: Any, call: m.Ack) -> None:
    union.init("ack").upToSeq = call.up_to_seq


def _w_endpoints(union: Any, call: m.PublishEndpoints) -> None:
    target = union.init("publishEndpoints").init("endpoints", len(call.endpoints))
    for index, endpoint in enumerate(call.endpoints):
        _write_endpoint(target[index], endpoint)


def _w_peer_authenticate(union: Any, call: m.PeerAuthenticate) -> None:
    params = union.init("peerAuthenticate")
    params.identityKey = call.identity_key
    params.nonce = call.nonce
    params.signature = call.signature


def _w_peer_deliver(union: Any, call: m.PeerDeliver) -> None:
    union.init("peerDeliver").payload = call.payload


def _r_publish(params: Any) -> m.Publish:
    raw_kind = int(params.kind.raw)
    try:
        kind = m.MessageKind(raw_kind)
    except ValueError:
        # An enumerant this version does not know (ordinals are append-only).
        raise InvalidArgumentError(f"unknown message kind {raw_kind}", field="kind") from None
    # recipients (ordinal 4) is not read: the server derives them from the roster.
    return m.Publish(
        group_id=bytes(params.groupId),
        epoch=int(params.epoch),
        kind=kind,
        payload=bytes(params.payload),
        welcome=bytes(params.welcome),
        group_info=bytes(params.groupInfo),
    )


_CALLS: dict[type[Any], tuple[str, _Writer, _Reader]] = {
    m.Health: ("health", _void("health"), lambda _p: m.Health()),
    m.Challenge: ("challenge", _void("challenge"), lambda _p: m.Challenge()),
    m.Authenticate: (
        "authenticate",
        _w_authenticate,
        lambda p: m.Authenticate(identity_key=bytes(p.identityKey), signature=bytes(p.signature)),
    ),
    m.RegisterUser: (
        "registerUser",
        _w_register_user,
        lambda p: m.RegisterUser(username=str(p.username), invite=str(p.invite)),
    ),
    m.ResolveUser: (
        "resolveUser",
        _w_username("resolveUser"),
        lambda p: m.ResolveUser(username=str(p.username)),
    ),
    m.ResolveIdentity: (
        "resolveIdentity",
        _w_identity("resolveIdentity"),
        lambda p: m.ResolveIdentity(identity_key=bytes(p.identityKey)),
    ),
    m.UploadKeyPackages: (
        "uploadKeyPackages",
        _w_upload,
        lambda p: m.UploadKeyPackages(packages=tuple(bytes(k) for k in p.packages)),
    ),
    m.UploadLastResort: (
        "uploadLastResort",
        _w_last_resort,
        lambda p: m.UploadLastResort(package=bytes(p.package)),
    ),
    m.FetchKeyPackage: (
        "fetchKeyPackage",
        _w_fetch_key_package,
        lambda p: m.FetchKeyPackage(
            identity_key=bytes(p.identityKey), ciphersuite=int(p.ciphersuite)
        ),
    ),
    m.CountKeyPackages: (
        "countKeyPackages",
        _void("countKeyPackages"),
        lambda _p: m.CountKeyPackages(),
    ),
    m.Publish: ("publish", _w_publish, _r_publish),
    m.Fetch: ("fetch", _w_fetch, lambda p: m.Fetch(limit=int(p.limit))),
    m.FetchWait: (
        "fetchWait",
        _w_fetch_wait,
        lambda p: m.FetchWait(limit=int(p.limit), timeout_ms=int(p.timeoutMs)),
    ),
    m.Ack: ("ack", _w_ack, lambda p: m.Ack(up_to_seq=int(p.upToSeq))),
    m.Subscribe: ("subscribe", _void("subscribe"), lambda _p: m.Subscribe()),
    m.SubscribeWithAcks: (
        "subscribeWithAcks",
        _void("subscribeWithAcks"),
        lambda _p: m.SubscribeWithAcks(),
    ),
    m.PublishEndpoints: (
        "publishEndpoints",
        _w_endpoints,
        lambda p: m.PublishEndpoints(endpoints=tuple(_read_endpoint(e) for e in p.endpoints)),
    ),
    m.ResolveEndpoints: (
        "resolveEndpoints",
        _w_identity("resolveEndpoints"),
        lambda p: m.ResolveEndpoints(identity_key=bytes(p.identityKey)),
    ),
    m.DeleteAccount: ("deleteAccount", _void("deleteAccount"), lambda _p: m.DeleteAccount()),
    m.CreateGroup: (
        "createGroup",
        _w_create_group,
        lambda p: m.CreateGroup(group_info=bytes(p.groupInfo)),
    ),
    m.FetchGroupInfo: (
        "fetchGroupInfo",
        _w_fetch_group_info,
        lambda p: m.FetchGroupInfo(group_id=bytes(p.groupId)),
    ),
    m.ReplaceGroupInfo: (
        "replaceGroupInfo",
        _w_replace_group_info,
        lambda p: m.ReplaceGroupInfo(group_id=bytes(p.groupId), group_info=bytes(p.groupInfo)),
    ),
    m.PeerChallenge: ("peerChallenge", _void("peerChallenge"), lambda _p: m.PeerChallenge()),
    m.PeerAuthenticate: (
        "peerAuthenticate",
        _w_peer_authenticate,
        lambda p: m.PeerAuthenticate(
            identity_key=bytes(p.identityKey), nonce=bytes(p.nonce), signature=bytes(p.signature)
        ),
    ),
    m.PeerDeliver: (
        "peerDeliver",
        _w_peer_deliver,
        lambda p: m.PeerDeliver(payload=bytes(p.payload)),
    ),
    m.ResolveIdentities: (
        "resolveIdentities",
        _w_resolve_identities,
        lambda p: m.ResolveIdentities(identity_keys=tuple(bytes(k) for k in p.identityKeys)),
    ),
    m.RegisterDevice: (
        "registerDevice",
        _w_register_device,
        lambda p: m.RegisterDevice(certificate=bytes(p.certificate)),
    ),
    m.ListDevices: (
        "listDevices",
        _w_list_devices,
        lambda p: m.ListDevices(account_key=bytes(p.accountKey)),
    ),
    m.RevokeDevice: (
        "revokeDevice",
        _w_revoke_device,
        lambda p: m.RevokeDevice(device_key=bytes(p.deviceKey)),
    ),
    m.PostLink: (
        "postLink",
        _w_post_link,
        lambda p: m.PostLink(
            mailbox=bytes(p.mailbox), username=str(p.username), payload=bytes(p.payload)
        ),
    ),
    m.FetchLink: ("fetchLink", _w_fetch_link, lambda p: m.FetchLink(mailbox=bytes(p.mailbox))),
}
_CALL_BY_NAME = {name: reader for _cls, (name, _w, reader) in _CALLS.items()}
#: Calls the schema still names (ordinals are never reused) that this version refuses.
_RETIRED_CALLS = frozenset({"enqueue"})


def _w_result(name: str, fill: Callable[[Any, Any], None]) -> _Writer:
    def write(response: Any, result: Any) -> None:
        fill(response.init(name), result)

    return write


def _fill_messages(builder: Any, result: m.Messages) -> None:
    target = builder.init("messages", len(result.messages))
    for index, envelope in enumerate(result.messages):
        _write_envelope(target[index], envelope)


def _fill_peer_endpoints(builder: Any, result: m.PeerEndpoints) -> None:
    target = builder.init("endpoints", len(result.endpoints))
    for index, endpoint in enumerate(result.endpoints):
        _write_endpoint(target[index], endpoint)
    if result.observed is not None:
        _write_endpoint(builder.init("observed"), result.observed)


def _fill_health(builder: Any, r: m.HealthStatus) -> None:
    builder.status = r.status
    builder.version = r.version
    builder.uptimeSeconds = r.uptime_seconds
    builder.storage = r.storage


def _fill_count(builder: Any, r: m.KeyPackageCount) -> None:
    builder.count = r.count
    builder.hasLastResort = r.has_last_resort
    builder.lastResortServed = r.last_resort_served
    if r.suites:
        suites = builder.init("suites", len(r.suites))
        for i, entry in enumerate(r.suites):
            suites[i].ciphersuite = entry.ciphersuite
            suites[i].count = entry.count
            suites[i].hasLastResort = entry.has_last_resort
            suites[i].lastResortServed = entry.last_resort_served


def _read_count(p: Any) -> m.KeyPackageCount:
    return m.KeyPackageCount(
        count=int(p.count),
        has_last_resort=bool(p.hasLastResort),
        last_resort_served=int(p.lastResortServed),
        suites=tuple(
            m.SuiteKeyPackageCount(
                ciphersuite=int(s.ciphersuite),
                count=int(s.count),
                has_last_resort=bool(s.hasLastResort),
                last_resort_served=int(s.lastResortServed),
            )
            for s in p.suites
        ),
    )


def _fill_challenge(builder: Any, r: m.ChallengeNonce) -> None:
    builder.nonce = r.nonce
    builder.maxPayloadBytes = r.max_payload_bytes
    builder.maxMessageBytes = r.max_message_bytes
    builder.messageTtlSeconds = r.message_ttl_seconds
    builder.streamAcks = r.stream_acks


def _read_challenge(p: Any) -> m.ChallengeNonce:
    return m.ChallengeNonce(
        nonce=bytes(p.nonce),
        max_payload_bytes=int(p.maxPayloadBytes),
        max_message_bytes=int(p.maxMessageBytes),
        message_ttl_seconds=int(p.messageTtlSeconds),
        stream_acks=bool(p.streamAcks),
    )


def _fill_acked(builder: Any, r: m.Acked) -> None:
    builder.removed = r.removed
    builder.upToSeq = r.up_to_seq


def _read_acked(p: Any) -> m.Acked:
    return m.Acked(removed=int(p.removed), up_to_seq=int(p.upToSeq))


def _fill_published(builder: Any, r: m.Published) -> None:
    builder.recipients = r.recipients
    builder.epoch = r.epoch


def _fill_group_snapshot(builder: Any, r: m.GroupSnapshot) -> None:
    builder.groupId = r.group_id
    builder.epoch = r.epoch
    builder.groupInfo = r.group_info
    builder.ratchetTree = r.ratchet_tree


def _fill_peer_proof(builder: Any, r: m.PeerProof) -> None:
    builder.identityKey = r.identity_key
    builder.signature = r.signature


def _fill_devices(builder: Any, r: m.Devices) -> None:
    _write_list(builder, "deviceKeys", r.device_keys)
    _write_list(builder, "certificates", r.certificates)


def _fill_link_payload(builder: Any, r: m.LinkPayload) -> None:
    builder.payload = r.payload
    builder.deviceKey = r.device_key


def _fill_usernames(builder: Any, r: m.Usernames) -> None:
    target = builder.init("usernames", len(r.usernames))
    for index, username in enumerate(r.usernames):
        target[index] = username
    if r.statuses:
        statuses = builder.init("statuses", len(r.statuses))
        for index, status in enumerate(r.statuses):
            statuses[index] = _ACCOUNT_STATUS_NAMES[status]


#: AccountStatus values as the schema names them, and back; a status a newer
#: server sends that this reader does not know is read as unknown.
_ACCOUNT_STATUS_NAMES = {
    m.AccountStatus.UNKNOWN: "unknown",
    m.AccountStatus.ACTIVE: "active",
    m.AccountStatus.SUSPENDED: "suspended",
    m.AccountStatus.DELETED: "deleted",
}
_ACCOUNT_STATUS_OF = {name: status for status, name in _ACCOUNT_STATUS_NAMES.items()}


def _enum_name(value: Any) -> str:
    # pycapnp names an enumerant this schema does not have by raising
    # RuntimeError ("Member was null."): a newer peer's value, read as unknown.
    try:
        return str(value)
    except RuntimeError:
        return ""


def _read_usernames(p: Any) -> m.Usernames:
    return m.Usernames(
        usernames=tuple(str(u) for u in p.usernames),
        statuses=tuple(
            _ACCOUNT_STATUS_OF.get(_enum_name(s), m.AccountStatus.UNKNOWN) for s in p.statuses
        ),
    )


def _read_peer_endpoints(p: Any) -> m.PeerEndpoints:
    observed = _read_endpoint(p.observed) if p._has("observed") else None
    return m.PeerEndpoints(
        endpoints=tuple(_read_endpoint(e) for e in p.endpoints), observed=observed
    )


def _read_health(p: Any) -> m.HealthStatus:
    return m.HealthStatus(
        status=str(p.status),
        version=str(p.version),
        uptime_seconds=int(p.uptimeSeconds),
        storage=str(p.storage),
    )


def _set_attr(attr: str, field_name: str) -> Callable[[Any, Any], None]:
    def fill(builder: Any, result: Any) -> None:
        setattr(builder, attr, getattr(result, field_name))

    return fill


_RESULTS: dict[type[Any], tuple[str, _Writer, _Reader]] = {
    m.Done: ("done", _void("done"), lambda _p: m.Done()),
    m.Subscribed: ("subscribed", _void("subscribed"), lambda _p: m.Subscribed()),
    m.HealthStatus: ("health", _w_result("health", _fill_health), _read_health),
    m.ChallengeNonce: ("challenge", _w_result("challenge", _fill_challenge), _read_challenge),
    m.UserKey: (
        "userKey",
        _w_result("userKey", _set_attr("identityKey", "identity_key")),
        lambda p: m.UserKey(identity_key=bytes(p.identityKey)),
    ),
    m.Username: (
        "username",
        _w_result("username", _set_attr("username", "username")),
        lambda p: m.Username(username=str(p.username)),
    ),
    m.Fingerprints: (
        "fingerprints",
        _w_result("fingerprints", lambda b, r: _write_list(b, "fingerprints", r.fingerprints)),
        lambda p: m.Fingerprints(fingerprints=tuple(bytes(f) for f in p.fingerprints)),
    ),
    m.Fingerprint: (
        "fingerprint",
        _w_result("fingerprint", _set_attr("fingerprint", "fingerprint")),
        lambda p: m.Fingerprint(fingerprint=bytes(p.fingerprint)),
    ),
    m.ClaimedKeyPackage: (
        "keyPackage",
        _w_result("keyPackage", _set_attr("package", "package")),
        lambda p: m.ClaimedKeyPackage(package=bytes(p.package)),
    ),
    m.KeyPackageCount: (
        "keyPackageCount",
        _w_result("keyPackageCount", _fill_count),
        _read_count,
    ),
    m.Published: (
        "published",
        _w_result("published", _fill_published),
        lambda p: m.Published(recipients=int(p.recipients), epoch=int(p.epoch)),
    ),
    m.GroupSnapshot: (
        "groupSnapshot",
        _w_result("groupSnapshot", _fill_group_snapshot),
        lambda p: m.GroupSnapshot(
            group_id=bytes(p.groupId),
            epoch=int(p.epoch),
            group_info=bytes(p.groupInfo),
            ratchet_tree=bytes(p.ratchetTree),
        ),
    ),
    m.Messages: (
        "messages",
        _w_result("messages", _fill_messages),
        lambda p: m.Messages(messages=tuple(_read_envelope(e) for e in p.messages)),
    ),
    m.Acked: (
        "acked",
        _w_result("acked", _fill_acked),
        _read_acked,
    ),
    m.PeerEndpoints: (
        "peerEndpoints",
        _w_result("peerEndpoints", _fill_peer_endpoints),
        _read_peer_endpoints,
    ),
    m.PeerProof: (
        "peerProof",
        _w_result("peerProof", _fill_peer_proof),
        lambda p: m.PeerProof(identity_key=bytes(p.identityKey), signature=bytes(p.signature)),
    ),
    m.Usernames: (
        "usernames",
        _w_result("usernames", _fill_usernames),
        _read_usernames,
    ),
    m.Devices: (
        "devices",
        _w_result("devices", _fill_devices),
        lambda p: m.Devices(
            device_keys=tuple(bytes(k) for k in p.deviceKeys),
            certificates=tuple(bytes(c) for c in p.certificates),
        ),
    ),
    m.LinkPayload: (
        "linkPayload",
        _w_result("linkPayload", _fill_link_payload),
        lambda p: m.LinkPayload(payload=bytes(p.payload), device_key=bytes(p.deviceKey)),
    ),
}
_RESULT_BY_NAME = {name: reader for _cls, (name, _w, reader) in _RESULTS.items()}


def _write_error(builder: Any, error: m.ErrorResponse) -> None:
    builder.code = int(error.code)
    builder.message = error.message
    builder.field = error.field
    if error.accepted_commit:
        builder.acceptedCommit = error.accepted_commit
    builder.epoch = error.epoch


def _read_error(reader: Any) -> m.ErrorResponse:
    raw = int(reader.code.raw)
    try:
        code = ErrorCode(raw)
    except ValueError:
        # A newer peer's code: keep the meaning "failed" without guessing more.
        return m.ErrorResponse(
            ErrorCode.INTERNAL, f"unknown error code {raw}: {reader.message}", str(reader.field)
        )
    return m.ErrorResponse(
        code=code,
        message=str(reader.message),
        field=str(reader.field),
        accepted_commit=bytes(reader.acceptedCommit),
        epoch=int(reader.epoch),
    )


# ---- limits ---------------------------------------------------------------


def check_call_limits(call: m.Call, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise PayloadTooLargeError or InvalidArgumentError if ``call`` is over a limit."""
    if isinstance(call, m.Publish):
        for name in ("payload", "welcome", "group_info"):
            if len(getattr(call, name)) > limits.max_payload_bytes:
                raise PayloadTooLargeError(
                    f"{name} exceeds {limits.max_payload_bytes} bytes", field=name
                )
    if isinstance(call, m.PeerDeliver) and len(call.payload) > limits.max_payload_bytes:
        raise PayloadTooLargeError(
            f"payload exceeds {limits.max_payload_bytes} bytes", field="payload"
        )
    if (
        isinstance(call, m.CreateGroup | m.ReplaceGroupInfo)
        and len(call.group_info) > limits.max_payload_bytes
    ):
        raise PayloadTooLargeError(
            f"group_info exceeds {limits.max_payload_bytes} bytes", field="group_info"
        )
    packages_field = "packages"
    if isinstance(call, m.UploadKeyPackages):
        if len(call.packages) > limits.max_key_packages_per_upload:
            raise InvalidArgumentError(
                f"at most {limits.max_key_packages_per_upload} packages per upload",
                field="packages",
            )
        packages: tuple[bytes, ...] = call.packages
    elif isinstance(call, m.UploadLastResort):
        packages = (call.package,)
        packages_field = "package"
    else:
        packages = ()
    if any(len(p) > limits.max_key_package_bytes for p in packages):
        raise PayloadTooLargeError(
            f"a KeyPackage exceeds {limits.max_key_package_bytes} bytes", field=packages_field
        )
    if (
        isinstance(call, m.Publish | m.FetchGroupInfo | m.ReplaceGroupInfo)
        and len(call.group_id) > limits.max_group_id_bytes
    ):
        raise InvalidArgumentError(
            f"group_id exceeds {limits.max_group_id_bytes} bytes", field="group_id"
        )
    if isinstance(call, m.RegisterUser | m.ResolveUser):
        m.check_username(call.username, limits.max_username_bytes)
    if isinstance(call, m.Fetch | m.FetchWait) and call.limit > limits.max_fetch_limit:
        raise InvalidArgumentError(f"limit exceeds {limits.max_fetch_limit}", field="limit")
    if isinstance(call, m.FetchWait) and call.timeout_ms > limits.max_fetch_wait_ms:
        raise InvalidArgumentError(
            f"timeout_ms exceeds {limits.max_fetch_wait_ms}", field="timeout_ms"
        )
    if isinstance(call, m.PublishEndpoints) and len(call.endpoints) > limits.max_endpoints:
        raise InvalidArgumentError(f"at most {limits.max_endpoints} endpoints", field="endpoints")
    if (
        isinstance(call, m.ResolveIdentities)
        and len(call.identity_keys) > limits.max_resolve_identities
    ):
        raise InvalidArgumentError(
            f"at most {limits.max_resolve_identities} identity keys per call",
            field="identity_keys",
        )


# ---- entry points ---------------------------------------------------------


@contextmanager
def _read(struct: Any, data: bytes, limits: Limits) -> Iterator[Any]:
    if len(data) > limits.max_message_bytes:
        raise MessageTooLargeError(f"message exceeds {limits.max_message_bytes} bytes")
    with struct.from_bytes(
        data,
        traversal_limit_in_words=limits.traversal_limit_words,
        nesting_limit=limits.nesting_limit,
    ) as reader:
        yield reader


def encode_request(request: m.Request) -> bytes:
    """Serialize a request (Cap'n Proto standard framing, unpacked)."""
    builder = schema().Request.new_message()
    builder.version = request.version
    builder.auth.token = request.token
    try:
        _name, write, _read_call = _CALLS[type(request.call)]
    except KeyError:
        raise TypeError(f"not a call: {type(request.call).__name__}") from None
    write(builder.call, request.call)
    return bytes(builder.to_bytes())


def decode_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> m.Request:
    """Decode and validate a request from untrusted bytes.

    Raises:
        ServiceError: a subclass whose code is the answer to send back.
    """
    if len(data) > limits.max_message_bytes:
        raise PayloadTooLargeError(f"request exceeds {limits.max_message_bytes} bytes")
    try:
        with _read(schema().Request, data, limits) as reader:
            version = int(reader.version)
            if version != PROTOCOL_VERSION:
                raise BadVersionError(
                    f"protocol version {version} is not supported; this server speaks "
                    f"{PROTOCOL_VERSION}"
                )
            token = str(reader.auth.token)
            try:
                name = str(reader.call.which())
            except capnp.KjException:
                raise UnsupportedCallError("unknown call") from None
            if name in _RETIRED_CALLS:
                raise UnsupportedCallError(f"{name} was retired; use publish")
            read_call = _CALL_BY_NAME[name]
            call = read_call(getattr(reader.call, name))
    except ServiceError:
        raise
    except _DECODE_FAILURES:
        raise MalformedRequestError("request could not be decoded") from None
    check_call_limits(call, limits)
    return m.Request(call=call, token=token, version=version)


def encode_response(response: m.Response) -> bytes:
    """Serialize a result or an ErrorResponse."""
    builder = schema().Response.new_message()
    if isinstance(response, m.ErrorResponse):
        _write_error(builder.init("error"), response)
    else:
        try:
            _name, write, _reader = _RESULTS[type(response)]
        except KeyError:
            raise TypeError(f"not a result: {type(response).__name__}") from None
        write(builder, response)
    return bytes(builder.to_bytes())


def decode_response(data: bytes, limits: Limits = DEFAULT_LIMITS) -> m.Response:
    """Decode a response from untrusted bytes.

    Raises:
        MalformedMessageError: the bytes are not a valid response.
        MessageTooLargeError: over ``limits.max_message_bytes``.
    """
    try:
        with _read(schema().Response, data, limits) as reader:
            try:
                name = str(reader.which())
            except capnp.KjException:
                raise MalformedMessageError("response of an unknown kind") from None
            if name == "error":
                return _read_error(reader.error)
            return _RESULT_BY_NAME[name](getattr(reader, name))  # type: ignore[no-any-return]
    except (MalformedMessageError, MessageTooLargeError):
        raise
    except (*_DECODE_FAILURES, ServiceError) as error:
        raise MalformedMessageError(f"response could not be decoded: {_kind(error)}") from None


def encode_event(event: m.Event) -> bytes:
    """Serialize one subscribe-stream event."""
    builder = schema().Event.new_message()
    if isinstance(event, m.ErrorResponse):
        _write_error(builder.init("error"), event)
    elif isinstance(event, m.Acked):
        _fill_acked(builder.init("acked"), event)
    else:
        _write_envelope(builder.init("message"), event)
    return bytes(builder.to_bytes())


def decode_event(data: bytes, limits: Limits = DEFAULT_LIMITS) -> m.Event:
    """Decode one subscribe-stream event from untrusted bytes."""
    try:
        with _read(schema().Event, data, limits) as reader:
            try:
                name = str(reader.which())
            except capnp.KjException:
                raise MalformedMessageError("event of an unknown kind") from None
            if name == "error":
                return _read_error(reader.error)
            if name == "acked":
                return _read_acked(reader.acked)
            return _read_envelope(reader.message)
    except (MalformedMessageError, MessageTooLargeError):
        raise
    except (*_DECODE_FAILURES, ServiceError) as error:
        raise MalformedMessageError(f"event could not be decoded: {_kind(error)}") from None


def _kind(error: BaseException) -> str:
    # Name the failure without echoing peer-controlled text at length.
    if isinstance(error, ServiceError):
        return f"invalid {error.field or 'field'}"
    return type(error).__name__
