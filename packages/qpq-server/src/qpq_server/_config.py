"""The server's one frozen configuration and how it is assembled.

Precedence, lowest first: defaults < ``qpq-server.toml`` (path from
``--config`` or ``QPQ_CONFIG``) < ``QPQ_*`` environment < command-line flags.
Only the CLI reads the environment (it passes ``os.environ`` in); nothing
below it does. Every secret setting has a ``*_FILE`` variant so container
secrets never need to sit in the environment.

The settings table (:data:`SETTINGS`) is derived from the fields of
:class:`ServerConfig`: each settable field declares how it is read
(:func:`qpq_server._settings.setting`), so a new setting is one field.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qpq_proto import DEFAULT_LIMITS, DEFAULT_PORT, Limits, format_host_port
from qpq_server._errors import ConfigError
from qpq_server._settings import (
    ENV_PREFIX,
    LOG_FORMATS,
    LOG_LEVELS,
    Parse,
    choice,
    database_url,
    host_port,
    number,
    optional_host_port,
    optional_path,
    path,
    setting,
    setting_of,
    text,
    truth,
)

__all__ = [
    "ENV_PREFIX",
    "LIMIT_ENV",
    "REGISTRATION_INVITE",
    "REGISTRATION_OPEN",
    "SETTINGS",
    "ServerConfig",
    "load_config",
]

#: Limit overrides: environment name -> ``Limits`` field (also ``[limits]`` in TOML).
LIMIT_ENV: dict[str, str] = {
    f"{ENV_PREFIX}{name.upper()}": name for name in Limits.__dataclass_fields__
}

_SECONDS = number(float)
_POSITIVE_SECONDS = number(float, positive=True)
_POSITIVE_NUMBER = number(float, positive=True)
_COUNT = number(int)
_POSITIVE_COUNT = number(int, positive=True)
_LOG_FORMAT = choice(LOG_FORMATS)
_LOG_LEVEL = choice(LOG_LEVELS)
#: Registration modes: by an operator's invite code, or open to anyone (per-address limited).
REGISTRATION_INVITE = "invite"
REGISTRATION_OPEN = "open"
_REGISTRATION = choice((REGISTRATION_INVITE, REGISTRATION_OPEN), empty=True)
_DATA_DIR = Path("data")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server needs to run. Secrets never appear in ``repr``.

    Attributes:
        listen_host: address to bind (``0.0.0.0`` by default).
        listen_port: UDP port; 0 picks a free one (see ``--ready-file``).
        data_dir: database, and the generated development certificate.
        auth_token: the shared access token checked on every call but Health.
        auth_token_next: a second accepted token, set only during a rotation
            (clients move to it; then it becomes ``auth_token`` and this is
            emptied); empty outside one.
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
        quota_queued_bytes: bytes an account's messages may hold on the
            server until their recipients acknowledge them (a fan-out's
            payload counts once).
        quota_key_package_bytes: bytes an identity's stored KeyPackages may hold.
        quota_groups_created: groups an account may have created that are
            still kept.
        key_package_claim_burst: claims of one identity's KeyPackages that
            may come at once, whoever claims them (a token bucket per target).
        key_package_claims_per_hour: how fast that bucket refills.
        key_package_claims_per_claimer_per_day: claims one identity may make
            of another's KeyPackages (a bucket of this many, refilled daily).
        registration: ``invite`` (a registration needs an operator's invite
            code) or ``open`` (anyone may register, limited per source
            address); empty: ``invite`` in production, ``open`` otherwise
            (see :attr:`registration_mode`).
        registrations_per_address_per_hour: in ``open`` mode, accounts one
            source address (IPv6: its /64) may register (a bucket of this
            many, refilled over an hour; per node).
        account_messages_per_hour: publishes one account may make (a bucket
            of this many, refilled over an hour; across nodes).
        key_package_claims_per_account_per_day: KeyPackages one account may
            claim in all, of whomever (a bucket of this many, refilled over a
            day).
        invitations_to_strangers_per_day: people one account may add to
            groups who share no group with it (a bucket of this many,
            refilled over a day).
        account_renames_per_day: renames one account may make (a bucket of
            this many, refilled over a day): each holds the name given up.
    """

    listen_host: str = setting(
        "0.0.0.0",  # noqa: S104 - a server listens on all addresses by default
        host_port,
        name="listen",
        fills=("listen_host", "listen_port"),
    )
    listen_port: int = DEFAULT_PORT
    data_dir: Path = setting(_DATA_DIR, path)
    auth_token: str = setting("", text, secret=True)
    auth_token_next: str = setting("", text, secret=True)
    db_key: str = setting("", text, secret=True)
    database_url: str = setting("", database_url, secret=True)
    database_pool_size: int = setting(10, _POSITIVE_COUNT)
    tls_cert: Path | None = setting(None, optional_path)
    tls_key: Path | None = setting(None, optional_path)
    production: bool = setting(False, truth)
    log_format: str = setting("text", _LOG_FORMAT)
    log_level: str = setting("INFO", _LOG_LEVEL)
    metrics_listen: tuple[str, int] | None = setting(None, optional_host_port)
    #: Set through ``[limits]`` and ``QPQ_<LIMIT>`` (:data:`LIMIT_ENV`).
    limits: Limits = DEFAULT_LIMITS
    shutdown_grace_seconds: float = setting(10.0, _SECONDS)
    idle_timeout_seconds: float = setting(120.0, _SECONDS)
    cleanup_interval_seconds: float = setting(60.0, _SECONDS)
    # qpq-core's default: 84 days plus OpenMLS's one hour of clock-skew margin.
    key_package_max_lifetime_seconds: int = setting(84 * 24 * 3600 + 3600, _COUNT)
    max_connections: int = setting(10_000, _POSITIVE_COUNT)
    max_connections_per_address: int = setting(64, _POSITIVE_COUNT)
    connection_buffer_bytes: int = setting(0, _COUNT)
    request_timeout_seconds: float = setting(60.0, _POSITIVE_SECONDS)
    subscribe_buffer_bytes: int = setting(0, _COUNT)
    subscribe_stall_seconds: float = setting(30.0, _POSITIVE_SECONDS)
    max_subscriptions_per_identity: int = setting(4, _POSITIVE_COUNT)
    stream_window_bytes: int = setting(0, _COUNT)
    receive_window_bytes: int = setting(0, _COUNT)
    unauthenticated_buffer_bytes: int = setting(64 * 1024, _POSITIVE_COUNT)
    authenticate_timeout_seconds: float = setting(10.0, _POSITIVE_SECONDS)
    receive_budget_bytes: int = setting(512 * 1024 * 1024, _POSITIVE_COUNT)
    answer_window_bytes: int = setting(0, _COUNT)
    answer_budget_bytes: int = setting(24 * 1024 * 1024, _POSITIVE_COUNT)
    answer_stall_seconds: float = setting(10.0, _POSITIVE_SECONDS)
    username_cooldown_days: float = setting(30.0, _SECONDS)
    storage_budget_bytes: int = setting(256 * 1024 * 1024, _POSITIVE_COUNT)
    group_retention_days: int = setting(400, _POSITIVE_COUNT)
    quota_queued_bytes: int = setting(1024 * 1024 * 1024, _POSITIVE_COUNT)
    quota_key_package_bytes: int = setting(16 * 1024 * 1024, _POSITIVE_COUNT)
    quota_groups_created: int = setting(1000, _POSITIVE_COUNT)
    key_package_claim_burst: int = setting(20, _POSITIVE_COUNT)
    key_package_claims_per_hour: float = setting(10.0, _POSITIVE_NUMBER)
    key_package_claims_per_claimer_per_day: float = setting(4.0, _POSITIVE_NUMBER)
    registration: str = setting("", _REGISTRATION)
    registrations_per_address_per_hour: float = setting(20.0, _POSITIVE_NUMBER)
    account_messages_per_hour: float = setting(6000.0, _POSITIVE_NUMBER)
    key_package_claims_per_account_per_day: float = setting(1000.0, _POSITIVE_NUMBER)
    invitations_to_strangers_per_day: float = setting(500.0, _POSITIVE_NUMBER)
    account_renames_per_day: float = setting(5.0, _POSITIVE_NUMBER)

    @property
    def registration_mode(self) -> str:
        """``invite`` or ``open``: as set, else ``invite`` in production, ``open`` otherwise."""
        if self.registration:
            return self.registration
        return REGISTRATION_INVITE if self.production else REGISTRATION_OPEN

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
        return format_host_port(self.listen_host, self.listen_port)


