"""Whether a ``qpq daemon`` runs for a profile, and the link to it (light: no library imports)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from qpq_client.cli._errors import fail
from qpq_client.cli._rpc import DAEMON_LOCK, DaemonLink, open_link

__all__ = ["daemon_link", "daemon_lock_held"]


def daemon_lock_held(home: Path) -> bool:
    """True while a daemon holds the profile's daemon lock."""
    try:
        fd = os.open(home / DAEMON_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor releases a lock it took
    return False


def daemon_link(home: Path) -> DaemonLink | None:
    """A link to the daemon of ``home``; None when no daemon runs.

    A daemon that holds the profile but does not answer on its socket is
    an error: running the command beside it would open the profile twice.
    """
    try:
        link = open_link(home)
    except OSError as error:
        fail(f"the daemon's socket cannot be used: {error.strerror or error}: {home}")
    if link is None and daemon_lock_held(home):
        fail(
            f"a qpq daemon holds {home} but does not answer on its socket"
            " (starting or stopping? qpq daemon status)"
        )
    return link
