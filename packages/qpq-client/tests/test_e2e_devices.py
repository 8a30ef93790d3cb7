"""Several devices per account, end to end against a real server (library clients).

Alice links a second device with a code she approves on her first; both
receive and send in a group she was in and in a new one; carol's safety
number for alice does not change and carol reads the new device announced;
inviting alice adds both devices, removing her removes both; a removed
device gets nothing more and cannot connect; a code that was never
approved, or was made for another account, links nothing.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from conftest import PASSPHRASE, MakeClient, MakeUser, User, qpq_command, receive_until

from qpq_client import Client, LinkError, ServerAddress, Trust, export_backup, import_backup
from qpq_client._backup_file import ScryptParams
from qpq_proto.errors import ForbiddenError, NotFoundError
from qpq_server.testing import RunningServer


async def link(
    first: Client,
    home: Path,
    server: RunningServer,
    name: str = "laptop-2",
    *,
    with_history: bool = False,
) -> tuple[Client, list[str]]:
    """Link a new device at ``home`` to ``first``'s account, approved on ``first``."""
    pending = await Client.request_link(
        home,
        PASSPHRASE,
        first.username,
        name,
        server=ServerAddress(server.host, server.port),
        trust=Trust(pin=server.fingerprint),
        token=server.token,
    )
    asked = await first.link_request(pending.code)
    assert asked.name == name
    assert asked.fingerprint == pending.fingerprint
    finishing = asyncio.ensure_future(Client.finish_link(pending, poll_seconds=0.05))
    added = await first.approve_link(pending.uri, with_history=with_history)
    device = await finishing
    assert device.username == first.username
    assert device.account_key == first.account_key != device.identity_key
    return device, added


async def test_a_linked_device_receives_and_sends_and_groups_stay_accounts(
    make_client: MakeClient, shared_server: RunningServer, tmp_path: Path
) -> None:
    alice, bob, carol = [await make_client(n) for n in ("alice", "bob", "carol")]
    for person in (bob, carol):
        await person.add_contact(alice.username)  # her invitations are joined at once
    await alice.create_group("old")
    await alice.invite("old", [bob.username, carol.username])
    await receive_until(bob, "you joined")
    before = await carol.safety_number(alice.username)

    await alice.send("old", "before the laptop")
    laptop, added = await link(alice, tmp_path / "laptop", shared_server, with_history=True)
    assert added == ["old"]
    try:
        await receive_until(laptop, "you joined")
        assert [g.name for g in laptop.groups()] == ["old"]
        # Asked for: the history alice's first device had, as read already.
        past = [(e.sender, e.body) for e in laptop.history("old")]
        assert (alice.username, "before the laptop") in past
        # Others read the new device announced, and know it is alice.
        await receive_until(carol, f"{alice.username} linked a new device: laptop-2")
        assert await carol.safety_number(alice.username) == before
        assert sorted(await carol.members("old")) == sorted(
            [alice.username, bob.username, carol.username]
        )
        assert f"{alice.username} (laptop-2)" in await carol.members("old", devices=True)

        # Both of alice's devices read and send in the old group (bob sends
        # once he is at the epoch that added the laptop: MLS gives a member
        # nothing of the epochs before it joined).
        await receive_until(bob, f"{alice.username} linked a new device: laptop-2")
        (bob_old,) = (g.name for g in bob.groups())
        await bob.send(bob_old, "hello both")
        await receive_until(laptop, f"{bob.username}: hello both")
        await receive_until(alice, f"{bob.username}: hello both")
        await laptop.send("old", "from the laptop")
        await receive_until(bob, f"{alice.username}: from the laptop")
        await receive_until(alice, f"{alice.username}: from the laptop")

        # A new group bob makes: inviting alice adds both devices.
        await bob.create_group("new")
        assert await bob.invite("new", [alice.username]) == [alice.username]
        assert len(await bob.members("new", devices=True)) == 3
        await receive_until(laptop, "you joined")
        await receive_until(alice, "you joined")
        await laptop.send("new", "laptop in the new group")
        await receive_until(bob, f"{alice.username}: laptop in the new group")
        # A group alice makes on the laptop has her first device in it.
        await laptop.create_group("mine")
        await laptop.invite("mine", [carol.username])
        await receive_until(alice, "you joined")
        (alice_mine,) = (g.name for g in alice.groups() if g.name not in ("old", "new"))
        await alice.send(alice_mine, "first device here")
        await receive_until(carol, f"{alice.username}: first device here")

        # Removing alice removes every device of hers.
        await bob.remove("new", [alice.username])
        assert await bob.members("new") == [bob.username]

        # The laptop removes the first device: it gets nothing more, cannot connect.
        devices = await laptop.devices()
        assert sorted(d.name for d in devices) == ["first device", "laptop-2"]
        await laptop.remove_device("first device")
        assert [d.name for d in await laptop.devices()] == ["laptop-2"]
        await receive_until(carol, f"{alice.username} removed a device: ")
        (carol_mine,) = (g.name for g in carol.groups() if g.name != "old")
        await carol.send(carol_mine, "after the removal")
        await receive_until(laptop, "after the removal")
        await alice.disconnect()
        with pytest.raises(ForbiddenError, match="removed from its account"):
            await alice.connect()
    finally:
        await laptop.close()


