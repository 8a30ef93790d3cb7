"""qpq-server: the qpq delivery server.

QUIC (ALPN ``qpq/1``) with one bidirectional stream per call, the qpq-proto
codec and state machines, per-connection identity proof, a KeyPackage
directory, per-recipient queues with group fan-out, on SQLCipher. Run it with
the ``qpq-server`` command; embed it with :func:`run_server`. Test helpers
live in :mod:`qpq_server.testing`.
"""

from qpq_server._checks import Problem, Severity, check_config
from qpq_server._config import ServerConfig, load_config
from qpq_server._errors import ConfigError, ServerError, StartupError, StorageError
from qpq_server._server import ReadyInfo, run_server
from qpq_server._storage import Storage
from qpq_server._version import __version__

__all__ = [
    "ConfigError",
    "Problem",
    "ReadyInfo",
    "ServerConfig",
    "ServerError",
    "Severity",
    "StartupError",
    "Storage",
    "StorageError",
    "__version__",
    "check_config",
    "load_config",
    "run_server",
]
