"""What a leaf's credential says about its device: its account and name.

A leaf's BasicCredential identity is either its own 32-byte key (a legacy
leaf, its own account) or a device certificate by which an account key
vouches for it (``qpq_core.DeviceCertificate``; docs/protocol.md,
"Devices"). MLS checked the chain when the leaf arrived (qpq-core refuses
a leaf whose certificate does not verify or names another key), so reading
it here needs no trust in the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qpq_core import DeviceCertificate, Identity, MlsClient, MlsError
from qpq_proto.errors import NotFoundError

if TYPE_CHECKING:
    from qpq_client._session import Session

__all__ = ["account_in_trees", "current_devices", "device_of", "verified_devices"]


def device_of(device_key: bytes, credential: bytes) -> tuple[bytes, str]:
    """(account key, device name) of a leaf with this key and credential identity."""
    if len(credential) == len(device_key):
        return device_key, ""
    try:
        certificate = DeviceCertificate.verify(credential)
    except MlsError:
        return device_key, ""
    return certificate.account_key, certificate.name


def verified_devices(
    account_key: bytes, device_keys: tuple[bytes, ...], certificates: tuple[bytes, ...]
) -> dict[bytes, str]:
    """The devices a ListDevices answer names that chain to ``account_key``: key -> name.

    The server's answer is not trusted: a device is kept only when it is the
    account key itself (no certificate) or its certificate verifies under
    the account key and names it.
    """
    found: dict[bytes, str] = {}
    for key, certificate in zip(device_keys, certificates, strict=True):
        if not certificate:
            if key == account_key:
                found[key] = ""
            continue
        try:
            verified = DeviceCertificate.verify(certificate)
        except MlsError:
            continue
        if verified.device_key == key and verified.account_key == account_key:
            found[key] = verified.name
    return found


async def current_devices(session: Session, account_key: bytes) -> list[bytes]:
    """The device keys of an account that the server lists and that chain to it.

    A server that does not know the account (or answers nothing that
    verifies) leaves the account key itself: the legacy single device.
    """
    try:
        listed = await session.conn.list_devices(account_key)
    except NotFoundError:
        return [account_key]
    found = verified_devices(account_key, listed.device_keys, listed.certificates)
    return list(found) or [account_key]


def account_in_trees(mls: MlsClient, device_key: bytes, me: Identity) -> bytes:
    """The account of ``device_key`` as the first group tree holding it says
    (without a connection; ``Session.account_of`` caches the same)."""
    if device_key == me.public_key:
        return me.account_key
    for group_id in mls.group_ids():
        try:
            keys = mls.members(group_id)
            if device_key in keys:
                credential = mls.member_credentials(group_id)[keys.index(device_key)]
                return device_of(device_key, credential)[0]
        except MlsError:
            continue
    return device_key