async def test_a_removed_device_is_named_by_a_member_who_opens_the_profile_anew(
    make_client: MakeClient, shared_server: RunningServer, tmp_path: Path
) -> None:
    # Each `qpq recv` is a new process: what it knows of a device is what the
    # tree holds, and a commit that removes the device takes its leaf away.
    alice, carol = await make_client("alice"), await make_client("carol")
    await carol.add_contact(alice.username)
    await alice.create_group("g")
    await alice.invite("g", [carol.username])
    await receive_until(carol, "you joined")
    laptop, _ = await link(alice, tmp_path / "laptop", shared_server)
    reopened: Client | None = None
    try:
        await receive_until(carol, f"{alice.username} linked a new device: laptop-2")
        await carol.close()
        await alice.remove_device("laptop-2")
        reopened = Client.open(carol.home, PASSPHRASE)
        await reopened.connect()
        lines = await receive_until(reopened, "removed")
        assert lines == [f"[g] * {alice.username} removed a device: laptop-2"]
    finally:
        await laptop.close()
        if reopened is not None:
            await reopened.close()


async def test_link_codes_not_approved_or_for_another_account_link_nothing(
    make_client: MakeClient, shared_server: RunningServer, tmp_path: Path
) -> None:
    alice, mallory = await make_client("alice"), await make_client("mallory")
    address = ServerAddress(shared_server.host, shared_server.port)
    trust = Trust(pin=shared_server.fingerprint)
    pending = await Client.request_link(
        tmp_path / "new",
        PASSPHRASE,
        alice.username,
        "phone",
        server=address,
        trust=trust,
        token=shared_server.token,
    )
    try:
        # Another account cannot read or approve it.
        with pytest.raises(ForbiddenError, match="another account"):
            await mallory.link_request(pending.code)
        with pytest.raises(ForbiddenError, match="another account"):
            await mallory.approve_link(pending.code)
        # Not approved: nothing arrives, nothing is written.
        with pytest.raises(LinkError, match="in time"):
            await pending.wait_for_answer(poll_seconds=0.01, wait_seconds=0.05)
        assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
        # A code nobody made, or mistyped.
        with pytest.raises(NotFoundError):
            await alice.link_request("ABCD-EFGH-JKMN")
        with pytest.raises(LinkError, match="not a link code"):
            await alice.link_request("12345")
    finally:
        await pending.close()


