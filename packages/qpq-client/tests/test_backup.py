"""Profile backup: export on one home, import into a fresh one, talk on in the old groups."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import PASSPHRASE, MakeClient, MakeUser

from qpq_client import (
    AlreadyInitializedError,
    BackupError,
    Client,
    export_backup,
    import_backup,
    read_backup,
)
from qpq_client._backup_file import MAGIC, ScryptParams, open_sealed, seal
from qpq_proto.errors import ForbiddenError

pytestmark = pytest.mark.slow

BACKUP_PASSPHRASE = "tulip-ferry-orbit-cellar-7"
#: Cheap parameters for the library tests (the format carries them); the
#: CLI smoke test uses the defaults.
FAST_KDF = ScryptParams(log2_n=10, r=8, p=1)


async def texts(client: Client, wait: float = 10.0) -> list[str]:
    return [f"{e.sender}: {e.body}" for e in await client.receive(wait=wait) if e.kind == "text"]


async def test_export_import_history_and_talk_on_in_old_groups(
    make_client: MakeClient, tmp_path: Path
) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    await bob.add_contact(alice.username)
    await alice.create_group("team")
    await alice.invite("team", [bob.username])
    await bob.receive(wait=10)
    await alice.send("team", "before the backup")
    assert await texts(bob) == [f"{alice.username}: before the backup"]
    await bob.send("team", "seen by alice")
    assert await texts(alice) == [f"{bob.username}: seen by alice"]

    dest = tmp_path / "alice.qpqbackup"
    summary = export_backup(alice.home, PASSPHRASE, dest, BACKUP_PASSPHRASE, kdf=FAST_KDF)
    assert summary.username == alice.username
    assert summary.groups == ("team",)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    data = dest.read_bytes()
    assert data.startswith(MAGIC)
    assert b"before the backup" not in data
    assert alice.identity_key not in data
    assert PASSPHRASE.encode() not in data
    server = alice.server
    alice_key = alice.identity_key
    safety_before = await bob.safety_number(alice.username)
    await alice.close()  # the laptop is lost
    # Sent after the export, to the lost device's queue: the restored device
    # is a new one and never sees it (its sender's device still shows it).
    await bob.send("team", "while alice was away")

    fresh = tmp_path / "new-laptop"
    restored = await import_backup(
        dest, BACKUP_PASSPHRASE, fresh, "new-state-passphrase", device_name="new-laptop"
    )
    assert restored.rejoined == ("team",)
    assert restored.not_rejoined == ()
    assert restored.device_name == "new-laptop"

    again = Client.open(fresh, "new-state-passphrase")
    try:
        await again.connect()
        assert again.username == alice.username
        # A new device key of the same account.
        assert again.identity_key == restored.device_key
        assert again.identity_key != alice_key
        assert again.account_key == alice.account_key
        assert again.server == server
        history = [f"{e.sender}: {e.body}" for e in again.history("team") if e.kind == "text"]
        assert history == [
            f"{alice.username}: before the backup",
            f"{bob.username}: seen by alice",
        ]
        assert {c.username for c in again.contacts()} == {bob.username}
        assert again.history("team")[-1].body == "you rejoined; you are up to date"
        # Bob sees alice's new device join, her safety number unchanged, and
        # the group talks on.
        seen = await bob.receive(wait=10)
        assert [e.body for e in seen if e.kind == "event"] == [
            f"{alice.username} linked a new device: new-laptop"
        ]
        assert await bob.safety_number(alice.username) == safety_before
        await again.send("team", "back from the backup")
        assert await texts(bob) == [f"{alice.username}: back from the backup"]
        await bob.send("team", "welcome back")
        assert await texts(again) == [f"{bob.username}: welcome back"]

        # Both devices are the account's; the lost one is removed from here.
        devices = {d.device_key: d for d in await again.devices()}
        assert set(devices) == {alice_key, again.identity_key}
        assert devices[again.identity_key].current
        assert devices[again.identity_key].name == "new-laptop"
        removed = await again.remove_device(devices[alice_key].name)
        assert removed.device_key == alice_key
        assert [d.device_key for d in await again.devices()] == [again.identity_key]
        seen = await bob.receive(wait=10)
        assert [e.body for e in seen if e.kind == "event"] == [
            f"{alice.username} removed a device: first device"
        ]
        await bob.send("team", "only the new laptop now")
        assert await texts(again) == [f"{bob.username}: only the new laptop now"]
    finally:
        await again.close()
    # The lost device, were it found, cannot authenticate any more.
    lost = Client.open(alice.home, PASSPHRASE)
    try:
        with pytest.raises(ForbiddenError, match="removed from its account"):
            await lost.connect()
    finally:
        await lost.close()

    # A second import into the now used home is refused.
    with pytest.raises(AlreadyInitializedError):
        await import_backup(dest, BACKUP_PASSPHRASE, fresh, "new-state-passphrase")


async def test_wrong_passphrase_and_damaged_files_are_one_line_and_write_nothing(
    make_client: MakeClient, tmp_path: Path
) -> None:
    carol = await make_client("carol")
    await carol.create_group("notes")
    dest = tmp_path / "carol.qpqbackup"
    export_backup(carol.home, PASSPHRASE, dest, BACKUP_PASSPHRASE, kdf=FAST_KDF)
    good = dest.read_bytes()
    damaged = {
        "wrong passphrase": (good, "not-the-passphrase"),
        "truncated": (good[: len(good) - 40], BACKUP_PASSPHRASE),
        "cut in the header": (good[:20], BACKUP_PASSPHRASE),
        "a flipped ciphertext bit": (good[:-1] + bytes([good[-1] ^ 1]), BACKUP_PASSPHRASE),
        # The header is the AEAD's associated data: its salt is covered too.
        "a changed salt": (good[:20] + bytes([good[20] ^ 1]) + good[21:], BACKUP_PASSPHRASE),
        "another file": (b"hello, this is not a backup at all" * 4, BACKUP_PASSPHRASE),
    }
    for case, (data, passphrase) in damaged.items():
        path = tmp_path / f"{case}.qpqbackup"
        path.write_bytes(data)
        home = tmp_path / f"home-{case}"
        with pytest.raises(BackupError) as caught:
            await import_backup(path, passphrase, home, "state-passphrase")
        message = str(caught.value)
        assert "\n" not in message, case
        assert passphrase not in message, case
        assert not home.exists(), case
    # And the good file still opens.
    _rows, summary = read_backup(dest, BACKUP_PASSPHRASE)
    assert summary.groups == ("notes",)


async def test_an_account_deleted_since_the_export_writes_nothing(
    make_client: MakeClient, tmp_path: Path
) -> None:
    erin = await make_client("erin")
    dest = tmp_path / "erin.qpqbackup"
    export_backup(erin.home, PASSPHRASE, dest, BACKUP_PASSPHRASE, kdf=FAST_KDF)
    await erin.delete_account()
    home = tmp_path / "erin-new"
    with pytest.raises(ForbiddenError) as caught:
        await import_backup(dest, BACKUP_PASSPHRASE, home, "state-passphrase")
    assert "\n" not in str(caught.value)
    assert not home.exists()


def test_a_crafted_header_cannot_ask_for_unbounded_memory() -> None:
    sealed = bytearray(seal(b"{}", "p", ScryptParams(log2_n=10, r=8, p=1)))
    sealed[10] = 40  # log2 N = 40: 2**40 blocks
    with pytest.raises(BackupError, match="out of range"):
        open_sealed(bytes(sealed), "p")


def test_cli_export_and_import_smoke(make_user: MakeUser, tmp_path: Path) -> None:
    dave = make_user("dave")
    dave.run("group", "create", "plans")
    dave.run("send", "plans", "remember the milk")
    secret = tmp_path / "backup-passphrase"
    secret.write_text(BACKUP_PASSPHRASE + "\n")
    os.chmod(secret, 0o600)
    dest = tmp_path / "dave.qpqbackup"
    weak = tmp_path / "weak-passphrase"
    weak.write_text("password1\n")
    too_weak = dave.run("backup", "export", str(dest), "--passphrase-file", str(weak), check=False)
    assert (too_weak.returncode, too_weak.stderr.count("\n")) == (1, 1)
    assert "guessed quickly" in too_weak.stderr
    assert not dest.exists()
    exported = dave.run("backup", "export", str(dest), "--passphrase-file", str(secret))
    assert "plans" in exported.stdout
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600

    new_home = tmp_path / "dave-new"
    wrong = tmp_path / "wrong-passphrase"
    wrong.write_text("not it\n")
    refused = dave.run(
        "backup", "import", str(dest), "--passphrase-file", str(wrong),
        check=False, QPQ_HOME=str(new_home),
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "wrong backup passphrase" in refused.stderr
    assert not new_home.exists()

    # The new profile's state passphrase is held to init's standard too,
    # before anything is written.
    refused = dave.run(
        "backup", "import", str(dest), "--passphrase-file", str(secret),
        check=False, QPQ_HOME=str(new_home), QPQ_STATE_KEY="password1",
    )  # fmt: skip
    assert (refused.returncode, refused.stderr.count("\n")) == (1, 1)
    assert "guessed quickly" in refused.stderr
    assert not new_home.exists()
    imported = dave.run(
        "backup", "import", str(dest), "--passphrase-file", str(secret), QPQ_HOME=str(new_home)
    )
    assert "rejoined plans" in imported.stdout
    history = dave.run("history", "plans", QPQ_HOME=str(new_home)).stdout
    assert "remember the milk" in history
