"""The server's own branch of the qpq exception tree::

    QpqError
    └── ServerError
        ├── ConfigError       a setting is missing, invalid or refused (names it)
        └── StartupError      the server cannot start: wrong db_key, port in use, ...
            └── StorageError  the database cannot be opened or migrated

Both ConfigError and StartupError end ``qpq-server`` with exit status 2 and
one line on stderr; neither message carries a secret.
"""

from __future__ import annotations

from qpq_proto import QpqError

__all__ = ["ConfigError", "ServerError", "StartupError", "StorageError"]


class ServerError(QpqError):
    """Root of the server's own errors."""


class ConfigError(ServerError):
    """A setting is invalid or refused.

    Args:
        setting: the setting's name as the operator writes it.
        problem: what is wrong with it.
    """

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class StartupError(ServerError):
    """The server cannot start for a reason outside the configuration syntax."""


class StorageError(StartupError):
    """The database cannot be opened, unlocked or migrated."""
