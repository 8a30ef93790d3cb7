"""A `qpq daemon --foreground` subprocess for tests, and a JSON-RPC subscriber beside it.

Waiting is on events (a log line, a notification), each with a deadline:
no sleeps.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from conftest import User, qpq_command

from qpq_client.cli._rpc import DaemonLink, open_link

#: Checks that the server answers every half second: a killed server is
#: noticed within a few seconds, not at the QUIC idle timeout.
PROBE_INTERVAL = "0.5"


class RunningDaemon:
    """A `qpq daemon --foreground` of one user; its log is read as it is written."""

    def __init__(self, user: User, *extra: str) -> None:
        self.user = user
        self.process = subprocess.Popen(
            [*qpq_command(), "daemon", "--foreground", "--probe-interval", PROBE_INTERVAL, *extra],
            env=user.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        stream = self.process.stderr
        if stream is None:
            return
        for line in stream:
            with self._changed:
                self.log.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.log.append("<exited>")
            self._changed.notify_all()

    def wait_for_log(self, text: str, *, after: int = 0, timeout: float = 60.0) -> int:
        """Wait until a log line (from index ``after``) contains ``text``; its index."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(after, len(self.log)):
                    if text in self.log[index]:
                        return index
                    if self.log[index] == "<exited>":
                        raise AssertionError(f"the daemon exited: {self.log}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"the daemon never logged {text!r}: {self.log}")
                self._changed.wait(remaining)

    def wait_connected(self, *, after: int = 0) -> int:
        return self.wait_for_log("connected to", after=after)

    def link(self) -> DaemonLink:
        link = open_link(self.user.home)
        if link is None:
            raise AssertionError("the daemon does not listen")
        return link

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


class Subscriber:
    """A connection subscribed to the daemon; notifications are read in a thread."""

    def __init__(self, daemon: RunningDaemon) -> None:
        self.link = daemon.link()
        answer = self.link.call("subscribe")
        self.notifications: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        for entry in answer["entries"]:
            self.notifications.put(("held", entry))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for notification in self.link.notifications():
            self.notifications.put(notification)
        self.notifications.put(("<closed>", {}))

    def next(self, method: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """The next notification of ``method`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {method} notification in {timeout} s")
            got, params = self.notifications.get(timeout=remaining)
            if got == method:
                return params
            if got == "<closed>":
                raise AssertionError(f"the daemon closed the subscription before a {method}")

    def texts_until(self, last: str, *, timeout: float = 90.0) -> list[str]:
        """The bodies of message notifications, up to and including ``last``."""
        texts: list[str] = []
        while not texts or texts[-1] != last:
            texts.append(self.next("message", timeout=timeout)["body"])
        return texts

    def close(self) -> None:
        # Shut down first: the reader thread then sees the end, not a closed descriptor.
        self.link.sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(10)
        self.link.close()


def socket_mode(home: Path) -> int:
    return (home / "daemon.sock").stat().st_mode & 0o777
