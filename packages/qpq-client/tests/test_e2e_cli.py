"""End to end: a real server process and the real `qpq` command, as people use it."""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import User, qpq_command
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qpq_client._state import StateStore
from qpq_server.testing import start_server

pytestmark = pytest.mark.slow


def members(user: User, group: str) -> list[str]:
    return sorted(user.run("group", "members", group).lines)


def test_classic_flow_both_directions(make_user) -> None:  # type: ignore[no-untyped-def]
    alice, bob = make_user("alice"), make_user("bob")
    bob.add_contacts("alice")
    alice.run("group", "create", "friends")
    assert "invited bob" in alice.run("group", "invite", "friends", "bob").stdout
    assert bob.recv_until("you joined (invited by alice)")[0].startswith("[friends]")
    bob.run("send", "friends", "hi alice")
    assert "[friends] bob: hi alice" in alice.recv_until("bob: hi alice")
    alice.run("send", "friends", "hi bob")
    assert "[friends] alice: hi bob" in bob.recv_until("alice: hi bob")
    assert members(alice, "friends") == members(bob, "friends") == ["alice", "bob"]
    history = bob.run("history", "friends").stdout
    assert history.index("alice: hi bob") > history.index("bob: hi alice")


def test_three_members_all_directions_then_removal(make_user) -> None:  # type: ignore[no-untyped-def]
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    for user in (bob, carol):
        user.add_contacts("alice")
    alice.run("group", "create", "team")
    alice.run("group", "invite", "team", "bob", "carol")
    bob.recv_until("you joined")
    carol.recv_until("you joined")
    for sender, others in ((alice, (bob, carol)), (bob, (alice, carol)), (carol, (alice, bob))):
        sender.run("send", "team", f"from {sender.name}")
        for other in others:
            other.recv_until(f"{sender.name}: from {sender.name}")

    alice.run("group", "remove", "team", "bob")
    assert any("you were removed by alice" in line for line in bob.recv_until("removed"))
    carol.recv_until("alice removed bob")
    alice.run("send", "team", "bob cannot read this")
    carol.recv_until("bob cannot read this")
    assert bob.run("recv", "--wait", "1").stdout == ""
    assert "bob cannot read this" not in bob.run("history", "team").stdout
    assert "team (removed)" in bob.run("group", "list").stdout
    failed = bob.run("send", "team", "let me in", check=False)
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines() == [
        "qpq: error: you are no longer a member of 'team' (removed)"
    ]
    assert members(alice, "team") == members(carol, "team") == ["alice", "carol"]


def epoch_of(user: User, group: str) -> int:
    groups = json.loads(user.run("--json", "group", "list").stdout)
    (info,) = (g for g in groups if g["name"] == group)
    return int(info["epoch"])


def test_update_then_leave_and_the_others_talk_on(make_user) -> None:  # type: ignore[no-untyped-def]
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    for user in (bob, carol):
        user.add_contacts("alice")
    alice.run("group", "create", "team")
    alice.run("group", "invite", "team", "bob", "carol")
    bob.recv_until("you joined")
    carol.recv_until("you joined")
    updated = json.loads(bob.run("--json", "group", "update", "team").stdout)
    assert updated["epoch"] == 2  # created at 0, invite made it 1
    for user in (alice, carol):
        assert user.run("recv").stdout == ""  # processed; a key update is not news
    assert [epoch_of(u, "team") for u in (alice, carol)] == [2, 2]

    assert carol.run("group", "leave", "team").stdout == "leaving team\n"
    # Alice's client commits carol's leave proposal as it receives it.
    assert alice.run("recv").lines == ["[team] * carol left"]
    assert carol.run("recv").lines == ["[team] * you left"]
    assert bob.run("recv").lines == ["[team] * carol left"]
    failed = carol.run("send", "team", "one more thing", check=False)
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == ["qpq: error: you are no longer a member of 'team' (left)"]
    assert carol.run("group", "list").lines == ["team (left): "]
    alice.run("send", "team", "just us now")
    bob.recv_until("alice: just us now")
    bob.run("send", "team", "indeed")
    alice.recv_until("bob: indeed")
    assert members(alice, "team") == members(bob, "team") == ["alice", "bob"]


def test_offline_member_receives_everything_later_in_order(make_user) -> None:  # type: ignore[no-untyped-def]
    alice, bob = make_user("alice"), make_user("bob")
    bob.add_contacts("alice")
    alice.run("group", "create", "news")
    alice.run("group", "invite", "news", "bob")
    for n in range(5):
        alice.run("send", "news", f"message {n}")
    lines = bob.recv_until("message 4")
    texts = [line for line in lines if "alice: message" in line]
    assert texts == [f"[news] alice: message {n}" for n in range(5)]


