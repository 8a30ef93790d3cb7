"""Stateless peek at the cleartext MLS framing, for the delivery service."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qpq_core import _mls

__all__ = ["MessageInfo", "MessageKind", "peek_message"]


class MessageKind(enum.Enum):
    """What an MLSMessage carries."""

    APPLICATION = "application"
    PROPOSAL = "proposal"
    COMMIT = "commit"
    WELCOME = "welcome"
    KEY_PACKAGE = "key_package"
    GROUP_INFO = "group_info"


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """The cleartext facts of an MLSMessage.

    Attributes:
        kind: the content type (or the message type outside groups).
        group_id: the group, or ``None`` for Welcome and KeyPackage.
        epoch: the epoch the message is for, or ``None`` likewise.
        wire_format: ``"public"`` (PublicMessage) or ``"private"``
            (PrivateMessage) for group messages; ``None`` for Welcome,
            KeyPackage and GroupInfo. Handshakes travel as PublicMessage,
            application messages as PrivateMessage: the delivery service
            refuses anything else before any cryptography.
    """

    kind: MessageKind
    group_id: bytes | None
    epoch: int | None
    wire_format: str | None


def peek_message(data: bytes) -> MessageInfo:
    """Read wire format, group id, epoch and content type without any group state.

    PublicMessage and PrivateMessage headers carry them in cleartext
    (RFC 9420 §6.2, §6.3).

    Raises:
        MalformedMlsMessageError: the bytes are no MLSMessage, or too large.
    """
    kind, group_id, epoch, wire_format = _mls.peek_message(data)
    return MessageInfo(MessageKind[kind], group_id, epoch, wire_format)
