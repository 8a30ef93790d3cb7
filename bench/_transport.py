"""Transport: qpq calls beside raw aioquic (bench_server's figures), qh3 and grpcio.

qpq and raw aioquic come from ``bench_server.py``'s calls section run here;
qh3 and gRPC echo the same bytes with the same timing helpers and round
lengths: the encoded qpq ``Health`` request for a small call, 1 MiB for a
large one.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench import _scripts
from bench._references import grpc_client, qh3_client, reference_server, write_certificate
from qpq_proto import Health, Request, encode_request
from qpq_server.testing import TEST_TOKEN

MIB = 1024 * 1024
REFERENCES = ("raw aioquic", "qh3", "grpcio")


@dataclass(frozen=True, slots=True)
class TransportRow:
    """One call pattern: qpq and every reference, in the same unit."""

    pattern: str
    unit: str
    qpq_call: str
    qpq: float | None
    references: dict[str, float | None]


@dataclass(frozen=True, slots=True)
class Transport:
    rows: list[TransportRow]
    script_rows: list[_scripts.ScriptRow]


async def _patterns(call: Callable[[bytes], Awaitable[bytes]], quick: bool) -> list[float]:
    """Small calls sequential, small calls in flight, 1 MiB sequential (MB/s)."""
    small = encode_request(Request(call=Health(), token=TEST_TOKEN))
    large = os.urandom(MIB)
    width = int(_scripts.server_settings(quick).in_flight)
    for _ in range(50):
        await call(small)
    for _ in range(3):
        await call(large)

    async def small_call() -> object:
        return await call(small)

    async def large_call() -> object:
        return await call(large)

    sequential = await _scripts.rate("sequential", small_call, quick)
    in_flight = await _scripts.rate("concurrent", small_call, quick, width=width)
    bulk = await _scripts.rate("sequential", large_call, quick, bulk=True) * MIB / 1e6
    return [sequential, in_flight, bulk]


def _find(
    rows: list[_scripts.ScriptRow], unit: str, name: str, baseline: str
) -> _scripts.ScriptRow | None:
    """bench_server's row with this unit and baseline whose name starts with ``name``."""
    for row in rows:
        if row.unit == unit and row.baseline_label == baseline and row.name.startswith(name):
            return row
    return None


async def run(workdir: Path, quick: bool) -> Transport:
    script_rows = await _scripts.server_sections({"calls"}, quick)
    cert, key = write_certificate(workdir)
    measured: dict[str, list[float]] = {}
    with reference_server("qh3", cert, key, workdir) as (port, _pid):
        async with qh3_client(port) as call:
            measured["qh3"] = await _patterns(call, quick)
    with reference_server("grpc", cert, key, workdir) as (port, _pid):
        async with grpc_client(port, cert.read_bytes()) as call:
            measured["grpcio"] = await _patterns(call, quick)
    width = int(_scripts.server_settings(quick).in_flight)
    patterns = [
        ("small call, sequential", "calls/s", "Health, sequential", "raw echo"),
        (f"small call, {width} in flight", "calls/s", f"Health, {width} in flight", "raw echo"),
        # The message call was Enqueue, then Publish: any name, the raw echo baseline.
        ("1 MiB, sequential", "MB/s", "", "raw 1 MiB echo"),
    ]
    rows = []
    for index, (pattern, unit, name, baseline) in enumerate(patterns):
        row = _find(script_rows, unit, name, baseline)
        rows.append(
            TransportRow(
                pattern,
                unit,
                "n/a" if row is None else row.name,
                None if row is None else row.value,
                {
                    "raw aioquic": None if row is None else row.baseline,
                    "qh3": measured["qh3"][index],
                    "grpcio": measured["grpcio"][index],
                },
            )
        )
    return Transport(rows, script_rows)
