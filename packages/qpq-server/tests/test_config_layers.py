"""Configuration layering, secrets handling and the production token rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qpq_server import ConfigError, ServerConfig, check_config, load_config
from qpq_server._checks import (
    MIN_DB_KEY_BITS,
    Severity,
    db_key_weakness,
    estimated_bits,
    token_weakness,
)
from qpq_server._config import SETTINGS
from qpq_server._settings import host_port
from qpq_server.testing import TEST_DB_KEY, TEST_TOKEN


def test_defaults() -> None:
    config = load_config(env={})
    assert config.listen == "0.0.0.0:7000"
    assert config.data_dir == Path("data")
    assert not config.production
    assert config.metrics_listen is None
    assert config.limits.rate_per_second == 50


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    file = tmp_path / "qpq-server.toml"
    file.write_text('listen = "127.0.0.1:1"\ndata_dir = "/from-file"\nlog_format = "json"\n')
    env = {"QPQ_CONFIG": str(file), "QPQ_LISTEN": "127.0.0.1:2", "QPQ_QUEUE_DEPTH": "7"}
    config = load_config(env=env, cli={"listen": "[::1]:3"})
    assert (config.listen_host, config.listen_port) == ("::1", 3)
    assert config.data_dir == Path("/from-file")
    assert config.log_format == "json"
    assert config.limits.queue_depth == 7


def test_secret_files_and_repr(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("token-from-file\n")
    (tmp_path / "k").write_text("key-from-file")
    env = {"QPQ_AUTH_TOKEN_FILE": str(tmp_path / "t"), "QPQ_DB_KEY_FILE": str(tmp_path / "k")}
    config = load_config(env=env)
    assert config.auth_token == "token-from-file"
    assert config.db_key == "key-from-file"
    assert "token-from-file" not in repr(config)
    assert "key-from-file" not in repr(config)
    with pytest.raises(ConfigError, match="QPQ_AUTH_TOKEN"):
        load_config(env={**env, "QPQ_AUTH_TOKEN": "both"})
    with pytest.raises(ConfigError, match="QPQ_DB_KEY_FILE"):
        load_config(env={"QPQ_DB_KEY_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"QPQ_LISTEN": "nohost"}, "listen"),
        ({"QPQ_LISTEN": "h:99999"}, "listen"),
        ({"QPQ_LISTEN": "::1:7000"}, "listen"),  # an IPv6 address takes brackets
        ({"QPQ_METRICS_LISTEN": "[nohost]:9"}, "metrics_listen"),
        ({"QPQ_REQUEST_TIMEOUT_SECONDS": "0"}, "request_timeout_seconds"),
        ({"QPQ_DATABASE_URL": "mysql://x"}, "database_url"),
        ({"QPQ_PRODUCTION": "maybe"}, "production"),
        ({"QPQ_LOG_FORMAT": "xml"}, "log_format"),
        ({"QPQ_QUEUE_DEPTH": "lots"}, "queue_depth"),
        ({"QPQ_QUEUE_DEPTH": "0"}, "limits"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert caught.value.setting == setting


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("lissen = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(env={}, config_file=file)


def test_every_settable_field_is_one_setting() -> None:
    settable = {f.name for f in dataclasses.fields(ServerConfig)} - {"listen_port", "limits"}
    assert {"listen_host"} | set(SETTINGS) - {"listen"} == settable
    for name, (env, toml_key, secret) in SETTINGS.items():
        assert (env, toml_key) == (f"QPQ_{name.upper()}", name)
        assert secret == (name in ("auth_token", "auth_token_next", "db_key", "database_url"))
    # A secret stays out of repr because its field is declared secret.
    assert "hunter2" not in repr(ServerConfig(database_url="postgresql://u:hunter2@h/db"))


def test_parse_hostport() -> None:
    assert host_port("[::]:0", "x") == ("::", 0)
    assert host_port("example.org:7000", "x") == ("example.org", 7000)


def test_token_rule() -> None:
    assert token_weakness("") is not None
    assert token_weakness("devtoken") is not None
    assert token_weakness("DevToken") is not None
    assert token_weakness("x" * 64) is not None
    # Long and varied enough by count, but a sequence, repeated: guessable.
    assert token_weakness("0123456789abcdef" * 2) is not None
    assert token_weakness("correct-horse-battery-staple-1234") is None
    assert token_weakness(TEST_TOKEN) is None


def test_db_key_rule_estimates_guesses() -> None:
    for weak in ("x", "correcthorse", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "1qaz2wsx3edc4rfv5tgb"):
        assert db_key_weakness(weak) is not None
        assert estimated_bits(weak) < MIN_DB_KEY_BITS
    assert db_key_weakness(TEST_DB_KEY) is None
    assert (
        db_key_weakness("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") is None
    )
    assert estimated_bits("") == 0
    # Longer than zxcvbn analyses: judged by its start, never better than that.
    assert estimated_bits(TEST_DB_KEY * 3) >= estimated_bits(TEST_DB_KEY)
    problems = check_config(ServerConfig(auth_token=TEST_TOKEN, db_key="x"))
    assert [(p.setting, p.severity) for p in problems] == [("db_key", Severity.WARNING)]


def test_development_only_warns() -> None:
    problems = check_config(ServerConfig())
    assert {p.setting for p in problems} == {"auth_token", "db_key"}
    assert all(p.severity is Severity.WARNING for p in problems)
    # Production registers by invitation unless told otherwise: the token
    # is then an optional gate, needed (and judged) with open registration.
    strict = check_config(ServerConfig(production=True))
    assert {p.setting for p in strict if p.severity is Severity.ERROR} == {"db_key", "tls_cert"}
    strict = check_config(ServerConfig(production=True, registration="open"))
    assert {p.setting for p in strict if p.severity is Severity.ERROR} == {
        "auth_token",
        "db_key",
        "tls_cert",
    }


def test_registration_mode_follows_production_unless_set(tmp_path: Path) -> None:
    assert ServerConfig().registration_mode == "open"
    assert ServerConfig(production=True).registration_mode == "invite"
    assert load_config(env={"QPQ_REGISTRATION": "OPEN", "QPQ_PRODUCTION": "1"}).registration == (
        "open"
    )
    assert load_config(env={"QPQ_REGISTRATION": ""}).registration_mode == "open"
    with pytest.raises(ConfigError, match="registration: must be one of invite, open"):
        load_config(env={"QPQ_REGISTRATION": "anyone"})
    # A weak token stays refused in production whatever the mode.
    weak = check_config(ServerConfig(production=True, auth_token="devtoken"))
    assert "auth_token" in {p.setting for p in weak if p.severity is Severity.ERROR}


def test_transport_limits_defaults_env_and_toml(tmp_path: Path) -> None:
    config = load_config(env={})
    assert (config.max_connections, config.max_connections_per_address) == (10_000, 64)
    assert config.connection_buffer_limit == 2 * config.limits.max_message_bytes
    assert config.subscribe_buffer_limit == 2 * config.limits.max_message_bytes
    assert config.max_subscriptions_per_identity == 4
    file = tmp_path / "qpq-server.toml"
    file.write_text("subscribe_stall_seconds = 5\nmax_connections = 9\n")
    env = {
        "QPQ_CONFIG": str(file),
        "QPQ_MAX_CONNECTIONS_PER_ADDRESS": "3",
        "QPQ_SUBSCRIBE_BUFFER_BYTES": "65536",
        "QPQ_REQUEST_TIMEOUT_SECONDS": "2.5",
    }
    config = load_config(env=env)
    assert config.subscribe_stall_seconds == 5
    assert config.max_connections == 9
    assert config.max_connections_per_address == 3
    assert config.subscribe_buffer_limit == 65536
    assert config.request_timeout_seconds == 2.5


def test_receive_bounds_defaults_env_and_toml(tmp_path: Path) -> None:
    config = load_config(env={})
    assert config.stream_window == config.limits.max_message_bytes
    assert config.receive_window == 2 * config.limits.max_message_bytes
    assert config.unauthenticated_buffer_bytes == 64 * 1024
    assert config.authenticate_timeout_seconds == 10
    assert config.receive_budget_bytes == 512 * 1024 * 1024
    file = tmp_path / "qpq-server.toml"
    file.write_text("receive_budget_bytes = 100000000\nauthenticate_timeout_seconds = 3\n")
    env = {
        "QPQ_CONFIG": str(file),
        "QPQ_STREAM_WINDOW_BYTES": "1048576",
        "QPQ_RECEIVE_WINDOW_BYTES": "4194304",
        "QPQ_UNAUTHENTICATED_BUFFER_BYTES": "16384",
    }
    config = load_config(env=env)
    assert (config.stream_window, config.receive_window) == (1048576, 4194304)
    assert config.unauthenticated_buffer_bytes == 16384
    assert config.authenticate_timeout_seconds == 3
    assert config.receive_budget_bytes == 100_000_000
    assert not [
        p
        for p in check_config(config)
        if p.severity is Severity.ERROR and p.setting != "auth_token"
    ]
    tight = ServerConfig(receive_budget_bytes=1024, unauthenticated_buffer_bytes=1024)
    refused = {p.setting for p in check_config(tight) if p.severity is Severity.ERROR}
    assert {"receive_budget_bytes", "unauthenticated_buffer_bytes"} <= refused


@pytest.mark.parametrize(
    "env_name",
    [
        "QPQ_MAX_CONNECTIONS",
        "QPQ_MAX_SUBSCRIPTIONS_PER_IDENTITY",
        "QPQ_SUBSCRIBE_STALL_SECONDS",
        "QPQ_AUTHENTICATE_TIMEOUT_SECONDS",
        "QPQ_UNAUTHENTICATED_BUFFER_BYTES",
        "QPQ_RECEIVE_BUDGET_BYTES",
    ],
)
def test_a_zero_cap_is_refused(env_name: str) -> None:
    with pytest.raises(ConfigError):
        load_config(env={env_name: "0"})
