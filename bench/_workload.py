"""The messaging workload, the same for every system: phases returning measured values.

Latency runs from the moment the send call starts (closed loop) or from the
moment a message was due (fixed rate, so a sender falling behind shows as
latency instead of hiding it) until the receive loop of the last expected
receiver yields it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench._measure import CpuMeter, body, percentile
from bench._messenger import Messenger, Room

#: How long one message may take to reach every receiver before it counts as lost.
DELIVERY_DEADLINE = 60.0


@dataclass(frozen=True, slots=True)
class Counts:
    """How much each phase sends; both systems get the same counts."""

    pair_messages: int
    group_size: int
    group_messages: int
    bulk_messages: int
    in_flight: int
    fanout_messages: int
    big_group_size: int
    big_group_messages: int
    background_rate: float
    load_rates: tuple[float, ...]
    load_seconds: float
    load_min_messages: int
    warmup: int

    @classmethod
    def full(cls) -> Counts:
        return cls(
            pair_messages=200,
            group_size=20,
            group_messages=100,
            bulk_messages=2000,
            in_flight=20,
            fanout_messages=200,
            big_group_size=100,
            big_group_messages=30,
            background_rate=5.0,
            load_rates=(1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0),
            load_seconds=10.0,
            load_min_messages=20,
            warmup=3,
        )

    @classmethod
    def quick(cls) -> Counts:
        return cls(
            pair_messages=20,
            group_size=5,
            group_messages=10,
            bulk_messages=100,
            in_flight=20,
            fanout_messages=20,
            big_group_size=10,
            big_group_messages=5,
            background_rate=2.0,
            load_rates=(2.0, 20.0),
            load_seconds=2.0,
            load_min_messages=5,
            warmup=1,
        )


@dataclass(slots=True)
class Measured:
    """One phase on one system: values by metric, what else to know, and curve points."""

    values: dict[str, float]
    note: str = ""
    curve: list[tuple[float, float, float]] = field(default_factory=list)


# ---- sending patterns ------------------------------------------------------------


async def _deliveries(
    m: Messenger, waits: list[tuple[str, float, asyncio.Future[float]]]
) -> tuple[list[float], list[float], int]:
    """Wait for every delivery within the deadline: (latencies ms, completion times, lost)."""
    if waits:
        await asyncio.wait([done for _, _, done in waits], timeout=DELIVERY_DEADLINE)
    latencies: list[float] = []
    finished: list[float] = []
    lost = 0
    for key, start, done in waits:
        if done.done():
            latencies.append((done.result() - start) * 1000)
            finished.append(done.result())
        else:
            m.inbox.forget(key)
            done.cancel()
            lost += 1
    return latencies, finished, lost


@dataclass(slots=True)
class Stream:
    """What a run of messages gave."""

    latencies: list[float]
    lost: int
    sent: int
    seconds: float  # first send started -> last delivery
    offered: float  # messages per second actually dispatched (fixed rate only)

    @property
    def delivered(self) -> int:
        return len(self.latencies)

    def p(self, fraction: float) -> float:
        return percentile(self.latencies, fraction)

    def describe(self) -> str:
        text = f"{self.delivered}/{self.sent} delivered"
        if self.lost:
            text += f", {self.lost} LOST (not delivered within {DELIVERY_DEADLINE:.0f} s)"
        return text


async def sequential(m: Messenger, room: Room, tag: str, count: int, warmup: int) -> Stream:
    """Send one message, wait until every receiver has it, send the next."""
    latencies: list[float] = []
    lost = 0
    started = time.perf_counter()
    for index in range(warmup + count):
        key = f"{tag}-{index}"
        done = m.inbox.expect(key, room.receivers)
        start = time.perf_counter()
        await m.send(room, body(key))
        measured, _, missing = await _deliveries(m, [(key, start, done)])
        m.check()
        if index >= warmup:
            latencies += measured
            lost += missing
    return Stream(latencies, lost, count, time.perf_counter() - started, 0.0)


async def stream(
    m: Messenger,
    room: Room,
    tag: str,
    count: int,
    *,
    window: int,
    rate: float | None = None,
    stop: asyncio.Event | None = None,
) -> Stream:
    """Send ``count`` messages with up to ``window`` in flight, as fast as possible or at ``rate``.

    At a fixed rate, latency counts from when each message was due; a send
    that has to wait for a free slot is late, and the wait is measured.
    ``stop`` ends the dispatching early (a background load).
    """
    slots = asyncio.Semaphore(window)
    waits: list[tuple[str, float, asyncio.Future[float]]] = []
    sends: list[asyncio.Task[None]] = []

    async def send(key: str) -> None:
        try:
            await m.send(room, body(key))
        finally:
            slots.release()

    begin = time.perf_counter()
    for index in range(count):
        if stop is not None and stop.is_set():
            break
        due = begin
        if rate is not None:
            due = begin + index / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await slots.acquire()
        key = f"{tag}-{index}"
        done = m.inbox.expect(key, room.receivers)
        waits.append((key, due if rate is not None else time.perf_counter(), done))
        sends.append(asyncio.create_task(send(key)))
    dispatched = time.perf_counter() - begin
    await asyncio.gather(*sends)
    latencies, finished, lost = await _deliveries(m, waits)
    m.check()
    first = min((start for _, start, _ in waits), default=begin)
    seconds = (max(finished) - first) if finished else float("nan")
    offered = len(waits) / dispatched if dispatched > 0 else float("nan")
    return Stream(latencies, lost, len(waits), seconds, offered)


async def _warm(m: Messenger, room: Room, tag: str, counts: Counts) -> None:
    """Untimed messages first: connections, caches and receive loops warm."""
    await sequential(m, room, f"{tag}-warmup", 0, counts.warmup)


async def _calls_note(m: Messenger, before: dict[str, float] | None, messages: int) -> str:
    """Server calls per message since ``before``, by kind (empty where not counted)."""
    after = await m.calls()
    if before is None or after is None or messages == 0:
        return ""
    spent = {name: (after.get(name, 0.0) - before.get(name, 0.0)) / messages for name in after}
    parts = [f"{name} {per:.2f}" for name, per in sorted(spent.items()) if per >= 0.005]
    total = sum(spent.values())
    return f"; server calls per message {total:.2f} ({', '.join(parts)})"


def _window(m: Messenger, counts: Counts) -> int:
    return min(counts.in_flight, m.max_in_flight)


def _window_note(m: Messenger, counts: Counts) -> str:
    window = _window(m, counts)
    if window == counts.in_flight:
        return f"{window} sends in flight"
    return f"{window} send(s) in flight (the most its public API allows one sender)"


# ---- phases ------------------------------------------------------------------------


async def pair(m: Messenger, counts: Counts) -> Measured:
    """1:1, sequential: send -> the receiver's loop yields it."""
    room = await m.room("pair", range(1))
    await m.refresh()
    await _warm(m, room, "pair", counts)
    before = await m.calls()
    result = await sequential(m, room, "pair", counts.pair_messages, 0)
    calls = await _calls_note(m, before, result.sent)
    return Measured({"p50": result.p(0.5), "p99": result.p(0.99)}, result.describe() + calls)


