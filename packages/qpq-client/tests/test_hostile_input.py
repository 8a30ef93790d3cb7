"""Nothing a peer or the server sends locks a receiver out.

Property-based: hypothesis feeds arbitrary envelopes (random bytes, mutated
real MLS messages, gap notices, numbers out of range) and arbitrary
plaintexts inside real MLS messages to the receive path, through the
in-memory delivery service (fake_server.py) with real MLS state and a real
SQLCipher store. After each batch the next good message must show, every
good message sent before must have shown once and in order, and the queue
must be empty.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_server import FakeServer, make_session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qpq_proto as p
from qpq_client import _commits, _receive, _sending
from qpq_client._plaintext import encode_text
from qpq_client._session import Session
from qpq_proto.errors import RemoteProtocolError, StreamResetError
from qpq_proto.quic import STREAM_STALLED

MAX_STORED = 2**63 - 1
T0 = 1_700_000_000_000


async def catch_up(session: Session) -> None:
    """What every client operation does first."""
    await _commits.flush_outbox(session)
    await _receive.sync(session)
    await _commits.settle(session)


async def pair(server: FakeServer, root: Path) -> tuple[Session, Session, bytes]:
    """Alice's group "team" with bob in it (alice is bob's contact)."""
    alice = await make_session(server, root / "alice", "alice")
    bob = await make_session(server, root / "bob", "bob", contacts=("alice",))
    await _commits.create_group(alice, "team")
    await _commits.invite(alice, "team", ("bob",))
    await catch_up(bob)
    (gid,) = alice.mls.group_ids()
    return alice, bob, gid


def inject(server: FakeServer, recipient: bytes, **fields: object) -> p.Envelope:
    """Queue an envelope the server made up, at the recipient's next seq (or the one given)."""
    seq = fields.pop("seq", None)
    if seq is None:
        server.last_seq[recipient] += 1
        seq = server.last_seq[recipient]
    envelope = p.Envelope(seq=seq, **fields)  # type: ignore[arg-type]
    server.queues[recipient].append(envelope)
    return envelope


def encrypt(alice: Session, gid: bytes, plaintext: bytes) -> bytes:
    """A real application message from alice, her ratchet advance persisted."""
    encrypted = alice.mls.encrypt(gid, plaintext)
    alice.persist(lambda tx: tx.apply_changes(encrypted.changes))
    return encrypted.message


def texts(session: Session) -> list[str]:
    return [row.body for row in session.store.history() if row.kind == "text"]


# ---- what a hostile peer or server can send ------------------------------


@dataclass(frozen=True)
class Garbage:
    payload: bytes
    sender: str  # "alice", "bob" or "stranger"


@dataclass(frozen=True)
class Gap:
    ours: bool  # for our group, or for one we do not know


@dataclass(frozen=True)
class Mutated:
    plaintext: bytes
    flips: tuple[tuple[int, int], ...]  # (position from the end, xor)
    cut: int


@dataclass(frozen=True)
class Plaintext:
    plaintext: bytes


@dataclass(frozen=True)
class Good:
    pass


@dataclass(frozen=True)
class OutOfRange:
    seq_too_big: bool


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
qpq_like = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 2, True, "1", None])},
    optional={
        "type": st.sampled_from(["text", "meta", "poll", 7, None]),
        "body": st.one_of(st.text(max_size=40), json_values),
        "name": st.one_of(st.text(max_size=40), json_values),
        "sent_at": st.one_of(
            st.integers(),
            st.integers(min_value=10**29, max_value=10**30),
            st.just(MAX_STORED + 1),
            st.floats(),
        ),
    },
)
plaintexts = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    qpq_like.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n + b"]" * n),
    st.just(b'{"v":1,"type":"text","body":"x","sent_at":123456789012345678901234567890}'),
    st.just(b'{"v":1,"type":"text","body":"\\ud800"}'),
)
events = st.one_of(
    st.builds(
        Garbage,
        st.binary(min_size=1, max_size=300),
        st.sampled_from(["alice", "bob", "stranger"]),
    ),
    st.builds(Gap, st.booleans()),
    st.builds(
        Mutated,
        plaintexts,
        st.lists(st.tuples(st.integers(1, 64), st.integers(1, 255)), min_size=1, max_size=3).map(
            tuple
        ),
        st.integers(0, 3),
    ),
    st.builds(Plaintext, plaintexts),
    st.builds(Good),
    st.builds(OutOfRange, st.booleans()),
)


