"""Hostile streams get coded errors while other clients keep being served; rate limits trip."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from qpq_proto import (
    ErrorCode,
    ErrorResponse,
    Health,
    Request,
    ResolveUser,
    decode_response,
    encode_request,
)
from qpq_proto.errors import NotFoundError, RateLimitedError
from qpq_server.testing import RunningServer, ServerProcess


def _code(answer: bytes) -> ErrorCode:
    response = decode_response(answer)
    assert isinstance(response, ErrorResponse)
    return response.code


async def test_bad_streams_get_coded_errors_while_others_are_served(server: RunningServer) -> None:
    valid = encode_request(Request(call=ResolveUser("someone"), token=server.token))
    oversize_header = struct.pack("<II", 0, (64 * 1024 * 1024) // 8)  # declares 64 MiB
    stop = asyncio.Event()
    served = 0

    async def bystander() -> None:
        nonlocal served
        async with server.connect() as client:
            while not stop.is_set():
                with pytest.raises(NotFoundError):
                    await client.call(ResolveUser("nobody-bystander"))
                served += 1

    watcher = asyncio.create_task(bystander())
    async with server.connect() as attacker:
        assert _code(await attacker.raw(b"\xff" * 64)) is ErrorCode.MALFORMED_REQUEST
        assert _code(await attacker.raw(b"")) is ErrorCode.MALFORMED_REQUEST
        assert _code(await attacker.raw(valid[: len(valid) // 2])) is ErrorCode.MALFORMED_REQUEST
        assert _code(await attacker.raw(valid + valid)) is ErrorCode.MALFORMED_REQUEST
        assert _code(await attacker.raw(valid + b"\x00")) is ErrorCode.MALFORMED_REQUEST
        assert _code(await attacker.raw(oversize_header, end_stream=False)) is (
            ErrorCode.PAYLOAD_TOO_LARGE
        )
        # Streaming an actual oversize body is cut off early with the same code.
        big = struct.pack("<II", 0, (9 * 1024 * 1024) // 8) + bytes(9 * 1024 * 1024)
        assert _code(await attacker.raw(big)) is ErrorCode.PAYLOAD_TOO_LARGE
        # A request left open and a reset stream do not disturb the connection.
        await attacker.raw(valid[:10], reset=True)
        assert (await attacker.call(Health())).status == "ok"
    stop.set()
    await watcher
    assert served > 0
    async with server.connect() as client:
        assert (await client.call(Health())).status == "ok"


async def test_rate_limit_trips_with_its_code(tmp_path: Path) -> None:
    env = {"QPQ_RATE_PER_SECOND": "1", "QPQ_RATE_BURST": "5"}
    with ServerProcess(tmp_path, extra_env=env) as server:
        async with server.connect() as client:
            outcomes = []
            for _ in range(12):
                try:
                    await client.call(Health())
                    outcomes.append("ok")
                except RateLimitedError:
                    outcomes.append("limited")
        assert outcomes.count("ok") <= 7  # the burst plus what refilled meanwhile
        assert "limited" in outcomes
