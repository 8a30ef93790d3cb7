"""The one boundary where exceptions become a single line for a person."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click

from qpq_client._env import ENV_STATE_KEY

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "fail",
    "map_errors",
    "message_for",
    "passphrase_came_from_environment",
]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def message_for(error: BaseException) -> str:
    """One helpful line for ``error``, with what its notes add (``add_note``)."""
    notes = [note for note in getattr(error, "__notes__", ()) if isinstance(note, str)]
    return "; ".join([_line_for(error), *notes])


def _line_for(error: BaseException) -> str:
    # Imported here: a command that is a call to `qpq daemon` loads none of them.
    from qpq_client import WrongPassphraseError  # noqa: PLC0415
    from qpq_core import MlsError, NotAMemberError  # noqa: PLC0415
    from qpq_proto import QpqError  # noqa: PLC0415
    from qpq_proto.errors import (  # noqa: PLC0415
        AlreadyExistsError,
        ForbiddenError,
        InvalidKeyPackageError,
        RateLimitedError,
        RemoteProtocolError,
        ServiceError,
        UnauthenticatedError,
        UnavailableError,
        UnsupportedCiphersuiteError,
    )

    if isinstance(error, WrongPassphraseError):
        # Only a passphrase from the environment is worth checking there;
        # one just typed was simply mistyped.
        hint = f" (check ${ENV_STATE_KEY})" if _passphrase_from_environment() else ""
        return f"{error}{hint}"
    if isinstance(error, UnauthenticatedError):
        # The server's refusal of a token names the field; a server without
        # one needs none, and one with one says so.
        if error.field == "token":
            return (
                f"the server refused the access token: {error.message} (check --token / $QPQ_TOKEN)"
            )
        return str(error)
    if isinstance(error, ForbiddenError) and error.field == "invite":
        return f"the server refused the registration: {error.message}"
    if isinstance(error, ForbiddenError) and error.message.startswith("this account"):
        return error.message  # suspended (with the operator's reason) or deleted
    if isinstance(error, AlreadyExistsError):
        return f"already taken on the server: {error}"
    if isinstance(error, RateLimitedError):
        if error.field == "identity_key":
            # A claim limit of the invitee's KeyPackages: hours, not a moment.
            return f"the server limits invitations to that user: {error.message}"
        if error.field:
            # A limit of our account or address (messages per hour, invitations
            # to strangers, registrations): hours, not a moment either.
            return f"the server limits this: {error.message}"
        return "the server is rate-limiting us; wait a moment and try again"
    if isinstance(error, UnavailableError):
        return f"the server is unavailable right now: {error}"
    if isinstance(error, InvalidKeyPackageError | UnsupportedCiphersuiteError) and not error.field:
        # Raised here by qpq-core's own check of a KeyPackage; the server's names a field.
        return f"a KeyPackage was refused: {error}"
    if isinstance(error, ServiceError):
        return f"the server said: {error}"
    if isinstance(error, RemoteProtocolError):
        return f"the server broke the protocol: {error}"
    if isinstance(error, NotAMemberError):
        return str(error)
    if isinstance(error, MlsError):
        return f"group encryption failed: {error}"
    if isinstance(error, QpqError):
        return str(error)
    if isinstance(error, OSError):
        return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    return f"unexpected {type(error).__name__}: {error}"


#: Set in a background daemon whose passphrase came from its starter's
#: $QPQ_STATE_KEY (it gets it through a pipe, its own environment has none).
_STARTER_HAD_STATE_KEY: list[bool] = []


def passphrase_came_from_environment() -> None:
    """This process's passphrase came from $QPQ_STATE_KEY, through whoever started it."""
    _STARTER_HAD_STATE_KEY.append(True)


def _passphrase_from_environment() -> bool:
    return bool(os.environ.get(ENV_STATE_KEY)) or bool(_STARTER_HAD_STATE_KEY)


def fail(message: str) -> NoReturn:
    """Print ``message`` as the one error line and exit with the error status."""
    click.echo(f"qpq: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


@contextmanager
def map_errors() -> Iterator[None]:
    """Turn any failure into one line on stderr and a non-zero exit; never a traceback."""
    try:
        yield
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:  # noqa: BLE001 - the boundary: all else is reported once
        click.echo(f"qpq: error: {message_for(error)}", err=True)
        sys.exit(EXIT_ERROR)