class Scenario:
    """Alice, bob, and what the server queued for bob; one instance across examples."""

    def __init__(self, server: FakeServer, alice: Session, bob: Session, gid: bytes) -> None:
        self.server, self.alice, self.bob, self.gid = server, alice, bob, gid
        self.good: list[str] = []

    def good_body(self) -> str:
        body = f"good {len(self.good)} {secrets.token_hex(4)}"
        self.good.append(body)
        return body

    def queue(self, event: object) -> bool:
        """Queue what ``event`` describes; True if the batch is one the client must refuse."""
        server, alice, bob, gid = self.server, self.alice, self.bob, self.gid
        if isinstance(event, Garbage):
            sender = {"alice": alice.me, "bob": bob.me}.get(event.sender, bytes(range(32)))
            inject(server, bob.me, sender=sender, payload=event.payload, enqueued_at_ms=T0)
        elif isinstance(event, Gap):
            group = gid if event.ours else secrets.token_bytes(16)
            inject(
                server, bob.me, sender=p.NO_SENDER, payload=b"", enqueued_at_ms=T0,
                gap_group_id=group,
            )  # fmt: skip
        elif isinstance(event, Mutated):
            message = bytearray(encrypt(alice, gid, event.plaintext))
            for position, xor in event.flips:
                message[-min(position, len(message))] ^= xor
            payload = bytes(message[: len(message) - event.cut]) or b"\x00"
            inject(server, bob.me, sender=alice.me, payload=payload, enqueued_at_ms=T0)
        elif isinstance(event, Plaintext):
            message = encrypt(alice, gid, event.plaintext)
            inject(server, bob.me, sender=alice.me, payload=message, enqueued_at_ms=T0)
        elif isinstance(event, Good):
            server.deliver(
                alice.me, bob.me, encrypt(alice, gid, encode_text(self.good_body(), T0)), gid
            )
        elif isinstance(event, OutOfRange):
            if event.seq_too_big:
                inject(
                    server, bob.me, seq=MAX_STORED + 1, sender=alice.me, payload=b"\x01",
                    enqueued_at_ms=T0,
                )  # fmt: skip
            else:
                inject(server, bob.me, sender=alice.me, payload=b"\x01", enqueued_at_ms=2**64 - 1)
            return True
        return False

    async def round(self, batch: list[object]) -> None:
        refused = [self.queue(event) for event in batch]
        queued = list(self.server.queues[self.bob.me])
        if any(refused):
            before = (self.bob.store.processed_seq(), len(self.bob.store.history()))
            # A protocol violation fails the call before anything of the batch is processed.
            with pytest.raises(RemoteProtocolError):
                await catch_up(self.bob)
            assert (self.bob.store.processed_seq(), len(self.bob.store.history())) == before
            assert self.server.queues[self.bob.me] == queued
            # A server that behaves again drops what it made up; the rest goes through.
            self.server.queues[self.bob.me] = [
                e for e in queued if max(e.seq, e.enqueued_at_ms) <= MAX_STORED
            ]
        await catch_up(self.bob)
        await catch_up(self.alice)  # bob may have rejoined after a gap notice
        await _sending.send_text(self.alice, self.gid, self.good_body())
        await catch_up(self.bob)
        assert texts(self.bob)[-1] == self.good[-1]  # the next good message is shown
        shown = [t for t in texts(self.bob) if t.startswith("good ")]
        assert shown == self.good  # every good one, once, in order
        assert self.server.queues[self.bob.me] == []  # drained and acknowledged


def test_no_envelope_or_plaintext_locks_the_receiver_out(tmp_path: Path) -> None:
    logging.getLogger("qpq_client").setLevel(logging.ERROR)  # expected notices, many
    try:
        server = FakeServer()
        scenario = Scenario(server, *asyncio.run(pair(server, tmp_path)))

        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.lists(events, min_size=1, max_size=6))
        def feed(batch: list[object]) -> None:
            asyncio.run(scenario.round(batch))

        feed()
    finally:
        logging.getLogger("qpq_client").setLevel(logging.NOTSET)


async def test_the_hostile_payloads_of_the_report_each_become_a_line(tmp_path: Path) -> None:
    server = FakeServer()
    alice, bob, gid = await pair(server, tmp_path)
    for plaintext in (
        b'{"v":1,"type":"text","body":"far future","sent_at":123456789012345678901234567890}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"v":1,"type":"poll","question":"?"}',
    ):
        inject(server, bob.me, sender=alice.me, payload=encrypt(alice, gid, plaintext),
               enqueued_at_ms=T0)  # fmt: skip
    inject(server, bob.me, sender=alice.me, payload=b"\x00\x01garbage", enqueued_at_ms=T0)
    mutated = bytearray(encrypt(alice, gid, encode_text("lost", T0)))
    mutated[-1] ^= 0xFF
    inject(server, bob.me, sender=alice.me, payload=bytes(mutated), enqueued_at_ms=T0)
    await _sending.send_text(alice, gid, "still here")
    await catch_up(bob)
    lines = [(row.kind, row.body) for row in bob.store.history()][-5:]
    assert lines == [
        ("text", "far future"),
        ("event", "alice sent a message this client cannot show (nested too deep)"),
        ("event", "alice sent a message this client cannot show (unknown message type 'poll')"),
        # The garbage names no group: it is only logged. The mutated message does.
        ("event", "a message from alice could not be read"),
        ("text", "still here"),
    ]
    # An out-of-range sent_at counts as missing: the server's time stands in.
    (far,) = [row for row in bob.store.history() if row.body == "far future"]
    assert far.sent_at == T0
    assert server.queues[bob.me] == []


