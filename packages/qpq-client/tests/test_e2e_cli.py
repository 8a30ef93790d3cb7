"""The real `qpq` command against a real server: its wiring, what it prints, its errors.

The flows behind each command are tested through the library
(test_e2e_groups.py, test_e2e_trust.py, test_e2e_library.py); here each
command runs at least once, as a person types it, and what it prints is
compared line by line (test_cli_coverage.py checks that none is left out).
Steps a test is not about are done in process (``User.library``).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import (
    MakeUser,
    User,
    identity_seed,
    qpq_command,
    receive_until,
    run_in_own_loop,
    self_signed_ca,
    unique_name,
    unstamped,
)

from qpq_client import Client
from qpq_core import Identity, MlsClient
from qpq_proto import RegisterUser, UploadKeyPackages
from qpq_server.testing import RunningServer

pytestmark = pytest.mark.slow

REQUEST = re.compile(
    r"^\[(?P<name>[^\]]+)\] \* (?P<who>\S+) invited you to (?P=name):"
    r" qpq group accept (?P=name) / qpq group decline (?P=name)$"
)
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d "


def test_group_commands_print_what_people_read(make_user: MakeUser) -> None:
    alice, bob, carol = (make_user(n) for n in ("alice", "bob", "carol"))
    a, b, c = alice.name, bob.name, carol.name
    for user in (bob, carol):
        user.library(lambda client: client.add_contact(a))
    assert alice.run("group", "create", "team").stdout == "created group team\n"
    assert alice.run("group", "invite", "team", b, c).stdout == f"invited {b}, {c} to team\n"
    assert alice.run("send", "team", "hi").stdout == ""
    assert bob.recv_until(f"{a}: hi") == [
        f"[team] * you joined (invited by {a})",
        f"[team] {a}: hi",
    ]
    # Carol joins before she is removed (a Welcome first read after its
    # member was removed is ignored, test_group_integrity.py).
    assert carol.recv_until(f"{a}: hi")[-1] == f"[team] {a}: hi"
    assert bob.run("group", "update", "team").stdout == "updated your keys in team (epoch 2)\n"
    assert sorted(alice.run("group", "members", "team").lines) == sorted([a, b, c])
    assert alice.run("group", "remove", "team", c).stdout == f"removed {c} from team\n"
    refused = carol.run("send", "team", "let me in", check=False)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.splitlines() == [
        "qpq: error: you are no longer a member of 'team' (removed)"
    ]
    assert carol.run("group", "list").lines == ["team (removed): "]
    assert bob.run("group", "leave", "team").stdout == "leaving team\n"
    # Alice's client commits bob's leave proposal as it receives it.
    assert unstamped(alice.run("recv").lines) == [f"[team] * {b} left"]
    history = alice.run("history", "team").lines
    assert [re.sub(f"^{STAMP}", "", line) for line in history] == [
        f"[team] * you added {b}",
        f"[team] * you added {c}",
        f"[team] {a}: hi",
        f"[team] * you removed {c}",
        f"[team] * {b} left",
    ]
    assert all(re.match(STAMP, line) for line in history)


def test_a_post_quantum_group_through_the_command(
    make_user: MakeUser, shared_server: RunningServer
) -> None:
    alice, bob, carol = (make_user(n) for n in ("alice", "bob", "carol"))
    a, b, c = alice.name, bob.name, carol.name
    for user in (bob, carol):
        user.library(lambda client: client.add_contact(a))
    dave = unique_name("dave")
    run_in_own_loop(lambda: _client_without_the_pq_suite(shared_server, dave))
    assert alice.run("suite").stdout == "new groups get the default ciphersuite\n"
    created = alice.run("group", "create", "vault", "--suite", "pq").stdout
    assert created == "created group vault (post-quantum)\n"
    # Someone whose client offers no pq KeyPackages cannot be added: one line,
    # naming them, and nobody is added.
    refused = alice.run("group", "invite", "vault", b, dave, check=False)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.splitlines() == [
        f"qpq: error: {dave} has no KeyPackages of the pq ciphersuite on the server"
        f" (their client does not offer it), so cannot join this pq group; {dave} was not invited"
    ]
    assert alice.run("group", "list").lines == [f"vault [pq]: {a}"]
    assert alice.run("group", "invite", "vault", b, c).stdout == f"invited {b}, {c} to vault\n"
    assert alice.run("send", "vault", "from alice").stdout == ""
    assert bob.recv_until(f"{a}: from alice") == [
        f"[vault] * you joined (invited by {a})",
        f"[vault] {a}: from alice",
    ]
    assert bob.run("send", "vault", "from bob").stdout == ""
    assert carol.recv_until(f"{b}: from bob")[-2:] == [
        f"[vault] {a}: from alice",
        f"[vault] {b}: from bob",
    ]
    assert carol.run("send", "vault", "from carol").stdout == ""
    assert alice.recv_until(f"{c}: from carol")[-2:] == [
        f"[vault] {b}: from bob",
        f"[vault] {c}: from carol",
    ]
    assert bob.recv_until(f"{c}: from carol") == [f"[vault] {c}: from carol"]
    members = bob.run("group", "members", "vault").lines
    assert sorted(members[:-1]) == sorted([a, b, c])
    assert members[-1] == "(ciphersuite: pq)"
    assert alice.run("group", "remove", "vault", c).stdout == f"removed {c} from vault\n"
    assert bob.recv_until(f"removed {c}") == [f"[vault] * {a} removed {c}"]
    assert sorted(bob.run("group", "list").lines[0].split(": ")[1].split(", ")) == sorted([a, b])
    assert bob.run("group", "list").lines[0].startswith("vault [pq]: ")
    assert carol.run("send", "vault", "still here?", check=False).returncode == 1
    # The setting: new groups get the pq suite, old ones keep theirs.
    assert alice.run("suite", "pq").stdout == "new groups get the pq ciphersuite\n"
    assert alice.run("group", "create", "next").stdout == "created group next (post-quantum)\n"
    assert alice.run("--json", "group", "list").stdout.count('"suite": "pq"') == 2


async def _client_without_the_pq_suite(server: RunningServer, username: str) -> None:
    """A user whose client publishes KeyPackages of the default suite only (as
    one from before suites does)."""
    identity = Identity.generate()
    async with server.connect() as client:
        await client.authenticate(identity)
        await client.call(RegisterUser(username=username))
        packages = MlsClient(identity).create_key_packages(2).packages
        await client.call(UploadKeyPackages(packages=packages))


def test_requests_and_people_through_the_command(make_user: MakeUser) -> None:
    alice, bob, carol, mallory = (make_user(n) for n in ("alice", "bob", "carol", "mallory"))
    a, b, c, m = (u.name for u in (alice, bob, carol, mallory))

    async def invite_both(client: Client) -> None:
        await client.create_group("friends")
        await client.invite("friends", [b, c])
        await client.send("friends", "one")

    alice.library(invite_both)
    (line,) = unstamped(bob.run("recv").lines)
    request = REQUEST.match(line)
    assert request is not None, line
    assert request["who"] == a
    held = request["name"]
    assert f"{held} (invitation from {a}): qpq group accept {held} / qpq group decline {held}" in (
        bob.run("group", "list").lines
    )
    accepted = bob.run("group", "accept", held).stdout
    assert accepted == "joined friends (qpq recv shows what was held)\n"
    assert unstamped(bob.run("recv").lines) == [
        f"[friends] * you joined (invited by {a})",
        f"[friends] {a}: one",
    ]

    async def request_of_carol(client: Client) -> str:
        (entry,) = await client.receive()
        return entry.group

    declined = carol.library(request_of_carol)
    assert carol.run("group", "decline", declined).stdout == f"declined {declined}\n"

    number = alice.library(lambda client: client.safety_number(b))
    shown = bob.run("verify", a).lines
    assert shown[0] == f"safety number with {a} (compare it with theirs, in person or on a call):"
    assert [len(row.split()) for row in shown[1:4]] == [4, 4, 4]
    assert "".join(shown[1:4]).replace(" ", "") == number
    assert shown[4:] == [f"if they match: qpq verify {a} --mark"]
    assert bob.run("verify", a, "--mark").lines[4:] == [f"{a} is marked verified"]
    listed = [line for line in bob.run("contacts").lines if line.startswith(f"{a} ")]
    assert len(listed) == 1
    assert re.fullmatch(f"{a}  key [0-9a-f]{{16}}…  verified", listed[0]), listed

    assert bob.run("block", m).stdout == f"blocked {m}\n"
    assert bob.run("unblock", m).stdout == f"unblocked {m}\n"
    assert bob.run("contacts", "remove", m).stdout == f"removed {m} from your contacts\n"
    assert not any(line.startswith(f"{m} ") for line in bob.run("contacts").lines)
    assert bob.run("group", "rename", "friends", "pals").stdout == "renamed friends to pals\n"
    assert bob.run("invites", "anyone").stdout == "invitations joined at once: from anyone\n"
    refreshed = bob.run("keys", "refresh").stdout
    assert re.fullmatch(
        r"\d+ KeyPackages on the server, last resort: yes \(uploaded \d+ now\)"
        r"; pq: \d+ KeyPackages, last resort: yes\n",
        refreshed,
    )


async def test_client_killed_mid_conversation_misses_nothing_and_repeats_nothing(
    make_user: MakeUser,
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    a, b = alice.name, bob.name
    async with alice.client() as sender, bob.client() as receiver:
        await receiver.add_contact(a)
        await sender.create_group("chat")
        await sender.invite("chat", [b])
        await receive_until(receiver, "you joined")
    follower = await asyncio.create_subprocess_exec(
        *qpq_command(), "recv", "--follow", env=bob.env(), stdout=subprocess.PIPE
    )
    try:
        async with alice.client() as sender:
            await sender.send("chat", "one")
            assert follower.stdout is not None
            async with asyncio.timeout(60):
                shown = await follower.stdout.readline()
            assert unstamped([shown.decode().strip()]) == [f"[chat] {a}: one"]
            follower.send_signal(signal.SIGKILL)
            assert await follower.wait() == -signal.SIGKILL
            await sender.send("chat", "two")
            await sender.send("chat", "three")
            # What the next process finds in bob's state, after the kill.
            async with bob.client() as receiver:
                lines = await receive_until(receiver, f"{a}: three")
                assert [line for line in lines if f"{a}:" in line] == [
                    f"[chat] {a}: two",
                    f"[chat] {a}: three",
                ]
                await receiver.send("chat", "back")
            await receive_until(sender, f"{b}: back")
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()


def test_user_errors_are_one_clear_line(
    make_user: MakeUser, shared_server: RunningServer, tmp_path: Path
) -> None:
    alice = make_user("alice")
    alice.library(lambda client: client.create_group("g"))
    other_ca = self_signed_ca(tmp_path / "other-ca.pem")
    server = shared_server
    cases = {
        "wrong passphrase": (("whoami",), {"QPQ_STATE_KEY": "not it"}, "wrong passphrase"),
        "bad token": (("send", "g", "x"), {"QPQ_TOKEN": "wrong-token"}, "access token"),
        "server down": (
            ("--connect-timeout", "1", "send", "g", "x"),
            {"QPQ_SERVER": "127.0.0.1:9"},
            "no answer from the server",
        ),
        "untrusted server": (
            ("keys", "status"),
            {"QPQ_PIN": "", "QPQ_CA_CERT": str(other_ca)},
            f"the TLS handshake with the server at 127.0.0.1:{server.port} failed",
        ),
        "unknown user": (("group", "invite", "g", "nobody"), {}, "no user named 'nobody'"),
        "unknown group": (("send", "nope", "x"), {}, "no group named 'nope'"),
        "not initialized": (("whoami",), {"QPQ_HOME": str(tmp_path / "empty")}, "qpq init"),
        "name taken": (
            ("init", "--username", alice.name),
            {"QPQ_HOME": str(tmp_path / "taken"), "QPQ_TOKEN": server.token},
            "already taken on the server: username is taken (field: username)",
        ),
        "no trust": (
            ("init", "--username", f"zed-{alice.name}"),
            {"QPQ_HOME": str(tmp_path / "z"), "QPQ_PIN": "", "QPQ_TOKEN": server.token},
            "--ca-cert",
        ),
    }
    for name, (args, env, expected) in cases.items():
        result = alice.run(*args, check=False, **env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, name
        assert len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith("qpq: error: "), (name, lines)
        assert expected in lines[0], (name, lines)
        assert "Traceback" not in result.stderr
        if name == "untrusted server":
            assert lines[0].endswith("check the CA certificate or the pin"), lines
        if name == "wrong passphrase":
            assert lines[0].endswith("(check $QPQ_STATE_KEY)"), lines


def test_a_typed_wrong_passphrase_is_not_blamed_on_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qpq_client import WrongPassphraseError
    from qpq_client.cli._errors import message_for

    wrong = WrongPassphraseError("wrong passphrase for the state in /home/p")
    monkeypatch.setenv("QPQ_STATE_KEY", "from the environment")
    assert message_for(wrong) == "wrong passphrase for the state in /home/p (check $QPQ_STATE_KEY)"
    monkeypatch.delenv("QPQ_STATE_KEY")  # typed at the prompt: nothing to check there
    assert message_for(wrong) == "wrong passphrase for the state in /home/p"


def test_no_secret_reaches_the_output_or_the_disk(
    shared_server: RunningServer, tmp_path: Path
) -> None:
    server = shared_server
    passphrase = "the-state-passphrase-do-not-print"
    wrong_token = "a-wrong-token-that-must-not-echo"
    wrong_passphrase = "a-wrong-passphrase-that-must-not-echo"
    erin = User(unique_name("erin"), tmp_path / "erin", server, passphrase=passphrase)
    said = [erin.run("--json", "init", "--username", erin.name, QPQ_TOKEN=server.token)]
    for args in (
        ("whoami",),
        ("--json", "whoami"),
        ("--json", "group", "create", "g"),
        ("--json", "group", "list"),
        ("--json", "keys", "status"),
        ("--json", "recv"),
    ):
        said.append(erin.run(*args))
    said.append(erin.run("--json", "send", "g", "x", check=False, QPQ_TOKEN=wrong_token))
    said.append(erin.run("--json", "whoami", check=False, QPQ_STATE_KEY=wrong_passphrase))
    assert [r.returncode for r in said[-2:]] == [1, 1]
    seed = identity_seed(erin.home, passphrase)
    for result in said:
        for secret in (server.token, passphrase, seed.hex(), wrong_token, wrong_passphrase):
            assert secret not in result.stdout + result.stderr, (secret, result)
    for path in erin.home.rglob("*"):
        data = path.read_bytes()
        for secret in (server.token.encode(), passphrase.encode(), seed):
            assert secret not in data, path


def test_library_import_does_not_import_click() -> None:
    code = "import sys, qpq_client; sys.exit('click' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _read_until(fd: int, wanted: bytes, deadline: float) -> bytes:
    """What a terminal program wrote to its pty until ``wanted`` appeared (waits on the fd)."""
    got = b""
    while wanted not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {wanted!r} on the terminal; saw {got[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            got += os.read(fd, 65536)
    return got


def test_what_a_new_user_meets_first(
    make_user: MakeUser, shared_server: RunningServer, tmp_path: Path
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    a = alice.name
    bob.library(lambda client: client.add_contact(a))

    async def make(client: Client) -> None:
        await client.create_group("g")
        await client.invite("g", [bob.name])

    alice.library(make)
    # A usage error: one line, exit status 1, as any other error.
    usage = alice.run("send", "g", check=False)
    assert (usage.returncode, usage.stdout) == (1, "")
    assert usage.stderr == "qpq: error: Missing argument 'TEXT'. (see qpq send --help)\n"
    # The text from stdin, and a one-line confirmation.
    sent = alice.run("send", "--verbose", "g", "-", input_text="from stdin\nline two\n")
    assert sent.stdout == "sent to g (19 bytes)\n"
    # recv starts each entry with its time (unstamped checks it on every line).
    shown = bob.recv_until("line two")
    assert f"[g] {a}: from stdin" in shown
    assert "    line two" in shown
    # init refuses a passphrase that is guessed at once, unless told otherwise.
    weak = User(unique_name("weak"), tmp_path / "weak", shared_server, passphrase="hunter2")
    refused = weak.run("init", "--username", weak.name, check=False, QPQ_TOKEN=shared_server.token)
    assert refused.returncode == 1
    assert refused.stderr.startswith("qpq: error: that passphrase is guessed quickly (about 10^")
    assert refused.stderr.endswith("or pass --weak-passphrase-ok\n")
    assert not (weak.home / "state.db").exists()
    allowed = weak.run(
        "init", "--username", weak.name, "--weak-passphrase-ok", QPQ_TOKEN=shared_server.token
    )
    assert allowed.stdout.startswith(f"registered {weak.name}")
    # `qpq chat` in a real terminal: it draws, sends what is typed, and quits.
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chat = subprocess.Popen(
        [*qpq_command(), "chat"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=alice.env(TERM="xterm-256color"),
        start_new_session=True,
    )
    os.close(terminal)
    try:
        deadline = time.monotonic() + 60
        _read_until(main, a.encode(), deadline)
        os.write(main, b"typed in the chat\r")
        assert f"[g] {a}: typed in the chat" in bob.recv_until("typed in the chat")
        os.write(main, b"/quit\r")
        assert chat.wait(timeout=30) == 0
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait()
        os.close(main)
