"""Whose key is whose: keys pinned on first use, contacts, blocks, safety numbers.

The server maps usernames to identity keys. A server that lies could answer
"bob" with a key of its own and read every group bob is then invited to, so
the client does not take its word twice: the first key it gives for a
username is pinned (trust on first use). When it later gives another key for
that name, every operation that resolves the name (invite, remove, contacts
add, verify) is refused until the user accepts the new key, after checking
with the person; a member whose key the server names after a pinned user is
shown as such and logged as a warning. A safety number (Signal's scheme)
lets two people confirm, outside qpq, that each holds the other's real key;
marking a contact verified holds for that key only. A pinned key the
server later names otherwise was renamed (:func:`refresh_names`): the pin
follows the key to its new name, never the other way round.

A contact is someone whose invitations are joined without asking (under
the ``contacts`` invite policy): an identity we looked up ourselves, or one
we share or shared a group with that we joined or accepted, unless blocked.
Blocking drops everything from an identity: its invitations, and its
messages in any group (acknowledged, never shown).
"""

from __future__ import annotations

import enum
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qpq_client._errors import KeyChangedError, UnknownUserError
from qpq_client._rows import GroupStatus, PinRow, username_key
from qpq_client._state import StateStore, Transaction
from qpq_proto.errors import NotFoundError

if TYPE_CHECKING:
    from qpq_client._session import Session

__all__ = [
    "Contact",
    "InvitePolicy",
    "accept_key",
    "block",
    "contact_named",
    "contacts",
    "display_name",
    "invite_policy",
    "is_trusted_inviter",
    "mark_verified",
    "observe",
    "observe_all",
    "refresh_names",
    "resolve",
    "safety_number",
    "set_invite_policy",
    "unblock",
]

_log = logging.getLogger("qpq_client")
_INVITES = "invites"

# Signal's numeric fingerprint: per key, SHA-512 iterated 5200 times over the
# key, the first 30 bytes read as six 5-byte numbers, each mod 100000.
_FINGERPRINT_VERSION = b"\x00\x00"
_FINGERPRINT_LABEL = b"qpq safety number"
_FINGERPRINT_ITERATIONS = 5200


class InvitePolicy(enum.StrEnum):
    """Whose invitations are joined at once; the others wait as requests."""

    #: Every invitation is joined.
    ANYONE = "anyone"
    #: Only contacts' invitations are joined (the default).
    CONTACTS = "contacts"


@dataclass(frozen=True, slots=True)
class Contact:
    """A username and the identity key pinned for it.

    Attributes:
        username: the name as first looked up or seen.
        identity_key: the pinned key (32 bytes).
        verified: the user compared safety numbers for this key and said so.
        key_changed: the server has since given another key for this name;
            anything that resolves the name is refused until accepted.
        new_key: that other key, while ``key_changed``.
        contact: invitations from this key are joined without asking.
        blocked: everything from this key is dropped.
    """

    username: str
    identity_key: bytes
    verified: bool
    key_changed: bool
    new_key: bytes | None
    contact: bool
    blocked: bool


def invite_policy(store: StateStore) -> InvitePolicy:
    """The profile's invite policy (``contacts`` unless set)."""
    return InvitePolicy(store.setting(_INVITES) or InvitePolicy.CONTACTS)


def set_invite_policy(tx: Transaction, policy: InvitePolicy) -> None:
    tx.set_setting(_INVITES, policy.value)


def is_trusted_inviter(store: StateStore, inviter: bytes, members: tuple[bytes, ...]) -> bool:
    """Whether an invitation from ``inviter`` into a group of ``members`` is joined at once.

    The inviter is the member who signed the Welcome (``Joined.inviter``,
    proven by MLS); it must be a contact, not blocked, and a member of the
    group the Welcome describes.
    """
    if invite_policy(store) is InvitePolicy.ANYONE:
        return True
    person = store.person(inviter)
    return person is not None and person.contact and not person.blocked and inviter in members


def _short(key: bytes) -> str:
    return key.hex()[:16]


def display_name(store: StateStore, me: bytes, my_name: str, identity_key: bytes | None) -> str:
    """How a person is shown: the remembered username, marked when it is not the pinned key."""
    if identity_key is None:
        return "*"
    if identity_key == me:
        return my_name
    name = store.contact(identity_key)
    if name is None:
        return identity_key.hex()[:12]
    pin = store.pin(name)
    return name if pin is None or pin.identity_key == identity_key else f"{name} (unpinned key)"


