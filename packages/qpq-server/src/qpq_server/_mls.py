"""The MLS checks the server needs, from qpq-core, with errors mapped once.

This is the only module that imports ``qpq_core``; handlers get an
:class:`MlsChecks` and see only ``ServiceError`` subclasses. Tests may pass
another implementation of the protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import qpq_core
from qpq_proto import MessageKind
from qpq_proto.errors import (
    ForbiddenError,
    InternalError,
    InvalidArgumentError,
    InvalidKeyPackageError,
    UnauthenticatedError,
    UnsupportedCiphersuiteError,
)

__all__ = [
    "MAX_PAST_EPOCHS",
    "CoreMlsChecks",
    "GroupRegistration",
    "GroupState",
    "KeyPackageFacts",
    "MessageFacts",
    "MlsChecks",
    "VerifiedChange",
]

#: Past epochs whose application messages members still decrypt (qpq-core's setting).
MAX_PAST_EPOCHS: int = qpq_core.MAX_PAST_EPOCHS

#: A change set of a group's stored state: key, new value or None to delete.
ChangeSet = tuple[tuple[bytes, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class KeyPackageFacts:
    """What validation established about a KeyPackage."""

    identity_key: bytes
    fingerprint: bytes
    not_after: int
    last_resort: bool


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the cleartext MLS framing of a group message says.

    ``kind`` is None for messages that are not group messages (Welcome,
    KeyPackage, GroupInfo), which cannot be published to a group.
    """

    kind: MessageKind | None
    group_id: bytes | None
    epoch: int | None
    #: "public" (PublicMessage), "private" (PrivateMessage), or None for non-group messages.
    wire_format: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedChange:
    """A proposal or commit that a group's verified state accepted and applied.

    Attributes:
        epoch: the group's epoch afterwards.
        sender: the identity that signed it.
        is_commit: a commit (else a proposal).
        external: an external commit (a member's resync).
        added: identities a commit adds (who get its Welcome).
        members: the roster after a commit; None for a proposal.
        changes: the group state's change set.
    """

    epoch: int
    sender: bytes
    is_commit: bool
    external: bool = False
    added: tuple[bytes, ...] = ()
    members: tuple[bytes, ...] | None = None
    changes: ChangeSet = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class GroupRegistration:
    """A new group's verified epoch-0 state."""

    group_id: bytes
    epoch: int
    members: tuple[bytes, ...]
    signer: bytes
    changes: ChangeSet = field(repr=False)


class GroupState(Protocol):
    """One group's verified public state (a qpq-core DeliveryGroup)."""

    def epoch(self) -> int: ...

    def members(self) -> tuple[bytes, ...]: ...

    def ratchet_tree(self) -> bytes: ...

    def verify(self, message: bytes, group_info: bytes | None) -> VerifiedChange:
        """Verify a handshake message against the state and apply it; ServiceError if refused.

        On an error the state is as before.
        """
        ...


