"""The one exception tree of qpq.

Every error that qpq raises derives from :class:`QpqError`. The tree keeps
apart who is at fault, in the manner of h11::

    QpqError
    ├── LocalProtocolError        we tried to send something the protocol forbids
    ├── RemoteProtocolError       the peer sent bytes that break the protocol
    │   ├── MalformedMessageError     undecodable or invalid message
    │   ├── MessageTooLargeError      message over the byte cap
    │   ├── TruncatedMessageError     end of stream inside a message
    │   └── StreamResetError          the peer reset the stream
    ├── ConnectionFailedError     the QUIC connection could not be made, the peer
    │                             did not prove who it is, or it was lost
    ├── ServiceError              a coded error answered by the server; one
    │   │                         class per :class:`ErrorCode`, raised by server
    │   │                         handlers and rebuilt on the client from the wire
    │   ├── BadVersionError, UnauthenticatedError, ForbiddenError,
    │   ├── InvalidArgumentError (carries ``field``), PayloadTooLargeError,
    │   ├── NotFoundError, RateLimitedError, QueueFullError, EpochConflictError,
    │   ├── UnsupportedCiphersuiteError, AlreadyExistsError, MalformedRequestError,
    │   ├── InvalidKeyPackageError, UnsupportedCallError, UnavailableError,
    │   ├── QuotaExceededError
    │   └── InternalError
    └── (other packages add their own subtrees: qpq_core's MLS errors, the
         client's state and connection errors, the server's config errors)

``InvalidKeyPackageError`` and ``UnsupportedCiphersuiteError`` are also what
qpq_core raises locally (re-exported by ``qpq_core.errors``) when it refuses a
KeyPackage or a ciphersuite: one class per meaning, wherever it is refused.
Raised there, their message is local text; a server that answers with one
gives its own message and ``field``.

Messages in these exceptions never contain secrets, tracebacks or paths: a
``ServiceError`` message travels to the peer as it is.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "AlreadyExistsError",
    "BadVersionError",
    "ConnectionFailedError",
    "EpochConflictError",
    "ErrorCode",
    "ForbiddenError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidKeyPackageError",
    "LocalProtocolError",
    "MalformedMessageError",
    "MalformedRequestError",
    "MessageTooLargeError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QpqError",
    "QueueFullError",
    "QuotaExceededError",
    "RateLimitedError",
    "RemoteProtocolError",
    "ServiceError",
    "StreamResetError",
    "TruncatedMessageError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnsupportedCallError",
    "UnsupportedCiphersuiteError",
    "service_error",
]


class ErrorCode(enum.IntEnum):
    """Wire error codes; values equal the ``ErrorCode`` enum in ``qpq.capnp``."""

    INTERNAL = 0
    BAD_VERSION = 1
    UNAUTHENTICATED = 2
    FORBIDDEN = 3
    INVALID_ARGUMENT = 4
    PAYLOAD_TOO_LARGE = 5
    NOT_FOUND = 6
    RATE_LIMITED = 7
    QUEUE_FULL = 8
    EPOCH_CONFLICT = 9
    UNSUPPORTED_CIPHERSUITE = 10
    ALREADY_EXISTS = 11
    MALFORMED_REQUEST = 12
    INVALID_KEY_PACKAGE = 13
    UNSUPPORTED_CALL = 14
    UNAVAILABLE = 15
    QUOTA_EXCEEDED = 16


class QpqError(Exception):
    """Root of every exception qpq raises."""


class LocalProtocolError(QpqError):
    """We were about to send something the protocol does not allow."""


class RemoteProtocolError(QpqError):
    """The peer sent bytes that break the protocol."""


class MalformedMessageError(RemoteProtocolError):
    """The bytes do not decode to a valid message."""


class MessageTooLargeError(RemoteProtocolError):
    """A message exceeds the byte cap before it is even decoded."""


class TruncatedMessageError(RemoteProtocolError):
    """The stream ended inside a message, or before any message."""


class StreamResetError(RemoteProtocolError):
    """The peer reset the stream."""

    def __init__(self, message: str, error_code: int = 0) -> None:
        super().__init__(message)
        self.error_code = error_code


class ConnectionFailedError(QpqError):
    """The peer could not be reached, did not prove who it is, or the connection was lost."""


class ServiceError(QpqError):
    """A coded error that the server answers with.

    Args:
        message: human-readable text that is safe to show to the peer.
        field: for argument errors, the name of the offending field.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str = "", *, field: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code.name)
        self.message = message or (self.__class__.__doc__ or self.code.name).strip()
        self.field = field

    def __str__(self) -> str:
        if self.field:
            return f"{self.message} (field: {self.field})"
        return self.message