async def group(m: Messenger, counts: Counts) -> Measured:
    """A group, sequential: send -> the last of the other members has it."""
    room = await m.room("group", range(counts.group_size - 1))
    await m.refresh()
    result = await sequential(m, room, "group", counts.group_messages, counts.warmup)
    return Measured({"p50": result.p(0.5), "p99": result.p(0.99)}, result.describe())


async def bulk(m: Messenger, counts: Counts) -> Measured:
    """One sender, many messages to one receiver: delivered messages per second."""
    room = await m.room("pair", range(1))
    await m.refresh()
    await _warm(m, room, "bulk", counts)
    before = await m.calls()
    meter = CpuMeter(m.server_pid)
    meter.start()
    result = await stream(m, room, "bulk", counts.bulk_messages, window=_window(m, counts))
    meter.stop()
    calls = await _calls_note(m, before, result.sent)
    rate = result.delivered / result.seconds
    note = (
        f"{result.describe()} in {result.seconds:.1f} s, {_window_note(m, counts)}; "
        f"client process CPU {meter.client * 1000 / max(result.delivered, 1):.2f} ms per message"
        f"{calls}"
    )
    return Measured(
        {"rate": rate, "cpu": meter.server * 1000 / max(result.delivered, 1)},
        note,
    )


async def fanout(m: Messenger, counts: Counts) -> Measured:
    """Many messages into a group: recipients reached per second, latency until all have it."""
    room = await m.room("group", range(counts.group_size - 1))
    await m.refresh()
    await _warm(m, room, "fanout", counts)
    before = await m.calls()
    meter = CpuMeter(m.server_pid)
    meter.start()
    result = await stream(m, room, "fanout", counts.fanout_messages, window=_window(m, counts))
    meter.stop()
    calls = await _calls_note(m, before, result.sent)
    reached = result.delivered * len(room.receivers) / result.seconds
    note = (
        f"{result.describe()} to {len(room.receivers)} receivers each in {result.seconds:.1f} s, "
        f"{_window_note(m, counts)}; client process CPU "
        f"{meter.client * 1000 / max(result.delivered, 1):.1f} ms per message{calls}"
    )
    return Measured(
        {
            "reached": reached,
            "p50": result.p(0.5),
            "p99": result.p(0.99),
            "cpu": meter.server * 1000 / max(result.delivered, 1),
        },
        note,
    )


