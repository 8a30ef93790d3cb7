"""qpq in one run: a real server, and alice, bob and carol using the `qpq` command.

Run it with ``tox -e demo``. It starts ``qpq-server`` on the embedded
SQLCipher store (a fresh random database key, a temporary data directory)
registering people by invitation, as production does: the operator makes
one invite code per person (``qpq-server invites create``), who gives it to
``qpq init``; no shared access token is needed. It shows every command as a
person would type it and what it printed, checks each result, stops the
server with SIGTERM and exits 0 only if every step did what it should.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_TIMEOUT_SECONDS = 30.0
#: How `qpq recv` shows an invitation that waits for a decision.
REQUEST = re.compile(r"invited you to (?P<name>\S+): qpq group accept")


def qpq_command() -> list[str]:
    beside = Path(sys.executable).parent / "qpq"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("qpq")
    return [found] if found else [sys.executable, "-m", "qpq_client.cli"]


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.failures: list[str] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.pin = ""
        #: The server's settings, which the operator's commands use too.
        self.server_env: dict[str, str] = {}
        #: Invite codes handed out, shown as $INVITE (each is shown once).
        self.codes: list[str] = []
        #: Who runs a `qpq daemon` now (stopped before the server).
        self.daemons: list[str] = []

    # ---- the server ------------------------------------------------------

    def start_server(self) -> None:
        data_dir = self.root / "server-data"
        ready = self.root / "ready.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("QPQ_")}
        env.update(
            QPQ_DB_KEY=secrets.token_hex(32),
            QPQ_DATA_DIR=str(data_dir),
            QPQ_REGISTRATION="invite",
        )
        self.server_env = env
        argv = [
            sys.executable, "-m", "qpq_server", "run",
            "--listen", "127.0.0.1:0", "--ready-file", str(ready),
        ]  # fmt: skip
        print("== starting qpq-server (SQLCipher store, random database key, by invitation)")
        log = (self.root / "server.log").open("wb")
        self.server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not ready.exists():  # the server writes it once it listens
            if self.server.poll() is not None or time.monotonic() > deadline:
                print((self.root / "server.log").read_text(errors="replace"))
                raise SystemExit("the server did not start")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.address = f"{info['host']}:{info['port']}"
        self.pin = info["cert_fingerprint"]
        print(f"   listening on {self.address}, certificate sha256 {self.pin[:16]}…\n")

    def stop_server(self) -> None:
        if self.server is None:
            return
        self.server.send_signal(signal.SIGTERM)
        code = self.server.wait(30)
        print(f"\n== qpq-server stopped with SIGTERM (exit status {code})")
        if code != 0:
            self.failures.append(f"the server exited with {code}")

    # ---- the operator ----------------------------------------------------

    def operator(self, *args: str, expect: str | None = None) -> str:
        """``qpq-server ARGS`` on the server host, with the server's settings."""
        print(f"operator$ qpq-server {' '.join(shlex.quote(a) for a in args)}")
        done = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "qpq_server", *args],
            env=self.server_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if args[:2] == ("invites", "create") and done.returncode == 0:
            self.codes.append(done.stdout.strip())  # shown once: hidden from here on
        output = self._hide(done.stdout + done.stderr).rstrip()
        for line in output.splitlines():
            print(f"    {line}")
        if done.returncode != 0 or (expect is not None and expect not in output):
            self.failures.append(f"operator: qpq-server {' '.join(args)} (expected {expect!r})")
            print("    !! unexpected result")
        return done.stdout

    def invite(self, who: str) -> str:
        return self.operator("invites", "create", "--note", who).strip()

    def _hide(self, text: str) -> str:
        for code in self.codes:
            text = text.replace(code, "$INVITE")
        return text.replace(self.pin, "$PIN") if self.pin else text

    # ---- people ----------------------------------------------------------

    def _run(self, who: str, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QPQ_")}
        env.update(QPQ_HOME=str(self.root / who), QPQ_STATE_KEY=f"{who}'s passphrase")
        return subprocess.run(  # noqa: S603
            [*qpq_command(), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def qpq(self, who: str, *args: str, expect: str | None = None, fail: bool = False) -> str:
        shown = self._hide(" ".join(shlex.quote(a) for a in args))
        print(f"{who}$ qpq {shown}")
        done = self._run(who, args)
        output = (done.stdout + done.stderr).rstrip()
        for line in output.splitlines():
            print(f"    {line}")
        ok = (done.returncode != 0) if fail else (done.returncode == 0)
        if expect is not None and expect not in output:
            ok = False
        if not ok:
            self.failures.append(f"{who}: qpq {shown} (expected {expect!r})")
            print("    !! unexpected result")
        return output

    def recv(self, who: str, expect: str) -> str:
        """`qpq recv --wait` until ``expect`` shows (no fixed sleeps)."""
        seen = ""
        for _ in range(5):
            print(f"{who}$ qpq recv --wait 10")
            done = self.run_quiet(who, "recv", "--wait", "10")
            for line in done.splitlines():
                print(f"    {line}")
            seen += done
            if expect in seen:
                return seen
        self.failures.append(f"{who} never received {expect!r}")
        print("    !! unexpected result")
        return seen

    def run_quiet(self, who: str, *args: str) -> str:
        done = self._run(who, args)
        if done.returncode != 0:
            self.failures.append(f"{who}: qpq {' '.join(args)} failed: {done.stderr.strip()}")
        return (done.stdout + done.stderr).rstrip()

    def step(self, title: str) -> None:
        print(f"\n== {title}")

    def story(self) -> None:
        self.step("the operator invites alice, bob and carol; each registers with a code")
        for who in ("alice", "bob", "carol"):
            code = self.invite(who)
            self.qpq(
                who, "--server", self.address, "--pin", self.pin,
                "init", "--username", who, "--invite", code, expect=f"registered {who}",
            )  # fmt: skip
        self.qpq(
            "mallory", "--server", self.address, "--pin", self.pin,
            "init", "--username", "mallory", expect="registers people by invitation", fail=True,
        )  # fmt: skip
        self.operator("accounts", "list", expect="carol  active")
        self.qpq("alice", "whoami", expect="alice")
        self.qpq("alice", "keys", "status", expect="last resort: yes")

        self.step("bob knows alice (a contact); carol does not")
        self.qpq("bob", "contacts", "add", "alice", expect="added alice")

        self.step("alice creates a group and invites them: bob joins, carol gets a request")
        self.qpq("alice", "group", "create", "friends", expect="created group friends")
        self.qpq("alice", "group", "invite", "friends", "bob", "carol", expect="invited bob, carol")
        self.recv("bob", "you joined (invited by alice)")
        request = REQUEST.search(self.recv("carol", "alice invited you to"))
        held = request["name"] if request else "?"
        self.qpq("carol", "group", "accept", held, expect="joined friends")
        self.recv("carol", "you joined (invited by alice)")
        self.qpq("bob", "group", "members", "friends", expect="carol")

        self.step("alice and bob compare safety numbers (in person), then alice marks bob verified")
        ours = self.qpq("alice", "verify", "bob", expect="safety number with bob")
        theirs = self.qpq("bob", "verify", "alice", expect="safety number with alice")
        if ours.splitlines()[1:4] != theirs.splitlines()[1:4]:
            self.failures.append("alice and bob see different safety numbers")
        self.qpq("alice", "verify", "bob", "--mark", expect="bob is marked verified")

        self.step("messages in every direction")
        self.qpq("alice", "send", "friends", "Hi both! Lunch at noon?")
        self.recv("bob", "alice: Hi both! Lunch at noon?")
        self.recv("carol", "alice: Hi both! Lunch at noon?")
        self.qpq("bob", "send", "friends", "Noon works for me.")
        self.recv("alice", "bob: Noon works for me.")
        self.recv("carol", "bob: Noon works for me.")
        self.qpq("carol", "send", "friends", "Me too, see you there.")
        self.recv("alice", "carol: Me too, see you there.")
        self.recv("bob", "carol: Me too, see you there.")

        self.through_a_daemon()

        self.step("alice removes bob; bob gets nothing new afterwards")
        self.qpq("alice", "group", "remove", "friends", "bob", expect="removed bob")
        self.recv("bob", "you were removed by alice")
        self.recv("carol", "alice removed bob")
        self.qpq("alice", "send", "friends", "Just us two now, carol.")
        self.recv("carol", "alice: Just us two now, carol.")
        out = self.qpq("bob", "recv", "--wait", "2")
        if "Just us two" in out:
            self.failures.append("bob read a message sent after his removal")
        self.qpq("bob", "send", "friends", "hello?", expect="no longer a member", fail=True)
        self.qpq("carol", "group", "members", "friends", expect="alice")

        self.step("the stored history, and what a mistake looks like")
        self.qpq("carol", "history", "friends", expect="Just us two now")
        self.qpq("alice", "group", "invite", "friends", "mallory", expect="no user", fail=True)

    def through_a_daemon(self) -> None:
        self.step("carol keeps a daemon running: her commands are now calls to it")
        self.qpq("carol", "daemon", expect="qpq daemon started")
        self.daemons.append("carol")
        self.qpq("carol", "daemon", "status", expect="connected to")
        self.qpq("alice", "send", "friends", "Carol, still there?")
        self.recv("carol", "alice: Carol, still there?")
        self.qpq("carol", "send", "--verbose", "friends", "Yes, through my daemon.", expect="sent")
        self.recv("alice", "carol: Yes, through my daemon.")

    def stop_daemons(self) -> None:
        """Stop the daemons started (before the server, and after a failed step too)."""
        if self.daemons:
            self.step("the daemons stop")
        for who in self.daemons:
            self.qpq(who, "daemon", "stop", expect="stopped the qpq daemon")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="qpq-demo-") as tmp:
        demo = Demo(Path(tmp))
        try:
            demo.start_server()
            demo.story()
        finally:
            demo.stop_daemons()
            demo.stop_server()
    if demo.failures:
        print("\nDEMO FAILED:")
        for failure in demo.failures:
            print(f"  - {failure}")
        return 1
    print("\nDEMO OK: every step produced the expected result.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
