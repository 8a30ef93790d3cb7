"""Where the time of one 1:1 message goes: a profile of the sequential pair phase.

The same workload as the report's ``pair`` phase (one sender, one receiver
in ``Client.follow()``, the next message once the last arrived), with both
clients profiled in this process (cProfile) and the server's CPU read from
/proc. Prints the latency, the CPU per message of the client process and of
the server, and the clients' profile time per message by part of the stack.
From the repository root, in the bench env (or any with qpq-server and
qpq-client installed)::

    tox -e bench --notest
    .tox/bench/bin/python -m bench.breakdown                 # 200 messages
    .tox/bench/bin/python -m bench.breakdown --messages 500
    .tox/bench/bin/python -m bench.breakdown --no-profile    # latency, CPU only

Profiling slows Python code (not the Rust and C parts) by a constant
factor: read the parts against each other, and the unprofiled latencies in
bench/REPORT.md for absolute figures. A part's time is what its own
functions ran (cProfile's "tottime"), so nothing is counted twice.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

from bench._measure import CpuMeter, body, percentile
from bench._qpq import QpqMessenger

#: Untimed messages first: connections warm, MLS state and caches built.
_WARM_UP = 3

#: Parts of the stack, first match wins: (part, what a profiled function's
#: file or name contains).
_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("waiting (epoll: the server, the other client)", ("'poll' of 'select.epoll'",)),
    ("SQLCipher statements (client state, WAL, fsync)", ("sqlcipher3",)),
    ("socket send/receive", ("'sendto' of", "'recvfrom' of")),
    ("MLS (qpq_core, Rust)", ("qpq_core",)),
    ("QUIC + TLS 1.3 (aioquic, AES-GCM)", ("aioquic", "cryptography", "pylsqpack")),
    ("qpq_client (receive, send, state logic)", ("qpq_client",)),
    ("qpq_proto (codec, call state machines, transport)", ("qpq_proto",)),
    ("asyncio event loop", ("asyncio", "selectors")),
)


def _part(path: str, name: str) -> str:
    for part, markers in _PARTS:
        if any(marker in path or marker in name for marker in markers):
            return part
    return "other Python (standard library, capnp)"


async def profile_pair(messages: int, *, profiled: bool = True) -> None:
    with tempfile.TemporaryDirectory(prefix="qpq-breakdown-") as workdir:
        async with QpqMessenger.running(Path(workdir)) as qpq:
            room = await qpq.room("breakdown", range(1))
            profile = cProfile.Profile()
            meter = CpuMeter(qpq.server_pid)
            latencies: list[float] = []
            wall = 0.0
            for n in range(_WARM_UP + messages):
                timed = n >= _WARM_UP
                if n == _WARM_UP:
                    meter.start()
                    wall = time.perf_counter()
                    if profiled:
                        profile.enable()
                key = f"m{n}"
                arrived = qpq.inbox.expect(key, room.receivers)
                sent_at = time.perf_counter()
                await qpq.send(room, body(key))
                arrived_at = await asyncio.wait_for(arrived, 30)
                if timed:
                    latencies.append((arrived_at - sent_at) * 1000)
            profile.disable()
            meter.stop()
            wall = time.perf_counter() - wall
            qpq.check()
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    per = 1000 / messages
    how = "profiled" if profiled else "not profiled"
    print(f"{messages} messages, 1:1 sequential ({how}); load average {os.getloadavg()}")
    print(f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(
        f"per message: wall {wall * per:.2f} ms, client process CPU {meter.client * per:.2f} ms "
        f"(sender and receiver), server CPU {meter.server * per:.2f} ms"
    )
    if not profiled:
        return
    parts: collections.Counter[str] = collections.Counter()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (path, _line, name), (_cc, _nc, own, _cum, _callers) in stats.items():
        parts[_part(path, name)] += own
    print("clients' profiled time per message, by part:")
    for part, seconds in parts.most_common():
        print(f"  {seconds * per:7.2f} ms  {part}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="timed messages (default 200)")
    parser.add_argument(
        "--no-profile", action="store_true", help="latency and CPU only, without the profiler"
    )
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    asyncio.run(profile_pair(args.messages, profiled=not args.no_profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
