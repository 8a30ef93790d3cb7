"""The public face of the library: :class:`Client`, one open profile.

::

    client = Client.open(home, passphrase)
    async with client:                       # connects with the stored settings
        await client.send("friends", "hi")
        for entry in await client.receive(wait=5):
            print(entry.group, entry.sender, entry.body)

Every operation holds the profile lock only while it changes state, and
reloads the MLS state first if another process (say, a ``qpq recv --follow``
in another terminal) changed the profile meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from qpq_client import (
    _commits,
    _devices,
    _outbox,
    _receive,
    _request_bounds,
    _requests,
    _sending,
    _trust,
)
from qpq_client._config import DirectDelivery, ServerAddress, Trust
from qpq_client._connection import Connection
from qpq_client._device_keys import account_in_trees, current_devices
from qpq_client._devices import DeviceInfo, LinkRequestInfo
from qpq_client._direct import attach_server, remember_peers, start_peers, stop_peers
from qpq_client._errors import (
    GroupExistsError,
    NotConnectedError,
    StateError,
    UnknownGroupError,
    UnknownOutboxEntryError,
)
from qpq_client._follow import Follower
from qpq_client._keys import KeyStatus, ensure_key_packages, refill_if_due
from qpq_client._linking import LINK_POLL_SECONDS, PendingLink, request_link
from qpq_client._profile import (
    P2P_SETTING,
    SERVER_SETTING,
    SUITE_SETTING,
    connection_settings,
    create_profile,
    open_profile,
    peer_config,
    stored_direct_delivery,
)
from qpq_client._profile_lock import ProfileLock
from qpq_client._rows import GroupRow, GroupStatus, HistoryRow, OutboxKind
from qpq_client._session import Session
from qpq_client._state import StateStore, Transaction
from qpq_client._trust import Contact, InvitePolicy
from qpq_client._views import GroupSummary, HistoryEntry, OutboxEntry
from qpq_core import Identity, MlsClient, NotAMemberError, Suite
from qpq_p2p import DirectMessage, PeerConfig, PeerInfo
from qpq_proto import AccountStatus, check_username
from qpq_proto.errors import (
    ConnectionFailedError,
    EpochConflictError,
    ForbiddenError,
    UnavailableError,
)

__all__ = ["Client"]

_log = logging.getLogger("qpq_client")
LOCK_WAIT_SECONDS = 60.0
#: What a send meets that leaves its message in the outbox for later.
_KEPT_FOR_LATER: tuple[type[Exception], ...] = (*_outbox.TRY_LATER, ConnectionFailedError)
#: The note a send's error carries when the message was kept to be sent later.
WAITS_IN_OUTBOX = (
    "the message waits in the outbox and goes out with the next command that reaches"
    " the server (qpq outbox); do not send it again"
)
_LOCK_POLL_SECONDS = 0.05


class Client:
    """An open qpq profile: identity, state and (once connected) the server.

    Build with :meth:`open` or :meth:`create`; connect with :meth:`connect`
    (or ``async with``); release with :meth:`close`.
    """

    def __init__(self, store: StateStore, identity: Identity, username: str) -> None:
        self._store = store
        self._identity = identity
        self._username = username
        self._lock = ProfileLock(store.home)
        # The file lock keeps other processes out; this one orders this
        # process's own operations (a direct message arriving while we send).
        self._mutex = asyncio.Lock()
        self._mls = MlsClient(identity, store.mls_rows())
        self._session: Session | None = None
        #: Where connect() reached the server (reach_server() uses it again).
        self._server_settings: tuple[ServerAddress, Trust, str, float] | None = None
        #: Set when a direct message was stored: wakes follow() and receive().
        self._direct_news = asyncio.Event()
        self._follower = Follower(
            store, self._connected, self._operation, self._take_unshown, self._direct_news
        )

    # ---- lifecycle -----------------------------------------------------

    @classmethod
    def open(cls, home: Path, passphrase: str) -> Client:
        """Open an initialized profile.

        Raises:
            NotInitializedError: ``home`` holds no profile.
            WrongPassphraseError: the passphrase does not open it.
        """
        return cls(*open_profile(home, passphrase))

    @classmethod
    async def create(
        cls,
        home: Path,
        passphrase: str,
        username: str,
        *,
        server: ServerAddress,
        trust: Trust,
        token: str = "",
        connect_timeout: float = 5.0,
        invite: str = "",
    ) -> Client:
        """Create a profile: a new identity, registered as ``username``, with KeyPackages.

        The server, trust and token (empty: the server has none) are stored
        (encrypted) for later runs. ``invite`` is the invite code of a server
        that registers people by invitation (its operator's; used once, not
        stored). The profile is written only after the server accepted the
        username.

        Raises:
            AlreadyInitializedError: ``home`` already holds a profile.
            UnauthenticatedError: the server wants another access token.
            ForbiddenError: the server needs an invite code, or refused this
                one (not valid, revoked, expired or used up).
            AlreadyExistsError: the username is taken.
        """
        store, identity, connection = await create_profile(
            home,
            passphrase,
            username,
            server=server,
            trust=trust,
            token=token,
            connect_timeout=connect_timeout,
            invite=invite,
        )
        client = cls(store, identity, username)
        client._session = Session(store, client._mls, identity, username, connection)
        try:
            async with client._operation():
                await ensure_key_packages(client._session)
        except BaseException:
            await client.close()
            raise
        return client

    async def connect(
        self,
        *,
        server: ServerAddress | None = None,
        trust: Trust | None = None,
        token: str | None = None,
        connect_timeout: float = 5.0,
        p2p: PeerConfig | bool | None = None,
        offline_ok: bool = False,
    ) -> None:
        """Connect and prove our identity; arguments override the stored settings.

        Then finish what a previous run left in the outbox and top up
        KeyPackages. Each later operation catches up with the server
        (processes what is queued for us) once, when it starts; a send
        skips that while we are known to be current (see :meth:`send`). With direct
        delivery (``p2p``: a PeerConfig, True for the stored settings, or None
        to follow the stored setting), also listen for direct connections from
        members, publish where we listen, and send application messages
        directly where members can be reached (:mod:`qpq_p2p`; everything else
        still goes through the server).

        With direct delivery on, or ``offline_ok``, a server that cannot be
        reached does not fail the connect: the client works on without it
        (:attr:`online` is False). Members are reached directly, at the
        addresses the profile remembers; a send keeps what must go through
        the server in the outbox (its error says so); :meth:`reach_server`
        connects once the server answers and publishes it, in order.

        Raises:
            TrustNotConfiguredError: no trust given and none stored.
            UnauthenticatedError: no token given and none stored, or the
                server refused the token.
            ConnectionFailedError: the server is unreachable (without direct
                delivery or ``offline_ok``) or not the right one.
        """
        if self._session is not None:
            return
        address, trust, token = connection_settings(
            self._store, server=server, trust=trust, token=token
        )
        config = peer_config(self._store, p2p)
        settings = self._server_settings = (address, trust, token, connect_timeout)
        try:
            connection = await self._open_server(settings)
        except ConnectionFailedError as unreachable:
            if config is None and not offline_ok:
                raise
            # Members still reach each other directly while the server is
            # away; what must go through it waits in the outbox (reach_server).
            _log.warning("the server is unreachable (%s); working without it", unreachable)
            connection = Connection.unreachable(str(unreachable))
        session = Session(self._store, self._mls, self._identity, self._username, connection)
        session.works_offline = offline_ok
        self._session = session
        try:
            if not connection.lost:
                try:
                    await self._server_reached(session)
                except ConnectionFailedError:
                    if config is None and not offline_ok:
                        raise
                    await self.drop_server()  # gone again at once: work without it
            if config is not None:
                await start_peers(session, self._receive_direct, config)
                async with self._locked():
                    remember_peers(session)
        except BaseException:
            self._session = None
            await stop_peers(session)
            await connection.close()
            raise

    async def _open_server(self, settings: tuple[ServerAddress, Trust, str, float]) -> Connection:
        """Connect to the server and prove our identity on the connection."""
        address, trust, token, connect_timeout = settings
        connection = await Connection.open(address, trust, token, connect_timeout=connect_timeout)
        try:
            await connection.authenticate(self._identity.public_key, self._identity.sign)
        except BaseException:
            await connection.close()
            raise
        return connection

    async def _server_reached(self, session: Session) -> None:
        async with self._operation(catch_up=False):
            # What a previous run persisted but could not hand over (a
            # commit interrupted around its publish, messages sent while
            # the server was away) is finished first, in order.
            await _commits.flush_outbox(session)
            await ensure_key_packages(session)
            # Contacts who renamed their account meanwhile keep their pin.
            await _trust.refresh_names(session)

    @property
    def connected(self) -> bool:
        """:meth:`connect` succeeded (with or without the server: see :attr:`online`)."""
        return self._session is not None

    async def drop_server(self) -> None:
        """Close the server connection (lost, say), keeping the profile connected
        without it: direct delivery goes on, sends keep the rest in the outbox,
        and :meth:`reach_server` connects again."""
        session = self._connected()
        if session.peers is not None:
            session.peers.detach_server()
        old = session.conn
        session.conn = Connection.unreachable(
            old.closed_reason or "the server connection was closed"
        )
        session.works_offline = True
        session.following = False
        await old.close()

    @property
    def peers_on(self) -> bool:
        """Connected with direct delivery (a p2p node listens for members)."""
        return self._session is not None and self._session.peers is not None

    @property
    def online(self) -> bool:
        """Connected, and the server answered when last asked (else, with direct
        delivery on, only members are reached: :meth:`reach_server`)."""
        return self._session is not None and not self._session.conn.lost

    async def reach_server(self) -> None:
        """Connect to the server again, keeping direct delivery running.

        For a client connected with direct delivery while the server could
        not be reached (or after its connection was lost): once the server
        answers, what waits in the outbox is published in order, and
        members are resolved through it again. Nothing to do when online.

        Raises:
            NotConnectedError: not connected.
            ConnectionFailedError: the server still cannot be reached.
        """
        session = self._connected()
        if not session.conn.lost or self._server_settings is None:
            return
        connection = await self._open_server(self._server_settings)
        old, session.conn = session.conn, connection
        await old.close()
        session.caught_up_at = None
        await self._server_reached(session)
        if session.peers is not None:
            await attach_server(session)
            async with self._locked():
                remember_peers(session)
        _log.info("the server answers again; the outbox was flushed")

    def direct_delivery(self) -> DirectDelivery:
        """The stored direct-delivery setting (no network)."""
        return stored_direct_delivery(self._store)

    async def set_direct_delivery(self, setting: DirectDelivery) -> None:
        """Store the direct-delivery setting; it applies from the next connect."""
        async with self._locked():
            with self._store.transaction() as tx:
                tx.set_setting(P2P_SETTING, setting.to_setting())

    async def _receive_direct(self, message: DirectMessage) -> None:
        """A member's direct message: processed and persisted before its sender hears back.

        Nothing orders it after the commits the server accepted, so we first
        process what the server holds for us; it is then taken only if it is
        current (see :func:`qpq_client._receive.receive_direct`), and shown
        as unconfirmed when the server cannot be reached.
        """
        async with self._operation(catch_up=False) as session:
            current = await self._caught_up_for_direct(session)
            if await _receive.receive_direct(session, message, current=current):
                self._direct_news.set()

    async def _caught_up_for_direct(self, session: Session) -> bool:
        """Process what the server holds for us; False when it cannot be reached."""
        if session.conn.lost:
            return False
        try:
            await _receive.sync(session)
        except ConnectionFailedError:
            return False
        session.caught_up()
        return True

    async def disconnect(self) -> None:
        """Drop the server connection (and direct delivery), keeping the profile
        open: :meth:`connect` again later (a long-running client after a loss)."""
        session, self._session = self._session, None
        if session is not None:
            await stop_peers(session)
            await session.conn.close()

    async def probe(self, within: float) -> None:
        """Check that the server still answers on this connection.

        A server that vanished (killed, its host gone) is otherwise noticed
        only at the QUIC idle timeout.

        Raises:
            NotConnectedError: not connected.
            ConnectionFailedError: no answer within ``within`` seconds.
        """
        await self._connected().conn.health(within=within)

    async def close(self) -> None:
        """Disconnect and close the store."""
        await self.disconnect()
        self._lock.release()
        self._store.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _connected(self) -> Session:
        if self._session is None:
            raise NotConnectedError("not connected: call connect() first")
        return self._session

    @contextlib.asynccontextmanager
    async def _operation(self, *, catch_up: bool = True) -> AsyncIterator[Session]:
        """Hold the profile lock for one operation; with ``catch_up``, first
        finish the outbox and process what the server queued for us."""
        session = self._connected()
        async with self._mutex, self._profile_lock():
            if self._store.changed_elsewhere():
                self._mls.reload(self._store.mls_rows())
                session.caught_up_at = None  # another process may have taken our queue
            if catch_up:
                await self._catch_up(session)
            yield session
            async with self._server_optional(session):
                await _commits.settle(session)
            if not session.conn.lost:
                await refill_if_due(session)
            if session.peers is not None:
                # A commit may have changed who we share groups with.
                await session.peers.refresh_discovery()

    async def _catch_up(self, session: Session, *, outbox: bool = True) -> None:
        """Finish the outbox (with ``outbox``), process what the server queued
        for us, then what that leaves to do."""
        async with self._server_optional(session):
            if outbox:
                await _commits.flush_outbox(session)
            await _receive.sync(session)
            session.caught_up()
            await _commits.settle(session, caught_up=True)

    @contextlib.asynccontextmanager
    async def _server_optional(self, session: Session) -> AsyncIterator[None]:
        """With direct delivery on (or a client that works offline), members
        still reach each other while the server is away, and sends wait in
        the outbox: catching up with it is then skipped, not fatal."""
        try:
            yield
        except ConnectionFailedError:
            if session.peers is None and not session.works_offline:
                raise
            _log.warning("the server is unreachable; what needs it waits in the outbox")

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """Hold the profile for a write that needs no server: each operation
        is its own transaction, never part of another's open batch."""
        async with self._mutex, self._profile_lock():
            if self._store.changed_elsewhere():
                self._mls.reload(self._store.mls_rows())
            yield

    @contextlib.asynccontextmanager
    async def _profile_lock(self) -> AsyncIterator[None]:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while not self._lock.try_acquire():
            if time.monotonic() > deadline:
                raise self._lock.busy_error()
            await asyncio.sleep(_LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            self._lock.release()

    # ---- our account ---------------------------------------------------

    async def rename(self, username: str) -> None:
        """Rename our account on the server (the same checks as a new name).

        Our identity key stays: contacts who pinned the old name see the
        new one with the same key (:func:`qpq_client._trust.refresh_names`),
        not a new contact. The old name stays reserved for us for the
        server's cooldown.

        Raises:
            AlreadyExistsError: the name is taken, or looks like one that is.
            InvalidArgumentError: the name is not allowed.
        """
        check_username(username)
        async with self._operation(catch_up=False) as session:
            await session.conn.register_user(username)
            session.persist(lambda tx: tx.set_username(username))
            self._username = username
            session.username = username

    async def delete_account(self) -> None:
        """Delete our account on the server, for good.

        The server removes our queue, KeyPackages, endpoints and username
        (which stays reserved for its cooldown), tells each group we are in,
        and members remove us with their next change. The identity can never
        be used on that server again; the local profile keeps its history.
        """
        session = self._connected()
        # Not an _operation: nothing is settled or refilled after it, every
        # call of this identity is refused from now on.
        async with self._mutex, self._profile_lock():
            await session.conn.delete_account()

    # ---- who we are ----------------------------------------------------

    @property
    def username(self) -> str:
        """Our registered username."""
        return self._username

    @property
    def identity_key(self) -> bytes:
        """This device's Ed25519 identity key (32 bytes)."""
        return self._identity.public_key

    @property
    def account_key(self) -> bytes:
        """Our account key: this device's key, or the one its certificate names."""
        return self._identity.account_key

    # ---- devices ---------------------------------------------------------

    @classmethod
    async def request_link(
        cls,
        home: Path,
        passphrase: str,
        username: str,
        device_name: str,
        *,
        server: ServerAddress,
        trust: Trust,
        token: str = "",
        connect_timeout: float = 5.0,
    ) -> PendingLink:
        """Ask to link this (new) device to ``username``'s account: the pending
        request's code is what its owner approves on a device of the account
        (:meth:`approve_link`); then :meth:`finish_link`.

        Raises:
            AlreadyInitializedError: ``home`` already holds a profile.
            LinkError: the device name is not valid.
            NotFoundError: the server knows no such user.
        """
        return await request_link(
            home,
            passphrase,
            username,
            device_name,
            server=server,
            trust=trust,
            token=token,
            connect_timeout=connect_timeout,
        )

    @classmethod
    async def finish_link(
        cls, pending: PendingLink, *, poll_seconds: float = LINK_POLL_SECONDS
    ) -> Client:
        """Wait for the approval of ``pending``, then write the profile and
        return it connected, with KeyPackages published (the approving device
        adds this one to the account's groups).

        Raises:
            LinkError: the code expired, or the answer does not check out;
                no profile is written.
        """
        try:
            answer = await pending.wait_for_answer(poll_seconds=poll_seconds)
            store = await pending.complete(answer)
        except BaseException:
            await pending.close()
            raise
        identity = pending.identity.with_certificate(answer.certificate)
        client = cls(store, identity, answer.username)
        client._session = Session(store, client._mls, identity, answer.username, pending.connection)
        try:
            async with client._operation():
                await ensure_key_packages(client._session)
        except BaseException:
            await client.close()
            raise
        return client

    async def devices(self) -> list[DeviceInfo]:
        """Our account's current devices (each proven by its certificate)."""
        async with self._operation(catch_up=False) as session:
            return await _devices.list_devices(session)

    async def link_request(self, code: str) -> LinkRequestInfo:
        """What a link code asks (the device's name and fingerprint), to confirm.

        Raises:
            LinkError: not a code, or a request that does not match it.
            NotFoundError: no such request (expired or used).
            ForbiddenError: the code is for another account.
        """
        async with self._operation(catch_up=False) as session:
            info, _body = await _devices.read_link(session, code)
        return info

    async def approve_link(self, code: str, *, with_history: bool = False) -> list[str]:
        """Approve a link code: certify the new device, hand it our account
        (key, contacts, group names; with ``with_history``, the groups' most
        recent lines too) sealed to it, and add it to our groups once it
        registered. Returns the names of the groups it was added to.
        """
        async with self._operation() as session:
            return await _devices.approve_link(session, code, with_history=with_history)

    async def remove_device(self, name: str) -> DeviceInfo:
        """Revoke one of our other devices (by name) and remove it from every group.

        Raises:
            UnknownDeviceError: no such device of ours, or it is this one.
        """
        async with self._operation() as session:
            return await _devices.remove_device(session, name)

    @property
    def home(self) -> Path:
        """The profile directory."""
        return self._store.home

    @property
    def server(self) -> str | None:
        """The stored server address."""
        return self._store.setting(SERVER_SETTING)

    # ---- groups --------------------------------------------------------

    def groups(self) -> list[GroupSummary]:
        """Every group this profile knows, active or not, invitations included (no network).

        Declined invitations are not listed (we are on our way out of them).
        """
        return [
            self._info(row)
            for row in self._store.groups()
            if row.status is not GroupStatus.DECLINED
        ]

    def _info(self, row: GroupRow) -> GroupSummary:
        if row.status is GroupStatus.REQUESTED:
            request = self._store.request(row.group_id)
            if request is None:  # pragma: no cover - a requested group has its request
                return GroupSummary(row.name, row.mls_group_id, row.status, ())
            return GroupSummary(
                row.name,
                row.mls_group_id,
                row.status,
                (),
                dropped=request.dropped,
                inviter=self._display(request.inviter),
            )
        if row.archived_from is not None or row.status not in (
            GroupStatus.ACTIVE,
            GroupStatus.LEAVING,
        ):
            return GroupSummary(row.name, row.mls_group_id, row.status, ())
        # One name per account, however many of its devices are in the group.
        members = tuple(dict.fromkeys(self._display(k) for k in self._mls.members(row.group_id)))
        epoch = self._mls.epoch(row.group_id)
        suite = self._mls.group_suite(row.group_id)
        return GroupSummary(row.name, row.group_id, row.status, members, epoch, suite=suite)

    @property
    def requests_dropped(self) -> int:
        """Invitations from strangers that were not kept, because as many as a
        profile holds were waiting already (no network; see
        :mod:`qpq_client._request_bounds`)."""
        return _request_bounds.dropped_requests(self._store)

    def display_name(self, identity_key: bytes) -> str:
        """The name we know for an identity key (no network): a username, or a key prefix."""
        return self._display(identity_key)

    def _display(self, key: bytes | None) -> str:
        # A device is shown by its account's name (docs/protocol.md, "Devices").
        if key is not None and self._session is not None:
            key = self._session.account_of(key)
        elif key is not None:
            key = account_in_trees(self._mls, key, self._identity)
        return _trust.display_name(self._store, self.account_key, self._username, key)

    async def members(self, group: str, *, devices: bool = False) -> list[str]:
        """Usernames of the group's members (catching up with the server first).

        Groups are made of accounts: each person is listed once, however many
        devices they have in it; with ``devices``, each leaf is listed as
        ``bob (laptop-2)`` (``bob`` alone for an account's own key). A member
        whose account the operator suspended is shown as ``bob (suspended)``,
        one whose account was deleted (its leaves not removed yet) as
        ``bob (deleted)``.
        """
        async with self._operation() as session:
            row = _commits.group_named(session, group, active=False)
            keys = (
                self._mls.members(row.group_id)
                if row.status in (GroupStatus.ACTIVE, GroupStatus.LEAVING)
                else ()
            )
            session.learn_devices((row.group_id,) if keys else ())
            names = await session.names_of(keys)
            accounts = tuple(dict.fromkeys(session.account_of(k) for k in keys))
            statuses = await session.conn.account_names(accounts) if accounts else {}
            deleted = self._store.deleted_people()
            shown = []
            for key in keys if devices else accounts:
                account = session.account_of(key)
                name = names.get(key) or session.display_name(key)
                if devices and account != key:
                    name = f"{name} ({session.device_name(key) or key.hex()[:12]})"
                status = statuses.get(account, ("", AccountStatus.UNKNOWN))[1]
                if status is AccountStatus.SUSPENDED:
                    shown.append(f"{name} (suspended)")
                elif status is AccountStatus.DELETED or account in deleted:
                    shown.append(f"{name} (deleted)")
                else:
                    shown.append(name)
            return shown

    async def rename_group(self, group: str, new_name: str) -> GroupSummary:
        """Call a group ``new_name`` on this profile (no network).

        Names are local: the members keep theirs, and a name a member sends
        later no longer replaces this one.

        Raises:
            UnknownGroupError: no group of that name.
            GroupExistsError: ``new_name`` is empty or another group's.
        """
        new_name = " ".join(new_name.split())
        async with self._mutex, self._profile_lock():
            row = self._store.group_by_name(group)
            if row is None:
                raise UnknownGroupError(f"no group named {group!r} (see `qpq group list`)")
            if not new_name:
                raise GroupExistsError("a group name must not be empty")
            if new_name != group and self._store.group_by_name(new_name) is not None:
                raise GroupExistsError(f"you already have a group named {new_name!r}")
            with self._store.transaction() as tx:
                tx.rename_group(row.group_id, new_name)
            renamed = self._store.group_by_key(row.group_id)
        if renamed is None:  # pragma: no cover - renamed under the profile lock just now
            raise UnknownGroupError(f"no group named {new_name!r} (see `qpq group list`)")
        return self._info(renamed)

    async def create_group(self, name: str, suite: Suite | None = None) -> GroupSummary:
        """Create a group with only us in it.

        Args:
            name: the local name.
            suite: its MLS ciphersuite, fixed for the group's life:
                ``Suite.XWING`` for post-quantum key agreement (members
                must have KeyPackages of it), ``Suite.DEFAULT``; unless
                given, :attr:`default_suite`.
        """
        chosen = self.default_suite if suite is None else Suite(suite)
        async with self._operation(catch_up=False) as session:
            row = await _commits.create_group(session, name, chosen)
            # Groups are made of accounts: our other devices are in it too
            # (those with KeyPackages of its suite; others join when invited).
            others = [
                d for d in await current_devices(session, session.account) if d != self.identity_key
            ]
            if others:
                packages = await _commits.claim_own_devices(session, row.group_id, others)
                if packages:
                    await _commits.add_devices(session, row.group_id, packages)
        return self._info(row)

    @property
    def default_suite(self) -> Suite:
        """The ciphersuite new groups get unless one is given (``Suite.DEFAULT`` unless set)."""
        stored = self._store.setting(SUITE_SETTING)
        return Suite.DEFAULT if stored is None else Suite.from_label(stored)

    async def set_default_suite(self, suite: Suite | str) -> None:
        """Set the ciphersuite new groups get: a ``Suite`` or its label (no network).

        Groups made before keep theirs: a group's suite never changes.

        Raises:
            ValueError: not one of the suites (``default``, ``pq``).
        """
        chosen = suite if isinstance(suite, Suite) else Suite.from_label(suite)
        async with self._locked():
            with self._store.transaction() as tx:
                tx.set_setting(SUITE_SETTING, chosen.label)

    def group_suite(self, group: str) -> Suite:
        """The ciphersuite of the group called ``group``, one we are in (no network).

        Raises:
            UnknownGroupError: no group of that name.
            NotAMemberError: we are not (or no longer) in it.
        """
        row = self._store.group_by_name(group)
        if row is None:
            raise UnknownGroupError(f"no group named {group!r} (see `qpq group list`)")
        if row.archived_from is not None or row.status not in (
            GroupStatus.ACTIVE,
            GroupStatus.LEAVING,
        ):
            raise NotAMemberError(f"you are not a member of {group!r} ({row.status.value})")
        return self._mls.group_suite(row.group_id)

    async def invite(self, group: str, usernames: Sequence[str]) -> list[str]:
        """Add users by username; returns those added (others were members already)."""
        async with self._operation() as session:
            return await _commits.invite(session, group, tuple(usernames))

    async def remove(self, group: str, usernames: Sequence[str]) -> None:
        """Remove users by username."""
        async with self._operation() as session:
            await _commits.remove(session, group, tuple(usernames))

    async def update(self, group: str) -> GroupSummary:
        """Replace our leaf key in the group (post-compromise security).

        A commit like any other: published, merged once the server accepted
        it, retried after a lost epoch race. Returns the group at its new epoch.
        """
        async with self._operation() as session:
            await _commits.update(session, group)
            return self._info(_commits.group_named(session, group))

    async def leave(self, group: str) -> None:
        """Leave the group (another member completes it)."""
        async with self._operation() as session:
            await _commits.leave(session, group)

    async def accept(self, group: str) -> GroupSummary:
        """Accept an invitation held as a request: join, then process what was held.

        The group may take the name its members use once their messages
        are processed; the result carries the name it has now.

        Raises:
            NoInvitationError: no invitation waits under that name.
        """
        async with self._operation() as session:
            return self._info(await _requests.accept(session, group))

    async def decline(self, group: str) -> None:
        """Decline an invitation held as a request: nothing of it is kept.

        The client joins only to leave the group's roster (the others see
        us leave); see :mod:`qpq_client._requests`.

        Raises:
            NoInvitationError: no invitation waits under that name.
        """
        async with self._operation() as session:
            await _requests.decline(session, group)

    async def send(self, group: str, text: str) -> None:
        """Send a text message to every other member of the group.

        Catches up with the server first unless we are current: following
        (:meth:`follow`), or caught up within ``CURRENT_SECONDS`` with no
        publish showing the group past our epoch, nothing of ours waiting in
        the outbox and no proposal waiting to be committed. A message the
        server refuses as too old an epoch is sent again after a catch-up.
        A message the server cannot take now (a limit, the server unavailable,
        the connection lost) stays in the outbox and goes out with the next
        operation that reaches the server; the error raised carries a note
        (``__notes__``) saying so. Sends may overlap.
        """
        async with self._operation(catch_up=False) as session:
            current = self._is_current(session, group)
            if not current:
                await self._catch_up(session)
            row = _commits.group_named(session, group)
            # Committed without waiting for the disk; synced before it leaves.
            staged = _sending.stage_text(session, row.group_id, text, durable=False)
            session.sending.add(staged.outbox_id)
        # Sent without holding the profile: a direct send waits for members'
        # acknowledgements, and a member may be sending to us meanwhile. The
        # outbox row keeps the message until it is handed over; until then
        # no other operation of ours publishes it.
        try:
            try:
                # The ratchet is on disk before anything leaves (a generation
                # sent again after a crash would reuse its key): one sync, off
                # the event loop, for every send staged meanwhile.
                await session.store.sync_to_disk()
                await _sending.deliver(
                    session, staged, before_server=lambda: self._older_first(staged)
                )
            except (EpochConflictError, ForbiddenError) as refused:
                if isinstance(refused, ForbiddenError) and not current:
                    raise
                # The group moved on further than the server takes messages for
                # (docs/protocol.md, 7.1), or, sent without catching up first,
                # without us: catch up, then encrypt again and resend, or fail
                # as a send after catching up would have.
                staged = await self._restage(staged)
                await _sending.deliver(
                    session, staged, before_server=lambda: self._older_first(staged)
                )
        except _outbox.REFUSED_FOR_GOOD as refused:
            # Sent again it would be refused again: never left in the outbox.
            await self._refused(staged, refused)
            raise
        except _KEPT_FOR_LATER as later:
            # Persisted and not handed over: it is not lost, and sending it
            # again by hand would deliver it twice. Said on the error itself.
            later.add_note(WAITS_IN_OUTBOX)
            raise
        else:
            async with self._operation(catch_up=False) as session:
                # Not waiting for the disk: an OS crash before the next sync
                # may send it again from the outbox, as a crash between the
                # answer and this delete always could.
                session.persist(lambda tx: tx.delete_outbox(staged.outbox_id), durable=False)
        finally:
            session.sending.discard(staged.outbox_id)

    async def _older_first(self, staged: _sending.Staged) -> None:
        """Publish what waits in the outbox from before ``staged``, so that it
        does not overtake it (messages sent while the server was away, say).

        Raises:
            UnavailableError: an older row still waits (the server cannot take
                it now): ``staged`` waits behind it.
        """
        session = self._connected()
        if not any(
            r.id < staged.outbox_id and r.id not in session.sending for r in self._store.outbox()
        ):
            return
        async with self._mutex, self._profile_lock():
            if self._store.changed_elsewhere():
                self._mls.reload(self._store.mls_rows())
            if not await _commits.flush_outbox(session, before=staged.outbox_id):
                raise UnavailableError(
                    "an earlier message waits in the outbox; this one waits behind it"
                )

    async def _refused(self, staged: _sending.Staged, refused: Exception) -> None:
        """A message the server refused for good: dropped from the outbox, never retried."""
        async with self._operation(catch_up=False) as session:
            _sending.drop_refused(
                session, staged.outbox_id, staged.group_id, f"the server said: {refused}"
            )

    def outbox(self) -> list[OutboxEntry]:
        """What waits to be handed to the server, oldest first (no network).

        It is sent by the next operation that reaches the server; what the
        server refuses for good is dropped and reported in the group's history.
        """
        return _outbox.entries(self._store)

    async def drop_outbox(self, entry_id: int) -> OutboxEntry:
        """Remove an outbox entry before it is sent (no network); returns what it was.

        A message is not sent, a group change not made, a new group that
        never reached the server forgotten; a leave cannot be taken back.

        Raises:
            UnknownOutboxEntryError: no such entry, one being sent right now,
                or a leave.
        """
        async with self._mutex, self._profile_lock():
            if self._store.changed_elsewhere():
                self._mls.reload(self._store.mls_rows())
            if self._session is not None and entry_id in self._session.sending:
                raise UnknownOutboxEntryError(f"{entry_id} is being sent right now")

            def persist(write: Callable[[Transaction], None]) -> None:
                try:
                    with self._store.transaction() as tx:
                        write(tx)
                except StateError:
                    self._mls.reload(self._store.mls_rows())
                    raise

            return _outbox.drop(self._store, self._mls, entry_id, persist)

    async def _restage(self, staged: _sending.Staged) -> _sending.Staged:
        """Catch up, then encrypt a refused message again at the group's epoch now."""
        async with self._operation(catch_up=False) as session:
            # Not the outbox first: it holds this message, which the server refuses.
            await self._catch_up(session, outbox=False)
            row = self._store.group_by_id(staged.group_id)
            if row is None or row.status is not GroupStatus.ACTIVE:
                session.persist(lambda tx: _sending.unstage(tx, staged))
                name, state = (
                    (row.name, row.status.value) if row else (staged.group_id.hex(), "gone")
                )
                raise NotAMemberError(f"you are no longer a member of {name!r} ({state})")
            session.sending.discard(staged.outbox_id)
            staged = _sending.restage(session, staged)
            session.sending.add(staged.outbox_id)
        return staged

    def _is_current(self, session: Session, group: str) -> bool:
        """Whether a send to ``group`` may skip catching up (:meth:`Session.is_current`).

        Never while a commit or proposal of ours waits in the outbox, the
        group waits for a rejoin, or proposals wait to be committed.
        """
        row = self._store.group_by_name(group)
        if row is None or row.status is not GroupStatus.ACTIVE or row.needs_rejoin:
            return False
        if any(r.kind is not OutboxKind.APPLICATION for r in self._store.outbox()):
            return False
        if self._mls.has_pending_proposals(row.group_id):
            return False
        return session.is_current(row.group_id)

    # ---- receiving -----------------------------------------------------

    async def receive(self, *, wait: float = 0.0) -> list[HistoryEntry]:
        """Process what the server holds for us and return what is new to show.

        With ``wait`` > 0, wait up to that many seconds for something to show.
        """
        deadline = time.monotonic() + wait
        async with self._operation():
            entries = self._take_unshown()
        while not entries:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._follower.wait_and_process(int(remaining * 1000))
            async with self._operation(catch_up=False):
                entries = self._take_unshown()
        return entries

    def follow(self) -> AsyncIterator[HistoryEntry]:
        """Yield each new history entry as it arrives, until cancelled.

        Catches up with the server (fetching what is queued), then takes
        each message as the server pushes it on a subscribe stream, a batch
        at a time: processed, persisted in one transaction, acknowledged in
        one call. A stream the server ends (it was replaced, or failed) is
        opened again after another catch-up (:mod:`qpq_client._follow`).
        """
        return self._follower.follow()

    def _take_unshown(self) -> list[HistoryEntry]:
        rows = self._store.history(unshown=True)
        if rows:
            # Not synced on its own: whether a line was shown is no message,
            # and waiting for the disk here would hold every receive. An
            # operating-system crash may show a line again; the next sync
            # (a follower's before each acknowledgement) covers it.
            with self._store.transaction(durable=False) as tx:
                tx.mark_shown(r.id for r in rows)
        return [self._entry(r) for r in rows]

    def history(self, group: str) -> list[HistoryEntry]:
        """The stored history of a group, oldest first (no network)."""
        row = self._store.group_by_name(group)
        if row is None:
            raise UnknownGroupError(f"no group named {group!r} (see `qpq group list`)")
        return [self._entry(r) for r in self._store.history(row.group_id)]

    def _entry(self, row: HistoryRow) -> HistoryEntry:
        group = self._store.group_by_key(row.group_id)
        return HistoryEntry(
            group=group.name if group else row.group_id.hex()[:8],
            kind=row.kind,
            sender=self._display(row.sender),
            body=row.body,
            sent_at_ms=row.sent_at,
            outgoing=row.sender == self._identity.public_key,
            unconfirmed=row.direct == "unconfirmed",
            withdrawn=row.direct == "withdrawn",
        )

    # ---- people --------------------------------------------------------

    @property
    def invite_policy(self) -> InvitePolicy:
        """Whose invitations are joined at once (``contacts`` unless set)."""
        return _trust.invite_policy(self._store)

    async def set_invite_policy(self, policy: InvitePolicy | str) -> None:
        """Join invitations from ``anyone``, or only from ``contacts`` (no network).

        Raises:
            ValueError: not one of the two policies.
        """
        chosen = InvitePolicy(policy)
        async with self._locked():
            with self._store.transaction() as tx:
                _trust.set_invite_policy(tx, chosen)

    def contacts(self) -> list[Contact]:
        """Every username whose key is pinned, with its state (no network)."""
        return _trust.contacts(self._store)

    def contact(self, username: str) -> Contact:
        """The pinned key of ``username`` and its state (no network).

        Raises:
            UnknownUserError: no key is pinned for that name.
        """
        return _trust.contact_named(self._store, username)

    async def add_contact(self, username: str) -> Contact:
        """Look ``username`` up and pin its key: its invitations are then joined.

        Raises:
            UnknownUserError: the server knows no such user.
            KeyChangedError: the server gives another key than the pinned one.
        """
        async with self._operation(catch_up=False) as session:
            await _trust.resolve(session, username)
        return _trust.contact_named(self._store, username)

    async def remove_contact(self, username: str) -> Contact:
        """Remove ``username`` from the contacts: its key is unpinned, and its
        invitations wait as requests again (no network). Returns the contact as it was.

        Blocking is separate: a blocked user stays blocked.

        Raises:
            UnknownUserError: no key is pinned for that name.
        """
        async with self._locked():
            return _trust.remove_contact(self._store, username)

    async def accept_key(self, username: str) -> Contact:
        """Pin the other key the server now gives for ``username`` (no network).

        Do this only after checking with the person (compare safety
        numbers); the contact is no longer verified.
        """
        async with self._locked():
            return _trust.accept_key(self._store, username)

    async def safety_number(self, username: str) -> str:
        """The 60-digit safety number of our key and the key pinned for ``username``.

        Both sides compute the same digits; compare them outside qpq.

        Raises:
            KeyChangedError: the server gives another key than the pinned one.
        """
        async with self._operation(catch_up=False) as session:
            key = await _trust.resolve(session, username)
        # Over account keys: linking a device changes neither side's number.
        return _trust.safety_number(self.account_key, key)

    async def mark_verified(self, username: str) -> Contact:
        """Mark the key pinned for ``username`` verified (after comparing safety numbers)."""
        async with self._operation(catch_up=False) as session:
            return await _trust.mark_verified(session, username)

    async def block(self, username: str) -> None:
        """Drop everything from ``username``: invitations, and messages in any group."""
        async with self._operation(catch_up=False) as session:
            await _trust.block(session, username)

    async def unblock(self, username: str) -> None:
        """Take ``username`` off the block list (no network)."""
        async with self._locked():
            _trust.unblock(self._store, username)

    # ---- direct delivery -----------------------------------------------

    async def peers(self, *, probe: bool = True) -> list[PeerInfo]:
        """The members we share a group with, how each was found and whether it is
        reachable directly; with ``probe``, try each now.

        Raises:
            NotConnectedError: not connected with direct delivery on (``p2p``).
        """
        session = self._session
        if session is None or session.peers is None:
            raise NotConnectedError("direct delivery is off: connect with p2p (qpq --p2p)")
        return list(await session.peers.probe() if probe else session.peers.peers())

    # ---- keys ----------------------------------------------------------

    async def key_status(self) -> KeyStatus:
        """KeyPackages on the server (refilled if low)."""
        async with self._operation(catch_up=False) as session:
            return await ensure_key_packages(session)

    async def refresh_keys(self) -> KeyStatus:
        """Upload KeyPackages up to the target and a fresh last-resort package."""
        async with self._operation(catch_up=False) as session:
            return await ensure_key_packages(session, force=True)
