"""The real process's Prometheus endpoint and JSON logs."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest
from groups import (
    Member,
    build_group,
    connections,
    create_group,
    members,
    plaintexts,
    process,
    send,
)
from prometheus_client.parser import text_string_to_metric_families
from server_helpers import authed

from qpq_proto import Fetch, FetchWait, Health, Messages, ResolveUser
from qpq_proto.errors import NotFoundError, UnauthenticatedError
from qpq_server.testing import TEST_DB_KEY, TEST_TOKEN, ServerProcess


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_listener_counts_calls_errors_and_connections(tmp_path: Path) -> None:
    member = Member.generate()
    identity = member.identity
    env = {"QPQ_METRICS_LISTEN": "127.0.0.1:0", "QPQ_LOG_FORMAT": "json"}
    # The group id travels in the payload's cleartext: a canary for payloads.
    canary = b"secret-payload-never-logged"
    with ServerProcess(tmp_path, extra_env=env) as server:
        assert server.metrics_port  # port 0 was replaced by the bound port
        async with authed(server, identity) as client:
            assert (await client.call(Health())).status == "ok"
            group_id = await create_group(client, member, canary)
            payload = await send(client, member, group_id, b"to nobody else")
            with pytest.raises(NotFoundError):
                await client.call(ResolveUser("nobody-at-all"))
            with pytest.raises(UnauthenticatedError):
                await client.call(Fetch(limit=1), token="wrong-token")
            samples = await asyncio.to_thread(_scrape, server.metrics_port)

        def value(name: str, **labels: str) -> float:
            return samples[(name, frozenset(labels.items()))]

        assert value("qpq_calls_total", call="Health") == 1
        assert value("qpq_calls_total", call="CreateGroup") == 1
        assert value("qpq_calls_total", call="Publish") == 1
        assert value("qpq_call_errors_total", call="ResolveUser", code="not_found") == 1
        assert value("qpq_call_errors_total", call="Fetch", code="unauthenticated") == 1
        assert value("qpq_call_seconds_count", call="Publish") == 1
        assert value("qpq_connections") == 1
    log = server.log()

    # QPQ_LOG_FORMAT=json: every line the process wrote is one JSON object.
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert entries
    for entry in entries:
        assert {"ts", "level", "logger", "msg"} <= entry.keys()
    messages = [entry["msg"] for entry in entries]
    assert "listening" in messages
    assert "stopped cleanly" in messages
    for secret in (TEST_TOKEN, TEST_DB_KEY, identity.public_key.hex(), payload.hex()):
        assert secret not in log
    assert canary.decode() not in log


async def _waiters_reach(port: int, wanted: float) -> None:
    """Scrape until ``qpq_waiters`` reads ``wanted`` (the server gets there on its own time)."""
    deadline = time.monotonic() + 30
    while (
        value := (await asyncio.to_thread(_scrape, port))[("qpq_waiters", frozenset())]
    ) != wanted:
        assert time.monotonic() < deadline, f"qpq_waiters stayed at {value}, not {wanted}"


async def test_waiters_gauge_counts_pending_fetch_waits_and_subscriptions(tmp_path: Path) -> None:
    waiter, subscriber = members(2)
    env = {"QPQ_METRICS_LISTEN": "127.0.0.1:0"}
    with ServerProcess(tmp_path, extra_env=env) as server:
        assert server.metrics_port
        group_id = await build_group(server, subscriber, waiter)
        await _waiters_reach(server.metrics_port, 0)
        async with connections(server, waiter, subscriber) as (client, other):
            pending = asyncio.create_task(client.call(FetchWait(limit=10, timeout_ms=30_000)))
            await _waiters_reach(server.metrics_port, 1)
            async with other.subscribe():
                await _waiters_reach(server.metrics_port, 2)
                await send(other, subscriber, group_id, b"wake up")
                woken = await pending
                assert isinstance(woken, Messages)
                assert plaintexts(process(waiter, woken.messages)) == [b"wake up"]
                # The long-poll stopped waiting before it answered; the subscription waits on.
                samples = await asyncio.to_thread(_scrape, server.metrics_port)
                assert samples[("qpq_waiters", frozenset())] == 1
        # Closing the connection ends its subscription.
        await _waiters_reach(server.metrics_port, 0)
