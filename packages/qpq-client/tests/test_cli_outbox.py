"""The `qpq` command over the bounds: a text from stdin, too long refused in one line,
the outbox listed and dropped from, what a request could not keep, the last resort.

Smoke tests of the shell over what test_bounded_profile.py checks through
the library: a real server process and the real `qpq` command.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import User, qpq_command

from qpq_client import Client, _sending

pytestmark = pytest.mark.slow


def send_stdin(user: User, group: str, text: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*qpq_command(), "send", group, "-"],
        env=user.env(),
        input=text.decode("utf-8", errors="surrogateescape"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_send_reads_stdin_and_refuses_a_too_long_text_in_one_line(make_user) -> None:  # type: ignore[no-untyped-def]
    alice, bob = make_user("alice"), make_user("bob")
    a = alice.name
    bob.library(lambda client: client.add_contact(a))
    alice.run("group", "create", "pipes")
    alice.run("group", "invite", "pipes", bob.name)
    bob.recv_until(f"you joined (invited by {a})")

    sent = send_stdin(alice, "pipes", b"line one\nline two\n")
    assert sent.returncode == 0, sent.stderr
    assert f"{a}: line one\n    line two" in "\n".join(bob.recv_until("line two"))

    # Over the server's payload limit (5 MiB): refused before anything is
    # encrypted or kept, in one line that says the limit.
    refused = send_stdin(alice, "pipes", b"x" * (6 * 1024 * 1024))
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith("qpq: error: the message is too long:")
    assert "this server takes at most 5,241,856" in line
    assert alice.run("outbox").stdout == "nothing waits to be sent\n"
    # And nothing is wedged: the next command works.
    alice.run("send", "pipes", "still here")
    bob.recv_until(f"{a}: still here")


async def test_the_outbox_is_listed_and_an_entry_dropped(make_user) -> None:  # type: ignore[no-untyped-def]
    alice, bob = make_user("alice"), make_user("bob")
    a = alice.name
    bob.library(lambda client: client.add_contact(a))
    alice.run("group", "create", "later")
    alice.run("group", "invite", "later", bob.name)
    # A message persisted and not handed over (its process ended first).
    client = Client.open(alice.home, alice.passphrase)
    try:
        await client.connect()
        session = client._session
        assert session is not None
        (group,) = client.groups()
        staged = _sending.stage_text(session, group.group_id, "kept back")
    finally:
        await client.close()

    listed = alice.run("outbox").lines
    assert len(listed) == 1
    assert listed[0].startswith(f"{staged.outbox_id}  ")
    assert " message to later (" in listed[0]
    (entry,) = json.loads(alice.run("--json", "outbox").stdout)
    assert (entry["id"], entry["kind"], entry["group"]) == (staged.outbox_id, "message", "later")

    dropped = alice.run("outbox", "drop", str(staged.outbox_id))
    assert dropped.stdout == f"dropped message {staged.outbox_id} to later\n"
    assert alice.run("outbox").stdout == "nothing waits to be sent\n"
    missing = alice.run("outbox", "drop", str(staged.outbox_id), check=False)
    assert missing.returncode == 1
    assert "nothing waits in the outbox as" in missing.stderr
    assert (
        "could not be sent: you dropped it from the outbox" in alice.run("history", "later").stdout
    )
    alice.run("send", "later", "sent")
    lines = bob.recv_until(f"{a}: sent")
    assert not any("kept back" in line for line in lines)


def test_keys_status_shows_how_often_the_last_resort_went_out(make_user) -> None:  # type: ignore[no-untyped-def]
    alice = make_user("alice")
    status = json.loads(alice.run("--json", "keys", "status").stdout)
    assert status["last_resort_served"] == 0
    assert status["has_last_resort"] is True


def test_group_list_says_what_a_request_did_not_keep() -> None:
    from qpq_client import GroupStatus, GroupSummary
    from qpq_client.cli._render import group_json, group_line

    waiting = GroupSummary(
        "group-1a2b3c4d", b"g" * 16, GroupStatus.REQUESTED, (), dropped=3, inviter="carol"
    )
    assert group_line(waiting) == (
        "group-1a2b3c4d (invitation from carol): qpq group accept group-1a2b3c4d"
        " / qpq group decline group-1a2b3c4d [3 of its messages were not kept: more than an"
        " invitation holds before you accept it]"
    )
    assert group_json(waiting)["dropped"] == 3
    assert group_json(waiting)["inviter"] == "carol"
