"""The command line: production refusals, startup errors, check-config, gen-cert, health."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qpq_server.testing import (
    TEST_DB_KEY,
    TEST_TOKEN,
    RunningServer,
    ServerStartError,
    server_command,
    server_env,
    start_server,
)

STRONG_TOKEN = "Zq8v-Lw3N_pX7rT2yK9mB4cD6fH1jS5gA0eU"
STRONG_DB_KEY = "LFE57xx74mKPwMqLfITYbKdPUuySoWMeG5lUY-e94-U"


def _run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_command(*args),
        env=env or server_env(tmp_path / "data", TEST_TOKEN, TEST_DB_KEY, None),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=tmp_path,
    )


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate made by `qpq-server gen-cert`, once: the tests only read it."""
    home = tmp_path_factory.mktemp("cert")
    result = _run(home, "gen-cert", "--cert", str(home / "c.pem"), "--key", str(home / "k.pem"))
    assert result.returncode == 0, result.stderr
    return home / "c.pem", home / "k.pem"


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One development server for the tests that only look at it."""
    server = start_server(tmp_path_factory.mktemp("dev"))
    try:
        yield server
    finally:
        server.stop()


def _production_env(tmp_path: Path, cert: tuple[Path, Path], **overrides: str) -> dict[str, str]:
    env = server_env(tmp_path / "data", STRONG_TOKEN, STRONG_DB_KEY, None)
    env.update(
        {
            "QPQ_PRODUCTION": "1",
            "QPQ_TLS_CERT": str(cert[0]),
            "QPQ_TLS_KEY": str(cert[1]),
            "QPQ_LISTEN": "127.0.0.1:0",
        }
    )
    env.update(overrides)
    return {k: v for k, v in env.items() if v != "<unset>"}


@pytest.mark.parametrize(
    ("overrides", "setting", "words"),
    [
        # The token is optional where registration is by invitation (the
        # production default); with open registration it must be set.
        ({"QPQ_AUTH_TOKEN": "", "QPQ_REGISTRATION": "open"}, "auth_token", "empty"),
        ({"QPQ_AUTH_TOKEN": "devtoken"}, "auth_token", "devtoken"),
        ({"QPQ_AUTH_TOKEN": "short-but-random-9f3a"}, "auth_token", "too weak"),
        ({"QPQ_AUTH_TOKEN": "ab" * 20}, "auth_token", "distinct"),
        ({"QPQ_DB_KEY": ""}, "db_key", "unencrypted"),
        ({"QPQ_TLS_CERT": "<unset>", "QPQ_TLS_KEY": "<unset>"}, "tls_cert", "never generates"),
        ({"QPQ_TLS_CERT": "/nonexistent/cert.pem"}, "tls_cert", "does not exist"),
    ],
)
def test_production_refusals(
    tmp_path: Path, cert: tuple[Path, Path], overrides: dict[str, str], setting: str, words: str
) -> None:
    result = _run(tmp_path, "run", env=_production_env(tmp_path, cert, **overrides))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"qpq-server: error: {setting}:")
    assert words in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "server-cert.pem").exists()


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"QPQ_DB_KEY": "x"}, "db_key"),
        ({"QPQ_DB_KEY": "hunter2-is-my-db-key"}, "db_key"),
        ({"QPQ_AUTH_TOKEN": "abcdefghijklmnopqrstuvwxyz0123456789"}, "auth_token"),
        ({"QPQ_AUTH_TOKEN": "qwertyuiopasdfghjklzxcvbnm1234567890qwerty"}, "auth_token"),
        ({"QPQ_AUTH_TOKEN": "sunflower-sunflower-sunflower-sunflower"}, "auth_token"),
        ({"QPQ_AUTH_TOKEN": "0123456789abcdef" * 2}, "auth_token"),
    ],
)
def test_guessable_secrets_are_refused_in_one_line_without_the_secret(
    tmp_path: Path, cert: tuple[Path, Path], overrides: dict[str, str], setting: str
) -> None:
    env = _production_env(tmp_path, cert, **overrides)
    result = _run(tmp_path, "run", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"qpq-server: error: {setting}: is too weak: about ")
    assert "bits by a strength estimate" in lines[0]
    secret = next(iter(overrides.values()))
    assert secret not in result.stderr + result.stdout
    # Development starts, and says so loudly (still without the secret).
    env.pop("QPQ_PRODUCTION")
    checked = _run(tmp_path, "check-config", env=env)
    assert checked.returncode == 0
    assert f"warning: {setting}: is too weak" in checked.stdout
    assert secret not in checked.stdout + checked.stderr


def test_production_starts_with_good_settings(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    env = _production_env(tmp_path, cert)
    extra = {
        k: v
        for k, v in env.items()
        if k.startswith("QPQ_") and k not in ("QPQ_AUTH_TOKEN", "QPQ_DB_KEY", "QPQ_DATA_DIR")
    }
    server = start_server(tmp_path, token=STRONG_TOKEN, db_key=STRONG_DB_KEY, extra_env=extra)
    try:
        assert "PRODUCTION mode" in server.log()
    finally:
        assert server.stop() == 0


def test_wrong_db_key_is_a_clear_startup_error(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    server.stop()
    with pytest.raises(ServerStartError) as caught:
        start_server(tmp_path, db_key="not-the-key", data_dir=server.data_dir)
    assert caught.value.returncode == 2
    assert "db_key is wrong" in caught.value.log
    assert "Traceback" not in caught.value.log
    # An encrypted file is no SQLite file without the key.
    assert not (server.data_dir / "qpq.db").read_bytes().startswith(b"SQLite format 3")


def test_port_in_use_is_a_startup_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError) as caught:
            start_server(tmp_path, listen=f"127.0.0.1:{port}")
    assert caught.value.returncode == 2
    assert "cannot listen" in caught.value.log


def test_invalid_setting_names_it(tmp_path: Path) -> None:
    env = server_env(tmp_path / "data", TEST_TOKEN, TEST_DB_KEY, {"QPQ_LISTEN": "no-port"})
    result = _run(tmp_path, "run", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("qpq-server: error: listen:")


def test_production_refuses_a_remote_database_without_verified_tls(
    tmp_path: Path, cert: tuple[Path, Path]
) -> None:
    url = "postgresql://qpq:pg-hunter2-pass@db.example:5432/qpq?sslmode=require"
    env = _production_env(tmp_path, cert, QPQ_DATABASE_URL=url)
    result = _run(tmp_path, "run", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("qpq-server: error: database_url:")
    assert "sslmode=verify-full" in result.stderr
    assert "pg-hunter2-pass" not in result.stderr + result.stdout
    checked = _run(tmp_path, "check-config", env=env)
    assert "postgresql://qpq:***@db.example:5432/qpq" in checked.stdout
    assert "pg-hunter2-pass" not in checked.stdout + checked.stderr


def test_an_unreachable_database_is_a_startup_error_without_the_password(
    tmp_path: Path,
) -> None:
    # Nothing listens on port 1 of loopback.
    url = "postgresql://qpq:pg-hunter2-pass@127.0.0.1:1/qpq"
    env = server_env(tmp_path / "data", TEST_TOKEN, "", {"QPQ_DATABASE_URL": url})
    result = _run(tmp_path, "run", env=env)
    assert result.returncode == 2
    assert "cannot connect to database postgresql://qpq:***@127.0.0.1:1/qpq" in result.stderr
    assert "pg-hunter2-pass" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    env = server_env(
        tmp_path / "data", "", "", {"QPQ_PRODUCTION": "true", "QPQ_REGISTRATION": "open"}
    )
    result = _run(tmp_path, "check-config", env=env)
    assert result.returncode == 2
    for setting in ("auth_token", "db_key", "tls_cert"):
        assert f"error: {setting}:" in result.stdout
    env = server_env(tmp_path / "data", "", "", None)
    result = _run(tmp_path, "check-config", env=env)
    assert result.returncode == 0
    assert "warning: db_key:" in result.stdout


def test_config_file_and_precedence(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(STRONG_TOKEN + "\n")
    config = tmp_path / "qpq-server.toml"
    config.write_text(
        'listen = "127.0.0.1:7999"\nproduction = true\n'
        f'auth_token_file = "{token_file}"\ndb_key = "{STRONG_DB_KEY}"\n[limits]\nqueue_depth = 5\n'
    )
    env = server_env(tmp_path / "data", "", "", None)
    env.pop("QPQ_AUTH_TOKEN")
    env.pop("QPQ_DB_KEY")
    env["QPQ_LISTEN"] = "127.0.0.1:7998"
    result = _run(
        tmp_path, "check-config", "--config", str(config), "--listen", "127.0.0.1:7997", env=env
    )
    assert "listen: 127.0.0.1:7997" in result.stdout  # flag > env > file
    assert "auth_token" not in result.stdout  # read from the file, strong
    assert "db_key" not in result.stdout
    assert STRONG_TOKEN not in result.stdout + result.stderr


def test_gen_cert_writes_a_private_key(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    assert stat.S_IMODE(os.stat(cert[1]).st_mode) == 0o600
    again = _run(tmp_path, "gen-cert", "--cert", str(cert[0]), "--key", str(cert[1]))
    assert again.returncode == 2
    assert "exists" in again.stderr


def test_generated_dev_cert_and_ready_file(dev_server: RunningServer) -> None:
    server = dev_server
    key = server.data_dir / "server-key.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert server.fingerprint in server.log()
    assert "DEVELOPMENT" in server.log()
    assert server.port > 0


def test_health_command(tmp_path: Path, dev_server: RunningServer) -> None:
    server = dev_server
    target = f"{server.host}:{server.port}"
    pinned = _run(tmp_path, "health", "--server", target, "--pin", server.fingerprint)
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert pinned.stdout.startswith("ok:")
    by_ca = _run(tmp_path, "health", "--server", target, "--ca-cert", str(server.cert_path))
    assert by_ca.returncode == 0, by_ca.stdout + by_ca.stderr
    wrong = _run(tmp_path, "health", "--server", target, "--pin", "00" * 32)
    assert wrong.returncode == 1
    assert "does not match" in wrong.stdout
    untrusted = _run(tmp_path, "health", "--server", target, "--timeout", "5")
    assert untrusted.returncode == 1
    # One line, ours, that says what to do; nothing of aioquic's own log.
    assert untrusted.stderr == ""
    (line,) = untrusted.stdout.splitlines()
    assert line.startswith(f"unhealthy: cannot reach {target}: the TLS handshake")
    assert line.endswith(
        "(pass --pin SHA256 or --ca-cert PEM: the server's certificate is not"
        " one this system trusts)"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    silent = _run(
        tmp_path, "health", "--server", closed, "--pin", server.fingerprint, "--timeout", "1"
    )
    assert silent.returncode == 1
    assert silent.stdout == (
        f"unhealthy: cannot reach {closed}: no answer within 1 s (no server listens there,"
        " or a firewall drops the packets)\n"
    )


def test_health_local_pins_its_own_certificate(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server(tmp_path, listen=f"127.0.0.1:{port}")
    try:
        env = dict(server.env, QPQ_LISTEN=f"127.0.0.1:{port}")
        local = _run(tmp_path, "health", "--local", env=env)
        assert local.returncode == 0, local.stdout + local.stderr
    finally:
        server.stop()


def test_ready_file_is_json(dev_server: RunningServer) -> None:
    (ready,) = dev_server.log_path.parent.glob("ready-*.json")
    info = json.loads(ready.read_text())
    assert set(info) == {"host", "port", "cert_fingerprint", "cert_path", "metrics_port"}
    assert info["metrics_port"] is None  # no metrics listener configured
