"""The server's one frozen configuration and how it is assembled.

Precedence, lowest first: defaults < ``qpq-server.toml`` (path from
``--config`` or ``QPQ_CONFIG``) < ``QPQ_*`` environment < command-line flags.
Only the CLI reads the environment (it passes ``os.environ`` in); nothing
below it does. Every secret setting has a ``*_FILE`` variant so container
secrets never need to sit in the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qpq_proto import DEFAULT_LIMITS, DEFAULT_PORT, Limits
from qpq_server._database_url import is_postgres_url
from qpq_server._errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "LIMIT_ENV",
    "SETTINGS",
    "ServerConfig",
    "load_config",
    "parse_hostport",
]

ENV_PREFIX = "QPQ_"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

#: Limit overrides: environment name -> ``Limits`` field (also ``[limits]`` in TOML).
LIMIT_ENV: dict[str, str] = {
    f"{ENV_PREFIX}{name.upper()}": name for name in Limits.__dataclass_fields__
}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server needs to run. Secrets never appear in ``repr``.

    Attributes:
        listen_host: address to bind (``0.0.0.0`` by default).
        listen_port: UDP port; 0 picks a free one (see ``--ready-file``).
        data_dir: database, and the generated development certificate.
        auth_token: the shared access token checked on every call but Health.
        db_key: SQLCipher passphrase; empty means a plaintext database.
        database_url: ``postgresql://...`` to keep everything in PostgreSQL
            (several nodes may share it); empty means SQLCipher in ``data_dir``.
            A secret: it may hold a password.
        database_pool_size: connections this node keeps to PostgreSQL at most.
        tls_cert: certificate (PEM or DER); None means the data dir default.
        tls_key: private key (PEM or DER), next to the certificate.
        production: refuse weak or missing secrets instead of warning.
        log_format: ``text`` or ``json``.
        log_level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
        metrics_listen: ``HOST:PORT`` for the Prometheus endpoint, or None (off).
        limits: protocol limits enforced by this server.
        shutdown_grace_seconds: how long in-flight calls may finish on shutdown.
        idle_timeout_seconds: QUIC idle timeout; above the longest fetchWait.
        cleanup_interval_seconds: how often expired messages and packages go.
        key_package_max_lifetime_seconds: longest KeyPackage lifetime accepted.
        max_connections: QUIC connections served at once; more are closed with a reason.
        max_connections_per_address: the same, per source address (IPv6: per /64).
        connection_buffer_bytes: request bytes one connection may have buffered
            across its unfinished requests; 0 means twice ``max_message_bytes``.
        request_timeout_seconds: how long a request may take to arrive in full.
        subscribe_buffer_bytes: event bytes one subscribe stream may have sent
            but not yet acknowledged; 0 means twice ``max_message_bytes``.
        subscribe_stall_seconds: how long a subscriber may take no data before
            its stream is reset.
        max_subscriptions_per_identity: concurrent subscribe streams of one
            identity; a new one ends the oldest.
        stream_window_bytes: QUIC flow-control window of one stream: how far
            a client may send ahead of what the server has taken in; 0 means
            ``max_message_bytes``.
        receive_window_bytes: the same for a whole connection once it has
            authenticated; 0 means twice ``max_message_bytes``.
        unauthenticated_buffer_bytes: before a connection has authenticated,
            its connection window and the request bytes it may have buffered.
        authenticate_timeout_seconds: a connection that has not proven an
            identity (Challenge, Authenticate) this long after it opened is
            closed with a reason.
        receive_budget_bytes: bytes all connections together may hold in
            receive buffers (QUIC reassembly and unfinished requests).
        answer_window_bytes: answer bytes one connection may hold until the
            client reads them (unacknowledged by QUIC, or reserved for answers
            being produced); a call waits for room before it is served; 0
            means twice ``max_message_bytes``.
        answer_budget_bytes: the same for all connections together.
        answer_stall_seconds: how long a client may take none of an answer
            before its stream is reset.
        username_cooldown_days: how long a username given up (renamed, or
            its account deleted) stays reserved for its former owner.
        storage_budget_bytes: payload bytes of write calls that may wait for
            the database at once; a call beyond it is refused ``unavailable``.
        group_retention_days: a group nobody published to for this long is
            removed (its state, roster and remembered commits).
        quota_queued_bytes: bytes an identity's messages may hold on the
            server until their recipients acknowledge them (a fan-out's
            payload counts once).
        quota_key_package_bytes: bytes an identity's stored KeyPackages may hold.
        quota_groups_created: groups an identity may have created that are
            still kept.
    """

    listen_host: str = "0.0.0.0"  # noqa: S104 - a server listens on all addresses by default
    listen_port: int = DEFAULT_PORT
    data_dir: Path = Path("data")
    auth_token: str = field(default="", repr=False)
    db_key: str = field(default="", repr=False)
    database_url: str = field(default="", repr=False)
    database_pool_size: int = 10
    tls_cert: Path | None = None
    tls_key: Path | None = None
    production: bool = False
    log_format: str = "text"
    log_level: str = "INFO"
    metrics_listen: tuple[str, int] | None = None
    limits: Limits = DEFAULT_LIMITS
    shutdown_grace_seconds: float = 10.0
    idle_timeout_seconds: float = 120.0
    cleanup_interval_seconds: float = 60.0
    # qpq-core's default: 84 days plus OpenMLS's one hour of clock-skew margin.
    key_package_max_lifetime_seconds: int = 84 * 24 * 3600 + 3600
    max_connections: int = 10_000
    max_connections_per_address: int = 64
    connection_buffer_bytes: int = 0
    request_timeout_seconds: float = 60.0
    subscribe_buffer_bytes: int = 0
    subscribe_stall_seconds: float = 30.0
    max_subscriptions_per_identity: int = 4
    stream_window_bytes: int = 0
    receive_window_bytes: int = 0
    unauthenticated_buffer_bytes: int = 64 * 1024
    authenticate_timeout_seconds: float = 10.0
    receive_budget_bytes: int = 512 * 1024 * 1024
    answer_window_bytes: int = 0
    answer_budget_bytes: int = 64 * 1024 * 1024
    answer_stall_seconds: float = 10.0
    username_cooldown_days: float = 30.0
    storage_budget_bytes: int = 256 * 1024 * 1024
    group_retention_days: int = 400
    quota_queued_bytes: int = 1024 * 1024 * 1024
    quota_key_package_bytes: int = 16 * 1024 * 1024
    quota_groups_created: int = 1000

    @property
    def database_path(self) -> Path:
        """The SQLCipher database file."""
        return self.data_dir / "qpq.db"

    @property
    def connection_buffer_limit(self) -> int:
        """Request bytes one connection may buffer (``connection_buffer_bytes`` or its default)."""
        return self.connection_buffer_bytes or 2 * self.limits.max_message_bytes

    @property
    def stream_window(self) -> int:
        """QUIC credit one stream gets beyond what was taken (setting or default)."""
        return self.stream_window_bytes or self.limits.max_message_bytes

    @property
    def receive_window(self) -> int:
        """QUIC credit an authenticated connection gets beyond what was taken."""
        return self.receive_window_bytes or 2 * self.limits.max_message_bytes

    @property
    def answer_window(self) -> int:
        """Answer bytes one connection may hold (setting or default)."""
        return self.answer_window_bytes or 2 * self.limits.max_message_bytes

    @property
    def subscribe_buffer_limit(self) -> int:
        """Unacknowledged bytes one subscribe stream may hold (setting or default)."""
        return self.subscribe_buffer_bytes or 2 * self.limits.max_message_bytes

    @property
    def cert_path(self) -> Path:
        """The TLS certificate in use (configured, or the data dir default)."""
        return self.tls_cert if self.tls_cert is not None else self.data_dir / "server-cert.pem"

    @property
    def key_path(self) -> Path:
        """The TLS private key in use (configured, or the data dir default)."""
        return self.tls_key if self.tls_key is not None else self.data_dir / "server-key.pem"

    @property
    def listen(self) -> str:
        """``HOST:PORT`` as configured (IPv6 in brackets)."""
        return format_hostport(self.listen_host, self.listen_port)


