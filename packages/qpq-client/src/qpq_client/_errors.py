"""The client's part of the qpq exception tree.

::

    QpqError
    └── ClientError                     something on this side of the wire
        ├── TrustNotConfiguredError     neither a CA nor a pin: refuse, never insecure
        ├── NotConnectedError           a network operation before connect()
        ├── StateError                  the local encrypted store
        │   ├── WrongPassphraseError    the passphrase does not open the store
        │   ├── NotInitializedError     no profile yet (run ``qpq init``)
        │   ├── AlreadyInitializedError ``init`` on an existing profile
        │   └── ProfileBusyError        another process holds the profile
        ├── UnknownGroupError           no local group by that name
        ├── GroupExistsError            a local group already has that name
        ├── UnknownUserError            the server knows no such username
        ├── KeyChangedError             the server gives another key than the pinned one
        ├── KeyPackageMismatchError     a claimed KeyPackage is not the user's asked for
        ├── NoInvitationError           no invitation waits under that group name
        ├── InvalidInvitationError      an invitation that does not match the server's group
        ├── MessageTooLongError         a text over what the server takes, refused before encrypting
        ├── UnknownOutboxEntryError     no outbox entry by that id (or one that cannot be dropped)
        ├── CommitFailedError           a commit kept losing epoch races
        └── BackupError                 a backup file that cannot be written, read or opened

Other classes keep one name across the packages and are raised as they are,
never wrapped: server answers (:mod:`qpq_proto.errors`; the client raises
its ``UnauthenticatedError`` itself, before sending, when it has no proven
identity; a server refuses an account that is suspended or deleted with
``ForbiddenError``, and closes its connections), an unreachable or unproven server
(``qpq_proto.errors.ConnectionFailedError``), and MLS failures
(``qpq_core.MlsError``; ``qpq_core.NotAMemberError`` when the group no
longer includes us).
"""

from __future__ import annotations

from qpq_proto import QpqError

__all__ = [
    "AlreadyInitializedError",
    "BackupError",
    "ClientError",
    "CommitFailedError",
    "GroupExistsError",
    "InvalidInvitationError",
    "KeyChangedError",
    "KeyPackageMismatchError",
    "MessageTooLongError",
    "NoInvitationError",
    "NotConnectedError",
    "NotInitializedError",
    "ProfileBusyError",
    "StateError",
    "TrustNotConfiguredError",
    "UnknownGroupError",
    "UnknownOutboxEntryError",
    "UnknownUserError",
    "WrongPassphraseError",
]


class ClientError(QpqError):
    """Root of the client's own errors."""


class TrustNotConfiguredError(ClientError):
    """No CA certificate and no pinned fingerprint: the client will not guess."""


class NotConnectedError(ClientError):
    """A network operation was asked for before :meth:`Client.connect`."""


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


class KeyChangedError(ClientError):
    """The server gives another identity key for a username than the pinned one.

    Nothing that resolves the name goes ahead until the user accepts the new
    key (:meth:`qpq_client.Client.accept_key`).
    """


class KeyPackageMismatchError(ClientError):
    """The server answered a KeyPackage claim with a package of another identity."""


class NoInvitationError(ClientError):
    """No invitation waits for a decision under that group name."""


class InvalidInvitationError(ClientError):
    """An invitation whose group is not the one the server holds under its id.

    It was dropped, with nothing of it kept (docs/security.md).
    """


class MessageTooLongError(ClientError):
    """A text is longer than the server takes; it was refused before encryption."""


class UnknownOutboxEntryError(ClientError):
    """No outbox entry has that id, or that one cannot be dropped."""


class CommitFailedError(ClientError):
    """A group change lost every retry against concurrent changes."""


class BackupError(ClientError):
    """A profile backup that cannot be written or read, or does not open:
    not a backup, a wrong passphrase, or a changed or truncated file."""
