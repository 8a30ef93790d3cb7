"""What every operation of a connected client works with, in one place."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from qpq_client import _trust
from qpq_client._connection import Connection
from qpq_client._device_keys import device_of
from qpq_client._errors import StateError
from qpq_client._state import StateStore, Transaction
from qpq_client._state_base import now_ms
from qpq_core import Identity, MlsClient, MlsError
from qpq_p2p import PeerNode
from qpq_proto.errors import ConnectionFailedError, ServiceError

__all__ = ["CURRENT_SECONDS", "OUR_FAILURES", "SEEN_GRACE_MS", "Finish", "Session"]

_T = TypeVar("_T")

#: How long after catching up a client that does not follow its subscription
#: still counts as current: it then sends without fetching first. A member's
#: proposal (say, to leave) reaches such a client within this time.
CURRENT_SECONDS = 1.0

#: Writes what marks a received message done, in the transaction that keeps its result.
Finish = Callable[[Transaction], None]

#: Failures on our side (the connection, the server's coded refusal, the
#: store): a message being received stays queued and is processed next time.
OUR_FAILURES = (ConnectionFailedError, ServiceError, StateError)

#: How long the digest of a message that came through the server is kept
#: after the server deleted its copy: a direct copy of the same message may
#: still be on its way (qpq-p2p gives one direct attempt 10 s), and must be
#: recognized. Digests of direct copies are kept for the server's message
#: TTL and this margin: a copy the sender published can arrive that long.
SEEN_GRACE_MS = 10 * 60 * 1000


@dataclass
class Session:
    """A profile's store and MLS state, connected and authenticated.

    What received messages leave to do (commit a member's leave proposal,
    propose our own leave again, rejoin a group we fell behind in) is read
    from the MLS and group state by :func:`qpq_client._commits.settle`, not
    passed along in flags.
    """

    store: StateStore
    mls: MlsClient
    identity: Identity
    username: str
    conn: Connection
    #: Direct delivery to members who can be reached (None: everything via the server).
    peers: PeerNode | None = None
    #: Outbox rows of messages being sent now (concurrent sends of this process).
    sending: set[int] = field(default_factory=set)
    #: True while a subscribe stream of this connection delivers what is queued for us.
    following: bool = False
    #: When we last processed everything the server held for us (monotonic seconds).
    caught_up_at: float | None = None
    #: The epoch a publish answered with, per group, where it was past ours.
    behind: dict[bytes, int] = field(default_factory=dict)
    #: When we last counted our KeyPackages on the server (monotonic seconds).
    keys_checked_at: float | None = None
    #: The account key and device name of each device key seen in a group's
    #: tree, read from its (MLS-checked) credential: :meth:`account_of`.
    devices: dict[bytes, tuple[bytes, str]] = field(default_factory=dict)
    #: Operations go on while the server is away (``Client.connect(offline_ok=True)``):
    #: a send then keeps its message in the outbox instead of failing first.
    works_offline: bool = False

    @property
    def me(self) -> bytes:
        """This device's identity key: our leaves, queue and KeyPackages."""
        return self.identity.public_key

    @property
    def account(self) -> bytes:
        """Our account key: what others pin and compute safety numbers over."""
        return self.identity.account_key

    def account_of(self, identity_key: bytes) -> bytes:
        """The account a device key acts for, as its leaf's credential names it
        (docs/protocol.md, "Devices"); a key in no tree we hold is its own."""
        if identity_key == self.me:
            return self.account
        if identity_key not in self.devices:
            self.learn_devices()
        return self.devices.get(identity_key, (identity_key, ""))[0]

    def device_name(self, identity_key: bytes) -> str:
        """The device name a leaf's certificate gives ("" for an account's own key)."""
        if identity_key not in self.devices:
            self.learn_devices()
        return self.devices.get(identity_key, (identity_key, ""))[1]

    def learn_devices(self, group_ids: Iterable[bytes] | None = None) -> None:
        """Read the credentials of every leaf of ``group_ids`` (default: every group)."""
        for group_id in self.mls.group_ids() if group_ids is None else group_ids:
            try:
                keys = self.mls.members(group_id)
                credentials = self.mls.member_credentials(group_id)
            except MlsError:
                continue
            for key, credential in zip(keys, credentials, strict=True):
                self.devices[key] = device_of(key, credential)

    def account_devices(self, group_id: bytes, account_key: bytes) -> tuple[bytes, ...]:
        """The leaves of ``account_key`` in the group, in leaf order."""
        self.learn_devices((group_id,))
        return tuple(k for k in self.mls.members(group_id) if self.account_of(k) == account_key)

    def persist(self, write: Callable[[Transaction], _T], *, durable: bool = True) -> _T:
        """Run ``write`` in one transaction; on failure reload MLS from the store.

        The MLS client already holds the change it was asked to make; when
        the store refuses it, the store is the truth (docs/mls.md, "What the host persists").
        ``durable=False`` commits without waiting for the disk
        (:meth:`StateStore.sync_to_disk` makes it durable).
        """
        try:
            with self.store.transaction(durable=durable) as tx:
                return write(tx)
        except StateError:
            self.mls.reload(self.store.mls_rows())
            raise

    def acknowledged(self, seq: int) -> None:
        """The server deleted what we acknowledged up to ``seq``: note it, and forget
        the digests no copy of their message can follow (the client README,
        "Every table, and what bounds it")."""
        now = now_ms()
        ttl_ms = self.conn.limits.message_ttl_seconds * 1000

        def write(tx: Transaction) -> None:
            tx.set_acked_seq(seq)
            tx.forget_seen(
                acked_seq=seq,
                server_copy_before_ms=now - SEEN_GRACE_MS,
                before_ms=now - ttl_ms - SEEN_GRACE_MS,
            )

        self.persist(write)

    def caught_up(self) -> None:
        """Everything the server held for us is processed (a catch-up just ended)."""
        self.caught_up_at = time.monotonic()
        self.behind.clear()

    def is_current(self, group_id: bytes) -> bool:
        """Whether we may send to the group without catching up first.

        True while following (the subscription brings each commit as it is
        queued) or shortly after a catch-up, unless a publish showed the
        group's epoch past ours. The server refuses an application message
        only for an epoch too old (``epochConflict``); the sender then
        catches up and sends again.
        """
        server_epoch = self.behind.get(group_id)
        if server_epoch is not None:
            if self.mls.epoch(group_id) < server_epoch:
                return False
            del self.behind[group_id]
        if self.following:
            return True
        at = self.caught_up_at
        return at is not None and time.monotonic() - at < CURRENT_SECONDS

    def published(self, group_id: bytes, our_epoch: int, server_epoch: int) -> None:
        """Note the group's epoch a publish answered with."""
        if server_epoch > our_epoch:
            self.behind[group_id] = server_epoch

    def others(self, group_id: bytes) -> tuple[bytes, ...]:
        return tuple(k for k in self.mls.members(group_id) if k != self.me)

    async def name_of(self, identity_key: bytes) -> str:
        """The username of ``identity_key``, asked once and then remembered (and pinned)."""
        return (await self.names_of((identity_key,)))[identity_key]

    async def names_of(self, identity_keys: Iterable[bytes]) -> dict[bytes, str]:
        """How each of ``identity_keys`` is shown, asking the server in one call
        (ResolveIdentities) for every key we do not know yet; what it answers
        is remembered, and pinned, in one transaction.

        A device key is shown by its account's name: the server names
        accounts, and a person's devices are one person.

        A commit that adds 400 members costs one round trip, and the history
        lines that name them are written with these names.
        """
        keys = tuple(dict.fromkeys(identity_keys))
        accounts = dict.fromkeys(self.account_of(k) for k in keys)
        unknown = [k for k in accounts if k != self.account and self.store.contact(k) is None]
        if unknown:
            found = await self.conn.resolve_identities(unknown)
            if found:
                _trust.observe_all(self, found)
        return {key: self.display_name(key) for key in keys}

    def display_name(self, identity_key: bytes | None) -> str:
        """The remembered username of the key's account, without asking the server."""
        account = None if identity_key is None else self.account_of(identity_key)
        return _trust.display_name(self.store, self.account, self.username, account)
