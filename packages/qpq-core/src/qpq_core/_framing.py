"""What an MLS message is, as :func:`qpq_core.peek_message` reports it.

``peek_message`` and its result, ``MessageInfo``, are the Rust extension's
(``qpq_core._mls``); the enum is Python's, looked up by the extension by
name, so ``info.kind is MlsMessageKind.COMMIT`` holds.
"""

from __future__ import annotations

import enum

__all__ = ["MlsMessageKind"]


class MlsMessageKind(enum.Enum):
    """What an MLSMessage carries: a group message's content type (RFC 9420
    §6: application, proposal, commit), or what it is outside a group
    (Welcome, KeyPackage, GroupInfo).

    Not to be confused with :class:`qpq_proto.MessageKind`, the kind a
    ``Publish`` declares on the wire (its three group kinds, by the same names).
    """

    APPLICATION = "application"
    PROPOSAL = "proposal"
    COMMIT = "commit"
    WELCOME = "welcome"
    KEY_PACKAGE = "key_package"
    GROUP_INFO = "group_info"
