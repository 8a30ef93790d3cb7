"""qpq client: an async library for the qpq end-to-end encrypted group messenger.

Errors that other qpq packages define are re-exported here under their one
name (``ConnectionFailedError``, ``UnauthenticatedError``, ``NotAMemberError``)
so that library users can catch everything from this package.

The names are imported when first used (PEP 562): the ``qpq`` command
imports this package, and a command that is a call to ``qpq daemon`` must
not pay for loading the MLS binding and the QUIC stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qpq_client._version import __version__

if TYPE_CHECKING:
    from qpq_client._backup import (
        BackupSummary,
        RestoredProfile,
        export_backup,
        import_backup,
        read_backup,
    )
    from qpq_client._client import Client
    from qpq_client._config import DirectDelivery, ServerAddress, Trust
    from qpq_client._errors import (
        AlreadyInitializedError,
        BackupError,
        ClientError,
        CommitFailedError,
        GroupExistsError,
        InvalidInvitationError,
        KeyChangedError,
        KeyPackageMismatchError,
        MessageTooLongError,
        NoInvitationError,
        NotConnectedError,
        NotInitializedError,
        ProfileBusyError,
        StateError,
        TrustNotConfiguredError,
        UnknownGroupError,
        UnknownOutboxEntryError,
        UnknownUserError,
        WrongPassphraseError,
    )
    from qpq_client._keys import KeyStatus, SuiteKeyStatus
    from qpq_client._rows import GroupStatus
    from qpq_client._trust import Contact, InvitePolicy
    from qpq_client._views import GroupSummary, HistoryEntry, OutboxEntry
    from qpq_core import NotAMemberError, Suite
    from qpq_proto.errors import ConnectionFailedError, UnauthenticatedError

__all__ = [
    "AlreadyInitializedError",
    "BackupError",
    "BackupSummary",
    "Client",
    "ClientError",
    "CommitFailedError",
    "ConnectionFailedError",
    "Contact",
    "DirectDelivery",
    "GroupExistsError",
    "GroupStatus",
    "GroupSummary",
    "HistoryEntry",
    "InvalidInvitationError",
    "InvitePolicy",
    "KeyChangedError",
    "KeyPackageMismatchError",
    "KeyStatus",
    "MessageTooLongError",
    "NoInvitationError",
    "NotAMemberError",
    "NotConnectedError",
    "NotInitializedError",
    "OutboxEntry",
    "ProfileBusyError",
    "RestoredProfile",
    "ServerAddress",
    "StateError",
    "Suite",
    "SuiteKeyStatus",
    "Trust",
    "TrustNotConfiguredError",
    "UnauthenticatedError",
    "UnknownGroupError",
    "UnknownOutboxEntryError",
    "UnknownUserError",
    "WrongPassphraseError",
    "__version__",
    "export_backup",
    "import_backup",
    "read_backup",
]

#: The module each public name is imported from on first use.
_HOMES = {
    "AlreadyInitializedError": "qpq_client._errors",
    "BackupError": "qpq_client._errors",
    "BackupSummary": "qpq_client._backup",
    "Client": "qpq_client._client",
    "ClientError": "qpq_client._errors",
    "CommitFailedError": "qpq_client._errors",
    "ConnectionFailedError": "qpq_proto.errors",
    "Contact": "qpq_client._trust",
    "DirectDelivery": "qpq_client._config",
    "GroupExistsError": "qpq_client._errors",
    "GroupStatus": "qpq_client._rows",
    "GroupSummary": "qpq_client._views",
    "HistoryEntry": "qpq_client._views",
    "InvalidInvitationError": "qpq_client._errors",
    "InvitePolicy": "qpq_client._trust",
    "KeyChangedError": "qpq_client._errors",
    "KeyPackageMismatchError": "qpq_client._errors",
    "KeyStatus": "qpq_client._keys",
    "MessageTooLongError": "qpq_client._errors",
    "NoInvitationError": "qpq_client._errors",
    "NotAMemberError": "qpq_core",
    "NotConnectedError": "qpq_client._errors",
    "NotInitializedError": "qpq_client._errors",
    "OutboxEntry": "qpq_client._views",
    "ProfileBusyError": "qpq_client._errors",
    "RestoredProfile": "qpq_client._backup",
    "ServerAddress": "qpq_client._config",
    "StateError": "qpq_client._errors",
    "Suite": "qpq_core",
    "SuiteKeyStatus": "qpq_client._keys",
    "Trust": "qpq_client._config",
    "TrustNotConfiguredError": "qpq_client._errors",
    "UnauthenticatedError": "qpq_proto.errors",
    "UnknownGroupError": "qpq_client._errors",
    "UnknownOutboxEntryError": "qpq_client._errors",
    "UnknownUserError": "qpq_client._errors",
    "WrongPassphraseError": "qpq_client._errors",
    "export_backup": "qpq_client._backup",
    "import_backup": "qpq_client._backup",
    "read_backup": "qpq_client._backup",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