async def big(m: Messenger, counts: Counts) -> Measured:
    """A big group, sequential, while another pair exchanges messages at a steady rate."""
    room = await m.room("big", range(counts.big_group_size - 1))
    background = await m.room("background", range(counts.big_group_size - 1, counts.big_group_size))
    await m.refresh()
    stop = asyncio.Event()
    load = asyncio.create_task(
        stream(
            m,
            background,
            "background",
            10**9,
            window=_window(m, counts),
            rate=counts.background_rate,
            stop=stop,
        )
    )
    try:
        result = await sequential(m, room, "big", counts.big_group_messages, counts.warmup)
    finally:
        stop.set()
    behind = await load
    note = (
        f"{result.describe()}; background: 1:1 messages between two other users at "
        f"{counts.background_rate:g} msg/s throughout ({behind.describe()}, "
        f"p50 {behind.p(0.5):.1f} ms, p99 {behind.p(0.99):.1f} ms)"
    )
    return Measured({"p50": result.p(0.5), "p99": result.p(0.99)}, note)


async def load(m: Messenger, counts: Counts) -> Measured:
    """A sender at fixed rates: latency at each offered load."""
    room = await m.room("pair", range(1))
    await m.refresh()
    await _warm(m, room, "load", counts)
    values: dict[str, float] = {}
    curve: list[tuple[float, float, float]] = []
    notes: list[str] = []
    for rate in counts.load_rates:
        count = max(counts.load_min_messages, round(rate * counts.load_seconds))
        result = await stream(m, room, f"load{rate:g}", count, window=_window(m, counts), rate=rate)
        values[f"p50@{rate:g}"] = result.p(0.5)
        values[f"p99@{rate:g}"] = result.p(0.99)
        curve.append((rate, result.p(0.5), result.p(0.99)))
        notes.append(f"{rate:g}/s: {result.describe()}, dispatched at {result.offered:.1f}/s")
    return Measured(values, f"{_window_note(m, counts)}; " + "; ".join(notes), curve)


Phase = Callable[[Messenger, Counts], Awaitable[Measured]]

#: Messaging phases in the order they run.
PHASES: dict[str, Phase] = {
    "pair": pair,
    "group": group,
    "bulk": bulk,
    "fanout": fanout,
    "big": big,
    "load": load,
}


@dataclass(frozen=True, slots=True)
class Metric:
    """One value a phase reports: its key in :attr:`Measured.values`, label, unit, direction."""

    key: str
    label: str
    unit: str
    lower_is_better: bool


def metrics(phase: str, counts: Counts) -> list[Metric]:
    """What ``phase`` reports, labelled with the counts it ran with."""
    g, b = counts.group_size, counts.big_group_size
    if phase == "pair":
        return [
            Metric("p50", "1:1 sequential, latency p50", "ms", True),
            Metric("p99", "1:1 sequential, latency p99", "ms", True),
        ]
    if phase == "group":
        return [
            Metric(
                "p50", f"{g}-member group sequential, until all {g - 1} have it, p50", "ms", True
            ),
            Metric(
                "p99", f"{g}-member group sequential, until all {g - 1} have it, p99", "ms", True
            ),
        ]
    if phase == "bulk":
        return [
            Metric(
                "rate", f"1 sender, {counts.bulk_messages} messages to 1 receiver", "msg/s", False
            ),
            Metric("cpu", "server CPU per 1:1 message", "ms", True),
        ]
    if phase == "fanout":
        n = counts.fanout_messages
        return [
            Metric(
                "reached", f"fan-out, {n} messages into a {g}-member group", "recipients/s", False
            ),
            Metric("p50", f"fan-out latency until all {g - 1} have it, p50", "ms", True),
            Metric("p99", f"fan-out latency until all {g - 1} have it, p99", "ms", True),
            Metric("cpu", f"server CPU per fan-out message ({g - 1} recipients)", "ms", True),
        ]
    if phase == "big":
        return [
            Metric(
                "p50",
                f"{b}-member group + background load, until all {b - 1} have it, p50",
                "ms",
                True,
            ),
            Metric(
                "p99",
                f"{b}-member group + background load, until all {b - 1} have it, p99",
                "ms",
                True,
            ),
        ]
    if phase == "load":
        out: list[Metric] = []
        for rate in counts.load_rates:
            out.append(
                Metric(f"p50@{rate:g}", f"1:1 at {rate:g} msg/s offered, latency p50", "ms", True)
            )
            out.append(
                Metric(f"p99@{rate:g}", f"1:1 at {rate:g} msg/s offered, latency p99", "ms", True)
            )
        return out
    raise ValueError(f"unknown phase {phase!r}")