class InternalError(ServiceError):
    """The server failed internally."""

    code = ErrorCode.INTERNAL


class BadVersionError(ServiceError):
    """Unsupported protocol version."""

    code = ErrorCode.BAD_VERSION


class UnauthenticatedError(ServiceError):
    """Missing or wrong access token, or the identity is not proven."""

    code = ErrorCode.UNAUTHENTICATED


class ForbiddenError(ServiceError):
    """The proven identity may not do this."""

    code = ErrorCode.FORBIDDEN


class InvalidArgumentError(ServiceError):
    """An argument is invalid."""

    code = ErrorCode.INVALID_ARGUMENT


class PayloadTooLargeError(ServiceError):
    """A payload exceeds its size limit."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class NotFoundError(ServiceError):
    """The requested item does not exist."""

    code = ErrorCode.NOT_FOUND


class RateLimitedError(ServiceError):
    """Too many requests; slow down."""

    code = ErrorCode.RATE_LIMITED


class QueueFullError(ServiceError):
    """The recipient's queue is full."""

    code = ErrorCode.QUEUE_FULL


class EpochConflictError(ServiceError):
    """Another commit was already accepted for this group epoch.

    Attributes:
        accepted_commit: SHA-256 of the commit the server accepted for the
            epoch asked for, empty when it no longer knows; a client compares
            it with its own commit to learn, without trusting anything else,
            whether its commit won after all (a retry after a lost answer).
        epoch: the group's current epoch.
    """

    code = ErrorCode.EPOCH_CONFLICT

    def __init__(
        self, message: str = "", *, field: str = "", accepted_commit: bytes = b"", epoch: int = 0
    ) -> None:
        super().__init__(message, field=field)
        self.accepted_commit = accepted_commit
        self.epoch = epoch


class UnsupportedCiphersuiteError(ServiceError):
    """The MLS ciphersuite is not allowed."""

    code = ErrorCode.UNSUPPORTED_CIPHERSUITE


class AlreadyExistsError(ServiceError):
    """The item already exists (for example a taken username)."""

    code = ErrorCode.ALREADY_EXISTS


class MalformedRequestError(ServiceError):
    """The request could not be decoded."""

    code = ErrorCode.MALFORMED_REQUEST


class InvalidKeyPackageError(ServiceError):
    """A KeyPackage failed validation."""

    code = ErrorCode.INVALID_KEY_PACKAGE


class UnsupportedCallError(ServiceError):
    """The server does not know this call."""

    code = ErrorCode.UNSUPPORTED_CALL


class UnavailableError(ServiceError):
    """The server is shutting down or its storage is unavailable."""

    code = ErrorCode.UNAVAILABLE


class QuotaExceededError(ServiceError):
    """The proven identity holds as much on the server as its quota allows.

    What counts: the bytes of its messages still queued for their recipients
    (until they acknowledge them), its stored KeyPackages, the groups it
    created. Nothing of the refused call was stored; the same call succeeds
    once recipients acknowledged enough, or packages were claimed.
    """

    code = ErrorCode.QUOTA_EXCEEDED


_BY_CODE: dict[ErrorCode, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InternalError,
        BadVersionError,
        UnauthenticatedError,
        ForbiddenError,
        InvalidArgumentError,
        PayloadTooLargeError,
        NotFoundError,
        RateLimitedError,
        QueueFullError,
        EpochConflictError,
        UnsupportedCiphersuiteError,
        AlreadyExistsError,
        MalformedRequestError,
        InvalidKeyPackageError,
        UnsupportedCallError,
        UnavailableError,
        QuotaExceededError,
    )
}


def service_error(
    code: ErrorCode | int,
    message: str,
    field: str = "",
    *,
    accepted_commit: bytes = b"",
    epoch: int = 0,
) -> ServiceError:
    """Build the exception for a coded error received from the wire.

    An unknown numeric code (a newer server) becomes :class:`InternalError`;
    ``accepted_commit`` and ``epoch`` go to an :class:`EpochConflictError`.
    """
    try:
        known = ErrorCode(code)
    except ValueError:
        return InternalError(f"unknown error code {int(code)}: {message}", field=field)
    if known is ErrorCode.EPOCH_CONFLICT:
        return EpochConflictError(
            message, field=field, accepted_commit=accepted_commit, epoch=epoch
        )
    return _BY_CODE[known](message, field=field)
