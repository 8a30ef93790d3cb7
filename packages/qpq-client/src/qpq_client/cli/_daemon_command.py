"""``qpq daemon``, ``qpq daemon stop|status``, and ``recv --follow`` through a daemon.

Light: the daemon itself (:mod:`qpq_client.cli._daemon`) is imported only
by the command that runs it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from qpq_client._env import ENV_STATE_KEY
from qpq_client.cli._errors import EXIT_INTERRUPTED, fail, passphrase_came_from_environment
from qpq_client.cli._render import emit, entry_text
from qpq_client.cli._rpc import DaemonGoneError, DaemonLink, RpcError, open_link
from qpq_client.cli._via_daemon import daemon_lock_held

__all__ = ["daemon", "follow_daemon"]

LOG_FILE = "daemon.log"
#: How long `qpq daemon` waits for a daemon it started to listen, and
#: `qpq daemon stop` for one to let go of the profile.
_START_SECONDS = 60.0
_STOP_SECONDS = 60.0
_POLL_SECONDS = 0.05
_READY = b"ready\n"
#: Entry kinds a subscription notifies, by notification name.
_ENTRIES = ("message", "event", "request")


@click.group(invoke_without_command=True)
@click.option(
    "--foreground",
    is_flag=True,
    help="Stay attached, logging to stderr (for systemd and containers).",
)
@click.option(
    "--probe-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    metavar="S",
    help="Seconds between checks that the server still answers.",
)
@click.option("--detached", is_flag=True, hidden=True)  # the child `qpq daemon` starts
@click.pass_context
def daemon(ctx: click.Context, foreground: bool, probe_interval: float, detached: bool) -> None:
    """Run one long-lived client for the profile (JSON-RPC on HOME/daemon.sock).

    It holds the connection, the subscription and the outbox, and connects
    again after any loss. While it runs, the other commands are calls to
    it. Without --foreground it starts in the background, logging to
    HOME/daemon.log. Stop it with `qpq daemon stop`.
    """
    if ctx.invoked_subcommand is not None:
        return
    opts: Any = ctx.obj
    home: Path = opts.home
    if daemon_lock_held(home):
        fail(f"a qpq daemon already runs for {home} (qpq daemon status)")
    if detached:
        _run_detached(opts, probe_interval)
    elif foreground:
        _serve(opts, opts.passphrase(), probe_interval, ready=lambda: None)
    else:
        _start_in_background(opts, probe_interval)


def _serve(opts: Any, passphrase: str, probe_interval: float, ready: Any) -> None:
    # The daemon itself: the library, loaded only by the process that serves.
    from qpq_client.cli._daemon import DaemonSettings, run_daemon  # noqa: PLC0415
    from qpq_client.cli._local import run  # noqa: PLC0415

    _log_for_a_daemon()
    settings = DaemonSettings(probe_interval=probe_interval)
    run(lambda: run_daemon(opts.home, passphrase, opts.connection(), settings, ready))


def _log_for_a_daemon() -> None:
    # The library's notices with a time, and the daemon's own at INFO: a
    # daemon's log is read later, by someone who needs to know when.
    library = logging.getLogger("qpq_client")
    library.setLevel(logging.INFO)
    for handler in library.handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s qpq daemon: %(message)s"))


def _start_in_background(opts: Any, probe_interval: float) -> None:
    """Start a detached daemon; return once it listens (or say why it did not start)."""
    home: Path = opts.home
    secrets = {
        "passphrase": opts.passphrase(),
        "token": opts.token,
        # Whether a wrong passphrase is worth checking in the environment.
        "from_environment": bool(os.environ.get(ENV_STATE_KEY)),
    }
    argv = [sys.executable, "-m", "qpq_client.cli", "--home", str(home)]
    for flag, value in (
        ("--server", opts.server),
        ("--ca-cert", opts.ca_cert),
        ("--pin", opts.pin),
    ):
        if value is not None:
            argv += [flag, value]
    argv += ["--connect-timeout", str(opts.connect_timeout)]
    if opts.p2p is not None:
        argv.append("--p2p" if opts.p2p else "--no-p2p")
    argv += ["daemon", "--detached", "--probe-interval", str(probe_interval)]
    # The secrets go through a pipe, never argv or the environment (which
    # other processes of the user can read in /proc).
    env = {k: v for k, v in os.environ.items() if k not in (ENV_STATE_KEY, "QPQ_TOKEN")}
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # outlives the terminal that started it
    )
    if child.stdin is None or child.stdout is None or child.stderr is None:  # pragma: no cover
        fail("could not talk to the daemon process")
    child.stdin.write(json.dumps(secrets).encode("utf-8") + b"\n")
    child.stdin.close()
    line = child.stdout.readline()
    if line == _READY:
        data = {"pid": child.pid, "home": str(home), "log": str(home / LOG_FILE)}
        emit(
            opts.as_json,
            data,
            f"qpq daemon started for {home} (pid {child.pid}; log: {home / LOG_FILE})",
        )
        return
    errors = child.stderr.read().decode("utf-8", errors="replace").strip()
    child.wait()
    click.echo(errors or "qpq: error: the daemon exited before it listened", err=True)
    sys.exit(child.returncode or 1)


def _run_detached(opts: Any, probe_interval: float) -> None:
    """The background daemon: secrets from stdin, "ready" on stdout, then its log file."""
    line = sys.stdin.buffer.readline(64 * 1024)
    try:
        secrets = json.loads(line)
        passphrase = str(secrets["passphrase"])
        token = secrets.get("token")
        if secrets.get("from_environment") is True:
            passphrase_came_from_environment()
    except (ValueError, KeyError, TypeError):
        fail("qpq daemon --detached reads its secrets on stdin, as `qpq daemon` writes them")
    opts = dataclasses.replace(opts, token=token if isinstance(token, str) else None)
    home: Path = opts.home

    def ready() -> None:
        sys.stdout.buffer.write(_READY)
        sys.stdout.flush()
        log = os.open(home / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)

    _serve(opts, passphrase, probe_interval, ready)


@daemon.command("stop")
@click.pass_context
def daemon_stop(ctx: click.Context) -> None:
    """Stop the profile's daemon; return once it let go of the profile."""
    opts: Any = ctx.obj
    home: Path = opts.home
    link = _running(home)
    try:
        link.call("stop")
    except (RpcError, DaemonGoneError, OSError) as error:
        fail(f"the daemon did not take the stop: {error}")
    finally:
        link.close()
    deadline = time.monotonic() + _STOP_SECONDS
    while daemon_lock_held(home):
        if time.monotonic() > deadline:
            fail(f"the daemon of {home} did not stop within {_STOP_SECONDS:g} s")
        time.sleep(_POLL_SECONDS)
    emit(opts.as_json, {"home": str(home), "stopped": True}, f"stopped the qpq daemon of {home}")


