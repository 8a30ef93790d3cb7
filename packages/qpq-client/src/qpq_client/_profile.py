"""A profile on disk: opened, or created once the server accepted its username.

A profile is one directory holding the encrypted state (:mod:`qpq_client._state`):
the identity seed and username, and the settings a later run connects with
(server, trust, token, direct delivery), named here.
"""

from __future__ import annotations

from pathlib import Path

from qpq_client._config import DirectDelivery, ServerAddress, Trust
from qpq_client._connection import Connection
from qpq_client._errors import AlreadyInitializedError, NotInitializedError
from qpq_client._state import StateStore
from qpq_core import Identity
from qpq_p2p import PeerConfig
from qpq_proto import check_invite, check_username
from qpq_proto.errors import ConnectionFailedError

__all__ = [
    "P2P_SETTING",
    "SERVER_SETTING",
    "SUITE_SETTING",
    "TOKEN_SETTING",
    "TRUST_SETTING",
    "connection_settings",
    "create_profile",
    "open_profile",
    "peer_config",
    "refuse_existing_profile",
    "stored_direct_delivery",
]

#: Names of the settings a profile stores (encrypted) for later runs.
SERVER_SETTING = "server"
TRUST_SETTING = "trust"
TOKEN_SETTING = "token"  # noqa: S105 - a setting name
P2P_SETTING = "p2p"
SUITE_SETTING = "suite"  # the ciphersuite new groups get: its label


def refuse_existing_profile(home: Path, passphrase: str) -> None:
    """Raise AlreadyInitializedError when ``home`` already holds an identity.

    A state file without one (a creation that stopped before registering)
    may be built upon.
    """
    if StateStore.exists(home):
        existing = StateStore.open(home, passphrase)
        try:
            if existing.identity() is not None:
                raise AlreadyInitializedError(f"{home} already holds a qpq profile")
        finally:
            existing.close()


def open_profile(home: Path, passphrase: str) -> tuple[StateStore, Identity, str]:
    """Open an initialized profile: its store, identity and username.

    Raises:
        NotInitializedError: ``home`` holds no profile.
        WrongPassphraseError: the passphrase does not open it.
    """
    if not StateStore.exists(home):
        raise NotInitializedError(f"no qpq profile in {home}: run `qpq init` first")
    store = StateStore.open(home, passphrase)
    identity = store.identity()
    if identity is None:
        store.close()
        raise NotInitializedError(f"no qpq profile in {home}: run `qpq init` first")
    seed, username = identity
    device = store.device()
    certificate = None if device is None else device[0]
    return store, Identity.from_secret_bytes(seed, certificate), username


async def create_profile(
    home: Path,
    passphrase: str,
    username: str,
    *,
    server: ServerAddress,
    trust: Trust,
    token: str,
    connect_timeout: float,
    invite: str = "",
) -> tuple[StateStore, Identity, Connection]:
    """A new identity, registered as ``username``, written to a new profile.

    The server, trust and token (empty: the server has none) are stored
    (encrypted) for later runs; ``invite`` is the operator's invite code a
    server that registers by invitation needs, used once and not stored.
    The profile is written only after the server accepted the username; the
    connection that registered it is returned open and authenticated.

    Raises:
        AlreadyInitializedError: ``home`` already holds a profile.
        UnauthenticatedError: the server wants another access token.
        ForbiddenError: the server needs an invite code, or refused this one.
        AlreadyExistsError: the username is taken.
    """
    check_username(username)
    check_invite(invite)
    refuse_existing_profile(home, passphrase)
    identity = Identity.generate()
    connection = await Connection.open(server, trust, token, connect_timeout=connect_timeout)
    try:
        await connection.authenticate(identity.public_key, identity.sign)
        await connection.register_user(username, invite)
        store = StateStore.open(home, passphrase, create=True)
    except BaseException:
        await connection.close()
        raise
    try:
        with store.transaction() as tx:
            tx.set_identity(identity.secret_bytes(), username)
            tx.set_setting(SERVER_SETTING, str(server))
            tx.set_setting(TRUST_SETTING, trust.to_setting())
            tx.set_setting(TOKEN_SETTING, token)
    except BaseException:
        store.close()
        await connection.close()
        raise
    return store, identity, connection


def connection_settings(
    store: StateStore, *, server: ServerAddress | None, trust: Trust | None, token: str | None
) -> tuple[ServerAddress, Trust, str]:
    """Where and how to connect: what is given, else what the profile stored.

    Raises:
        ConnectionFailedError: no server given and none stored.
        TrustNotConfiguredError: no trust given and none stored.
    """
    stored_server = store.setting(SERVER_SETTING)
    address = server or (ServerAddress.parse(stored_server) if stored_server else None)
    if address is None:
        raise ConnectionFailedError("no server configured: give --server HOST:PORT")
    if trust is None:
        stored_trust = store.setting(TRUST_SETTING)
        trust = Trust.from_setting(stored_trust) if stored_trust else Trust.from_options(None, None)
    token = token if token is not None else (store.setting(TOKEN_SETTING) or "")
    return address, trust, token


def stored_direct_delivery(store: StateStore) -> DirectDelivery:
    """The profile's direct-delivery setting (the default when none is stored)."""
    return DirectDelivery.from_setting(store.setting(P2P_SETTING))


def peer_config(store: StateStore, p2p: PeerConfig | bool | None) -> PeerConfig | None:
    """The direct-delivery settings to connect with: ``p2p`` itself, the
    stored ones (``True``, or ``None`` while they are on), or none."""
    if isinstance(p2p, PeerConfig):
        return p2p
    stored = stored_direct_delivery(store)
    if (p2p is None and not stored.enabled) or p2p is False:
        return None
    return stored.peer_config()