# ---- settings table -------------------------------------------------------
# name -> (environment variable, TOML key, secret?). The README table mirrors it.

SETTINGS: dict[str, tuple[str, str, bool]] = {
    "listen": ("QPQ_LISTEN", "listen", False),
    "data_dir": ("QPQ_DATA_DIR", "data_dir", False),
    "auth_token": ("QPQ_AUTH_TOKEN", "auth_token", True),
    "db_key": ("QPQ_DB_KEY", "db_key", True),
    "database_url": ("QPQ_DATABASE_URL", "database_url", True),
    "database_pool_size": ("QPQ_DATABASE_POOL_SIZE", "database_pool_size", False),
    "tls_cert": ("QPQ_TLS_CERT", "tls_cert", False),
    "tls_key": ("QPQ_TLS_KEY", "tls_key", False),
    "production": ("QPQ_PRODUCTION", "production", False),
    "log_format": ("QPQ_LOG_FORMAT", "log_format", False),
    "log_level": ("QPQ_LOG_LEVEL", "log_level", False),
    "metrics_listen": ("QPQ_METRICS_LISTEN", "metrics_listen", False),
    "shutdown_grace_seconds": ("QPQ_SHUTDOWN_GRACE_SECONDS", "shutdown_grace_seconds", False),
    "idle_timeout_seconds": ("QPQ_IDLE_TIMEOUT_SECONDS", "idle_timeout_seconds", False),
    "cleanup_interval_seconds": (
        "QPQ_CLEANUP_INTERVAL_SECONDS",
        "cleanup_interval_seconds",
        False,
    ),
    "key_package_max_lifetime_seconds": (
        "QPQ_KEY_PACKAGE_MAX_LIFETIME_SECONDS",
        "key_package_max_lifetime_seconds",
        False,
    ),
    "max_connections": ("QPQ_MAX_CONNECTIONS", "max_connections", False),
    "max_connections_per_address": (
        "QPQ_MAX_CONNECTIONS_PER_ADDRESS",
        "max_connections_per_address",
        False,
    ),
    "connection_buffer_bytes": ("QPQ_CONNECTION_BUFFER_BYTES", "connection_buffer_bytes", False),
    "request_timeout_seconds": ("QPQ_REQUEST_TIMEOUT_SECONDS", "request_timeout_seconds", False),
    "subscribe_buffer_bytes": ("QPQ_SUBSCRIBE_BUFFER_BYTES", "subscribe_buffer_bytes", False),
    "subscribe_stall_seconds": ("QPQ_SUBSCRIBE_STALL_SECONDS", "subscribe_stall_seconds", False),
    "max_subscriptions_per_identity": (
        "QPQ_MAX_SUBSCRIPTIONS_PER_IDENTITY",
        "max_subscriptions_per_identity",
        False,
    ),
    "stream_window_bytes": ("QPQ_STREAM_WINDOW_BYTES", "stream_window_bytes", False),
    "receive_window_bytes": ("QPQ_RECEIVE_WINDOW_BYTES", "receive_window_bytes", False),
    "unauthenticated_buffer_bytes": (
        "QPQ_UNAUTHENTICATED_BUFFER_BYTES",
        "unauthenticated_buffer_bytes",
        False,
    ),
    "authenticate_timeout_seconds": (
        "QPQ_AUTHENTICATE_TIMEOUT_SECONDS",
        "authenticate_timeout_seconds",
        False,
    ),
    "receive_budget_bytes": ("QPQ_RECEIVE_BUDGET_BYTES", "receive_budget_bytes", False),
    "answer_window_bytes": ("QPQ_ANSWER_WINDOW_BYTES", "answer_window_bytes", False),
    "answer_budget_bytes": ("QPQ_ANSWER_BUDGET_BYTES", "answer_budget_bytes", False),
    "answer_stall_seconds": ("QPQ_ANSWER_STALL_SECONDS", "answer_stall_seconds", False),
    "username_cooldown_days": ("QPQ_USERNAME_COOLDOWN_DAYS", "username_cooldown_days", False),
    "storage_budget_bytes": ("QPQ_STORAGE_BUDGET_BYTES", "storage_budget_bytes", False),
    "group_retention_days": ("QPQ_GROUP_RETENTION_DAYS", "group_retention_days", False),
    "quota_queued_bytes": ("QPQ_QUOTA_QUEUED_BYTES", "quota_queued_bytes", False),
    "quota_key_package_bytes": (
        "QPQ_QUOTA_KEY_PACKAGE_BYTES",
        "quota_key_package_bytes",
        False,
    ),
    "quota_groups_created": ("QPQ_QUOTA_GROUPS_CREATED", "quota_groups_created", False),
}

