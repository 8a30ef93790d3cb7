"""The client's part of the qpq exception tree.

::

    QpqError
    └── ClientError                     something on this side of the wire
        ├── ConnectionFailedError       server unreachable, TLS failure, wrong pin
        ├── TrustNotConfiguredError     neither a CA nor a pin: refuse, never insecure
        ├── NotAuthenticatedError       a call before the token/identity is set up
        ├── StateError                  the local encrypted store
        │   ├── WrongPassphraseError    the passphrase does not open the store
        │   ├── NotInitializedError     no profile yet (run ``qpq init``)
        │   ├── AlreadyInitializedError ``init`` on an existing profile
        │   └── ProfileBusyError        another process holds the profile
        ├── UnknownGroupError           no local group by that name
        ├── GroupExistsError            a local group already has that name
        ├── UnknownUserError            the server knows no such username
        ├── NotAMemberError             the group no longer includes us
        └── CommitFailedError           a commit kept losing epoch races

Server answers keep their own classes (:mod:`qpq_proto.errors`), MLS
failures keep theirs (``qpq_core.MlsError``); neither is wrapped.
"""

from __future__ import annotations

from qpq_proto import QpqError

__all__ = [
    "AlreadyInitializedError",
    "ClientError",
    "CommitFailedError",
    "ConnectionFailedError",
    "GroupExistsError",
    "NotAMemberError",
    "NotAuthenticatedError",
    "NotInitializedError",
    "ProfileBusyError",
    "StateError",
    "TrustNotConfiguredError",
    "UnknownGroupError",
    "UnknownUserError",
    "WrongPassphraseError",
]


class ClientError(QpqError):
    """Root of the client's own errors."""


class ConnectionFailedError(ClientError):
    """The server could not be reached or did not prove who it is."""


class TrustNotConfiguredError(ClientError):
    """No CA certificate and no pinned fingerprint: the client will not guess."""


class NotAuthenticatedError(ClientError):
    """A call needs a token or a proven identity that this connection lacks."""


class StateError(ClientError):
    """The local state store failed or is unusable."""


class WrongPassphraseError(StateError):
    """The passphrase does not open the state database."""


class NotInitializedError(StateError):
    """The profile has no identity yet."""


class AlreadyInitializedError(StateError):
    """The profile already has an identity."""


class ProfileBusyError(StateError):
    """Another process is using the profile."""


class UnknownGroupError(ClientError):
    """No local group has that name."""


class GroupExistsError(ClientError):
    """A local group already has that name."""


class UnknownUserError(ClientError):
    """The server knows no user by that name."""


class NotAMemberError(ClientError):
    """We are no longer a member of the group."""


class CommitFailedError(ClientError):
    """A group change lost every retry against concurrent changes."""