async def resolve(session: Session, username: str) -> bytes:
    """The identity key of ``username``, checked against the one pinned for it.

    The first answer is pinned; the user looked the name up, so it becomes
    a contact.

    Raises:
        UnknownUserError: the server knows no such user.
        KeyChangedError: the server gives another key than the pinned one.
    """
    try:
        key = await session.conn.resolve_user(username)
    except NotFoundError:
        raise UnknownUserError(f"the server knows no user named {username!r}") from None
    pin = session.store.pin(username)
    if pin is not None and pin.identity_key != key:
        if pin.changed_key != key:
            session.persist(lambda tx: tx.set_changed_key(username, key))
        raise KeyChangedError(
            f"the server now gives another identity key for {username} ({_short(key)}…, pinned"
            f" {_short(pin.identity_key)}…): whoever runs the server could be posing as"
            f" {username}. Check with them (qpq verify), then `qpq contacts accept {username}`"
        )

    def write(tx: Transaction) -> None:
        if pin is None:
            tx.pin(username, key)
        tx.put_contact(key, session.store.contact(key) or username, contact=True)

    session.persist(write)
    return key


def observe(session: Session, identity_key: bytes, username: str) -> None:
    """Remember what the server says ``identity_key`` is called; pin it on first use.

    Called for members who arrive through a commit or a Welcome: a name
    already pinned to another key is a warning, recorded as a changed key.
    """
    observe_all(session, {identity_key: username})


def observe_all(session: Session, names: dict[bytes, str]) -> None:
    """:func:`observe` for many keys at once, in one transaction (a commit that
    adds hundreds of members writes what the server named them together)."""
    store = session.store
    posing: list[tuple[bytes, str]] = []

    def write(tx: Transaction) -> None:
        for identity_key, username in names.items():
            # Read inside the transaction: an earlier key of this batch may
            # have pinned the name.
            pin = store.pin(username)
            tx.put_contact(identity_key, username)
            if pin is None:
                tx.pin(username, identity_key)
            elif identity_key not in (pin.identity_key, pin.changed_key):
                tx.set_changed_key(username, identity_key)
            if pin is not None and pin.identity_key != identity_key:
                posing.append((identity_key, username))

    session.persist(write)
    for identity_key, username in posing:
        _log.warning(
            "WARNING: the server says %s… is %s, but another key is pinned for %s: someone may be"
            " posing as %s. Check with them (qpq verify %s); `qpq contacts` lists changed keys",
            _short(identity_key),
            username,
            username,
            username,
            username,
        )


async def refresh_names(session: Session) -> list[tuple[str, str]]:
    """Ask the server what each pinned key is called now; follow its renames.

    A key pinned as ``bob`` that the server now calls ``robert`` is the same
    person under a new name (``qpq account rename``): the pin moves to the
    new name with the same key, verified as it was, and each group it is a
    member of says "bob is now robert". A new name that is pinned to another
    key is not taken (the server would be naming two people alike): a
    warning says so. Returns the renames followed, ``(old, new)``.
    """
    store = session.store
    pins = store.pins()
    if not pins:
        return []
    found = await session.conn.resolve_identities([pin.identity_key for pin in pins])
    renamed: list[tuple[bytes, str, str]] = []
    for pin in pins:
        name = found.get(pin.identity_key)
        if not name or username_key(name) == username_key(pin.username):
            continue
        taken = store.pin(name)
        if taken is not None and taken.identity_key != pin.identity_key:
            _log.warning(
                "WARNING: the server now calls %s… (pinned as %s) %s, a name pinned to another"
                " key; still showing it as %s",
                _short(pin.identity_key),
                pin.username,
                name,
                pin.username,
            )
            continue
        renamed.append((pin.identity_key, pin.username, name))
    if not renamed:
        return []
    groups = [
        (group.group_id, set(session.mls.members(group.group_id)))
        for group in store.groups()
        if group.status is GroupStatus.ACTIVE and group.group_id in session.mls.group_ids()
    ]

    def write(tx: Transaction) -> None:
        for key, old, new in renamed:
            tx.rename_person(key, old, new)
            for group_id, members in groups:
                if key in members:
                    tx.add_history(group_id, "event", f"{old} is now {new}", sender=key)

    session.persist(write)
    for _key, old, new in renamed:
        _log.info("%s is now %s (the same key)", old, new)
    return [(old, new) for _key, old, new in renamed]


