"""Hostile bytes at a live server while well-behaved library clients use it.

For a bounded time, hostile connections send random bytes, mutations of
valid requests, mutations of real MLS messages (application messages,
commits, Welcomes, KeyPackages, GroupInfos) in otherwise valid calls,
frames announcing more than the size cap, and stream data scattered out
of order. Each must be answered with a coded error (a mutation that still
forms a valid call may get its answer) or end its connection; none may
make the server fail internally. Meanwhile and afterwards, two members
of a group talk through the same server and get every message exactly
once, and the server's peak memory stays within :data:`RSS_BOUND` of
where it was before the attack.

A second case asks and never reads: connections that fetch a queue of
about 7 MiB again and again and grant QUIC no credit for the answers
(which made the server keep every answer whole: 115 to 1,243 MiB). The
server's memory stays within :data:`UNREAD_RSS_BOUND` while honest members
go on talking through it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from faults import (
    MIB,
    SCALE,
    Member,
    check_exactly_once_in_order,
    fault_server,
    form_group,
    has_all,
    open_member,
    receive_until,
    report,
    rss,
    send_all,
)

import qpq_core
from qpq_proto import (
    DEFAULT_LIMITS,
    Ack,
    CountKeyPackages,
    CreateGroup,
    Endpoint,
    ErrorResponse,
    Fetch,
    FetchGroupInfo,
    FetchKeyPackage,
    Health,
    MessageKind,
    Publish,
    PublishEndpoints,
    Request,
    ResolveEndpoints,
    ResolveIdentity,
    ResolveUser,
    UploadKeyPackages,
    UploadLastResort,
    decode_response,
    encode_request,
)
from qpq_proto.errors import ConnectionFailedError, QpqError
from qpq_proto.quic._transport import _Stream
from qpq_server.testing import CallClient, RunningServer

pytestmark = pytest.mark.slow

#: Most the attack may add to the server's peak resident memory.
RSS_BOUND = 32 * MIB
#: How long the hostile connections keep at it.
ATTACK_SECONDS = 15 * SCALE
#: How long one hostile call may take before it counts as still running (a
#: mutation may turn a call into a long poll or a subscription).
_CALL_SECONDS = 3.0


@dataclass
class Tally:
    """What the server made of the hostile traffic."""

    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    closed: collections.Counter[str] = field(default_factory=collections.Counter)
    sent: int = 0

    def answer(self, response: object) -> None:
        if isinstance(response, ErrorResponse):
            self.answers[response.code.name.lower()] += 1
        else:
            self.answers[f"ok:{type(response).__name__}"] += 1


def mutate(rng: random.Random, data: bytes) -> bytes:
    """``data`` with a few bits flipped, cut short, spliced into, or a piece dropped or doubled."""
    b = bytearray(data)
    how = rng.randrange(5)
    if how == 0 and b:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif how == 1 and b:
        del b[rng.randrange(len(b)) :]
    elif how == 2:
        at = rng.randint(0, len(b))
        b[at:at] = rng.randbytes(rng.randint(1, 64))
    elif how == 3 and b:
        at = rng.randrange(len(b))
        del b[at : at + rng.randint(1, 64)]
    elif b:
        at = rng.randrange(len(b))
        b[at:at] = b[at : at + rng.randint(1, 256)]
    return bytes(b)


# ---- hostile parties ----------------------------------------------------------


class Hostile:
    """Hostile connections to one server, reconnecting whenever one is closed."""

    def __init__(self, server: RunningServer, tally: Tally, identity: qpq_core.Identity | None):
        self.server = server
        self.tally = tally
        self.identity = identity
        self._stack = contextlib.AsyncExitStack()
        self.client: CallClient | None = None

    async def connection(self) -> CallClient:
        if self.client is not None and self.client.closed_reason is None:
            return self.client
        if self.client is not None:
            # "stream 8 arrived in ...": one count per reason, whatever the stream.
            reason = re.sub(r"\bstream \d+", "a stream", self.client.closed_reason or "?")
            self.tally.closed[reason] += 1
        self.client = await self._stack.enter_async_context(self.server.connect())
        if self.identity is not None:
            await self.client.authenticate(self.identity)
        return self.client

    async def close(self) -> None:
        await self._stack.aclose()

    async def raw(self, data: bytes, *, end_stream: bool = True) -> None:
        """Send ``data`` as a stream; its answer must be one coded message, or nothing
        because the connection ended."""
        client = await self.connection()
        self.tally.sent += 1
        try:
            async with asyncio.timeout(_CALL_SECONDS):
                answer = await client.raw(data, end_stream=end_stream)
        except TimeoutError:
            self.tally.answers["still running"] += 1
            return
        except ConnectionFailedError:
            return
        if not answer:
            assert client.closed_reason is not None, "a stream ended without an answer"
            return
        self.tally.answer(decode_response(answer))

    async def call(self, call: object) -> None:
        """Send a well-formed call carrying hostile content; a coded error or a result."""
        client = await self.connection()
        self.tally.sent += 1
        try:
            async with asyncio.timeout(_CALL_SECONDS):
                self.tally.answer(await client.request(Request(call=call, token=client.token)))
        except TimeoutError:
            self.tally.answers["still running"] += 1
        except ConnectionFailedError:
            return


def place(client: CallClient, stream_id: int, offset: int, data: bytes) -> None:
    """Send ``data`` at ``offset`` of ``stream_id`` with nothing before it (a gap)."""
    quic = client.protocol._quic
    sender = quic._get_or_create_stream_for_send(stream_id).sender
    # The peer counts the skipped bytes against the connection's credit.
    quic._remote_max_data_used += max(0, offset - sender.highest_offset)
    sender._buffer = bytearray()
    sender._buffer_start = sender._buffer_stop = offset
    sender.highest_offset = max(sender.highest_offset, offset)
    sender.write(data)
    client.protocol.transmit()


@dataclass
class MlsSamples:
    """Real MLS messages of a hostile member's own group, to mutate."""

    group_id: bytes
    epoch: int
    applications: list[bytes]
    commit: qpq_core.CommitBundle
    welcome: bytes
    key_packages: tuple[bytes, ...]
    group_info: bytes


