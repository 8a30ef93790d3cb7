"""qpq client: an async library for the qpq end-to-end encrypted group messenger.

Errors that other qpq packages define are re-exported here under their one
name (``ConnectionFailedError``, ``UnauthenticatedError``, ``NotAMemberError``)
so that library users can catch everything from this package.
"""

from qpq_client._client import Client
from qpq_client._config import DirectDelivery, ServerAddress, Trust
from qpq_client._errors import (
    AlreadyInitializedError,
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
from qpq_client._version import __version__
from qpq_client._views import GroupSummary, HistoryEntry, OutboxEntry
from qpq_core import NotAMemberError, Suite
from qpq_proto.errors import ConnectionFailedError, UnauthenticatedError

__all__ = [
    "AlreadyInitializedError",
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
]