class MlsChecks(Protocol):
    """Signature, KeyPackage, framing and group checks; each raises a ServiceError."""

    def verify_signature(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        """Raise UnauthenticatedError unless ``signature`` is valid."""
        ...

    def validate_key_package(
        self, data: bytes, *, now: int, max_lifetime_seconds: int
    ) -> KeyPackageFacts:
        """Raise InvalidKeyPackageError or UnsupportedCiphersuiteError if invalid."""
        ...

    def peek_message(self, data: bytes) -> MessageFacts:
        """Raise InvalidArgumentError (field ``payload``) if it is not MLS."""
        ...

    def register_group(self, group_info: bytes) -> tuple[GroupState, GroupRegistration]:
        """Verify a new group's GroupInfo (with ratchet tree); ServiceError if refused."""
        ...

    def load_group(self, group_id: bytes, rows: list[tuple[bytes, bytes]]) -> GroupState:
        """Restore a group's verified state from its stored rows."""
        ...


class CoreMlsChecks:
    """:class:`MlsChecks` backed by qpq-core (OpenMLS)."""

    _KINDS: ClassVar[dict[qpq_core.MessageKind, MessageKind]] = {
        qpq_core.MessageKind.APPLICATION: MessageKind.APPLICATION,
        qpq_core.MessageKind.PROPOSAL: MessageKind.PROPOSAL,
        qpq_core.MessageKind.COMMIT: MessageKind.COMMIT,
    }

    def verify_signature(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        try:
            qpq_core.verify_signature(public_key, message, signature)
        except qpq_core.MlsError:
            raise UnauthenticatedError("the challenge signature does not verify") from None

    def validate_key_package(
        self, data: bytes, *, now: int, max_lifetime_seconds: int
    ) -> KeyPackageFacts:
        # qpq-core raises qpq_proto's InvalidKeyPackageError and
        # UnsupportedCiphersuiteError itself; the answer replaces the message
        # (no OpenMLS text reaches the peer) and names the field.
        try:
            info = qpq_core.validate_key_package(
                data, now=now, max_lifetime_seconds=max_lifetime_seconds
            )
        except UnsupportedCiphersuiteError:
            raise UnsupportedCiphersuiteError(
                "only MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 is accepted",
                field="packages",
            ) from None
        except (InvalidKeyPackageError, qpq_core.MlsError) as error:
            raise InvalidKeyPackageError(
                f"KeyPackage rejected: {_reason(error)}", field="packages"
            ) from None
        return KeyPackageFacts(
            identity_key=info.identity_key,
            fingerprint=info.fingerprint,
            not_after=info.not_after,
            last_resort=info.last_resort,
        )

    def peek_message(self, data: bytes) -> MessageFacts:
        try:
            info = qpq_core.peek_message(data)
        except qpq_core.MlsError:
            raise InvalidArgumentError("payload is not an MLS message", field="payload") from None
        return MessageFacts(
            kind=self._KINDS.get(info.kind),
            group_id=info.group_id,
            epoch=info.epoch,
            wire_format=info.wire_format,
        )

    def register_group(self, group_info: bytes) -> tuple[GroupState, GroupRegistration]:
        with _refusals("group_info"):
            group, registered = qpq_core.DeliveryGroup.create(group_info)
        return _CoreGroup(group), GroupRegistration(
            group_id=registered.group_id,
            epoch=registered.epoch,
            members=registered.members,
            signer=registered.signer,
            changes=registered.changes,
        )

    def load_group(self, group_id: bytes, rows: list[tuple[bytes, bytes]]) -> GroupState:
        with _refusals("group_id"):
            return _CoreGroup(qpq_core.DeliveryGroup.load(group_id, rows))


class _CoreGroup:
    """:class:`GroupState` over a qpq-core DeliveryGroup."""

    __slots__ = ("_group",)

    def __init__(self, group: qpq_core.DeliveryGroup) -> None:
        self._group = group

    def epoch(self) -> int:
        return self._group.epoch()

    def members(self) -> tuple[bytes, ...]:
        return self._group.members()

    def ratchet_tree(self) -> bytes:
        return self._group.ratchet_tree()

    def verify(self, message: bytes, group_info: bytes | None) -> VerifiedChange:
        with _refusals("payload"):
            verified = self._group.verify(message, group_info)
        if isinstance(verified, qpq_core.ProposalVerified):
            return VerifiedChange(
                epoch=verified.epoch,
                sender=verified.sender,
                is_commit=False,
                changes=verified.changes,
            )
        return VerifiedChange(
            epoch=verified.epoch,
            sender=verified.committer,
            is_commit=True,
            external=verified.external,
            added=verified.added,
            members=verified.members,
            changes=verified.changes,
        )


#: qpq-core's refusals of a group message, as the coded answers a peer gets.
_GROUP_REFUSALS: tuple[tuple[type[qpq_core.MlsError], Callable[[str], Exception]], ...] = (
    (
        qpq_core.NotAMemberError,
        lambda _field: ForbiddenError("the sender is not a member of this group"),
    ),
    (
        qpq_core.InvalidSignatureError,
        lambda _field: ForbiddenError("the signature is not a current member's"),
    ),
    (
        qpq_core.WrongEpochError,
        lambda _field: InvalidArgumentError(
            "the message is not for the group's current epoch", field="epoch"
        ),
    ),
    (
        qpq_core.WrongGroupError,
        lambda _field: InvalidArgumentError("the message is for another group", field="group_id"),
    ),
    (
        qpq_core.StateCorruptError,
        lambda _field: InternalError("the group's stored state cannot be read"),
    ),
    (qpq_core.InternalMlsError, lambda _field: InternalError("the server failed internally")),
)


@contextmanager
def _refusals(field: str) -> Iterator[None]:
    try:
        yield
    except UnsupportedCiphersuiteError:
        raise UnsupportedCiphersuiteError(
            "only MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 is accepted", field=field
        ) from None
    except qpq_core.MlsError as error:
        for cls, answer in _GROUP_REFUSALS:
            if isinstance(error, cls):
                raise answer(field) from None
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