async def hostile_group(server: RunningServer) -> tuple[qpq_core.Identity, MlsSamples]:
    """A hostile member with a group of its own (a partner in it), built as a client would."""
    me = qpq_core.MlsClient(identity := qpq_core.Identity.generate())
    partner_identity = qpq_core.Identity.generate()
    partner = qpq_core.MlsClient(partner_identity)
    async with server.connect() as client:
        await client.authenticate(partner_identity)
        await client.call(UploadKeyPackages(packages=partner.create_key_packages(1).packages))
    async with server.connect() as client:
        await client.authenticate(identity)
        created = me.create_group()
        await client.call(CreateGroup(group_info=created.group_info))
        package = (
            await client.call(FetchKeyPackage(identity_key=partner_identity.public_key))
        ).package
        added = me.add_members(created.group_id, [package])
        await client.call(
            Publish(
                group_id=added.group_id,
                epoch=added.epoch,
                kind=MessageKind.COMMIT,
                payload=added.commit,
                welcome=added.welcome or b"",
                group_info=added.group_info,
            )
        )
        me.merge_pending_commit(created.group_id)
    gid = created.group_id
    commit = me.self_update(gid)
    me.clear_pending_commit(gid)  # its mutations are sent, never the commit itself
    samples = MlsSamples(
        group_id=gid,
        epoch=me.epoch(gid),
        applications=[me.encrypt(gid, b"x" * n).message for n in (1, 100, 3000)],
        commit=commit,
        welcome=added.welcome or b"",
        key_packages=tuple(me.create_key_packages(2, last_resort=False).packages),
        group_info=me.create_group().group_info,
    )
    return identity, samples


def valid_requests(token: str, samples: MlsSamples, identity: bytes) -> list[bytes]:
    """Encoded requests that a server would accept: the seeds of the mutations."""
    calls = [
        Health(),
        ResolveUser(username="alice-hostile"),
        ResolveIdentity(identity_key=identity),
        CountKeyPackages(),
        Fetch(limit=10),
        Ack(up_to_seq=1),
        FetchKeyPackage(identity_key=identity),
        FetchGroupInfo(group_id=samples.group_id),
        PublishEndpoints(endpoints=(Endpoint(host="192.0.2.1", port=4433),)),
        ResolveEndpoints(identity_key=identity),
        Publish(
            group_id=samples.group_id,
            epoch=samples.epoch,
            kind=MessageKind.APPLICATION,
            payload=samples.applications[1],
        ),
        UploadKeyPackages(packages=samples.key_packages),
        CreateGroup(group_info=samples.group_info),
    ]
    return [encode_request(Request(call=call, token=token)) for call in calls]