def contacts(store: StateStore) -> list[Contact]:
    """Every pinned username, with what we know of its key."""
    return [_contact(store, pin) for pin in store.pins()]


def _contact(store: StateStore, pin: PinRow) -> Contact:
    person = store.person(pin.identity_key)
    return Contact(
        username=pin.username,
        identity_key=pin.identity_key,
        verified=pin.verified,
        key_changed=pin.changed_key is not None,
        new_key=pin.changed_key,
        contact=person is not None and person.contact and not person.blocked,
        blocked=person is not None and person.blocked,
    )


def contact_named(store: StateStore, username: str) -> Contact:
    pin = store.pin(username)
    if pin is None:
        raise UnknownUserError(f"no contact named {username!r} (see `qpq contacts`)")
    return _contact(store, pin)


def remove_contact(store: StateStore, username: str) -> Contact:
    """Unpin ``username`` and make it no contact: its invitations wait as requests again.

    Its pinned key goes too: looked up again, it is pinned anew (trust on
    first use), so a later key change is not noticed against this one.
    """
    pin = store.pin(username)
    if pin is None:
        raise UnknownUserError(f"no contact named {username!r} (see `qpq contacts`)")
    removed = _contact(store, pin)
    with store.transaction() as tx:
        tx.forget_contact(pin.username, pin.identity_key)
    return removed


def accept_key(store: StateStore, username: str) -> Contact:
    """Pin the key the server now gives for ``username`` (not verified: compare again)."""
    pin = store.pin(username)
    if pin is None:
        raise UnknownUserError(f"no contact named {username!r} (see `qpq contacts`)")
    if pin.changed_key is not None:
        with store.transaction() as tx:
            tx.pin(pin.username, pin.changed_key)
            tx.put_contact(pin.changed_key, pin.username, contact=True)
    return contact_named(store, username)


async def mark_verified(session: Session, username: str) -> Contact:
    """Mark the pinned key of ``username`` verified (the safety numbers matched)."""
    await resolve(session, username)
    session.persist(lambda tx: tx.set_verified(username, True))
    return contact_named(session.store, username)


async def block(session: Session, username: str) -> list[bytes]:
    """Block every key known for ``username`` (or the one the server gives); returns them.

    Pending invitations from them are dropped, without joining.
    """
    store = session.store
    keys = {p.identity_key for p in store.people_named(username)}
    pin = store.pin(username)
    if pin is not None:
        keys.add(pin.identity_key)
        if pin.changed_key is not None:
            keys.add(pin.changed_key)
    first_seen = not keys
    if first_seen:
        try:
            keys.add(await session.conn.resolve_user(username))
        except NotFoundError:
            raise UnknownUserError(f"the server knows no user named {username!r}") from None
    requests = [r for r in store.requests() if r.inviter in keys]

    def write(tx: Transaction) -> None:
        if first_seen:  # pinned like any name first looked up, so `contacts` lists it
            tx.pin(username, next(iter(keys)))
        for key in keys:
            tx.set_blocked(key, store.contact(key) or username, True)
        for request in requests:
            group = store.group_by_id(request.group_id)
            if group is not None and group.status is GroupStatus.REQUESTED:
                tx.forget_group(request.group_id)

    session.persist(write)
    return sorted(keys)


def unblock(store: StateStore, username: str) -> list[bytes]:
    """Unblock every key known for ``username``; returns them."""
    keys = [p.identity_key for p in store.people_named(username) if p.blocked]
    if not keys:
        raise UnknownUserError(f"{username!r} is not blocked")
    with store.transaction() as tx:
        for key in keys:
            tx.set_blocked(key, username, False)
    return keys


def _fingerprint(identity_key: bytes) -> str:
    digest = hashlib.sha512(_FINGERPRINT_VERSION + identity_key + _FINGERPRINT_LABEL).digest()
    for _ in range(_FINGERPRINT_ITERATIONS):
        digest = hashlib.sha512(digest + identity_key).digest()
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5)
    )


def safety_number(ours: bytes, theirs: bytes) -> str:
    """60 digits that both sides compute alike: each key's 30, the smaller first."""
    return "".join(sorted((_fingerprint(ours), _fingerprint(theirs))))
