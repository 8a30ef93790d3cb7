"""The MLS checks the server needs, from qpq-core, with errors mapped once.

This is the only module that imports ``qpq_core``; handlers get an
:class:`MlsChecks` and see only ``ServiceError`` subclasses. Tests may pass
another implementation of the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import qpq_core
from qpq_proto import MessageKind
from qpq_proto.errors import (
    InvalidArgumentError,
    InvalidKeyPackageError,
    UnauthenticatedError,
    UnsupportedCiphersuiteError,
)

__all__ = ["CoreMlsChecks", "KeyPackageFacts", "MessageFacts", "MlsChecks"]


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


class MlsChecks(Protocol):
    """Signature, KeyPackage and framing checks; each raises a ServiceError."""

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
            kind=self._KINDS.get(info.kind), group_id=info.group_id, epoch=info.epoch
        )


def _reason(error: Exception) -> str:
    # The class name says which check failed without echoing peer bytes.
    return {
        "MalformedMlsMessageError": "not a KeyPackage message",
        "InvalidMlsMessageError": "not a KeyPackage message",
        "InvalidIdentityError": "credential does not match the signature key",
        "InvalidMlsArgumentError": "too large",
    }.get(type(error).__name__, "signature, lifetime or extension check failed")
