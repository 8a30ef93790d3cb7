"""Link this (new) device to an existing account (docs/protocol.md, "Linking a device").

:func:`request_link` makes a device key and an X25519 key, proves the
device key to the server and posts a link request, authenticated by a
fresh code, to the account of a username; the code is shown to the person,
who approves it on a device of that account. :meth:`PendingLink.finish`
waits for the sealed answer, checks that the certificate in it names this
device and chains to the account the username is, registers the device,
writes the profile (the identity, certificate, account seed, contacts and
group names) and uploads KeyPackages. The approving device then adds this
one to every group the account is in; the Welcomes arrive as for any join.

Nothing is written to disk before the answer checked out: a code that
expires or is answered wrongly leaves no profile behind.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from qpq_client._config import ServerAddress, Trust
from qpq_client._connection import Connection
from qpq_client._errors import LinkError
from qpq_client._invitations import LINKED_GROUPS_SETTING, LINKED_HISTORY_SETTING
from qpq_client._link_codes import (
    LINK_URI_PREFIX,
    LinkAnswer,
    LinkRequestBody,
    fingerprint,
    mailbox_of,
    new_code,
    open_answer,
    seal_request,
)
from qpq_client._profile import (
    SERVER_SETTING,
    TOKEN_SETTING,
    TRUST_SETTING,
    refuse_existing_profile,
)
from qpq_client._state import StateStore, Transaction
from qpq_core import DeviceCertificate, Identity, MlsError
from qpq_proto import check_username
from qpq_proto.errors import AlreadyExistsError, NotFoundError

__all__ = ["LINK_POLL_SECONDS", "PendingLink", "check_device_name", "request_link"]

#: How often the new device asks whether its request was approved.
LINK_POLL_SECONDS = 1.0
#: How long it waits (the server keeps a request 10 minutes).
LINK_WAIT_SECONDS = 10 * 60.0


def check_device_name(name: str) -> None:
    """A device name is 1 to 64 bytes of UTF-8 without control characters."""
    if not 1 <= len(name.encode("utf-8")) <= 64 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise LinkError("a device name is 1 to 64 bytes, without control characters")


@dataclass
class PendingLink:
    """A link request posted and waiting for its approval."""

    code: str
    username: str
    device_name: str
    home: Path
    identity: Identity = field(repr=False)
    exchange: X25519PrivateKey = field(repr=False)
    connection: Connection = field(repr=False)
    passphrase: str = field(repr=False)
    settings: dict[str, str] = field(repr=False)

    @property
    def uri(self) -> str:
        """The code as a ``qpq://link/...`` URI (what a QR code would hold)."""
        return LINK_URI_PREFIX + self.code

    @property
    def fingerprint(self) -> str:
        """This device's key as the approving device shows it: compare them."""
        return fingerprint(self.identity.public_key)

    async def close(self) -> None:
        await self.connection.close()

    async def wait_for_answer(
        self, *, poll_seconds: float = LINK_POLL_SECONDS, wait_seconds: float = LINK_WAIT_SECONDS
    ) -> LinkAnswer:
        """Wait until a device of the account answered; the answer, checked.

        Raises:
            LinkError: the code expired (or was never answered in time), or
                the answer does not check out.
        """
        mailbox = mailbox_of(self.code)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                payload = (await self.connection.fetch_link(mailbox)).payload
            except NotFoundError:
                raise LinkError(
                    "the link code expired before it was approved: run `qpq device link` again"
                ) from None
            if payload:
                break
            if time.monotonic() >= deadline:
                raise LinkError(
                    "nobody approved the link code in time: run `qpq device link` again"
                )
            await asyncio.sleep(poll_seconds)
        answer = open_answer(self.code, self.exchange, payload)
        try:
            certificate = DeviceCertificate.verify(answer.certificate)
            account = Identity.from_secret_bytes(answer.account_seed)
        except MlsError:
            raise LinkError("the link answer carries no valid certificate") from None
        if certificate.device_key != self.identity.public_key:
            raise LinkError("the link answer certifies another device: nothing was linked")
        if account.public_key != certificate.account_key:
            raise LinkError("the link answer's account key does not match its certificate")
        return answer

    async def complete(self, answer: LinkAnswer) -> StateStore:
        """Register this device and write its profile from a checked answer.

        Raises:
            LinkError: the account the username is on the server is not the
                one that approved (the profile is not written).
        """
        certificate = DeviceCertificate.verify(answer.certificate)
        await self.connection.register_device(answer.certificate)
        named = await self.connection.resolve_user(self.username)
        if named != certificate.account_key:
            raise LinkError(
                f"the link was approved by a device of another account than {self.username}'s:"
                " nothing was linked"
            )
        store = StateStore.open(self.home, self.passphrase, create=True)
        try:
            with store.transaction() as tx:
                _write_profile(tx, self, answer)
        except BaseException:
            store.close()
            raise
        return store


def _write_profile(tx: Transaction, pending: PendingLink, answer: LinkAnswer) -> None:
    tx.set_identity(pending.identity.secret_bytes(), answer.username)
    tx.set_device(answer.certificate, answer.account_seed)
    for name, value in pending.settings.items():
        tx.set_setting(name, value)
    for username, key, verified in answer.contacts:
        tx.pin(username, key)
        tx.put_contact(key, username, contact=True)
        if verified:
            tx.set_verified(username, True)
    tx.set_setting(
        LINKED_GROUPS_SETTING, json.dumps({gid.hex(): name for gid, name in answer.groups})
    )
    if answer.history:
        past: dict[str, list[list[object]]] = {}
        for gid, kind, sender, body, sent_at in answer.history:
            past.setdefault(gid.hex(), []).append([kind, sender.hex(), body, sent_at])
        tx.set_setting(LINKED_HISTORY_SETTING, json.dumps(past))


async def request_link(
    home: Path,
    passphrase: str,
    username: str,
    device_name: str,
    *,
    server: ServerAddress,
    trust: Trust,
    token: str,
    connect_timeout: float,
) -> PendingLink:
    """Post a link request for a new device to ``username``'s account.

    Raises:
        AlreadyInitializedError: ``home`` already holds a profile.
        LinkError: the device name is not valid.
        NotFoundError: the server knows no such user.
    """
    check_username(username)
    check_device_name(device_name)
    refuse_existing_profile(home, passphrase)
    identity = Identity.generate()
    exchange = X25519PrivateKey.generate()
    exchange_public = exchange.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    body = LinkRequestBody(identity.public_key, exchange_public, device_name)
    connection = await Connection.open(server, trust, token, connect_timeout=connect_timeout)
    try:
        await connection.authenticate(identity.public_key, identity.sign)
        while True:
            code = new_code()
            try:
                await connection.post_link(mailbox_of(code), username, seal_request(code, body))
                break
            except AlreadyExistsError:
                continue  # 60 random bits met a live code: draw another
    except BaseException:
        await connection.close()
        raise
    return PendingLink(
        code=code,
        username=username,
        device_name=device_name,
        home=home,
        identity=identity,
        exchange=exchange,
        connection=connection,
        passphrase=passphrase,
        settings={
            SERVER_SETTING: str(server),
            TRUST_SETTING: trust.to_setting(),
            TOKEN_SETTING: token,
        },
    )