def test_link_approve_list_and_remove_through_the_command(
    make_user: MakeUser, shared_server: RunningServer, tmp_path: Path
) -> None:
    alice = make_user("alice")
    bob = make_user("bob")
    bob.run("contacts", "add", alice.name)
    alice.run("group", "create", "team")
    alice.run("group", "invite", "team", bob.name)
    bob.recv_until("you joined")
    phone = User(alice.name, tmp_path / "phone", shared_server)
    linking = subprocess.Popen(
        [*qpq_command(), "device", "link", alice.name, "--name", "phone"],
        env=phone.env(QPQ_TOKEN=shared_server.token),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert linking.stdout is not None
        assert linking.stderr is not None
        first = linking.stdout.readline()
        assert first.startswith("link code: "), linking.stderr.read()
        code = first.split(": ")[1].strip()
        assert linking.stdout.readline().strip() == f"qpq://link/{code}"
        fingerprint = linking.stdout.readline().split(": ")[1].strip()
        # Not confirmed: nothing approved (and the code still waits).
        refused = alice.run("device", "approve", code, check=False, input_text="n\n")
        assert refused.returncode != 0
        assert fingerprint in refused.stderr
        approved = alice.run("device", "approve", code, input_text="y\n")
        assert "approved phone; added to: team" in approved.stdout
        out, err = linking.communicate(timeout=120)
        assert linking.returncode == 0, err
        assert f"linked: this device (phone) acts for {alice.name}" in out
    finally:
        if linking.poll() is None:
            linking.kill()
            linking.wait()
    phone.recv_until("you joined")
    assert phone.run("group", "list").lines == [f"team: {alice.name}, {bob.name}"]
    # Not asked for: the new device starts with no history but its joining.
    assert all("joined" in line for line in phone.run("history", "team").lines)
    bob.recv_until(f"{alice.name} linked a new device: phone")
    assert bob.run("group", "members", "team").lines == [alice.name, bob.name]
    with_devices = bob.run("group", "members", "team", "--devices").lines
    assert sorted(with_devices) == sorted([alice.name, f"{alice.name} (phone)", bob.name])
    phone.run("send", "team", "from my phone")
    bob.recv_until(f"{alice.name}: from my phone")
    listed = alice.run("device", "list").lines
    assert listed[0].startswith("first device (this device)")
    assert listed[1].startswith("phone ")
    assert "removed phone" in alice.run("device", "remove", "phone").stdout
    gone = phone.run("recv", check=False)
    assert gone.returncode != 0
    assert "removed from its account" in gone.stderr
    missing = alice.run("device", "remove", "tablet", check=False)
    assert missing.returncode != 0
    assert "no device named 'tablet'" in missing.stderr


async def test_a_linked_devices_backup_restores_a_new_device_of_its_account(
    make_client: MakeClient, shared_server: RunningServer, tmp_path: Path
) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    await bob.add_contact(alice.username)
    await alice.create_group("team")
    await alice.invite("team", [bob.username])
    await receive_until(bob, "you joined")
    laptop, _added = await link(alice, tmp_path / "laptop", shared_server)
    await receive_until(laptop, "you joined")
    await laptop.close()
    dest = tmp_path / "laptop.qpqbackup"
    export_backup(
        tmp_path / "laptop", PASSPHRASE, dest, "tulip-ferry-orbit-cellar-7",
        kdf=ScryptParams(log2_n=10, r=8, p=1),
    )  # fmt: skip
    fresh = tmp_path / "restored"
    await import_backup(dest, "tulip-ferry-orbit-cellar-7", fresh, PASSPHRASE)
    restored = Client.open(fresh, PASSPHRASE)
    try:
        # A new device of the same account, signed with the account seed the
        # linked laptop's backup carried.
        assert restored.identity_key != laptop.identity_key
        assert restored.account_key == alice.account_key
        await restored.connect()
        await receive_until(bob, f"{alice.username} linked a new device: restored")
        await restored.send("team", "from the restored laptop")
        await receive_until(bob, f"{alice.username}: from the restored laptop")
        names = sorted(d.name for d in await restored.devices())
        assert names == sorted(["first device", "laptop-2", "restored"])
    finally:
        await restored.close()
