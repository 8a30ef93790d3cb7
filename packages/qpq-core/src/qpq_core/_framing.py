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
    """

    kind: MessageKind
    group_id: bytes | None
    epoch: int | None


def peek_message(data: bytes) -> MessageInfo:
    """Read group id, epoch and content type without any group state.

    PrivateMessage headers carry them in cleartext (RFC 9420 §6.3), so the
    delivery service can enforce one commit per epoch on ciphertext.

    Raises:
        MalformedMlsMessageError: the bytes are no MLSMessage, or too large.
    """
    kind, group_id, epoch = _mls.peek_message(data)
    return MessageInfo(MessageKind[kind], group_id, epoch)
