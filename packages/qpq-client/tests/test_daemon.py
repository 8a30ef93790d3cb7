"""`qpq daemon`: the CLI through it, its socket as an attacker sees it, and losses of the server.

The daemon runs as the real command (`qpq daemon --foreground`) against a
real server process; the server is restarted and killed (-9) under it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    NO_RATE_LIMIT,
    PASSPHRASE,
    MakeUser,
    User,
    create_profile,
    group_of_two,
    qpq_command,
    run_in_own_loop,
    unique_name,
)
from daemon_harness import RunningDaemon, Subscriber, socket_mode

import qpq_proto as p
from qpq_client import Client, ProfileBusyError
from qpq_client._client import WAITS_IN_OUTBOX
from qpq_client.cli._daemon import DaemonSettings, run_daemon
from qpq_client.cli._daemon_socket import MAX_QUEUED_BYTES, RpcPeer, RpcSocket
from qpq_client.cli._local import Connect
from qpq_client.cli._rpc import (
    INVALID_REQUEST,
    MAX_LINE_BYTES,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    QPQ_ERROR,
    DaemonLink,
    RpcError,
    connect_socket,
)
from qpq_server.testing import RunningServer, start_server

pytestmark = pytest.mark.slow


@pytest.fixture
def daemons() -> Iterator[list[RunningDaemon]]:
    started: list[RunningDaemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def _start(daemons: list[RunningDaemon], user: User) -> RunningDaemon:
    daemon = RunningDaemon(user)
    daemons.append(daemon)
    daemon.wait_connected()
    return daemon


# ---- the CLI through the daemon ---------------------------------------------------


def test_commands_are_calls_to_the_daemon(
    make_user: MakeUser, daemons: list[RunningDaemon]
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    bob.library(lambda client: client.add_contact(alice.name))
    daemon = _start(daemons, alice)
    # Through the daemon the profile is never opened here: a wrong passphrase does not matter.
    wrong = {"QPQ_STATE_KEY": "not the passphrase"}
    assert alice.run("group", "create", "team", **wrong).stdout == "created group team\n"
    invited = alice.run("group", "invite", "team", bob.name, **wrong).stdout
    assert invited == f"invited {bob.name} to team\n"
    assert alice.run("send", "team", "through the daemon", **wrong).stdout == ""
    assert f"[team] {alice.name}: through the daemon" in bob.recv_until("through the daemon")
    assert alice.run("group", "list", **wrong).lines == [f"team: {alice.name}, {bob.name}"]
    status = json.loads(alice.run("--json", "daemon", "status").stdout)
    assert (status["running"], status["connected"], status["username"]) == (
        True,
        True,
        alice.name,
    )
    # The same one-line error as without a daemon, from a coded JSON-RPC error.
    through = alice.run("send", "nosuch", "x", check=False, **wrong)
    alone = bob.run("send", "nosuch", "x", check=False)
    expected = "qpq: error: no group named 'nosuch' (see `qpq group list`)\n"
    assert (through.returncode, through.stderr) == (alone.returncode, alone.stderr) == (1, expected)
    link = daemon.link()
    try:
        with pytest.raises(RpcError) as refused:
            link.call("send", {"group": "nosuch", "text": "x"})
        assert (refused.value.code, refused.value.message) == (QPQ_ERROR, expected[12:-1])
        assert refused.value.data == {"type": "UnknownGroupError"}
        with pytest.raises(RpcError) as unknown:
            link.call("sendd")
        assert unknown.value.code == METHOD_NOT_FOUND
    finally:
        link.close()
    # bob answers; `qpq recv` through the daemon shows what it held for it.
    bob.library(lambda client: client.send("team", "answer"))
    assert f"[team] {bob.name}: answer" in alice.recv_until("answer")


def test_account_commands_are_calls_to_the_daemon(
    make_user: MakeUser, daemons: list[RunningDaemon]
) -> None:
    bob = make_user("bob")
    daemon = _start(daemons, bob)
    wrong = {"QPQ_STATE_KEY": "not the passphrase"}
    new = unique_name("robert")
    renamed = bob.run("account", "rename", new, **wrong).stdout
    assert renamed == f"you are now {new} (was {bob.name})\n"
    assert bob.run("whoami", **wrong).lines[0] == new
    # The method checks the confirmation itself: the old name deletes nothing.
    link = daemon.link()
    try:
        with pytest.raises(RpcError) as refused:
            link.call("accountDelete", {"username": bob.name})
        assert refused.value.message == "not deleted: that is not your username"
    finally:
        link.close()
    done = bob.run("account", "delete", input_text=new, **wrong)
    assert done.stdout == f"deleted the account {new}\n"


def test_recv_follow_is_a_subscription(make_user: MakeUser, daemons: list[RunningDaemon]) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    group_of_two(alice, bob, "chat")
    _start(daemons, bob)
    with subprocess.Popen(
        [*qpq_command(), "--json", "recv", "--follow"],
        env=bob.env(QPQ_STATE_KEY="not the passphrase"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as follower:
        try:
            for n in range(3):
                alice.library(lambda client, n=n: client.send("chat", f"follow {n}"))
            if follower.stdout is None:
                raise AssertionError("no stdout")
            bodies: list[str] = []
            while len(bodies) < 3:
                line = follower.stdout.readline()
                if not line:
                    raise AssertionError("recv --follow ended")
                entry = json.loads(line)
                if entry["kind"] == "text":
                    bodies.append(entry["body"])
            assert bodies == ["follow 0", "follow 1", "follow 2"]
            # What bob sends through the daemon shows there too, marked his.
            bob.run("send", "chat", "mine too")
            line = follower.stdout.readline()
            assert line, "recv --follow ended"
            own = json.loads(line)
            assert (own["kind"], own["sender"], own["body"], own["outgoing"]) == (
                "text",
                bob.name,
                "mine too",
                True,
            )
        finally:
            follower.terminate()


def test_the_cli_path_to_a_daemon_loads_no_library(
    make_user: MakeUser, daemons: list[RunningDaemon]
) -> None:
    alice = make_user("alice")
    _start(daemons, alice)
    probe = (
        "import sys\n"
        "from qpq_client.cli import cli\n"
        "try:\n"
        "    cli(['--json', 'whoami'], prog_name='qpq')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('qpq_core', 'qpq_proto', 'aioquic', 'sqlcipher3', 'capnp',\n"
        "         'qpq_client._client')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=alice.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    whoami, loaded = done.stdout.splitlines()
    assert json.loads(whoami)["username"] == alice.name
    assert loaded == "[]"


# ---- one daemon per profile ---------------------------------------------------------


def test_a_second_daemon_on_a_profile_is_refused(
    make_user: MakeUser, daemons: list[RunningDaemon]
) -> None:
    alice = make_user("alice")
    first = _start(daemons, alice)
    again = alice.run("daemon", "--foreground", check=False)
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == (
        f"qpq: error: a qpq daemon already runs for {alice.home} (qpq daemon status)\n"
    )
    # The lock itself, not only the command's look before it: a daemon that
    # got past that look is refused when it takes the profile.
    settings = DaemonSettings()
    connect = Connect(
        server=None, ca_cert=None, pin=None, token=None, connect_timeout=5.0, p2p=None
    )

    async def second() -> None:
        await run_daemon(alice.home, alice.passphrase, connect, settings, ready=lambda: None)

    with pytest.raises(ProfileBusyError, match="a qpq daemon already runs"):
        run_in_own_loop(second)
    assert first.process.poll() is None
    assert alice.run("daemon", "status").lines[0].startswith("qpq daemon (pid ")
    assert alice.run("daemon", "stop").stdout == f"stopped the qpq daemon of {alice.home}\n"
    assert first.process.wait(30) == 0
    stopped = alice.run("daemon", "status", check=False)
    assert (stopped.returncode, stopped.stdout) == (1, f"no qpq daemon runs for {alice.home}\n")
    # Without a daemon the commands work as before, in process.
    assert alice.run("group", "list").stdout == ""


def test_a_killed_daemon_leaves_nothing_in_the_way(
    make_user: MakeUser, daemons: list[RunningDaemon]
) -> None:
    alice = make_user("alice")
    first = _start(daemons, alice)
    first.process.kill()
    first.process.wait()
    assert (alice.home / "daemon.sock").exists()  # left behind, refusing connections
    # The lock went with the process: commands run in process again...
    assert alice.run("group", "list").stdout == ""
    # ...and a new daemon takes the profile, and the socket, over.
    _start(daemons, alice)
    assert alice.run("daemon", "status").lines[0].startswith("qpq daemon (pid ")


def test_the_daemon_starts_in_the_background(make_user: MakeUser) -> None:
    alice = make_user("alice")
    # A daemon that cannot start says why, as the command on its own would.
    wrong = alice.run("daemon", check=False, QPQ_STATE_KEY="not the passphrase")
    alone = alice.run("whoami", check=False, QPQ_STATE_KEY="not the passphrase")
    assert (wrong.returncode, wrong.stderr) == (alone.returncode, alone.stderr)
    assert wrong.stderr.startswith("qpq: error: ")
    started = alice.run("--json", "daemon")
    data = json.loads(started.stdout)
    try:
        assert data["log"] == str(alice.home / "daemon.log")
        assert alice.run("whoami", QPQ_STATE_KEY="wrong").lines[0] == alice.name
        # Its secrets came through a pipe: neither its argv nor its environment holds them.
        environ = Path(f"/proc/{data['pid']}/environ").read_bytes()
        cmdline = Path(f"/proc/{data['pid']}/cmdline").read_bytes()
        for secret in (alice.passphrase, alice.server.token):
            assert secret.encode() not in environ + cmdline
    finally:
        alice.run("daemon", "stop")
    assert "connected to" in (alice.home / "daemon.log").read_text("utf-8")


# ---- the socket, as another local user or a hostile client sees it ---------------


def test_the_socket_is_private_and_refuses_other_users(
    make_user: MakeUser, daemons: list[RunningDaemon], tmp_path: Path
) -> None:
    alice = make_user("alice")
    _start(daemons, alice)
    assert socket_mode(alice.home) == 0o600
    # SO_PEERCRED: a socket serving another uid than ours refuses us, even
    # though the file lets us in.
    home = tmp_path / "other"
    home.mkdir()

    async def refused_peer() -> dict[str, Any]:
        async def never(_peer: RpcPeer, _method: str, _params: object) -> Any:
            raise AssertionError("a call from another user was handled")

        served = RpcSocket(home, never, uid=os.getuid() + 1)
        await served.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(home / "daemon.sock"))
            writer.write(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
            answer = json.loads(await reader.readline())
            assert await reader.read() == b""  # and closed
            writer.close()
            return dict(answer)
        finally:
            await served.close()

    answer = run_in_own_loop(refused_peer)
    assert answer["error"]["code"] == INVALID_REQUEST
    assert (
        answer["error"]["message"] == f"this daemon serves only its own user, not uid {os.getuid()}"
    )


def _raw_call(sock: socket.socket, line: bytes) -> dict[str, Any]:
    sock.sendall(line)
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed after {answer!r}")
        answer += chunk
    return dict(json.loads(answer))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_garbage_and_a_huge_line_are_refused_without_harm(
    make_user: MakeUser, daemons: list[RunningDaemon]
) -> None:
    alice = make_user("alice")
    daemon = _start(daemons, alice)
    sock = connect_socket(alice.home)
    if sock is None:
        raise AssertionError("no daemon")
    with sock:
        assert _raw_call(sock, b"not json\n")["error"]["code"] == PARSE_ERROR
        batch = _raw_call(sock, b'[{"jsonrpc":"2.0","id":1,"method":"status"}]\n')
        assert batch["error"] == {"code": INVALID_REQUEST, "message": "batches are not supported"}
        assert _raw_call(sock, b'{"id":2,"method":"status"}\n')["error"]["code"] == INVALID_REQUEST
        wrong_params = _raw_call(sock, b'{"jsonrpc":"2.0","id":3,"method":"send","params":[1]}\n')
        assert wrong_params["error"]["message"] == "params must be an object"
        # The connection still serves after all of that.
        status = _raw_call(sock, b'{"jsonrpc":"2.0","id":4,"method":"status"}\n')
        assert status["result"]["username"] == alice.name
    # A 1 GiB line: refused once it passes the limit, its connection closed;
    # the daemon holds no more than about twice the limit meanwhile.
    before = _rss_kib(daemon.process.pid)
    sock = connect_socket(alice.home)
    if sock is None:
        raise AssertionError("no daemon")
    sent = 0
    chunk = b"x" * (1024 * 1024)
    with sock:
        try:
            while sent < 1024 * len(chunk):
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 1024 * len(chunk)
        refusal = sock.recv(65536)
    assert json.loads(refusal)["error"] == {
        "code": INVALID_REQUEST,
        "message": f"a request is at most {MAX_LINE_BYTES} bytes",
    }
    assert _rss_kib(daemon.process.pid) - before < 4 * MAX_LINE_BYTES // 1024
    link = daemon.link()
    try:
        assert link.call("status")["connected"] is True
    finally:
        link.close()


def test_a_subscriber_that_never_reads_is_dropped_with_a_notice(tmp_path: Path) -> None:
    """What waits for one connection is bounded: past it the subscriber is cut off."""

    async def flood() -> tuple[list[bytes], int]:
        subscribed = asyncio.Event()

        async def subscribe(peer: RpcPeer, _method: str, _params: object) -> Any:
            peer.subscribed = True
            subscribed.set()
            return {"subscribed": True}

        served = RpcSocket(tmp_path, subscribe)
        await served.start()
        loop = asyncio.get_running_loop()
        # A plain socket: nothing reads from it until the end (an asyncio
        # stream would read ahead on its own).
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            await loop.sock_connect(client, str(tmp_path / "daemon.sock"))
            await loop.sock_sendall(client, b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')
            await subscribed.wait()
            (peer,) = served.subscribers()
            body = "m" * 65536
            sent = 0
            # Notifications pile up unread: the queue stops growing at its
            # bound and the subscriber is dropped.
            while served.subscribers() and sent < 4 * MAX_QUEUED_BYTES // len(body):
                peer.notify("message", {"body": body})
                sent += 1
                await asyncio.sleep(0)  # let the writer fill the socket
            assert not served.subscribers()
            received = b""
            while chunk := await loop.sock_recv(client, 1 << 20):
                received += chunk
            return received.splitlines(), sent
        finally:
            client.close()
            await served.close()

    lines, sent = run_in_own_loop(flood)
    assert sent * 65536 < 2 * MAX_QUEUED_BYTES
    assert json.loads(lines[0])["result"] == {"subscribed": True}
    last = json.loads(lines[-1])
    assert last["method"] == "dropped"
    assert "waited unread" in last["params"]["reason"]
    assert len(lines) < sent


# ---- losses of the server -----------------------------------------------------------


def test_recv_follow_without_a_daemon_outlives_a_server_restart(
    server: RunningServer, tmp_path: Path
) -> None:
    alice, bob = _people(server, tmp_path)
    group_of_two(alice, bob, "ops")
    again: RunningServer | None = None
    with subprocess.Popen(
        [*qpq_command(), "recv", "--follow"],
        env=alice.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as follower:
        try:
            if follower.stdout is None or follower.stderr is None:
                raise AssertionError("no pipes")
            bob.library(lambda client: client.send("ops", "before"))
            assert follower.stdout.readline().endswith(f"{bob.name}: before\n")
            # A restart: the server tells its subscribers it is going away.
            assert server.stop() == 0
            assert follower.stderr.readline().endswith("; connecting again\n")
            again = _restart(server, tmp_path, "again")
            bob.library(lambda client: client.send("ops", "after"))
            assert follower.stderr.readline() == "qpq: connected again\n"
            assert follower.stdout.readline().endswith(f"{bob.name}: after\n")
            assert follower.poll() is None
        finally:
            follower.terminate()
            if again is not None:
                again.stop()


def _people(server: RunningServer, tmp_path: Path) -> tuple[User, User]:
    alice, bob = (User(unique_name(n), tmp_path / "homes" / n, server) for n in ("alice", "bob"))
    for user in (alice, bob):

        async def init(user: User = user) -> None:
            created = await create_profile(user.home, user.passphrase, user.name, server)
            await created.close()

        run_in_own_loop(init)
    return alice, bob


def _restart(server: RunningServer, tmp_path: Path, name: str) -> RunningServer:
    run_dir = tmp_path / name
    run_dir.mkdir()
    return start_server(
        run_dir,
        data_dir=server.data_dir,
        listen=f"{server.host}:{server.port}",
        extra_env=NO_RATE_LIMIT,
    )


@pytest.mark.parametrize("how", ["restart", "kill -9"])
def test_the_daemon_outlives_its_server(
    how: str, server: RunningServer, tmp_path: Path, daemons: list[RunningDaemon]
) -> None:
    alice, bob = _people(server, tmp_path)
    group_of_two(alice, bob, "ops")
    daemon = _start(daemons, alice)
    subscriber = Subscriber(daemon)
    again: RunningServer | None = None
    try:
        bob.library(lambda client: client.send("ops", "before"))
        assert subscriber.texts_until("before") == ["before"]
        mark = len(daemon.log)
        if how == "restart":
            assert server.stop() == 0
        else:
            server.kill()
        assert subscriber.next("connection") == {
            "connected": False,
            "reason": subscriber_reason(daemon, mark),
        }
        # While it is away, a send is kept in the outbox (and says so in one
        # line); what needs the server otherwise is refused in one line; what
        # does not need it still works.
        daemon.wait_for_log("sends wait in the outbox", after=mark)
        away = alice.run("send", "ops", "while away", check=False)
        assert (away.returncode, away.stdout) == (1, "")
        assert away.stderr.startswith("qpq: error: ")
        assert away.stderr.endswith(f"; {WAITS_IN_OUTBOX}\n")
        # It is in alice's history: those who follow see it as sent.
        own = subscriber.next("message")
        assert (own["body"], own["outgoing"]) == ("while away", True)
        refused = alice.run("group", "create", "later", check=False)
        assert refused.returncode == 1
        assert refused.stderr.startswith(
            "qpq: error: the daemon is not connected to the server right now"
        )
        assert refused.stderr.endswith("; it keeps trying (qpq daemon status)\n")
        assert alice.run("group", "list").lines == [f"ops: {alice.name}, {bob.name}"]
        again = _restart(server, tmp_path, "again")
        assert again.fingerprint == server.fingerprint
        # Sent while alice's daemon is still away or coming back: the server
        # queues them, and the daemon takes them once it is back.
        for n in range(5):
            bob.library(lambda client, n=n: client.send("ops", f"meanwhile {n}"))
        daemon.wait_for_log("reconnected to", after=mark)
        assert subscriber.next("connection", timeout=120)["connected"] is True
        bob.library(lambda client: client.send("ops", "after"))
        # In order, exactly once, then nothing more.
        assert subscriber.texts_until("after") == [*(f"meanwhile {n}" for n in range(5)), "after"]
        # And the daemon sends for alice again; what waited went first.
        assert alice.run("send", "ops", "back").stdout == ""
        seen = [line for line in bob.recv_until("back") if f"[ops] {alice.name}: " in line]
        assert [line.split(": ", 1)[1] for line in seen] == ["while away", "back"]
        status = json.loads(alice.run("--json", "daemon", "status").stdout)
        assert status["reconnects"] >= 1
        link = daemon.link()
        try:
            assert link.call("receive", {"wait": 0}) == []
        finally:
            link.close()
    finally:
        subscriber.close()
        daemon.stop()
        if again is not None:
            again.stop()
    assert "reconnected to" in "\n".join(daemon.log)


def subscriber_reason(daemon: RunningDaemon, mark: int) -> str:
    """The reason the daemon logged for the loss (what the notification carries too)."""
    index = daemon.wait_for_log("lost the server: ", after=mark)
    return daemon.log[index].split("lost the server: ", 1)[1]


def test_a_slow_reader_does_not_stall_the_daemon(
    make_user: MakeUser, daemons: list[RunningDaemon]
) -> None:
    """A client that sends calls and never reads its answers stalls only itself."""
    alice = make_user("alice")
    daemon = _start(daemons, alice)
    stalled = connect_socket(alice.home)
    if stalled is None:
        raise AssertionError("no daemon")
    stalled.setblocking(False)
    call = b'{"jsonrpc":"2.0","id":1,"method":"history","params":{"group":"none"}}\n'
    written = 0
    with stalled:
        try:
            while written < 64 * 1024 * 1024:
                written += stalled.send(call * 256)
        except BlockingIOError:
            pass  # the daemon stopped reading from it: its answers wait unread
        link: DaemonLink = daemon.link()
        try:
            assert link.call("status")["connected"] is True
        finally:
            link.close()
    assert written < 64 * 1024 * 1024


def test_a_contact_key_change_is_notified(tmp_path: Path, daemons: list[RunningDaemon]) -> None:
    """The server gives another key for a contact's name (here: the name was
    given up and taken by another identity at once, as a malicious server
    could do to anyone): subscribers hear of it, and the call is refused."""
    data = tmp_path / "server"
    data.mkdir()
    server = start_server(data, extra_env={**NO_RATE_LIMIT, "QPQ_USERNAME_COOLDOWN_DAYS": "0"})
    try:
        alice, bob = _people(server, tmp_path)
        alice.library(lambda client: client.add_contact(bob.name))
        daemon = _start(daemons, alice)
        subscriber = Subscriber(daemon)
        try:

            async def take_over() -> tuple[bytes, bytes]:
                old = Client.open(bob.home, bob.passphrase)
                try:
                    async with server.connect() as conn:
                        await conn.authenticate(old._identity)  # bob's own key, as his client
                        await conn.call(p.RegisterUser(f"{bob.name}-elsewhere"))
                    taker = await create_profile(tmp_path / "mallory", PASSPHRASE, bob.name, server)
                    await taker.close()
                    return old.identity_key, taker.identity_key
                finally:
                    await old.close()

            old_key, new_key = run_in_own_loop(take_over)
            refused = alice.run("verify", bob.name, check=False)
            assert refused.returncode == 1
            assert f"the server now gives another identity key for {bob.name}" in refused.stderr
            assert subscriber.next("keyChanged") == {
                "username": bob.name,
                "identity_key": old_key.hex(),
                "new_key": new_key.hex(),
            }
            link = daemon.link()
            try:
                with pytest.raises(RpcError) as again:
                    link.call("verify", {"username": bob.name})
                assert again.value.data == {"type": "KeyChangedError"}
            finally:
                link.close()
        finally:
            subscriber.close()
    finally:
        for running in daemons:
            running.stop()
        server.stop()


def test_a_profile_deeper_than_a_socket_path_holds(tmp_path: Path) -> None:
    """sockaddr_un holds 107 bytes: a deeper profile is reached through its directory."""
    home = tmp_path.joinpath(*(["a-rather-long-directory-name"] * 5))
    home.mkdir(parents=True)
    assert len(str(home / "daemon.sock")) > 107

    async def served() -> Any:
        async def status(_peer: RpcPeer, method: str, _params: object) -> Any:
            return {"method": method}

        listening = RpcSocket(home, status)
        await listening.start()
        try:
            return await asyncio.to_thread(_call_status, home)
        finally:
            await listening.close()

    assert run_in_own_loop(served) == {"method": "status"}
    assert not (home / "daemon.sock").exists()  # removed when it stopped


def _call_status(home: Path) -> Any:
    sock = connect_socket(home)
    if sock is None:
        raise AssertionError("nothing listens")
    link = DaemonLink(sock)
    try:
        return link.call("status")
    finally:
        link.close()


def test_every_public_name_of_the_library_loads() -> None:
    """qpq_client's names load on first use (the daemon path imports none):
    each one in ``__all__`` must still be there."""
    import qpq_client

    missing = [name for name in qpq_client.__all__ if getattr(qpq_client, name, None) is None]
    assert missing == []


def test_two_daemons_talk_directly_while_the_server_is_down(
    server: RunningServer, tmp_path: Path, daemons: list[RunningDaemon]
) -> None:
    # alice's and bob's daemons have direct delivery on; carol has no
    # daemon and reads through the server. With the server stopped, alice's
    # sends (through her daemon, one started while the server is down, and
    # a `qpq send` of its own) reach bob directly and wait in her outbox for
    # the server (and carol); once it is back they reach both, in order,
    # once each.
    alice, bob = _people(server, tmp_path)
    carol = User(unique_name("carol"), tmp_path / "homes" / "carol", server)

    async def init() -> None:
        created = await create_profile(carol.home, carol.passphrase, carol.name, server)
        await created.close()

    run_in_own_loop(init)
    group_of_two(alice, bob, "ops")
    carol.library(lambda client: client.add_contact(alice.name))
    alice.library(lambda client: client.invite("ops", [carol.name]))
    for user in (alice, bob):
        user.run("p2p", "on", "--listen", "127.0.0.1:0")
    bob_daemon = _start(daemons, bob)
    alice_daemon = _start(daemons, alice)
    subscriber = Subscriber(bob_daemon)
    again: RunningServer | None = None
    try:
        assert alice.run("send", "ops", "before").stdout == ""
        assert subscriber.texts_until("before") == ["before"]
        marks = (len(alice_daemon.log), len(bob_daemon.log))
        assert server.stop() == 0
        for daemon, mark in zip((alice_daemon, bob_daemon), marks, strict=True):
            daemon.wait_for_log("(members are reached directly where they can be)", after=mark)
        for n in range(3):
            away = alice.run("send", "ops", f"away {n}", check=False)
            assert (away.returncode, away.stdout) == (1, "")
            assert away.stderr.endswith(f"; {WAITS_IN_OUTBOX}\n")
        # bob has them at once, directly.
        assert subscriber.texts_until("away 2") == ["away 0", "away 1", "away 2"]
        assert len(alice.run("outbox").lines) == 3
        # A daemon started while the server is down finds bob where alice's
        # profile remembers him.
        alice_daemon.stop()
        alice_daemon = RunningDaemon(alice)
        daemons.append(alice_daemon)
        alice_daemon.wait_for_log("(members are reached directly where they can be)")
        status = json.loads(alice.run("--json", "daemon", "status").stdout)
        assert (status["connected"], status["offline_sends"]) == (False, True)
        away = alice.run("send", "ops", "away 3", check=False)
        assert away.stderr.endswith(f"; {WAITS_IN_OUTBOX}\n")
        assert subscriber.texts_until("away 3") == ["away 3"]
        # Without a daemon, one `qpq send` does the same in its own process.
        alice_daemon.stop()
        away = alice.run("send", "ops", "away 4", check=False)
        assert (away.returncode, away.stdout) == (1, "")
        assert away.stderr.endswith(f"; {WAITS_IN_OUTBOX}\n")
        assert subscriber.texts_until("away 4") == ["away 4"]
        alice_daemon = RunningDaemon(alice)
        daemons.append(alice_daemon)
        alice_daemon.wait_for_log("(members are reached directly where they can be)")
        assert len(alice.run("outbox").lines) == 5
        marks = (0, marks[1])

        again = _restart(server, tmp_path, "again")
        alice_daemon.wait_for_log("connected to", after=marks[0])
        bob_daemon.wait_for_log("reconnected to", after=marks[1])
        assert alice.run("outbox").lines == ["nothing waits to be sent"]
        assert alice.run("send", "ops", "after").stdout == ""
        # bob skipped the server's copies of what he had: "after" comes next.
        assert subscriber.texts_until("after") == ["after"]
        seen = [line for line in carol.recv_until("after") if f"{alice.name}: " in line]
        assert [line.split(": ", 1)[1] for line in seen] == [
            "before",
            "away 0",
            "away 1",
            "away 2",
            "away 3",
            "away 4",
            "after",
        ]
    finally:
        subscriber.close()
        if again is not None:
            again.stop()
