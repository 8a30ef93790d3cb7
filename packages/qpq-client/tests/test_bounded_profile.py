"""Nothing a token holder sends can grow a profile without bound or wedge it.

Each case is an attack that got through before, now made against a real
server with library clients in this process:

- strangers push many MiB into groups held as message requests: the
  profile grows by the request bounds at most (qpq_client._request_bounds);
- a text over the server's payload limit is refused before encryption, and
  an outbox row the server refuses for good is dropped and reported, not
  retried by every later command; the outbox is listed and dropped from;
- a 2 MB message, which the server takes, is shown by its receiver;
- the digests of processed messages are pruned;
- a commit adding 400 identities costs each receiver one name lookup;
- a follower whose KeyPackages are claimed without a Welcome refills them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSPHRASE
from prometheus_client.parser import text_string_to_metric_families

import qpq_core
from qpq_client import (
    Client,
    GroupStatus,
    MessageTooLongError,
    ServerAddress,
    Trust,
    UnknownOutboxEntryError,
    _follow,
    _keys,
    _request_bounds,
    _sending,
    _session,
)
from qpq_client.cli._errors import message_for
from qpq_proto import FetchKeyPackage, RegisterUser, UploadKeyPackages
from qpq_proto.errors import RateLimitedError
from qpq_server.testing import RunningServer, ServerProcess, open_client

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
#: The load here is the test's: no per-call rate limit, and the claim limits
#: (tested on the server) lifted where a test claims more than a person would.
OPEN_SERVER = {
    "QPQ_RATE_PER_SECOND": "100000",
    "QPQ_RATE_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIM_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIMS_PER_CLAIMER_PER_DAY": "100000",
}


@contextlib.contextmanager
def server_with(tmp_path: Path, **env: str) -> Iterator[RunningServer]:
    home = tmp_path / "server"
    home.mkdir(exist_ok=True)
    with ServerProcess(home, extra_env={**OPEN_SERVER, **env}) as server:
        yield server


class Clients:
    """Library clients of one server, closed at the end."""

    def __init__(self, server: RunningServer, root: Path) -> None:
        self.server = server
        self.root = root
        self.open: list[Client] = []

    async def create(self, name: str) -> Client:
        client = await Client.create(
            self.root / name,
            PASSPHRASE,
            name,
            server=ServerAddress(self.server.host, self.server.port),
            trust=Trust(pin=self.server.fingerprint),
            token=self.server.token,
        )
        self.open.append(client)
        return client

    async def reopen(self, home: Path) -> Client:
        again = Client.open(home, PASSPHRASE)
        await again.connect()
        self.open.append(again)
        return again

    async def close(self, client: Client) -> None:
        self.open.remove(client)
        await client.close()


@contextlib.asynccontextmanager
async def clients_of(server: RunningServer, root: Path) -> AsyncIterator[Clients]:
    made = Clients(server, root)
    try:
        yield made
    finally:
        for client in list(made.open):
            with contextlib.suppress(Exception):
                await client.close()


async def drain_queue(client: Client) -> list[str]:
    """Receive until the server holds nothing more for ``client``; what was shown."""
    shown: list[str] = []
    while True:
        entries = await client.receive()
        shown += [e.body for e in entries]
        session = client._session
        assert session is not None
        if not await session.conn.fetch(1):
            return shown


async def pair(clients: Clients) -> tuple[Client, Client]:
    alice, bob = await clients.create("alice"), await clients.create("bob")
    await bob.add_contact("alice")
    await alice.create_group("pair")
    await alice.invite("pair", ["bob"])
    assert [e.body for e in await bob.receive(wait=10)] == ["you joined (invited by alice)"]
    return alice, bob


def profile_bytes(home: Path) -> int:
    return sum(path.stat().st_size for path in home.glob("state.db*"))


# ---- message requests ---------------------------------------------------------


async def test_a_request_flood_leaves_the_profile_within_its_bound(tmp_path: Path) -> None:
    limits = _request_bounds.REQUEST_LIMITS
    with server_with(tmp_path) as server:
        async with clients_of(server, tmp_path) as clients:
            victim = await clients.create("victim")
            strangers = [await clients.create(f"stranger{n}") for n in range(2)]
            await clients.close(victim)
            before = profile_bytes(victim.home)
            # Each stranger invites the victim into groups the victim never
            # accepts, and pushes 1 MiB messages into them: 24 MiB in all.
            pushed = 0
            for n, stranger in enumerate(strangers):
                for g in range(2):
                    name = f"flood-{n}-{g}"
                    await stranger.create_group(name)
                    await stranger.invite(name, ["victim"])
                    for _ in range(6):
                        await stranger.send(name, "x" * (MIB - 4096))
                        pushed += MIB
            victim = await clients.reopen(victim.home)
            await drain_queue(victim)
            requests = [g for g in victim.groups() if g.status is GroupStatus.REQUESTED]
            dropped = sum(g.dropped for g in requests)
            await clients.close(victim)
            grown = profile_bytes(victim.home) - before
    # Four requests: each may hold 1 MiB, all together 4 MiB (Welcomes
    # included); the rest was acknowledged and counted, not kept.
    assert len(requests) == 4
    assert pushed == 24 * MIB
    assert dropped >= 24 - limits.max_total_bytes // MIB
    assert grown < limits.max_total_bytes + 1 * MIB, f"the profile grew {grown / MIB:.1f} MiB"


async def test_requests_beyond_the_cap_are_counted_and_what_was_not_kept_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _request_bounds.RequestLimits(max_requests=2, max_messages=3)
    monkeypatch.setattr(_request_bounds, "REQUEST_LIMITS", small)
    with server_with(tmp_path) as server:
        async with clients_of(server, tmp_path) as clients:
            victim = await clients.create("victim")
            stranger = await clients.create("stranger")
            for g in range(3):
                await stranger.create_group(f"g{g}")
                await stranger.invite(f"g{g}", ["victim"])
            for n in range(5):
                await stranger.send("g0", f"held or not {n}")
            await drain_queue(victim)
            # The third invitation found two waiting: not kept, counted.
            assert victim.requests_dropped == 1
            requests = [g for g in victim.groups() if g.status is GroupStatus.REQUESTED]
            # g0 held the group's name and two texts; three texts were not kept.
            assert sorted(g.dropped for g in requests) == [0, 3]
            (flooded,) = (g for g in requests if g.dropped)
            accepted = await victim.accept(flooded.name)
            shown = [e.body for e in await victim.receive()]
    assert accepted.name == "g0"
    assert shown == [
        "you joined (invited by stranger)",
        "3 messages sent before you accepted were not kept (more than an invitation holds)",
        "held or not 0",
        "held or not 1",
    ]


# ---- the outbox ---------------------------------------------------------------


async def test_a_too_long_text_is_refused_before_it_is_encrypted(tmp_path: Path) -> None:
    env = {"QPQ_MAX_PAYLOAD_BYTES": str(MIB)}
    with server_with(tmp_path, **env) as server:
        async with clients_of(server, tmp_path) as clients:
            alice, bob = await pair(clients)
            epoch_before = alice.groups()[0].epoch
            with pytest.raises(MessageTooLongError) as refused:
                await alice.send("pair", "x" * MIB)
            assert "at most 1,047,552" in str(refused.value)  # 1 MiB less the framing
            assert alice.outbox() == []
            assert [e.body for e in alice.history("pair")][-1] != "x" * MIB
            assert alice.groups()[0].epoch == epoch_before
            # Nothing is wedged: the next message goes, and arrives.
            await alice.send("pair", "short")
            assert [e.body for e in await bob.receive(wait=10)] == ["short"]


async def test_an_outbox_row_refused_for_good_is_dropped_and_reported(tmp_path: Path) -> None:
    """A message persisted but not handed over (the process ended), which the
    server, restarted with a smaller payload limit, refuses for good."""
    data = tmp_path / "server"
    data.mkdir()
    server = ServerProcess(data, extra_env=OPEN_SERVER)
    with server as running:
        async with clients_of(running, tmp_path) as clients:
            alice, bob = await pair(clients)
            session = alice._session
            assert session is not None
            group_id = alice.groups()[0].group_id
            # Staged as send() stages it, then the process "ends" before publishing.
            _sending.stage_text(session, group_id, "y" * (2 * MIB))
            await clients.close(alice)
            await clients.close(bob)
            data_dir = running.data_dir
    smaller = {**OPEN_SERVER, "QPQ_MAX_PAYLOAD_BYTES": str(MIB)}
    with ServerProcess(data, extra_env=smaller, data_dir=data_dir) as restarted:
        # The pin and port change with the restart: connect with them.
        alice = Client.open(tmp_path / "alice", PASSPHRASE)
        try:
            await alice.connect(
                server=ServerAddress(restarted.host, restarted.port),
                trust=Trust(pin=restarted.fingerprint),
            )
            assert alice.outbox() == []
            assert alice.history("pair")[-1].body == (
                "your message to pair could not be sent: the server said: payload exceeds"
                f" {MIB} bytes (field: payload)"
            )
            # Reported once, as news, like anything else that happened.
            assert [e.body for e in await alice.receive()] == [alice.history("pair")[-1].body]
            await alice.send("pair", "after the refusal")
        finally:
            await alice.close()
        bob = Client.open(tmp_path / "bob", PASSPHRASE)
        try:
            await bob.connect(
                server=ServerAddress(restarted.host, restarted.port),
                trust=Trust(pin=restarted.fingerprint),
            )
            assert [e.body for e in await bob.receive(wait=10)] == ["after the refusal"]
        finally:
            await bob.close()


async def test_the_outbox_lists_what_waits_and_drops_it(tmp_path: Path) -> None:
    with server_with(tmp_path) as server:
        async with clients_of(server, tmp_path) as clients:
            alice, bob = await pair(clients)
            session = alice._session
            assert session is not None
            group_id = alice.groups()[0].group_id
            staged = _sending.stage_text(session, group_id, "never sent")
            (entry,) = alice.outbox()
            assert (entry.id, entry.group, entry.kind) == (staged.outbox_id, "pair", "message")
            assert entry.size > len("never sent")
            dropped = await alice.drop_outbox(entry.id)
            assert dropped == entry
            assert alice.outbox() == []
            with pytest.raises(UnknownOutboxEntryError):
                await alice.drop_outbox(entry.id)
            assert alice.history("pair")[-1].body == (
                "your message to pair could not be sent: you dropped it from the outbox"
            )
            await alice.send("pair", "this one goes")
            assert [e.body for e in await bob.receive(wait=10)] == ["this one goes"]


async def test_a_two_mib_message_is_shown_by_its_receiver(tmp_path: Path) -> None:
    with server_with(tmp_path) as server:
        async with clients_of(server, tmp_path) as clients:
            alice, bob = await pair(clients)
            text = "z" * (2 * MIB)
            await alice.send("pair", text)
            (entry,) = await bob.receive(wait=10)
    assert (entry.kind, entry.sender, len(entry.body)) == ("text", "alice", 2 * MIB)
    assert entry.body == text


# ---- pruned digests -----------------------------------------------------------


async def test_seen_digests_are_pruned_once_no_copy_can_follow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with server_with(tmp_path) as server:
        async with clients_of(server, tmp_path) as clients:
            alice, bob = await pair(clients)
            store = bob._store
            day_ms = 24 * 3600 * 1000
            now = int(time.time() * 1000)
            with store.transaction() as tx:
                # Digests of direct copies: one past the server's retention
                # (7 days) and its margin, one that a server copy may still follow.
                tx._cursor.execute(
                    "INSERT INTO seen (digest, received_at, seq) VALUES (?, ?, NULL), (?, ?, NULL)",
                    (b"d" * 32, now - 8 * day_ms, b"e" * 32, now - day_ms),
                )
            kept = store.seen_count()  # the two, and what bob received so far
            for n in range(5):
                await alice.send("pair", f"m{n}")
            assert len(await bob.receive(wait=10)) == 5
            # The server copies' digests stay for the grace a direct copy in
            # flight gets; the direct copy's past the server's retention goes.
            assert store.seen_count() == kept - 1 + 5
            assert not store.seen(b"d" * 32)
            assert store.seen(b"e" * 32)
            # Past that grace, they go with the next acknowledgement.
            monkeypatch.setattr(_session, "SEEN_GRACE_MS", -60_000)
            await alice.send("pair", "one more")
            assert [e.body for e in await bob.receive(wait=10)] == ["one more"]
            assert store.seen_count() == 1
            assert store.seen(b"e" * 32)


# ---- names in one call --------------------------------------------------------


def _calls(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode("utf-8")
    return {
        sample.labels["call"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "qpq_calls_total"
    }


async def register_many(server: RunningServer, count: int) -> list[str]:
    """``count`` identities with a username and one KeyPackage each, on one connection."""
    names = []
    async with open_client(
        server.host, server.port, token=server.token, pin=server.fingerprint
    ) as client:
        for n in range(count):
            identity = qpq_core.Identity.generate()
            await client.authenticate(identity)
            await client.call(RegisterUser(f"member{n:03d}"))
            package = qpq_core.MlsClient(identity).create_key_packages(1).packages
            await client.call(UploadKeyPackages(packages=tuple(package)))
            names.append(f"member{n:03d}")
    return names


async def test_a_400_member_add_costs_a_receiver_one_lookup(tmp_path: Path) -> None:
    with server_with(tmp_path, QPQ_METRICS_LISTEN="127.0.0.1:0") as server:
        assert server.metrics_port is not None
        names = await register_many(server, 400)
        async with clients_of(server, tmp_path) as clients:
            alice, bob = await pair(clients)
            assert await alice.invite("pair", names) == names
            before = await asyncio.to_thread(_calls, server.metrics_port)
            entries = await bob.receive(wait=30)
            after = await asyncio.to_thread(_calls, server.metrics_port)
            members = await bob.members("pair")
    assert sorted(e.body for e in entries) == [f"alice added {name}" for name in names]
    assert after.get("ResolveIdentities", 0) - before.get("ResolveIdentities", 0) == 1
    assert after.get("ResolveIdentity", 0) == before.get("ResolveIdentity", 0)
    assert sorted(members) == sorted(["alice", "bob", *names])


# ---- KeyPackages drained without a Welcome ---------------------------------------


async def test_a_follower_refills_keypackages_claimed_without_a_welcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked on every idle turn of the follower, and a turn every 0.2 s,
    # instead of every 5 minutes and 15 s: the same path, sooner.
    monkeypatch.setattr(_keys, "CHECK_SECONDS", 0.0)
    monkeypatch.setattr(_follow, "_KEEPALIVE_SECONDS", 0.2)
    with server_with(tmp_path) as server:
        async with clients_of(server, tmp_path) as clients:
            victim = await clients.create("victim")
            assert (await victim.key_status()).available == _keys.TARGET
            session: Any = victim._session
            real_upload = session.conn.upload_key_packages
            refilled = asyncio.Event()

            async def upload(packages: tuple[bytes, ...]) -> Any:
                answer = await real_upload(packages)
                refilled.set()
                return answer

            session.conn.upload_key_packages = upload
            claimed = _keys.TARGET - _keys.REFILL_BELOW + 10
            # All claimed before the follower runs: a refill between two claims
            # would leave fewer than the target once the rest are claimed.
            async with open_client(
                server.host, server.port, token=server.token, pin=server.fingerprint
            ) as stranger:
                await stranger.authenticate(qpq_core.Identity.generate())
                for _ in range(claimed):
                    await stranger.call(FetchKeyPackage(identity_key=victim.identity_key))
            follower = asyncio.ensure_future(_consume(victim))
            try:
                async with asyncio.timeout(30):
                    await refilled.wait()
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
                del session.conn.upload_key_packages
            status = await victim.key_status()
    assert (status.available, status.uploaded) == (_keys.TARGET, 0)


async def _consume(client: Client) -> None:
    async for _entry in client.follow():
        pass


# ---- A send the server cannot take now ---------------------------------------


async def test_a_send_the_server_cannot_take_now_says_it_waits_in_the_outbox(
    tmp_path: Path,
) -> None:
    # Alice's account may publish three times an hour (the invitation takes
    # some of them): a message is soon refused "for now".
    with server_with(tmp_path, QPQ_ACCOUNT_MESSAGES_PER_HOUR="3") as server:
        async with clients_of(server, tmp_path) as clients:
            alice, bob = await clients.create("alice"), await clients.create("bob")
            await bob.add_contact("alice")
            await alice.create_group("pair")
            await alice.invite("pair", ["bob"])
            refused: RateLimitedError | None = None
            for n in range(4):
                try:
                    await alice.send("pair", f"message {n}")
                except RateLimitedError as error:
                    refused = error
                    break
            assert refused is not None, "the account's limit never refused a message"
            (waiting,) = alice.outbox()  # the refused one, and only it
    # Kept, and the one line a person reads says so (and not to send it again).
    assert (waiting.kind, waiting.group) == ("message", "pair")
    line = message_for(refused)
    assert line.startswith("the server limits this: "), line
    assert line.endswith(
        "; the message waits in the outbox and goes out with the next command that"
        " reaches the server (qpq outbox); do not send it again"
    ), line
