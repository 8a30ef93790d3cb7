"""The MLS checks the server makes, through qpq-core, with its refusals mapped once.

What the server adds to qpq-core is the answer a peer gets: each function
here calls qpq-core and turns what it refuses into the coded
:class:`~qpq_proto.errors.ServiceError` that goes on the wire (no OpenMLS
text that could echo peer bytes, the field named). Results are qpq-core's
own types (``KeyPackageInfo``, ``MessageInfo``, ``DeliveryGroup``,
``GroupRegistered``, ``ProposalVerified``, ``CommitVerified``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import qpq_core
from qpq_core import (
    CommitVerified,
    DeliveryGroup,
    DeviceCertificate,
    GroupInfoFacts,
    GroupRegistered,
    KeyPackageInfo,
    MessageInfo,
    ProposalVerified,
)
from qpq_proto.errors import (
    EpochConflictError,
    ForbiddenError,
    InternalError,
    InvalidArgumentError,
    InvalidKeyPackageError,
    UnauthenticatedError,
    UnsupportedCiphersuiteError,
)

__all__ = [
    "MAX_PAST_EPOCHS",
    "check_group_info",
    "group_info_digest",
    "load_group",
    "peek_message",
    "register_group",
    "validate_key_package",
    "verify",
    "verify_device_certificate",
    "verify_signature",
]

#: Past epochs whose application messages members still decrypt (qpq-core's setting).
MAX_PAST_EPOCHS: int = qpq_core.MAX_PAST_EPOCHS

_CIPHERSUITE_ONLY = (
    "only MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (0x0001) and "
    "MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519 (0x004D) are accepted"
)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise UnauthenticatedError unless ``signature`` is ``public_key``'s over ``message``."""
    try:
        qpq_core.verify_signature(public_key, message, signature)
    except qpq_core.MlsError:
        raise UnauthenticatedError("the challenge signature does not verify") from None


def verify_device_certificate(data: bytes) -> DeviceCertificate:
    """Decode and verify a device certificate (InvalidArgumentError if it does not)."""
    try:
        return DeviceCertificate.verify(data)
    except qpq_core.MlsError:
        raise InvalidArgumentError(
            "the certificate does not verify under the account key it names", field="certificate"
        ) from None


def validate_key_package(data: bytes, *, now: int, max_lifetime_seconds: int) -> KeyPackageInfo:
    """Validate an uploaded KeyPackage.

    Raises:
        InvalidKeyPackageError: a check failed (field ``packages``).
        UnsupportedCiphersuiteError: another ciphersuite (field ``packages``).
    """
    # qpq-core raises qpq_proto's InvalidKeyPackageError and
    # UnsupportedCiphersuiteError itself; the answer replaces the message
    # (no OpenMLS text reaches the peer) and names the field.
    try:
        return qpq_core.validate_key_package(
            data, now=now, max_lifetime_seconds=max_lifetime_seconds
        )
    except UnsupportedCiphersuiteError:
        raise UnsupportedCiphersuiteError(_CIPHERSUITE_ONLY, field="packages") from None
    except (InvalidKeyPackageError, qpq_core.MlsError) as error:
        raise InvalidKeyPackageError(
            f"KeyPackage rejected: {_reason(error)}", field="packages"
        ) from None


def peek_message(data: bytes) -> MessageInfo:
    """The cleartext framing of a published payload.

    Raises:
        InvalidArgumentError: it is no MLS message (field ``payload``).
    """
    try:
        return qpq_core.peek_message(data)
    except qpq_core.MlsError:
        raise InvalidArgumentError("payload is not an MLS message", field="payload") from None


def register_group(group_info: bytes) -> tuple[DeliveryGroup, GroupRegistered]:
    """Verify a new group's GroupInfo (with its ratchet tree) and build its state.

    Raises:
        ServiceError: refused (field ``group_info``).
    """
    with _refusals("group_info"):
        return DeliveryGroup.create(group_info)


def load_group(group_id: bytes, rows: list[tuple[bytes, bytes]]) -> DeliveryGroup:
    """Restore a group's verified state from its stored rows.

    Raises:
        InternalError: the stored state cannot be read.
    """
    with _refusals("group_id"):
        return DeliveryGroup.load(group_id, rows)


def verify(
    group: DeliveryGroup, message: bytes, group_info: bytes | None
) -> ProposalVerified | CommitVerified:
    """Verify a handshake message against the group's state and apply it.

    On a refusal the state is as before.

    Raises:
        ServiceError: refused (field ``payload``, or the one the refusal names).
    """
    with _refusals("payload"):
        return group.verify(message, group_info)


def check_group_info(group: DeliveryGroup, group_info: bytes, uploader: bytes) -> GroupInfoFacts:
    """Check a GroupInfo a member offers in place of the served one (state unchanged).

    It must be for the group's current epoch, signed by ``uploader``'s own
    leaf, with exactly the epoch's group context and confirmation tag: all a
    server can check. Its ``external_pub`` only members can check.

    Raises:
        EpochConflictError: not the group's current epoch (``epoch`` names it).
        ServiceError: anything else refused (field ``group_info``).
    """
    with _refusals("group_info"):
        try:
            return group.check_group_info(group_info, uploader)
        except qpq_core.WrongEpochError:
            epoch = group.epoch()
            raise EpochConflictError(
                f"the group is at epoch {epoch}", field="epoch", epoch=epoch
            ) from None


def group_info_digest(group_info: bytes) -> bytes | None:
    """The facts digest of a GroupInfo the server stored; None if it has none."""
    try:
        return qpq_core.group_info_facts(group_info).digest
    except (qpq_core.MlsError, UnsupportedCiphersuiteError):
        return None


#: qpq-core's refusals of a group message, as the coded answers a peer gets.
_GROUP_REFUSALS: tuple[tuple[type[qpq_core.MlsError], Callable[[], Exception]], ...] = (
    (
        qpq_core.NotAMemberError,
        lambda: ForbiddenError("the sender is not a member of this group"),
    ),
    (
        qpq_core.InvalidSignatureError,
        lambda: ForbiddenError("the signature is not a current member's"),
    ),
    (
        qpq_core.WrongEpochError,
        lambda: InvalidArgumentError(
            "the message is not for the group's current epoch", field="epoch"
        ),
    ),
    (
        qpq_core.WrongGroupError,
        lambda: InvalidArgumentError("the message is for another group", field="group_id"),
    ),
    (
        qpq_core.StateCorruptError,
        lambda: InternalError("the group's stored state cannot be read"),
    ),
    (qpq_core.InternalMlsError, lambda: InternalError("the server failed internally")),
)


@contextmanager
def _refusals(field: str) -> Iterator[None]:
    try:
        yield
    except UnsupportedCiphersuiteError:
        raise UnsupportedCiphersuiteError(_CIPHERSUITE_ONLY, field=field) from None
    except qpq_core.MlsError as error:
        for cls, answer in _GROUP_REFUSALS:
            if isinstance(error, cls):
                raise answer() from None
        # Malformed, invalid or against the commit policy: the engine's message
        # names the rule (fixed texts and OpenMLS's Display, never peer bytes).
        raise InvalidArgumentError(f"{field} refused: {error}", field=field) from None


def _reason(error: Exception) -> str:
    # The class name says which check failed without echoing peer bytes.
    return {
        "MalformedMlsMessageError": "not a KeyPackage message",
        "InvalidMlsMessageError": "not a KeyPackage message",
        "InvalidIdentityError": "credential does not match the signature key",
        "InvalidMlsArgumentError": "too large",
    }.get(type(error).__name__, "signature, lifetime or extension check failed")