async def test_a_server_that_lost_its_queue_is_detected_and_read_from_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeServer()
    alice, bob, gid = await pair(server, tmp_path)
    for n in range(3):
        await _sending.send_text(alice, gid, f"before {n}")
    await catch_up(bob)
    acked = bob.store.acked_seq()
    assert acked == server.last_seq[bob.me] > 3
    server.last_seq[bob.me] = 0  # the server lost its database: numbering starts again
    await _sending.send_text(alice, gid, "after the reset")
    with caplog.at_level(logging.WARNING, logger="qpq_client"):
        await catch_up(bob)
    assert texts(bob)[-1] == "after the reset"  # processed, not skipped as a redelivery
    events = [row.body for row in bob.store.history() if row.kind == "event"]
    assert events[-1] == "the server lost the messages it held for you; some may be missing"
    (notice,) = [r.getMessage() for r in caplog.records if r.name == "qpq_client"]
    assert notice.startswith("the server delivered seq 1 again, which it had deleted")
    assert bob.store.acked_seq() == 1
    assert server.queues[bob.me] == []
    await _sending.send_text(alice, gid, "and on")
    await catch_up(bob)
    assert texts(bob)[-2:] == ["after the reset", "and on"]


async def test_a_redelivery_of_what_was_processed_but_not_acknowledged_is_no_reset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeServer()
    alice, bob, gid = await pair(server, tmp_path)
    await _sending.send_text(alice, gid, "once")
    envelopes = await bob.conn.fetch(10)
    real_ack = bob.conn.ack

    async def lost(up_to_seq: int) -> int:  # the process dies before its ack arrives
        raise ConnectionError("gone")

    bob.conn.ack = lost  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await _receive.process_envelopes(bob, envelopes)
    bob.conn.ack = real_ack  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="qpq_client"):
        await catch_up(bob)  # the same envelopes again
    assert texts(bob).count("once") == 1
    assert "lost the messages" not in caplog.text
    assert server.queues[bob.me] == []


async def test_an_answer_the_server_dropped_while_joining_keeps_the_welcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The server resets an answer this client took none of in time (a busy
    # client): the Welcome being processed is not the inviter's fault, and is
    # joined on the next try instead of shown as unreadable.
    server = FakeServer()
    alice = await make_session(server, tmp_path / "alice", "alice")
    bob = await make_session(server, tmp_path / "bob", "bob", contacts=("alice",))
    await _commits.create_group(alice, "team")
    await _commits.invite(alice, "team", ("bob",))
    check = bob.conn.fetch_group_info

    async def dropped(group_id: bytes) -> p.GroupSnapshot:
        raise StreamResetError("the server reset the stream", STREAM_STALLED)

    bob.conn.fetch_group_info = dropped  # type: ignore[method-assign]
    with pytest.raises(StreamResetError):
        await catch_up(bob)
    assert not bob.mls.group_ids()
    bob.conn.fetch_group_info = check  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="qpq_client"):
        await catch_up(bob)
    assert bob.mls.group_ids() == alice.mls.group_ids()
    assert "could not be read" not in caplog.text
    assert server.queues[bob.me] == []


@pytest.mark.parametrize(
    "fields",
    [
        {"seq": MAX_STORED + 1, "enqueued_at_ms": T0},
        {"enqueued_at_ms": MAX_STORED + 1},
    ],
    ids=["seq", "enqueued_at"],
)
async def test_numbers_sqlite_cannot_store_are_a_protocol_violation(
    tmp_path: Path, fields: dict[str, int]
) -> None:
    server = FakeServer()
    alice, bob, gid = await pair(server, tmp_path)
    await _sending.send_text(alice, gid, "fine")
    inject(server, bob.me, sender=alice.me, payload=b"\x01", **fields)
    with pytest.raises(RemoteProtocolError, match=r"beyond what a client stores \(2\*\*63-1\)"):
        await catch_up(bob)
    assert texts(bob) == []  # the batch was not processed
    assert len(server.queues[bob.me]) == 2  # nor acknowledged
