"""Crashes: ``kill -9`` of the server under load, and of a client amid a commit.

The server is killed at random points (after a seeded random number of
acknowledged operations) while library clients send to their group and
KeyPackages are uploaded and claimed, then restarted on its data; after
the last round nothing the server acknowledged is lost, nothing is shown
twice, and no KeyPackage was served twice.

A client process is killed while it processes a commit, at each point
where a crash could split its work (applied in memory only, written but
not committed, committed but not acknowledged); started again, it agrees
with the other members on the group's secrets and catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import NO_RATE_LIMIT, PASSPHRASE
from faults import (
    SCALE,
    Member,
    catch_up,
    fault_server,
    form_group,
    has_all,
    open_member,
    receive_until,
    reopen,
    report,
    send_all,
)

import qpq_core
from qpq_proto import FetchKeyPackage, UploadKeyPackages
from qpq_proto.errors import ConnectionFailedError, NotFoundError, QpqError
from qpq_server.testing import CallClient, RunningServer, start_server

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
#: Kill-and-restart rounds of the server.
ROUNDS = 3 * SCALE


# ---- the server killed under load ------------------------------------------------


@dataclass
class Directory:
    """KeyPackages of one owner: uploaded, acknowledged, claimed, and claims cut by a kill."""

    owner: qpq_core.MlsClient
    uploaded: set[bytes] = field(default_factory=set)
    acknowledged: set[bytes] = field(default_factory=set)
    claimed: list[bytes] = field(default_factory=list)
    claims_cut: int = 0


@dataclass
class Load:
    """One round's operations the server acknowledged, counted until ``target``."""

    target: int
    acknowledged: int = 0
    claiming: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    def done(self) -> None:
        self.acknowledged += 1
        if self.acknowledged >= self.target:
            self.reached.set()


async def _uploads(server: RunningServer, directory: Directory, load: Load) -> None:
    async with server.connect() as client:
        await client.authenticate(directory.owner.identity)
        while True:
            batch = tuple(directory.owner.create_key_packages(5).packages)
            directory.uploaded.update(batch)
            await client.call(UploadKeyPackages(packages=batch))
            directory.acknowledged.update(batch)
            load.done()


async def _claims(client: CallClient, directory: Directory, load: Load) -> None:
    key = directory.owner.identity.public_key
    while True:
        load.claiming += 1
        try:
            package = (await client.call(FetchKeyPackage(identity_key=key))).package
        except NotFoundError:
            await asyncio.sleep(0.01)  # the uploader is behind: poll again
            continue
        finally:
            load.claiming -= 1
        directory.claimed.append(package)
        load.done()


async def _claimer(server: RunningServer, directory: Directory, load: Load) -> None:
    async with server.connect() as client:
        await client.authenticate(qpq_core.Identity.generate())
        await _claims(client, directory, load)


async def _sends(member: Member, load: Load) -> None:
    while True:
        await send_all(member, 1)
        load.done()


@contextlib.contextmanager
def _restartable(tmp_path: Path) -> Iterator[list[RunningServer]]:
    """The server, as a one-element list whose element each restart replaces."""
    home = tmp_path / "server"
    home.mkdir()
    current = [start_server(home, extra_env=NO_RATE_LIMIT)]
    try:
        yield current
    finally:
        if current[0].process.poll() is None:
            current[0].stop()


