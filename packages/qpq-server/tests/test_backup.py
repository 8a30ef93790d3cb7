"""``qpq-server backup``, ``restore`` and ``rekey`` against real server processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
import sqlcipher3
from groups import Member, claim, create_group, fetch_all, members, publish_commit, send
from server_helpers import authed

from qpq_proto import UploadKeyPackages
from qpq_server.testing import (
    TEST_DB_KEY,
    RunningServer,
    ServerStartError,
    server_command,
    server_env,
    start_server,
)

pytestmark = pytest.mark.slow

NO_RATE_LIMIT = {"QPQ_RATE_PER_SECOND": "100000", "QPQ_RATE_BURST": "100000"}
NEW_DB_KEY = "Vr4kQz8Tn2Lw6Yp0Hc5Jx9Bm3Fg7Ds1Ka8Ue4Wi6Ot"


def _admin(
    data_dir: Path, *args: str, db_key: str = TEST_DB_KEY, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = server_env(data_dir, "", db_key, extra)
    return subprocess.run(
        server_command(*args), env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def _admin_async(data_dir: Path, *args: str) -> tuple[int, str, str]:
    env = server_env(data_dir, "", TEST_DB_KEY, None)
    process = await asyncio.create_subprocess_exec(
        *server_command(*args),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def _group_of_two(server: RunningServer) -> tuple[Member, Member, bytes]:
    alice, bob = members(2)
    async with authed(server, bob.identity) as client:
        await client.call(UploadKeyPackages(packages=bob.key_packages(2)))
    async with authed(server, alice.identity) as client:
        group_id = await create_group(client, alice)
        claimed = await claim(client, bob.key)
        await publish_commit(client, alice, alice.mls.add_members(group_id, [claimed]))
    return alice, bob, group_id


async def test_online_backup_during_traffic_restores_every_acknowledged_message(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path, extra_env=NO_RATE_LIMIT)
    dest = tmp_path / "backup.db"
    try:
        alice, bob, group_id = await _group_of_two(server)
        async with authed(server, alice.identity) as client:
            # Acknowledged (the server answers after its COMMIT) before the backup starts.
            sent = [await send(client, alice, group_id, b"before-%d" % i) for i in range(30)]
            acknowledged_before = len(sent)
            backup = asyncio.create_task(_admin_async(server.data_dir, "backup", str(dest)))
            # More traffic while the backup runs, until it has finished.
            while not backup.done():
                sent.append(await send(client, alice, group_id, b"during-%d" % len(sent)))
            code, out, err = await backup
        assert (code, err) == (0, ""), err
        assert "backed up" in out
        assert len(sent) > acknowledged_before  # traffic really ran beside the backup
    finally:
        assert server.stop() == 0
    assert (dest.stat().st_mode & 0o777) == 0o600
    # Still encrypted: no SQLite header without the key.
    assert not dest.read_bytes().startswith(b"SQLite format 3")
    assert not [name for name in os.listdir(tmp_path) if ".partial-" in name]

    restored_dir = tmp_path / "restored"
    done = _admin(restored_dir, "restore", str(dest))
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    restored = start_server(tmp_path, data_dir=restored_dir)
    try:
        async with authed(restored, bob.identity) as client:
            queued = await fetch_all(client)
    finally:
        assert restored.stop() == 0
    payloads = [envelope.payload for envelope in queued[1:]]  # [0]: the Welcome
    # One consistent snapshot: every message acknowledged before the backup,
    # then a prefix of those sent during it, in order, nothing else.
    assert len(payloads) >= acknowledged_before
    assert payloads == sent[: len(payloads)]


def test_restore_refuses_a_non_empty_dir_and_a_wrong_key(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    dest = tmp_path / "backup.db"
    try:
        done = _admin(server.data_dir, "backup", str(dest))
        assert done.returncode == 0, done.stderr
        again = _admin(server.data_dir, "backup", str(dest))
        assert again.returncode == 1
        assert again.stderr.strip().count("\n") == 0
        assert "exists" in again.stderr
    finally:
        assert server.stop() == 0

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    refused = _admin(busy, "restore", str(dest))
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0
    assert "is not empty" in refused.stderr
    assert not (busy / "qpq.db").exists()

    fresh = tmp_path / "fresh"
    wrong = _admin(fresh, "restore", str(dest), db_key="not-the-key-of-this-backup")
    assert wrong.returncode == 1
    assert wrong.stderr.strip().count("\n") == 0
    assert "key of the backup" in wrong.stderr
    assert "not-the-key" not in wrong.stderr
    assert not fresh.exists()


def test_rekey_refused_while_the_server_runs_then_old_key_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "new.key"
    key_file.write_text(NEW_DB_KEY + "\n")
    os.chmod(key_file, 0o600)
    server = start_server(tmp_path)
    try:

        async def publish() -> tuple[Member, list[bytes]]:
            alice, bob, group_id = await _group_of_two(server)
            async with authed(server, alice.identity) as client:
                return bob, [await send(client, alice, group_id, b"m-%d" % i) for i in range(5)]

        bob, sent = asyncio.run(publish())
        running = _admin(server.data_dir, "rekey", "--new-key-file", str(key_file))
        assert running.returncode == 1
        assert running.stderr.strip().count("\n") == 0
        assert "another process holds" in running.stderr
    finally:
        assert server.stop() == 0
    data_dir = server.data_dir

    no_key = _admin(data_dir, "rekey")
    assert no_key.returncode == 1
    assert "--new-key-file" in no_key.stderr

    done = _admin(data_dir, "rekey", "--new-key-file", str(key_file))
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "rekeyed" in done.stdout
    assert NEW_DB_KEY not in done.stdout + done.stderr

    with pytest.raises(ServerStartError) as caught:
        start_server(tmp_path, data_dir=data_dir)  # the old TEST_DB_KEY
    assert caught.value.returncode == 2
    errors = [line for line in caught.value.log.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, caught.value.log
    assert "db_key is wrong" in errors[0]
    assert "Traceback" not in caught.value.log

    restarted = start_server(tmp_path, data_dir=data_dir, db_key=NEW_DB_KEY)
    try:

        async def fetch() -> list[bytes]:
            async with authed(restarted, bob.identity) as client:
                return [envelope.payload for envelope in (await fetch_all(client))[1:]]

        assert asyncio.run(fetch()) == sent
    finally:
        assert restarted.stop() == 0


def test_rekey_takes_the_new_key_from_the_environment(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    assert server.stop() == 0
    both = _admin(
        server.data_dir,
        "rekey",
        "--new-key-file",
        str(tmp_path / "unused"),
        extra={"QPQ_NEW_DB_KEY": NEW_DB_KEY},
    )
    assert both.returncode == 1
    assert "give the new key once" in both.stderr
    done = _admin(server.data_dir, "rekey", extra={"QPQ_NEW_DB_KEY": NEW_DB_KEY})
    assert done.returncode == 0, done.stderr
    restarted = start_server(tmp_path, data_dir=server.data_dir, db_key=NEW_DB_KEY)
    assert restarted.stop() == 0


def test_a_second_server_on_one_data_dir_is_refused(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        with pytest.raises(ServerStartError) as caught:
            start_server(tmp_path, data_dir=server.data_dir)
        assert caught.value.returncode == 2
        assert "another process holds" in caught.value.log
    finally:
        assert server.stop() == 0


def test_store_commands_refuse_postgresql_and_name_its_tools(tmp_path: Path) -> None:
    postgres = {"QPQ_DATABASE_URL": "postgresql://qpq@127.0.0.1:1/qpq"}
    for args in (("backup", str(tmp_path / "b.db")), ("restore", "x.db"), ("rekey",)):
        done = _admin(tmp_path / "data", *args, extra=postgres)
        assert done.returncode == 1, args
        assert done.stderr.strip().count("\n") == 0, args
        assert "pg_dump" in done.stderr, args
    assert not (tmp_path / "data").exists()


def test_restore_refuses_a_schema_newer_than_this_server(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    dest = tmp_path / "backup.db"
    try:
        assert _admin(server.data_dir, "backup", str(dest)).returncode == 0
    finally:
        assert server.stop() == 0
    # As a newer server would have left it: one more migration applied.
    conn = sqlcipher3.connect(str(dest), isolation_level=None)
    conn.execute(f"PRAGMA key = '{TEST_DB_KEY}'")
    conn.execute("INSERT INTO schema_migrations (version, description) VALUES (9999, 'future')")
    conn.close()
    fresh = tmp_path / "fresh"
    refused = _admin(fresh, "restore", str(dest))
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0
    assert "schema version 9999, newer than this server knows" in refused.stderr
    assert not fresh.exists()
