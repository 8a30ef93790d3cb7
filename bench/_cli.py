"""What one `qpq` command costs a person, with and without `qpq daemon`.

Each command is a new process, as a person or a script runs it. Without a
daemon it imports the library, derives the SQLCipher key, connects,
authenticates and catches up before its own work; through a daemon it is
a JSON-RPC call on the profile's socket (docs/daemon.md).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench._scripts import ScriptRow
from qpq_client import Client, ServerAddress, Trust
from qpq_client.cli._rpc import open_link
from qpq_server.testing import RunningServer, start_server

__all__ = ["run"]

_PASSPHRASE = "bench-cli-passphrase"  # noqa: S105 - a throwaway profile
_NO_LIMITS = {"QPQ_RATE_PER_SECOND": "100000", "QPQ_RATE_BURST": "100000"}
_READY_SECONDS = 60.0


def _qpq() -> list[str]:
    beside = Path(sys.executable).parent / "qpq"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "qpq_client.cli"]


def _env(home: Path, server: RunningServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QPQ_")}
    env.update(
        QPQ_HOME=str(home),
        QPQ_STATE_KEY=_PASSPHRASE,
        QPQ_SERVER=f"{server.host}:{server.port}",
        QPQ_PIN=server.fingerprint,
    )
    return env


async def _profiles(workdir: Path, server: RunningServer) -> tuple[Path, Path]:
    """alice and bob, in a group together."""
    homes = (workdir / "alice", workdir / "bob")
    clients = [
        await Client.create(
            home,
            _PASSPHRASE,
            f"cli-{home.name}",
            server=ServerAddress(server.host, server.port),
            trust=Trust(pin=server.fingerprint),
            token=server.token,
        )
        for home in homes
    ]
    alice, bob = clients
    try:
        await bob.add_contact(alice.username)
        await alice.create_group("bench")
        await alice.invite("bench", [bob.username])
        while not any(g.name == "bench" for g in bob.groups()):
            await bob.receive(wait=10)
    finally:
        for client in clients:
            await client.close()
    return homes


def _p50_ms(args: Callable[[int], list[str]], env: dict[str, str], count: int) -> float:
    took = []
    for n in range(count):
        started = time.perf_counter()
        subprocess.run([*_qpq(), *args(n)], env=env, check=True, capture_output=True)  # noqa: S603
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


def _measure(home: Path, server: RunningServer, count: int) -> dict[str, float]:
    env = _env(home, server)
    return {
        "send": _p50_ms(lambda n: ["send", "bench", f"message {n}"], env, count),
        "group list": _p50_ms(lambda _: ["group", "list"], env, count),
    }


def _with_daemon(home: Path, server: RunningServer, count: int) -> dict[str, float]:
    env = _env(home, server)
    daemon = subprocess.Popen(  # noqa: S603 - our own command
        [*_qpq(), "daemon", "--foreground"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + _READY_SECONDS
        while True:
            link = open_link(home)
            if link is not None:
                connected = link.call("status")["connected"]
                link.close()
                if connected:
                    break
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError("qpq daemon did not connect")
            time.sleep(0.05)
        return _measure(home, server, count)
    finally:
        daemon.terminate()
        daemon.wait(30)


async def run(workdir: Path, quick: bool) -> list[ScriptRow]:
    """`qpq send` and `qpq group list`, each a new process, p50 over ``count`` runs."""
    count = 5 if quick else 30
    server_dir = workdir / "cli-server"
    server_dir.mkdir(parents=True, exist_ok=True)
    server = start_server(server_dir, extra_env=_NO_LIMITS)
    try:
        alice, _ = await _profiles(workdir / "cli-homes", server)
        alone = await asyncio.to_thread(_measure, alice, server, count)
        through = await asyncio.to_thread(_with_daemon, alice, server, count)
    finally:
        server.stop()
    note = f"p50 of {count} commands, each a new process"
    return [
        ScriptRow(
            f"qpq {command} through qpq daemon",
            "ms",
            through[command],
            alone[command],
            "the command on its own",
            note,
        )
        for command in ("send", "group list")
    ]