async def random_and_mutated_requests(
    party: Hostile, rng: random.Random, seeds: list[bytes], until: float
) -> None:
    while asyncio.get_running_loop().time() < until:
        if rng.random() < 0.3:
            await party.raw(rng.randbytes(rng.choice((0, 1, 7, 8, 64, 500, 4000))))
        else:
            await party.raw(mutate(rng, rng.choice(seeds)))


async def mutated_mls(party: Hostile, rng: random.Random, s: MlsSamples, until: float) -> None:
    def publish(kind: MessageKind, payload: bytes, **extra: bytes) -> Publish:
        return Publish(group_id=s.group_id, epoch=s.epoch, kind=kind, payload=payload, **extra)

    makers: list[Callable[[], object]] = [
        lambda: publish(MessageKind.APPLICATION, mutate(rng, rng.choice(s.applications))),
        lambda: publish(
            MessageKind.COMMIT, mutate(rng, s.commit.commit), group_info=s.commit.group_info
        ),
        lambda: publish(
            MessageKind.COMMIT, s.commit.commit, group_info=mutate(rng, s.commit.group_info)
        ),
        lambda: publish(MessageKind.PROPOSAL, mutate(rng, s.commit.commit)),
        lambda: publish(MessageKind.APPLICATION, mutate(rng, s.welcome)),
        lambda: UploadKeyPackages(packages=(mutate(rng, rng.choice(s.key_packages)),)),
        lambda: UploadLastResort(package=mutate(rng, rng.choice(s.key_packages))),
        lambda: CreateGroup(group_info=mutate(rng, s.group_info)),
    ]
    while asyncio.get_running_loop().time() < until:
        try:
            call = rng.choice(makers)()
        except QpqError:
            continue  # refused before it is sent (an empty field): nothing to send
        await party.call(call)


async def oversized_and_scattered(party: Hostile, rng: random.Random, until: float) -> None:
    while asyncio.get_running_loop().time() < until:
        what = rng.randrange(3)
        if what == 0:
            # A header announcing more than max_message_bytes, then a little of it.
            words = rng.choice((1 << 20, 1 << 28, 0xFFFF_FFFF))
            await party.raw(struct.pack("<II", 0, words) + rng.randbytes(64), end_stream=False)
        elif what == 1:
            # More segments than a frame may have.
            await party.raw(struct.pack("<I", 600) + bytes(4 * 601))
        else:
            # Single bytes at scattered offsets of one stream, last first: more
            # out-of-order pieces than a stream may hold ends the connection.
            client = await party.connection()
            stream_id = client.protocol._quic.get_next_available_stream_id()
            for piece in reversed(range(rng.choice((50, 300)))):
                if client.closed_reason is not None:
                    break
                place(client, stream_id, 2 * piece + 1, b"x")
                await asyncio.sleep(0)  # let the datagrams go
            party.tally.sent += 1
            # The server's ACK of a PING: it has taken in all sent before.
            with contextlib.suppress(TimeoutError, QpqError, ConnectionError):
                await asyncio.wait_for(client.protocol.ping(), 5)


# ---- the case ------------------------------------------------------------------


async def well_behaved(alice: Member, bob: Member, until: float) -> float:
    """Alice and bob take turns sending while the attack lasts; the slowest send's seconds."""
    slowest = 0.0
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        for member in (alice, bob):
            started = loop.time()
            await send_all(member, 1)
            slowest = max(slowest, loop.time() - started)
    return slowest


