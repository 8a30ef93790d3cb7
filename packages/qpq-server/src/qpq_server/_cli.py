"""``qpq-server``: a thin shell over the library.

Exit statuses: 0 clean shutdown (or healthy), 2 configuration or startup
refusal (one line on stderr naming the setting), 1 any other failure.
User errors never print a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qpq_server._checks import check_config, refusal
from qpq_server._cli_admin import add_admin_commands, run_accounts, run_invites
from qpq_server._cli_backup import add_backup_commands, run_backup, run_rekey, run_restore
from qpq_server._config import ServerConfig, load_config
from qpq_server._database_url import redact_url
from qpq_server._errors import ConfigError, StartupError
from qpq_server._health import check_health
from qpq_server._logging import configure_logging, get_logger
from qpq_server._server import run_server
from qpq_server._settings import host_port
from qpq_server._tls import fingerprint, generate_self_signed, load_tls
from qpq_server._version import __version__

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_REFUSED = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qpq-server", description="qpq delivery server (QUIC, ALPN qpq/1)"
    )
    parser.add_argument("--version", action="version", version=f"qpq-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", type=Path, help="TOML config file (default: $QPQ_CONFIG)")
        sub.add_argument("--listen", help="HOST:PORT to listen on (port 0: any free port)")
        sub.add_argument("--data-dir", help="directory for the database and dev certificate")

    run = commands.add_parser("run", help="run the server")
    common(run)
    run.add_argument(
        "--ready-file",
        type=Path,
        help="once listening, write JSON {host, port, cert_fingerprint, cert_path} here",
    )
    check = commands.add_parser("check-config", help="print every configuration problem")
    common(check)
    gen = commands.add_parser("gen-cert", help="write a self-signed certificate and key")
    common(gen)
    gen.add_argument("--cert", type=Path, help="certificate path (default: data dir)")
    gen.add_argument("--key", type=Path, help="key path (default: data dir)")
    gen.add_argument("--hostname", action="append", default=[], help="DNS name (repeatable)")
    gen.add_argument("--ip", action="append", default=[], help="IP address (repeatable)")
    gen.add_argument("--force", action="store_true", help="overwrite existing files")
    health = commands.add_parser("health", help="ask a server for its health")
    target = health.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", help="HOST:PORT of the server")
    target.add_argument(
        "--local", action="store_true", help="this host's server, pinned to its own certificate"
    )
    trust = health.add_mutually_exclusive_group()
    trust.add_argument("--ca-cert", type=Path, help="PEM certificate or CA to trust")
    trust.add_argument("--pin", help="SHA-256 hex of the server certificate (DER)")
    health.add_argument("--config", type=Path, help="TOML config file (for --local)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    add_admin_commands(commands, common)
    add_backup_commands(commands, common)
    return parser


def _load(args: argparse.Namespace, env: Mapping[str, str]) -> ServerConfig:
    cli: dict[str, Any] = {
        "listen": getattr(args, "listen", None),
        "data_dir": getattr(args, "data_dir", None),
    }
    return load_config(env=env, config_file=args.config, cli=cli)


def _refuse(message: str) -> int:
    print(f"qpq-server: error: {message}", file=sys.stderr)
    return EXIT_REFUSED


def _cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = _load(args, env)
    configure_logging(config.log_format, config.log_level)
    try:
        asyncio.run(run_server(config, ready_file=args.ready_file, reload=lambda: _load(args, env)))
    except (ConfigError, StartupError):
        raise
    except Exception:  # noqa: BLE001 - last resort: log the type, exit 1, no traceback
        get_logger().exception("the server failed")
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_check(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = _load(args, env)
    problems = check_config(config)
    mode = "production" if config.production else "development"
    print(f"mode: {mode}; listen: {config.listen}; data_dir: {config.data_dir}")
    print(f"registration: {config.registration_mode}")
    if config.database_url:
        print(f"database: {redact_url(config.database_url)}")
    for problem in problems:
        print(f"{problem.severity.value}: {problem}")
    if refusal(problems) is not None:
        return EXIT_REFUSED
    if not problems:
        print("ok")
    return EXIT_OK


def _cmd_gen_cert(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = _load(args, env)
    cert = args.cert or config.cert_path
    key = args.key or config.key_path
    for path in (cert, key):
        if path.exists() and not args.force:
            return _refuse(f"{path} exists; pass --force to overwrite")
    hostnames = tuple(args.hostname) or ("localhost",)
    addresses = tuple(args.ip) or ("127.0.0.1", "::1")
    try:
        tls = generate_self_signed(cert, key, hostnames=hostnames, addresses=addresses)
    except ValueError as error:
        return _refuse(f"--ip: {error}")
    print(f"certificate: {cert}\nkey: {key} (mode 0600)\nsha256: {tls.fingerprint}")
    return EXIT_OK


def _cmd_health(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    ca_cert: Path | None = args.ca_cert
    pin: str | None = args.pin
    if args.local:
        config = load_config(env=env, config_file=args.config)
        if config.listen_port == 0:
            return _refuse("listen: --local needs a fixed port, not 0")
        host = "::1" if ":" in config.listen_host else "127.0.0.1"
        port = config.listen_port
        if ca_cert is None and pin is None:
            pin = fingerprint(load_tls(config.cert_path, config.key_path).certificate)
    else:
        host, port = host_port(args.server, "--server")
    return check_health(host, port, ca_cert=ca_cert, pin=pin, timeout=args.timeout)


def _cmd_invites(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return run_invites(args, _load(args, env))


def _cmd_accounts(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return run_accounts(args, _load(args, env))


def _cmd_backup(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return run_backup(args, _load(args, env))


def _cmd_restore(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return run_restore(args, _load(args, env))


def _cmd_rekey(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return run_rekey(args, _load(args, env), env)


_COMMANDS = {
    "run": _cmd_run,
    "check-config": _cmd_check,
    "gen-cert": _cmd_gen_cert,
    "health": _cmd_health,
    "invites": _cmd_invites,
    "accounts": _cmd_accounts,
    "backup": _cmd_backup,
    "restore": _cmd_restore,
    "rekey": _cmd_rekey,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qpq-server`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args, os.environ)
    except ConfigError as error:
        return _refuse(str(error))
    except StartupError as error:
        return _refuse(str(error))
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