async def test_killing_the_server_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(9)
    directory = Directory(qpq_core.MlsClient(qpq_core.Identity.generate()))
    kill_points: list[int] = []
    with _restartable(tmp_path) as current:
        server = current[0]
        members = [
            await open_member(tmp_path / name, f"{name}-crash", server)
            for name in ("alice", "bob", "carol")
        ]
        try:
            await form_group(members[0], members[1:])
            for _round in range(ROUNDS):
                load = Load(target=rng.randint(20, 150))
                tasks = [asyncio.create_task(_sends(m, load)) for m in members]
                tasks.append(asyncio.create_task(_uploads(server, directory, load)))
                tasks += [asyncio.create_task(_claimer(server, directory, load)) for _ in range(2)]
                reached = asyncio.create_task(load.reached.wait())
                await asyncio.wait([reached, *tasks], return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    if task.done():
                        task.result()  # a load task ended before the kill: show why
                server.kill()
                directory.claims_cut += load.claiming
                kill_points.append(load.acknowledged)
                # What was in flight dies with the connections: as a client
                # process would, each task stops where it was.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                assert server.process.returncode == -9
                server = current[0] = start_server(
                    tmp_path / "server",
                    extra_env=NO_RATE_LIMIT,
                    data_dir=server.data_dir,
                    listen=f"127.0.0.1:{server.port}",
                )
                members = [await reopen(m) for m in members]
            expected = {m.name: m.sent for m in members}
            for member in members:
                await receive_until(member, has_all(expected), within=60)
            async with server.connect() as client:
                await client.authenticate(qpq_core.Identity.generate())
                with contextlib.suppress(NotFoundError):
                    while True:
                        claim = FetchKeyPackage(identity_key=directory.owner.identity.public_key)
                        directory.claimed.append((await client.call(claim)).package)
            unreadable = sum(len(m.unreadable()) for m in members)
            for member in members:
                for sender, bodies in member.texts_by_sender().items():
                    numbers = [int(body.rsplit(":", 1)[1]) for body in bodies]
                    # Shown once each, in the order they were sent; the messages
                    # cut by a kill were sent again from the sender's outbox.
                    assert numbers == sorted(set(numbers)), (member.name, sender)
            assert len({m.exporter() for m in members}) == 1
        finally:
            for member in members:
                await member.client.close()
    claimed = directory.claimed
    assert len(claimed) == len(set(claimed)), "a KeyPackage was served twice"
    assert set(claimed) <= directory.uploaded
    lost = directory.acknowledged - set(claimed)
    # A claim that the kill cut short may have taken a package with it.
    assert len(lost) <= directory.claims_cut
    report(
        f"server killed {ROUNDS} times, after {kill_points} acknowledged operations; "
        f"{sum(len(m.sent) for m in members)} messages acknowledged, all delivered, "
        f"{unreadable} resent copies shown as unreadable; {len(directory.acknowledged)} "
        f"KeyPackages acknowledged, {len(claimed)} claimed once each, {len(lost)} taken by "
        f"claims cut short ({directory.claims_cut} cut)"
    )


# ---- a client killed amid a commit ----------------------------------------------------


async def _run_until_stopped(home: Path, point: str, nth: int = 1) -> int:
    """Run fault_client.py until it stops at ``point``, kill -9 it; its exit status."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "fault_client.py"),
        str(home),
        point,
        str(nth),
        env={**os.environ, "FAULT_PASSPHRASE": PASSPHRASE},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.decode().strip() == f"at {point}", line
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        status = await child.wait()
    return status


@pytest.mark.parametrize("point", ["processed", "writing", "persisted"])
async def test_a_client_killed_amid_a_commit_agrees_and_catches_up_after_restart(
    tmp_path: Path, point: str
) -> None:
    with fault_server(tmp_path) as server:
        alice, bob, carol = [
            await open_member(tmp_path / name, f"{name}-{point}", server)
            for name in ("alice", "bob", "carol")
        ]
        try:
            await form_group(alice, [bob, carol])
            await carol.client.close()  # the profile is the child's now
            await send_all(alice, 1)
            await alice.client.update(alice.group)
            await send_all(alice, 1)
            await bob.client.update(bob.group)
            await send_all(bob, 1)
            assert await _run_until_stopped(carol.client.home, point) == -9
            # Started again, carol is at the group's epoch with its secrets.
            carol = await reopen(carol)
            expected = {m.name: m.sent for m in (alice, bob)}
            await receive_until(carol, has_all(expected), within=60)
            assert carol.texts_by_sender() == expected
            assert carol.unreadable() == []
            await catch_up(alice, bob)
            assert len({m.exporter() for m in (alice, bob, carol)}) == 1
            # And the group goes on with her in it.
            await send_all(carol, 1)
            await alice.client.update(alice.group)
            await send_all(alice, 1)
            expected = {m.name: m.sent for m in (alice, bob, carol)}
            for member in (alice, bob, carol):
                await receive_until(member, has_all(expected), within=60)
                assert member.texts_by_sender() == {
                    k: v for k, v in expected.items() if k != member.name
                }
            assert len({m.exporter() for m in (alice, bob, carol)}) == 1
        finally:
            for member in (alice, bob, carol):
                with contextlib.suppress(QpqError, ConnectionFailedError):
                    await member.client.close()


async def test_a_client_killed_at_random_commits_always_recovers(tmp_path: Path) -> None:
    """Many commits; the client process dies at a random one, at a random point, and again."""
    rng = random.Random(77)
    rounds = 2 * SCALE
    with fault_server(tmp_path) as server:
        alice, bob = [
            await open_member(tmp_path / name, f"{name}-random", server)
            for name in ("alice", "bob")
        ]
        try:
            await form_group(alice, [bob])
            await bob.client.close()
            stops = []
            for _ in range(rounds):
                commits = rng.randint(2, 5)
                for _ in range(commits):
                    await alice.client.update(alice.group)
                    await send_all(alice, 1)
                nth, point = (
                    rng.randint(1, commits),
                    rng.choice(("processed", "writing", "persisted")),
                )
                assert await _run_until_stopped(bob.client.home, point, nth) == -9
                stops.append(f"{point} of commit {nth}/{commits}")
            bob = await reopen(bob)
            expected = {alice.name: alice.sent}
            await receive_until(bob, has_all(expected), within=60)
            assert bob.texts_by_sender() == expected
            assert alice.exporter() == bob.exporter()
            report(f"client killed {rounds} times: {', '.join(stops)}")
        finally:
            for member in (alice, bob):
                with contextlib.suppress(QpqError, ConnectionFailedError):
                    await member.client.close()
