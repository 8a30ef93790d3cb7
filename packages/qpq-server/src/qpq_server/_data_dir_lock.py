"""The data directory lock: one process at a time may own the SQLCipher store.

A running server holds an exclusive ``flock`` on ``data_dir/qpq.lock``
for as long as it runs; ``qpq-server rekey`` takes the same lock, so it
never rewrites pages under a server that keeps using the old key, and a
server started during a rekey refuses to start. The operator commands
that only read or write rows (``backup``, ``invites``, ``accounts``)
do not take it: SQLite's WAL lets them work beside the server. The kernel
drops the lock when its holder exits, however it exits, so a crash leaves
nothing to clean up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from qpq_server._errors import StartupError

__all__ = ["LOCK_NAME", "DataDirLock"]

#: The lock file's name inside the data directory.
LOCK_NAME = "qpq.lock"


class DataDirLock:
    """An exclusive lock on a data directory, held until :meth:`release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path, *, purpose: str) -> DataDirLock:
        """Take the lock of ``data_dir`` (created 0700 if missing) without waiting.

        Args:
            data_dir: the server's data directory.
            purpose: what the caller is about to do, for the refusal
                (``"start"``, ``"rekey"``).

        Raises:
            StartupError: another process (a running server, a rekey) holds it,
                or the directory or lock file cannot be made.
        """
        path = data_dir / LOCK_NAME
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise StartupError(f"cannot lock {path}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(
                f"cannot {purpose}: another process holds {path} (a server running on "
                f"{data_dir}, or a rekey); stop it first"
            ) from None
        except OSError as error:
            os.close(fd)
            raise StartupError(f"cannot lock {path}: {error.strerror or error}") from None
        return cls(path, fd)

    def release(self) -> None:
        """Give the lock up (closing the file drops it); a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
