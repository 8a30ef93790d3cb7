"""Throughput of the qpq-proto codec and call state machines, in memory.

Prints a table; it asserts nothing and is not a test. Run it through tox::

    tox -e bench-proto            # or: python packages/qpq-proto/bench/bench_codec.py

Each row runs its operation repeatedly for about ``--seconds`` (default 0.5)
and reports operations per second and the wire bytes moved per second.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import capnp

from qpq_proto import (
    ClientCall,
    Enqueue,
    Enqueued,
    Fetch,
    Request,
    RequestReceived,
    ResponseReceived,
    ServerCall,
    __version__,
    decode_request,
    encode_request,
)

MIB = 1024 * 1024
RECIPIENT = bytes(range(32))
TOKEN = "bench-token"  # noqa: S105 (a placeholder, not a secret)


@dataclass(frozen=True)
class Row:
    name: str
    wire_bytes: int
    ops_per_second: float

    @property
    def megabytes_per_second(self) -> float:
        return self.wire_bytes * self.ops_per_second / 1e6


def measure(name: str, wire_bytes: int, operation: Callable[[], object], seconds: float) -> Row:
    operation()  # warm up (schema load, allocator)
    count, batch = 0, 1
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            operation()
        count += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return Row(name, wire_bytes, count / elapsed)
        batch = min(batch * 2, 10_000)


def round_trip(request: Request) -> Callable[[], object]:
    """Client encodes, server decodes and answers, client decodes the answer."""

    def run() -> object:
        client, server = ClientCall(request), ServerCall()
        (received,) = server.receive_data(client.request_bytes(), end_stream=True)
        assert isinstance(received, RequestReceived)
        answer = server.respond(Enqueued(seq=1))
        events = client.receive_data(answer, end_stream=True)
        assert isinstance(events[0], ResponseReceived)
        return events

    return run


def rows(seconds: float) -> list[Row]:
    cases = {
        "Fetch": Request(call=Fetch(limit=100), token=TOKEN),
        "Enqueue 100 B": Request(call=Enqueue(RECIPIENT, b"p" * 100), token=TOKEN),
        "Enqueue 1 MiB": Request(call=Enqueue(RECIPIENT, b"p" * MIB), token=TOKEN),
    }
    out: list[Row] = []
    for label, request in cases.items():
        data = encode_request(request)
        encode = functools.partial(encode_request, request)
        decode = functools.partial(decode_request, data)
        out.append(measure(f"encode {label}", len(data), encode, seconds))
        out.append(measure(f"decode {label}", len(data), decode, seconds))
    for label in ("Enqueue 100 B", "Enqueue 1 MiB"):
        request = cases[label]
        out.append(
            measure(
                f"round trip {label}",
                len(encode_request(request)),
                round_trip(request),
                seconds,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per row")
    args = parser.parse_args()
    print(
        f"qpq-proto {__version__} · pycapnp {capnp.__version__} · "
        f"Python {platform.python_version()} · {platform.machine()}"
    )
    print("round trip = ClientCall → ServerCall → respond → ClientCall, in memory\n")
    header = f"{'operation':<28} {'wire bytes':>11} {'ops/s':>12} {'MB/s':>10}"
    print(header)
    print("-" * len(header))
    for row in rows(args.seconds):
        print(
            f"{row.name:<28} {row.wire_bytes:>11,} {row.ops_per_second:>12,.0f} "
            f"{row.megabytes_per_second:>10,.1f}"
        )


if __name__ == "__main__":
    main()