@daemon.command("status")
@click.pass_context
def daemon_status(ctx: click.Context) -> None:
    """Show whether a daemon runs for the profile, and whether it reaches the server.

    Exits with status 1 when none runs.
    """
    opts: Any = ctx.obj
    home: Path = opts.home
    link = open_link(home)
    if link is None:
        emit(opts.as_json, {"running": False, "home": str(home)}, f"no qpq daemon runs for {home}")
        sys.exit(1)
    try:
        status = link.call("status")
    except (RpcError, DaemonGoneError, OSError) as error:
        fail(f"the daemon did not answer: {error}")
    finally:
        link.close()
    status["running"] = True
    if status["connected"]:
        state = f"connected to {status['server']}"
    else:
        state = f"not connected ({status['last_error'] or 'connecting'}); it keeps trying"
    emit(
        opts.as_json,
        status,
        f"qpq daemon (pid {status['pid']}) of {status['username']} at {home}: {state};"
        f" {status['reconnects']} reconnects, {status['subscribers']} subscribed",
    )


def _running(home: Path) -> DaemonLink:
    link = open_link(home)
    if link is None:
        fail(f"no qpq daemon runs for {home}")
    return link


def follow_daemon(link: DaemonLink, as_json: bool) -> None:
    """`qpq recv --follow` through the daemon: a subscription, printed as it arrives."""

    def show(entry: dict[str, Any]) -> None:
        emit(as_json, entry, entry_text(entry, with_time=True))
        sys.stdout.flush()

    try:
        subscribed = link.call("subscribe")
        for entry in subscribed["entries"]:
            show(entry)
        for method, params in link.notifications():
            if method in _ENTRIES:
                show(params)
            elif method == "dropped":
                fail(f"the daemon dropped this subscription: {params.get('reason')}")
        fail("the daemon stopped (qpq daemon status)")
    except RpcError as error:
        fail(error.message)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    finally:
        link.close()