#: Settings that must be above zero (a zero would refuse every connection or call).
_POSITIVE_FLOATS = (
    "request_timeout_seconds",
    "subscribe_stall_seconds",
    "authenticate_timeout_seconds",
    "answer_stall_seconds",
)
_POSITIVE_INTS = (
    "database_pool_size",
    "max_connections",
    "max_connections_per_address",
    "max_subscriptions_per_identity",
    "unauthenticated_buffer_bytes",
    "receive_budget_bytes",
    "answer_budget_bytes",
    "storage_budget_bytes",
    "group_retention_days",
    "quota_queued_bytes",
    "quota_key_package_bytes",
    "quota_groups_created",
)
#: Byte budgets where 0 means a default derived from max_message_bytes.
_BYTE_BUDGETS = (
    "connection_buffer_bytes",
    "subscribe_buffer_bytes",
    "stream_window_bytes",
    "receive_window_bytes",
    "answer_window_bytes",
)


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(value: str, setting: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``; raise ConfigError naming ``setting``."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(setting, f"expected [IPV6]:PORT, got {value!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(setting, f"expected HOST:PORT, got {value!r}")
    if not host:
        raise ConfigError(setting, f"missing host in {value!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(setting, f"port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(setting, f"port must be in 0..65535, got {port}")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(setting, f"invalid IPv6 address {host!r}") from None
    return host, port


def _parse_bool(value: Any, setting: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(setting, f"expected a boolean (1/0, true/false), got {value!r}")


def _parse_number(value: Any, setting: str, kind: type[int] | type[float]) -> Any:
    if isinstance(value, bool):
        raise ConfigError(setting, f"expected a number, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(setting, f"expected a number, got {value!r}") from None
    if number < 0:
        raise ConfigError(setting, f"must not be negative, got {value!r}")
    return number


def _read_secret_file(path_text: str, setting: str) -> str:
    path = Path(path_text)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(setting, f"cannot read {path}: {error.__class__.__name__}") from None
    # Trailing newlines from `echo secret > file` are not part of the secret.
    return text.rstrip("\r\n")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError("config", f"cannot read {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("config", f"{path} is not valid TOML: {error}") from None


def _layer_from_toml(data: Mapping[str, Any]) -> dict[str, Any]:
    known = {toml_key for _env, toml_key, _secret in SETTINGS.values()}
    known |= {"auth_token_file", "db_key_file", "database_url_file", "limits"}
    raw: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError("config", f"unknown setting {key!r}")
        raw[key] = value
    limits = raw.pop("limits", {})
    if not isinstance(limits, dict):
        raise ConfigError("config", "[limits] must be a table")
    for key, value in limits.items():
        if key not in Limits.__dataclass_fields__:
            raise ConfigError("config", f"unknown limit {key!r}")
        raw[f"limits.{key}"] = value
    for secret in ("auth_token", "db_key", "database_url"):
        path = raw.pop(f"{secret}_file", None)
        if path is not None:
            raw[secret] = _read_secret_file(str(path), f"{secret}_file")
    return raw


def _layer_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for name, (env_name, _toml, secret) in SETTINGS.items():
        if env_name in env:
            raw[name] = env[env_name]
        if secret and f"{env_name}_FILE" in env:
            if env_name in env:
                raise ConfigError(env_name, f"set either {env_name} or {env_name}_FILE, not both")
            raw[name] = _read_secret_file(env[f"{env_name}_FILE"], f"{env_name}_FILE")
    for env_name, limit in LIMIT_ENV.items():
        if env_name in env:
            raw[f"limits.{limit}"] = env[env_name]
    return raw


def _build(raw: Mapping[str, Any]) -> ServerConfig:
    kwargs: dict[str, Any] = {}
    if "listen" in raw:
        kwargs["listen_host"], kwargs["listen_port"] = parse_hostport(str(raw["listen"]), "listen")
    if "data_dir" in raw:
        kwargs["data_dir"] = Path(str(raw["data_dir"]))
    for name in ("auth_token", "db_key", "database_url"):
        if name in raw:
            kwargs[name] = str(raw[name])
    for name in ("tls_cert", "tls_key"):
        if raw.get(name):
            kwargs[name] = Path(str(raw[name]))
    if kwargs.get("database_url") and not is_postgres_url(kwargs["database_url"]):
        # Never the value itself: it may hold a password.
        raise ConfigError(
            "database_url", "must be a postgresql:// URL, or empty for SQLCipher in data_dir"
        )
    if "production" in raw:
        kwargs["production"] = _parse_bool(raw["production"], "production")
    if "log_format" in raw:
        log_format = str(raw["log_format"]).lower()
        if log_format not in LOG_FORMATS:
            raise ConfigError("log_format", f"must be one of {', '.join(LOG_FORMATS)}")
        kwargs["log_format"] = log_format
    if "log_level" in raw:
        level = str(raw["log_level"]).upper()
        if level not in LOG_LEVELS:
            raise ConfigError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        kwargs["log_level"] = level
    if raw.get("metrics_listen"):
        kwargs["metrics_listen"] = parse_hostport(str(raw["metrics_listen"]), "metrics_listen")
    for name in (
        "shutdown_grace_seconds",
        "idle_timeout_seconds",
        "cleanup_interval_seconds",
        "username_cooldown_days",
    ):
        if name in raw:
            kwargs[name] = _parse_number(raw[name], name, float)
    for name in _POSITIVE_FLOATS:
        if name in raw:
            kwargs[name] = _parse_number(raw[name], name, float)
    for name in _POSITIVE_INTS:
        if name in raw:
            kwargs[name] = _parse_number(raw[name], name, int)
    for name in (*_POSITIVE_FLOATS, *_POSITIVE_INTS):
        if name in kwargs and kwargs[name] == 0:
            raise ConfigError(name, "must be greater than zero")
    for name in _BYTE_BUDGETS:
        if name in raw:
            kwargs[name] = _parse_number(raw[name], name, int)
    if "key_package_max_lifetime_seconds" in raw:
        kwargs["key_package_max_lifetime_seconds"] = _parse_number(
            raw["key_package_max_lifetime_seconds"], "key_package_max_lifetime_seconds", int
        )
    overrides: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("limits."):
            limit = key.removeprefix("limits.")
            kind = type(getattr(DEFAULT_LIMITS, limit))
            overrides[limit] = _parse_number(value, limit, kind)
    if overrides:
        try:
            kwargs["limits"] = dataclasses.replace(DEFAULT_LIMITS, **overrides)
        except ValueError as error:
            raise ConfigError("limits", str(error)) from None
    return ServerConfig(**kwargs)


def load_config(
    *,
    env: Mapping[str, str],
    config_file: Path | None = None,
    cli: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Assemble the configuration from its layers.

    Args:
        env: the process environment (``QPQ_*`` names are read).
        config_file: the TOML file; when None, ``QPQ_CONFIG`` names it, if set.
        cli: flag values already parsed, by setting name (``listen``, ...).

    Raises:
        ConfigError: a setting is unreadable or invalid (it names the setting).
    """
    raw: dict[str, Any] = {}
    if config_file is None and env.get("QPQ_CONFIG"):
        config_file = Path(env["QPQ_CONFIG"])
    if config_file is not None:
        raw.update(_layer_from_toml(_read_toml(config_file)))
    raw.update(_layer_from_env(env))
    raw.update({key: value for key, value in (cli or {}).items() if value is not None})
    return _build(raw)
