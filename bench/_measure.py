"""What every phase measures with: delivery tracking, percentiles, /proc readings."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Every message body has this many characters: the key, a space, then filler.
BODY_CHARS = 100
_FILLER = "the quick brown fox jumps over the lazy dog " * 3


def body(key: str) -> str:
    """A message body of BODY_CHARS characters that starts with ``key`` (no spaces in it)."""
    return f"{key} {_FILLER}"[:BODY_CHARS]


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@dataclass(slots=True)
class _Expected:
    waiting: set[str]
    done: asyncio.Future[float]


@dataclass(slots=True)
class Inbox:
    """Where every receive loop of one system reports the messages it yields.

    A sender registers a key with the receivers it expects to get it
    (:meth:`expect`); each receive loop calls :meth:`arrived` with what it
    yielded; the future resolves, with the clock reading, once the last
    receiver has it. Anything else a loop yields is counted, not dropped:
    a duplicate, a key nobody expects, or an entry that is not a message.
    """

    duplicates: int = 0
    strays: int = 0
    anomalies: list[str] = field(default_factory=list)
    _pending: dict[str, _Expected] = field(default_factory=dict)
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def expect(self, key: str, receivers: tuple[str, ...]) -> asyncio.Future[float]:
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pending[key] = _Expected(set(receivers), done)
        return done

    def forget(self, key: str) -> None:
        """Stop waiting for ``key`` (it timed out)."""
        self._pending.pop(key, None)

    def arrived(self, receiver: str, text: str) -> None:
        now = time.perf_counter()
        key = text.split(" ", 1)[0]
        if (receiver, key) in self._seen:
            self.duplicates += 1
            return
        self._seen.add((receiver, key))
        expected = self._pending.get(key)
        if expected is None or receiver not in expected.waiting:
            self.strays += 1
            return
        expected.waiting.discard(receiver)
        if not expected.waiting:
            del self._pending[key]
            if not expected.done.done():
                expected.done.set_result(now)

    def anomaly(self, receiver: str, what: str) -> None:
        """A receive loop yielded something that is neither a message nor an expected event."""
        self.anomalies.append(f"{receiver}: {what}")

    def problems(self) -> str:
        """What went wrong so far, for a row's note ("" when nothing did)."""
        parts = []
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate deliveries")
        if self.strays:
            parts.append(f"{self.strays} unexpected deliveries")
        if self.anomalies:
            parts.append(f"{len(self.anomalies)} other entries, first: {self.anomalies[0]}")
        return "; ".join(parts)


def fsync_ms(directory: Path, rounds: int = 50) -> float:
    """Median ms of writing 4 KiB to a file in ``directory`` and syncing it (os.fsync)."""
    path = directory / "fsync-probe"
    spent: list[float] = []
    with path.open("wb") as probe:
        for _ in range(rounds):
            started = time.perf_counter()
            probe.write(os.urandom(4096))
            probe.flush()
            os.fsync(probe.fileno())
            spent.append((time.perf_counter() - started) * 1000)
    path.unlink()
    return percentile(spent, 0.5)


# ---- the server process, from /proc --------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (every thread), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def settle(pid: int, limit_seconds: float) -> None:
    """Wait until process ``pid`` stops using CPU (its work queue is empty), within a limit."""
    deadline = time.monotonic() + limit_seconds
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        now = cpu_seconds(pid)
        if now - last <= 0.01:
            return
        last = now


@dataclass(slots=True)
class CpuMeter:
    """CPU seconds a server process and this (client) process spent between start and stop."""

    pid: int
    server: float = 0.0
    client: float = 0.0
    _server0: float = 0.0
    _client0: float = 0.0

    def start(self) -> None:
        self._server0 = cpu_seconds(self.pid)
        times = os.times()
        self._client0 = times.user + times.system

    def stop(self) -> None:
        self.server = cpu_seconds(self.pid) - self._server0
        times = os.times()
        self.client = times.user + times.system - self._client0
