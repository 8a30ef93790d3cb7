"""qpq client: an async library for the qpq end-to-end encrypted group messenger."""

from qpq_client._client import Client, GroupInfo, HistoryEntry
from qpq_client._config import ServerAddress, Trust
from qpq_client._errors import (
    AlreadyInitializedError,
    ClientError,
    CommitFailedError,
    ConnectionFailedError,
    GroupExistsError,
    NotAMemberError,
    NotAuthenticatedError,
    NotInitializedError,
    ProfileBusyError,
    StateError,
    TrustNotConfiguredError,
    UnknownGroupError,
    UnknownUserError,
    WrongPassphraseError,
)
from qpq_client._keys import KeyStatus

__version__ = "0.1.0"

__all__ = [
    "AlreadyInitializedError",
    "Client",
    "ClientError",
    "CommitFailedError",
    "ConnectionFailedError",
    "GroupExistsError",
    "GroupInfo",
    "HistoryEntry",
    "KeyStatus",
    "NotAMemberError",
    "NotAuthenticatedError",
    "NotInitializedError",
    "ProfileBusyError",
    "ServerAddress",
    "StateError",
    "Trust",
    "TrustNotConfiguredError",
    "UnknownGroupError",
    "UnknownUserError",
    "WrongPassphraseError",
]