def test_client_killed_mid_conversation_misses_nothing_and_repeats_nothing(make_user) -> None:  # type: ignore[no-untyped-def]
    alice, bob = make_user("alice"), make_user("bob")
    bob.add_contacts("alice")
    alice.run("group", "create", "chat")
    alice.run("group", "invite", "chat", "bob")
    bob.recv_until("you joined")
    follower = subprocess.Popen(
        [*qpq_command(), "recv", "--follow"],
        env=bob.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        alice.run("send", "chat", "one")
        assert follower.stdout is not None
        assert follower.stdout.readline().strip() == "[chat] alice: one"
    finally:
        follower.send_signal(signal.SIGKILL)
        follower.wait()
        if follower.stdout is not None:
            follower.stdout.close()
    alice.run("send", "chat", "two")
    alice.run("send", "chat", "three")
    lines = bob.recv_until("alice: three")
    assert [line for line in lines if "alice:" in line] == [
        "[chat] alice: two",
        "[chat] alice: three",
    ]
    bob.run("send", "chat", "back")
    alice.recv_until("bob: back")


def test_server_restart_mid_conversation(make_user, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice, bob = make_user("alice"), make_user("bob")
    bob.add_contacts("alice")
    alice.run("group", "create", "ops")
    alice.run("group", "invite", "ops", "bob")
    bob.recv_until("you joined")
    alice.run("send", "ops", "before restart")
    assert server.stop() == 0
    run_dir = tmp_path / "restart"
    run_dir.mkdir()
    again = start_server(run_dir, data_dir=server.data_dir)
    try:
        alice.server = bob.server = again  # a new port; the state and queues stay
        assert again.fingerprint == server.fingerprint
        bob.recv_until("alice: before restart")
        bob.run("send", "ops", "after restart")
        alice.recv_until("bob: after restart")
    finally:
        again.stop()


def test_two_members_committing_at_once_end_in_one_group(make_user) -> None:  # type: ignore[no-untyped-def]
    alice, bob, carol, dave = (make_user(n) for n in ("alice", "bob", "carol", "dave"))
    bob.add_contacts("alice")
    carol.add_contacts("alice")
    dave.add_contacts("bob")
    alice.run("group", "create", "race")
    alice.run("group", "invite", "race", "bob")
    bob.recv_until("you joined")
    racers = [
        subprocess.Popen(
            [*qpq_command(), "group", "invite", "race", invitee],
            env=user.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for user, invitee in ((alice, "carol"), (bob, "dave"))
    ]
    for racer in racers:
        _, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
    carol.recv_until("you joined")
    dave.recv_until("you joined")
    everyone = ["alice", "bob", "carol", "dave"]
    for user in (alice, bob, carol, dave):
        assert (
            members(user, "race" if user.name in ("alice", "bob") else _group_of(user)) == everyone
        )
    carol_group = _group_of(carol)
    carol.run("send", carol_group, "hello racers")
    for user in (alice, bob, dave):
        user.recv_until("carol: hello racers")


def _group_of(user: User) -> str:
    (line,) = user.run("group", "list").lines
    return line.split(":")[0]


def test_user_errors_are_one_clear_line(make_user, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = make_user("alice")
    alice.run("group", "create", "g")
    cases = {
        "wrong passphrase": (("whoami",), {"QPQ_STATE_KEY": "not it"}, "wrong passphrase"),
        "bad token": (("send", "g", "x"), {"QPQ_TOKEN": "wrong-token"}, "access token"),
        "server down": (
            ("--connect-timeout", "1", "send", "g", "x"),
            {"QPQ_SERVER": "127.0.0.1:9"},
            "no answer from the server",
        ),
        "unknown user": (("group", "invite", "g", "nobody"), {}, "no user named 'nobody'"),
        "unknown group": (("send", "nope", "x"), {}, "no group named 'nope'"),
        "not initialized": (("whoami",), {"QPQ_HOME": str(tmp_path / "empty")}, "qpq init"),
        "no trust": (
            ("init", "--username", "zed"),
            {"QPQ_HOME": str(tmp_path / "z"), "QPQ_PIN": "", "QPQ_TOKEN": server.token},
            "--ca-cert",
        ),
    }
    for name, (args, env, expected) in cases.items():
        result = alice.run(*args, check=False, **env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0, name
        assert len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith("qpq: error: "), (name, lines)
        assert expected in lines[0], (name, lines)
        assert "Traceback" not in result.stderr


def self_signed_ca(path: Path) -> Path:
    """A CA certificate that did not issue the server's (same names, other key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qpq-server development")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_ca_cert_trusts_the_dev_server_and_another_ca_is_refused(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The dev server's self-signed certificate names localhost and 127.0.0.1.
    dave = User("dave", tmp_path / "dave", server)
    by_ca = {"QPQ_PIN": "", "QPQ_CA_CERT": str(server.cert_path)}
    dave.run("init", "--username", "dave", QPQ_TOKEN=server.token, **by_ca)
    status = dave.run("--server", f"localhost:{server.port}", "keys", "status", **by_ca)
    assert status.stdout.startswith("100 KeyPackages on the server")
    other_ca = self_signed_ca(tmp_path / "other-ca.pem")
    refused = dave.run("keys", "status", check=False, QPQ_PIN="", QPQ_CA_CERT=str(other_ca))
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith(
        f"qpq: error: the TLS handshake with the server at 127.0.0.1:{server.port} failed"
    ), line
    assert line.endswith("check the CA certificate or the pin"), line


def test_no_secret_reaches_the_output_or_the_disk(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    passphrase = "the-state-passphrase-do-not-print"
    wrong_token = "a-wrong-token-that-must-not-echo"
    wrong_passphrase = "a-wrong-passphrase-that-must-not-echo"
    erin = User("erin", tmp_path / "erin", server, passphrase=passphrase)
    said = [erin.run("--json", "init", "--username", "erin", QPQ_TOKEN=server.token)]
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
    store = StateStore.open(erin.home, passphrase)
    identity = store.identity()
    store.close()
    assert identity is not None
    seed = identity[0]
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