async def test_hostile_bytes_get_coded_answers_and_cost_bounded_memory(tmp_path: Path) -> None:
    rng = random.Random(1984)
    with fault_server(tmp_path) as server:
        alice = await open_member(tmp_path / "alice", "alice-hostile", server)
        bob = await open_member(tmp_path / "bob", "bob-hostile", server)
        parties: list[Hostile] = []
        try:
            await form_group(alice, [bob])
            await send_all(alice, 3)
            identity, samples = await hostile_group(server)
            seeds = valid_requests(server.token, samples, identity.public_key)
            tally = Tally()
            parties = [
                Hostile(server, tally, identity),
                Hostile(server, tally, identity),
                Hostile(server, tally, None),
                Hostile(server, tally, None),
            ]
            pid = server.process.pid
            before, peak_before = rss(pid), rss(pid, "VmHWM")
            until = asyncio.get_running_loop().time() + ATTACK_SECONDS
            attacks: list[Awaitable[object]] = [
                random_and_mutated_requests(parties[0], random.Random(rng.random()), seeds, until),
                mutated_mls(parties[1], random.Random(rng.random()), samples, until),
                oversized_and_scattered(parties[2], random.Random(rng.random()), until),
                random_and_mutated_requests(parties[3], random.Random(rng.random()), seeds, until),
            ]
            *_, slowest = await asyncio.gather(*attacks, well_behaved(alice, bob, until))
            grown = rss(pid, "VmHWM") - max(before, peak_before)
            after = rss(pid)
            # Still served, and nothing was lost or doubled on the way.
            await send_all(bob, 2, tag="-after")
            expected = {m.name: m.sent for m in (alice, bob)}
            for member in (alice, bob):
                await receive_until(member, has_all(expected), within=60)
            check_exactly_once_in_order((alice, bob), expected)
            assert alice.exporter() == bob.exporter()
            async with server.connect() as probe:
                assert (await probe.call(Health())).status == "ok"
        finally:
            for party in parties:
                await party.close()
            await alice.client.close()
            await bob.client.close()
        log = server.log()
    report(
        f"hostile bytes for {ATTACK_SECONDS} s: {tally.sent} hostile streams and calls; "
        f"answers {dict(tally.answers.most_common())}; connections closed "
        f"{dict(tally.closed)}",
        f"server RSS before {before / MIB:.1f} MiB, peak growth {grown / MIB:.1f} MiB, "
        f"after {after / MIB:.1f} MiB; {len(alice.sent) + len(bob.sent)} well-behaved "
        f"messages, slowest send {slowest:.2f} s",
    )
    assert tally.sent > 100 * SCALE
    assert "internal" not in tally.answers
    assert "call failed unexpectedly" not in log
    assert "Traceback" not in log
    assert grown < RSS_BOUND
    # The attack reached every layer: the frame cap, the decoder, the MLS checks.
    for code in ("payload_too_large", "malformed_request", "invalid_argument"):
        assert tally.answers[code] > 0, code
    assert any("out-of-order pieces" in reason for reason in tally.closed), tally.closed


# ---- answers nobody reads ------------------------------------------------------

#: Connections that ask and never read, and the Fetch calls each opens at once
#: (``tox -e soak`` multiplies the calls: the attack lasts longer, and the
#: server's memory must stay where it is). More connections would only make
#: the first round longer: each fresh connection's first answer waits for
#: its stall time before the server knows its client does not read.
UNREAD_CONNECTIONS = 16
UNREAD_CALLS = 8 * SCALE
#: Messages of 1 MiB queued for the identity they fetch as.
UNREAD_QUEUED = 7
#: The default answer budget (the bound must hold as shipped), and a short
#: stall time, so that answers nobody reads are reset within the case.
UNREAD_ENV = {"QPQ_ANSWER_STALL_SECONDS": "2"}
#: Most the attack may add to the server's peak resident memory.
UNREAD_RSS_BOUND = 64 * MIB
#: The attackers' own QUIC windows stay small (two of these per connection).
_ATTACKER_LIMITS = dataclasses.replace(
    DEFAULT_LIMITS, max_payload_bytes=64 * 1024, max_message_bytes=128 * 1024
)


async def identity_with_a_full_queue(server: RunningServer) -> qpq_core.Identity:
    """An identity with :data:`UNREAD_QUEUED` messages of 1 MiB queued, from a group it is in."""
    owner_identity, reader_identity = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    owner, reader = qpq_core.MlsClient(owner_identity), qpq_core.MlsClient(reader_identity)
    async with server.connect() as client:
        await client.authenticate(reader_identity)
        await client.call(UploadKeyPackages(packages=reader.create_key_packages(1).packages))
    async with server.connect() as client:
        await client.authenticate(owner_identity)
        created = owner.create_group()
        await client.call(CreateGroup(group_info=created.group_info))
        package = await client.call(FetchKeyPackage(identity_key=reader_identity.public_key))
        added = owner.add_members(created.group_id, [package.package])
        await client.call(
            Publish(
                group_id=added.group_id,
                epoch=added.epoch,
                kind=MessageKind.COMMIT,
                payload=added.commit,
                welcome=added.welcome or b"",
                group_info=added.group_info,
            )
        )
        owner.merge_pending_commit(created.group_id)
        for _ in range(UNREAD_QUEUED):
            await client.call(
                Publish(
                    group_id=created.group_id,
                    epoch=owner.epoch(created.group_id),
                    kind=MessageKind.APPLICATION,
                    payload=owner.encrypt(created.group_id, bytes(MIB - 4096)).message,
                )
            )
    return reader_identity


