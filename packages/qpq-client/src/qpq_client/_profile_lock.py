"""The advisory lock on a profile, held while one process changes it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from qpq_client._errors import ProfileBusyError

__all__ = ["LOCK_FILE", "ProfileLock"]

LOCK_FILE = "lock"


class ProfileLock:
    """An advisory lock on the profile, held while one process changes it."""

    def __init__(self, home: Path, name: str = LOCK_FILE) -> None:
        self._path = home / name
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def busy_error(self) -> ProfileBusyError:
        return ProfileBusyError(f"another qpq process is using {self._path.parent}")
