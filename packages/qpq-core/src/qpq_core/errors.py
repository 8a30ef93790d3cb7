"""The MLS exceptions of qpq-core, raised from the Rust extension.

Most derive from :class:`MlsError`, a :class:`qpq_proto.errors.QpqError`.
A KeyPackage or a ciphersuite that qpq refuses is one error wherever it is
refused (by the directory on upload, by a member about to add someone, by a
joiner reading a Welcome), so qpq-core raises qpq_proto's own classes for
those two and re-exports them here::

    QpqError
    ├── MlsError
    │   ├── InvalidSignatureError         an Ed25519 or MLS signature is bad
    │   ├── MalformedMlsMessageError      bytes that are no (fitting) MLSMessage
    │   │   └── InvalidMlsMessageError    decodes, but fails RFC 9420 validation or our policy
    │   ├── WrongEpochError               for an epoch we cannot process (old or future)
    │   ├── WrongGroupError               for a group this client does not hold
    │   ├── ReplayedMessageError          its key was already used or discarded
    │   ├── DecryptionError               authenticated decryption failed
    │   ├── NotAMemberError               identity not in the group / we were removed
    │   ├── PendingProposalsError         commit the pending proposals first
    │   ├── CommitConflictError           a commit of ours is pending (merge or clear it)
    │   ├── NoPendingCommitError          merge without a pending commit
    │   ├── InvalidIdentityError          credential identity != signature key, bad length
    │   ├── InvalidMlsArgumentError       a bad argument (also a ValueError)
    │   ├── StateCorruptError             stored state is unreadable
    │   └── InternalMlsError              an OpenMLS library error or a caught panic
    └── ServiceError                      (qpq_proto.errors)
        ├── InvalidKeyPackageError        a KeyPackage failed validation
        └── UnsupportedCiphersuiteError   not MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

``validate_key_package`` and ``MlsClient.add_members`` raise both of the
last two, ``MlsClient.join_from_welcome`` the ciphersuite one: catch them
beside :class:`MlsError` there. Raised by qpq-core, their ``field`` is empty
and their message is local text; a server that answers with one sets its own
message and field.

Whatever is raised, the client's state is as it was before the call: nothing
needs persisting. Messages carry no key material.

Who is at fault: ``MalformedMlsMessageError``, ``InvalidMlsMessageError``,
``InvalidSignatureError``, ``DecryptionError``, ``ReplayedMessageError`` and
``InvalidIdentityError`` on received data mean the peer (or the network) sent
something bad; ``WrongEpochError`` usually means a race and is not an attack.
"""

from __future__ import annotations

from qpq_proto.errors import InvalidKeyPackageError, QpqError, UnsupportedCiphersuiteError

__all__ = [
    "CommitConflictError",
    "DecryptionError",
    "InternalMlsError",
    "InvalidIdentityError",
    "InvalidKeyPackageError",
    "InvalidMlsArgumentError",
    "InvalidMlsMessageError",
    "InvalidSignatureError",
    "MalformedMlsMessageError",
    "MlsError",
    "NoPendingCommitError",
    "NotAMemberError",
    "PendingProposalsError",
    "ReplayedMessageError",
    "StateCorruptError",
    "UnsupportedCiphersuiteError",
    "WrongEpochError",
    "WrongGroupError",
]


class MlsError(QpqError):
    """Root of the errors of qpq-core."""


class InvalidSignatureError(MlsError):
    """A signature does not verify."""


class MalformedMlsMessageError(MlsError):
    """The bytes are not a (fitting) TLS-serialized MLSMessage."""


class InvalidMlsMessageError(MalformedMlsMessageError):
    """The message decodes but fails RFC 9420 validation or qpq's policy."""


class WrongEpochError(MlsError):
    """The message is for an epoch this member cannot process."""


class WrongGroupError(MlsError):
    """The group is unknown to this client (never joined, or left)."""


class ReplayedMessageError(MlsError):
    """The message's key was already used or discarded (a replay)."""


class DecryptionError(MlsError):
    """Authenticated decryption failed."""


class NotAMemberError(MlsError):
    """The identity is not a member, or this client is no longer one."""


class PendingProposalsError(MlsError):
    """Pending proposals must be committed before sending."""


class CommitConflictError(MlsError):
    """A commit of ours is pending: merge or clear it first."""


class NoPendingCommitError(MlsError):
    """There is no pending commit to merge."""


class InvalidIdentityError(MlsError):
    """An identity is malformed, or a credential does not match its key."""


class InvalidMlsArgumentError(MlsError, ValueError):
    """An argument is out of range (also a :class:`ValueError`)."""


class StateCorruptError(MlsError):
    """The stored MLS state cannot be read."""


class InternalMlsError(MlsError):
    """OpenMLS reported an internal error, or a Rust panic was caught."""