def fetch_and_never_read(client: CallClient, calls: int) -> None:
    """Open ``calls`` Fetch streams whose answers nothing on this side takes.

    Their bytes are never taken, so QUIC grants the server no credit past
    the attacker's small windows: the rest of each answer stays with the server.
    """
    protocol = client.protocol
    request = encode_request(Request(call=Fetch(limit=1000), token=client.token))
    for _ in range(calls):
        stream_id = protocol._quic.get_next_available_stream_id()
        protocol.streams[stream_id] = _Stream(None)
        protocol._quic.send_stream_data(stream_id, request, end_stream=True)
    protocol.transmit()


def answer_bytes_arrived(client: CallClient) -> int:
    return sum(stream.queued for stream in client.protocol.streams.values())


async def until(condition: Callable[[], bool], probe: CallClient, within: float = 60) -> None:
    """Return once ``condition()`` holds, checked after each round trip of ``probe`` (a PING)."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.wait_for(probe.protocol.ping(), 10)


async def test_answers_nobody_reads_cost_bounded_memory(tmp_path: Path) -> None:
    with fault_server(tmp_path, **UNREAD_ENV) as server:
        alice = await open_member(tmp_path / "alice", "alice-unread", server)
        bob = await open_member(tmp_path / "bob", "bob-unread", server)
        try:
            await form_group(alice, [bob])
            reader = await identity_with_a_full_queue(server)
            pid = server.process.pid
            before, peak_before = rss(pid), rss(pid, "VmHWM")
            async with contextlib.AsyncExitStack() as stack:
                probe = await stack.enter_async_context(server.connect())
                await probe.authenticate(qpq_core.Identity.generate())
                attackers: list[CallClient] = []
                for _ in range(UNREAD_CONNECTIONS):
                    attacker = await stack.enter_async_context(
                        server.connect(limits=_ATTACKER_LIMITS)
                    )
                    await attacker.authenticate(reader)
                    attackers.append(attacker)
                for attacker in attackers:
                    fetch_and_never_read(attacker, UNREAD_CALLS)
                # The attack is on once answers reached attackers (and stopped
                # there: their windows are full); most calls wait for room.
                await until(lambda: any(answer_bytes_arrived(a) for a in attackers), probe)
                # Honest calls are served meanwhile: a Health, and a conversation
                # whose fetches wait at most for answers nobody reads to be reset.
                started = asyncio.get_running_loop().time()
                assert (await probe.call(Health())).status == "ok"
                health_seconds = asyncio.get_running_loop().time() - started
                for _ in range(SCALE):
                    await send_all(alice, 2)
                    await send_all(bob, 2)
                    expected = {m.name: m.sent for m in (alice, bob)}
                    for member in (alice, bob):
                        await receive_until(member, has_all(expected), within=120)
                talk_seconds = asyncio.get_running_loop().time() - started
                during = rss(pid, "VmHWM") - max(before, peak_before)
                assert during < UNREAD_RSS_BOUND
                # The answers nobody read were reset, not kept.
                await until(lambda: "took none of an answer in time" in server.log(), probe)
                assert (await probe.call(Health())).status == "ok"
            await send_all(alice, 1, tag="-after")
            expected = {m.name: m.sent for m in (alice, bob)}
            await receive_until(bob, has_all(expected), within=60)
            check_exactly_once_in_order((alice, bob), expected)
            grown = rss(pid, "VmHWM") - max(before, peak_before)
            after = rss(pid)
            async with server.connect() as probe:
                assert (await probe.call(Health())).status == "ok"
        finally:
            await alice.client.close()
            await bob.client.close()
        log = server.log()
    report(
        f"{UNREAD_CONNECTIONS} connections x {UNREAD_CALLS} fetches of "
        f"{UNREAD_QUEUED} MiB never read: server RSS before {before / MIB:.1f} MiB, "
        f"peak growth {during / MIB:.1f} MiB during the attack and {grown / MIB:.1f} MiB "
        f"after it, {after / MIB:.1f} MiB after; "
        f"{log.count('took none of an answer in time')} stalled answer resets logged",
        f"meanwhile an honest Health took {health_seconds:.2f} s and two members "
        f"exchanged {4 * SCALE} messages in {talk_seconds:.1f} s",
    )
    assert "Traceback" not in log
    assert grown < UNREAD_RSS_BOUND
