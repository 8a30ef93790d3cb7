"""``qpq daemon``: one long-running client per profile, serving JSON-RPC on its socket.

The daemon holds the profile's :class:`~qpq_client.Client` open and, while
the server answers, its connection and subscription (``Client.follow``):
each entry that arrives is sent to the connections that subscribed, or
kept for the next ``receive`` when none did. The server is asked whether
it is there every ``probe_interval`` seconds, because a server that
vanished (``kill -9``, its host gone) is otherwise noticed only at the
QUIC idle timeout. After any loss the daemon connects again with
exponential backoff and jitter; connecting finishes the outbox and
following catches up with what the server queued meanwhile, so nothing
acknowledged is lost, and an entry is handed out once: the store marks
it shown as it is taken (docs/daemon.md).

While the server cannot be reached the profile stays open: ``send`` goes
directly to the members who can be reached (direct delivery on) and
keeps the rest in the outbox, answering with the library's note that it
waits there; it is published in order once the server answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qpq_client import Client, ProfileBusyError, TrustNotConfiguredError, UnauthenticatedError
from qpq_client._client import WAITS_IN_OUTBOX
from qpq_client._profile_lock import ProfileLock
from qpq_client.cli._daemon_socket import RpcPeer, RpcSocket
from qpq_client.cli._errors import message_for
from qpq_client.cli._local import Connect
from qpq_client.cli._methods import METHODS, InvalidParamsError, Params
from qpq_client.cli._render import entry_json, sent_entry_json
from qpq_client.cli._rpc import (
    DAEMON_LOCK,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    NOT_CONNECTED,
    QPQ_ERROR,
    RpcError,
)
from qpq_proto import QpqError
from qpq_proto.errors import ServiceError

__all__ = ["Backoff", "Daemon", "DaemonSettings", "run_daemon"]

_log = logging.getLogger("qpq_client.daemon")

#: Entries kept for ``receive`` while nobody subscribed; past it the oldest
#: are left to ``history`` (and a count of them is reported).
HELD_ENTRIES = 10_000
#: A connection that lasted this long resets the backoff.
_STABLE_SECONDS = 10.0
#: Notification method for each kind of history entry.
_NOTIFICATION = {"text": "message", "event": "event", "request": "request"}


@dataclass(frozen=True)
class DaemonSettings:
    """How the daemon runs.

    Attributes:
        probe_interval: seconds between checks that the server answers.
        first_backoff: the first wait before connecting again, in seconds;
            it doubles after each failure, up to ``max_backoff``, and each
            wait is drawn between half of it and all of it (jitter: many
            clients cut off together do not come back together).
    """

    probe_interval: float = 5.0
    first_backoff: float = 0.5
    max_backoff: float = 30.0

    @property
    def probe_timeout(self) -> float:
        return max(3.0, 2 * self.probe_interval)


class Backoff:
    """Exponential backoff with jitter, reset on success."""

    def __init__(self, first: float, cap: float, draw: Callable[[], float] = random.random) -> None:
        self._first = first
        self._cap = cap
        self._draw = draw
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._first * 2.0**self._failures)
        self._failures = min(self._failures + 1, 32)
        return ceiling * (0.5 + 0.5 * self._draw())


class _Held:
    """Entries the daemon took while nobody subscribed, for the next ``receive``."""

    def __init__(self) -> None:
        self._entries: collections.deque[dict[str, Any]] = collections.deque()
        self.overflowed = 0
        self._arrived = asyncio.Event()

    def add(self, entry: dict[str, Any]) -> None:
        if len(self._entries) >= HELD_ENTRIES:
            self._entries.popleft()
            self.overflowed += 1
        self._entries.append(entry)
        self._arrived.set()

    async def take(self, wait: float) -> list[dict[str, Any]]:
        if not self._entries and wait > 0:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
        return self.take_now()

    def take_now(self) -> list[dict[str, Any]]:
        taken = list(self._entries)
        self._entries.clear()
        if self.overflowed:
            _log.warning("%d entries were held past the limit; see qpq history", self.overflowed)
            self.overflowed = 0
        return taken


class Daemon:
    """One profile's running client and its socket."""

    def __init__(self, client: Client, connect: Connect, settings: DaemonSettings) -> None:
        self._client = client
        self._connect = connect
        self._settings = settings
        self._socket = RpcSocket(client.home, self._call)
        self._held = _Held()
        self._stopping = asyncio.Event()
        self._connected = False
        #: Working without the server: a send goes direct or waits in the outbox.
        self._offline = False
        self._since = time.time()
        self._reconnects = 0
        self._last_error: str | None = None
        self._key_changes: dict[str, str] = {}
        self._backoff = Backoff(settings.first_backoff, settings.max_backoff)

    async def run(self, ready: Callable[[], None]) -> None:
        """Serve until stopped (SIGTERM, SIGINT, or the ``stop`` method)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        await self._socket.start()
        self._key_changes = self._changed_keys()
        _log.info("listening on %s (pid %d)", self._client.home / "daemon.sock", os.getpid())
        ready()
        supervisor = asyncio.ensure_future(self._supervise())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((supervisor, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (supervisor, stopping):
                task.cancel()
            await asyncio.gather(supervisor, stopping, return_exceptions=True)
            await self._socket.close()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            _log.info("stopped")
        failure = None if supervisor.cancelled() else supervisor.exception()
        if failure is not None:
            raise failure  # a setting to fix (no trust, no token): the one error line

    # ---- the connection ----------------------------------------------------

    async def _supervise(self) -> None:
        first = True
        while True:
            if not self._client.connected:
                try:
                    # offline_ok: with the server away the profile still opens
                    # (its p2p listener too): sends go direct or wait in the outbox.
                    await self._connect.connect(self._client, offline_ok=True)
                except (TrustNotConfiguredError, UnauthenticatedError) as error:
                    if first:
                        raise  # a setting to fix, not a loss to wait out
                    self._lost(error, "could not connect")
                except Exception as error:  # noqa: BLE001 - whatever it was, try again later
                    self._lost(error, "could not connect")
            if self._client.connected:
                if self._client.online or await self._serve_offline():
                    await self._serve_connected(first)
                    first = False
                    continue  # lost: the next round works without the server, or connects
                await self._client.disconnect()
            first = False
            delay = self._backoff.next_delay()
            _log.info("connecting again in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _serve_connected(self, first: bool) -> None:
        self._connected = True
        self._last_error = None
        if not first:
            self._reconnects += 1
        _log.warning(
            "%s to %s; the outbox is flushed, the subscription resumes",
            "connected" if first else "reconnected",
            self._client.server,
        )
        self._notify_all("connection", {"connected": True})
        started = time.monotonic()
        follow = asyncio.ensure_future(self._follow())
        probe = asyncio.ensure_future(self._probe())
        try:
            done, _ = await asyncio.wait((follow, probe), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                self._lost(error or ConnectionError("the subscription ended"), "lost the server")
        finally:
            for task in (follow, probe):
                task.cancel()
            await asyncio.gather(follow, probe, return_exceptions=True)
            self._connected = False
            if self._client.peers_on:
                # The p2p listener stays where members know it: only the
                # server connection goes, and is made again later.
                await self._client.drop_server()
            else:
                await self._client.disconnect()
            self._notify_all("connection", {"connected": False, "reason": self._last_error})
        if time.monotonic() - started > _STABLE_SECONDS:
            self._backoff.reset()  # it held: the next loss starts from the first wait

    async def _serve_offline(self) -> bool:
        """Work without the server until it answers (True), or until the
        client cannot go on this way (False: connect again from scratch).

        Sends go directly to the members who can be reached (p2p on) and
        wait in the outbox for the rest; what members send directly is
        handed out as it arrives.
        """
        self._offline = True
        _log.warning(
            "the server cannot be reached; sends wait in the outbox%s",
            " (members are reached directly where they can be)" if self._client.peers_on else "",
        )
        follow = asyncio.ensure_future(self._follow())
        try:
            while True:
                delay = self._backoff.next_delay()
                _log.info("connecting again in %.1f s", delay)
                await asyncio.sleep(delay)
                try:
                    await self._client.reach_server()
                except (TrustNotConfiguredError, UnauthenticatedError) as error:
                    self._lost(error, "could not connect")
                    return False
                except Exception as error:  # noqa: BLE001 - whatever it was, try again later
                    self._lost(error, "could not connect")
                else:
                    return True
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
            self._offline = False

    def _lost(self, error: BaseException, what: str) -> None:
        self._last_error = message_for(error)
        _log.warning("%s: %s", what, self._last_error)

    async def _follow(self) -> None:
        async for entry in self._client.follow():
            self._deliver(entry_json(entry))
            self._check_keys()

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self._settings.probe_interval)
            await self._client.probe(self._settings.probe_timeout)

    # ---- what arrives --------------------------------------------------------

    def _deliver(self, entry: dict[str, Any]) -> None:
        subscribers = self._socket.subscribers()
        if not subscribers:
            self._held.add(entry)
            return
        for peer in subscribers:
            peer.notify(_NOTIFICATION.get(entry["kind"], "event"), entry)

    def _notify_all(self, method: str, params: dict[str, Any]) -> None:
        for peer in self._socket.subscribers():
            peer.notify(method, params)

    def _changed_keys(self) -> dict[str, str]:
        return {
            c.username: c.new_key.hex()
            for c in self._client.contacts()
            if c.key_changed and c.new_key is not None
        }

    def _check_keys(self) -> None:
        """Tell subscribers about each contact whose key the server changed since we looked."""
        changed = self._changed_keys()
        for username, new_key in changed.items():
            if self._key_changes.get(username) != new_key:
                contact = self._client.contact(username)
                self._notify_all(
                    "keyChanged",
                    {
                        "username": username,
                        "identity_key": contact.identity_key.hex(),
                        "new_key": new_key,
                    },
                )
        self._key_changes = changed

    # ---- calls -----------------------------------------------------------------

    async def _call(self, peer: RpcPeer, method: str, raw: object) -> Any:
        """One call, its failure as the JSON-RPC error the CLI prints from."""
        try:
            return await self._dispatch(peer, method, Params(raw))
        except InvalidParamsError as error:
            raise RpcError(INVALID_PARAMS, str(error)) from None
        except RpcError:
            raise
        except (QpqError, OSError) as error:
            data: dict[str, Any] = {"type": type(error).__name__}
            if isinstance(error, ServiceError):
                data["code"] = error.code.name
                if error.field:
                    data["field"] = error.field
            raise RpcError(QPQ_ERROR, message_for(error), data) from None
        except Exception as error:  # noqa: BLE001 - the boundary: one coded answer, logged
            _log.exception("method %s failed", method)
            raise RpcError(INTERNAL_ERROR, message_for(error)) from None

    async def _dispatch(self, peer: RpcPeer, method: str, params: Params) -> Any:
        if method == "subscribe":
            # What was held comes with the answer, in the same step that
            # subscribes: nothing falls between the two.
            held = self._held.take_now()
            peer.subscribed = True
            return {"subscribed": True, "connected": self._connected, "entries": held}
        if method == "unsubscribe":
            peer.subscribed = False
            return {"subscribed": False}
        if method == "receive":
            return await self._held.take(min(params.number("wait"), 3600.0))
        if method == "status":
            return self._status()
        if method == "stop":
            _log.info("stopping, as connection %s asked", peer.name)
            self._stopping.set()
            return {"stopping": True}
        chosen = METHODS.get(method)
        if chosen is None:
            raise RpcError(METHOD_NOT_FOUND, f"no method {method!r}")
        if chosen.online and not self._connected and not (method == "send" and self._offline):
            why = f" ({self._last_error})" if self._last_error else ""
            raise RpcError(
                NOT_CONNECTED,
                f"the daemon is not connected to the server right now{why};"
                " it keeps trying (qpq daemon status)",
            )
        try:
            result = await chosen.run(self._client, params)
        except QpqError as error:
            if method == "send" and WAITS_IN_OUTBOX in getattr(error, "__notes__", ()):
                # Kept in the outbox, and in our history: shown as sent.
                group = params.text("group")
                self._notify_all(
                    "message", sent_entry_json(self._client.username, group, params.text("text"))
                )
            raise
        finally:
            self._check_keys()
        if method == "send":
            # Our own text is in history as shown already, so the follow loop
            # never hands it over: subscribers (`recv --follow`, `qpq chat`)
            # are told here. It is not held for `receive`, which lists what
            # others sent.
            own = sent_entry_json(self._client.username, result["group"], params.text("text"))
            self._notify_all("message", own)
        return result

    def _status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "home": str(self._client.home),
            "username": self._client.username,
            "server": self._client.server,
            "connected": self._connected,
            "offline_sends": self._offline,
            "last_error": self._last_error,
            "reconnects": self._reconnects,
            "running_since": int(self._since),
            "connections": len(self._socket.peers),
            "subscribers": len(self._socket.subscribers()),
        }


async def run_daemon(
    home: Path,
    passphrase: str,
    connect: Connect,
    settings: DaemonSettings,
    ready: Callable[[], None],
) -> None:
    """Open the profile, take its daemon lock, serve until stopped.

    Raises:
        ProfileBusyError: another daemon runs for this profile.
        NotInitializedError, WrongPassphraseError: the profile cannot be opened.
    """
    client = Client.open(home, passphrase)
    lock = ProfileLock(home, DAEMON_LOCK)
    try:
        if not lock.try_acquire():
            raise ProfileBusyError(f"a qpq daemon already runs for {home} (qpq daemon status)")
        await Daemon(client, connect, settings).run(ready)
    finally:
        await client.close()
        lock.release()