# ---- settings table, derived from the fields --------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    """One setting as the layers read it."""

    env: str
    parse: Parse
    secret: bool
    #: The ServerConfig fields its value fills (a tuple value when several).
    fields: tuple[str, ...]


def _derive_table() -> dict[str, _Row]:
    rows: dict[str, _Row] = {}
    for config_field in dataclasses.fields(ServerConfig):
        spec = setting_of(config_field)
        if spec is None:
            continue
        name = spec.name or config_field.name
        rows[name] = _Row(
            env=f"{ENV_PREFIX}{name.upper()}",
            parse=spec.parse,
            secret=spec.secret,
            fields=spec.fills or (config_field.name,),
        )
    return rows


_TABLE = _derive_table()

#: Setting name (its TOML key) -> (environment variable, TOML key, secret?).
#: The server README's table lists the same (a test compares them).
SETTINGS: dict[str, tuple[str, str, bool]] = {
    name: (row.env, name, row.secret) for name, row in _TABLE.items()
}
_SECRETS = tuple(name for name, row in _TABLE.items() if row.secret)


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
    known = {*_TABLE, *(f"{secret}_file" for secret in _SECRETS), "limits"}
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
    for secret in _SECRETS:
        path = raw.pop(f"{secret}_file", None)
        if path is not None:
            raw[secret] = _read_secret_file(str(path), f"{secret}_file")
    return raw


def _layer_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for name, row in _TABLE.items():
        if row.env in env:
            raw[name] = env[row.env]
        if row.secret and f"{row.env}_FILE" in env:
            if row.env in env:
                raise ConfigError(row.env, f"set either {row.env} or {row.env}_FILE, not both")
            raw[name] = _read_secret_file(env[f"{row.env}_FILE"], f"{row.env}_FILE")
    for env_name, limit in LIMIT_ENV.items():
        if env_name in env:
            raw[f"limits.{limit}"] = env[env_name]
    return raw


def _build(raw: Mapping[str, Any]) -> ServerConfig:
    kwargs: dict[str, Any] = {}
    for name, row in _TABLE.items():
        if name not in raw:
            continue
        value = row.parse(raw[name], name)
        if len(row.fields) == 1:
            kwargs[row.fields[0]] = value
        elif value is not None:
            kwargs.update(zip(row.fields, value, strict=True))
    overrides: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("limits."):
            limit = key.removeprefix("limits.")
            kind = type(getattr(DEFAULT_LIMITS, limit))
            overrides[limit] = number(kind)(value, limit)
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
