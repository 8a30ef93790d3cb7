"""This account's devices: list them, approve a new one, remove one.

Approving a link code (docs/protocol.md, "Linking a device"): read the
request from the code's mailbox (checked against the code), sign the new
device's certificate with the account key, hand it, sealed to the new
device, the certificate, the account key's seed, the contacts and the
group names; then wait until the new device has registered and uploaded
KeyPackages, and add it to each group the account is in, by one commit
each. Removing a device revokes it on the server (its connections close,
it never authenticates again) and commits the removal of its leaves from
every group.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from qpq_client import _commits
from qpq_client._device_keys import verified_devices
from qpq_client._errors import LinkError, UnknownDeviceError, UnknownUserError
from qpq_client._link_codes import (
    LinkAnswer,
    LinkRequestBody,
    fingerprint,
    mailbox_of,
    normalize_code,
    open_request,
    seal_answer,
)
from qpq_client._rows import GroupStatus
from qpq_client._session import Session
from qpq_core import Identity
from qpq_proto.errors import NotFoundError

__all__ = [
    "HISTORY_BUDGET",
    "LINK_WAIT_SECONDS",
    "DeviceInfo",
    "LinkRequestInfo",
    "account_identity",
    "approve_link",
    "list_devices",
    "read_link",
    "remove_device",
]

#: How long an approval waits for the new device to register and publish
#: KeyPackages (a link code lives 10 minutes on the server).
LINK_WAIT_SECONDS = 10 * 60.0
_POLL_SECONDS = 0.5
#: Bytes of history an answer carries at most (a mailbox holds 256 KiB).
HISTORY_BUDGET = 192 * 1024


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One current device of our account."""

    name: str
    device_key: bytes
    #: This device (the one running).
    current: bool

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.device_key)


@dataclass(frozen=True, slots=True)
class LinkRequestInfo:
    """What a link code asks: to link a device of this name and key."""

    name: str
    device_key: bytes

    @property
    def fingerprint(self) -> str:
        """Compare with what the new device shows."""
        return fingerprint(self.device_key)


def account_identity(session: Session) -> Identity:
    """The account key's identity (its seed: ours if we are the first device)."""
    device = session.store.device()
    if device is None:
        return session.identity
    return Identity.from_secret_bytes(device[1])


def _name(name: str, key: bytes, account: bytes) -> str:
    return name or ("first device" if key == account else key.hex()[:12])


async def list_devices(session: Session) -> list[DeviceInfo]:
    """The account's current devices, as the server lists them and their
    certificates prove (a device whose certificate does not chain is left out)."""
    listed = await session.conn.list_devices(session.account)
    found = verified_devices(session.account, listed.device_keys, listed.certificates)
    return [
        DeviceInfo(
            name=_name(name, key, session.account), device_key=key, current=key == session.me
        )
        for key, name in found.items()
    ]


async def read_link(session: Session, code: str) -> tuple[LinkRequestInfo, LinkRequestBody]:
    """The request a link code names, checked against the code.

    Raises:
        LinkError: not a code, or a request that does not match it.
        NotFoundError: no such request (never made, expired, or used).
        ForbiddenError: the request asks to join another account.
    """
    code = normalize_code(code)
    found = await session.conn.fetch_link(mailbox_of(code))
    body = open_request(code, found.payload, found.device_key)
    return LinkRequestInfo(name=body.name, device_key=body.device_key), body


async def approve_link(
    session: Session,
    code: str,
    *,
    with_history: bool = False,
    wait_seconds: float = LINK_WAIT_SECONDS,
) -> list[str]:
    """Approve a link code (see the module docstring); the groups the new device
    was added to, by name. ``with_history``: hand over the groups' past lines
    too, the most recent that fit in the answer (:data:`HISTORY_BUDGET`).

    Raises:
        LinkError: the code, its request or the wait went wrong; the device
            may be linked but not yet in every group (``qpq device list``).
    """
    code = normalize_code(code)
    info, body = await read_link(session, code)
    account = account_identity(session)
    certificate = account.issue_device_certificate(body.device_key, body.name, int(time.time()))
    groups = [
        g
        for g in session.store.groups()
        if g.status is GroupStatus.ACTIVE and g.archived_from is None
    ]
    answer = LinkAnswer(
        certificate=certificate,
        account_seed=account.secret_bytes(),
        username=session.username,
        contacts=tuple((p.username, p.identity_key, p.verified) for p in session.store.pins()),
        groups=tuple((g.group_id, g.name) for g in groups),
        history=_recent_history(session, [g.group_id for g in groups]) if with_history else (),
    )
    await session.conn.post_link(mailbox_of(code), "", seal_answer(code, body.exchange_key, answer))
    return await _add_to_groups(session, info, [g.group_id for g in groups], wait_seconds)


def _recent_history(
    session: Session, group_ids: list[bytes]
) -> tuple[tuple[bytes, str, bytes, str, int], ...]:
    """The most recent messages and events of the groups that fit the budget, oldest first."""
    rows = [
        r
        for group_id in group_ids
        for r in session.store.history(group_id)
        if r.kind in ("text", "event") and r.direct is None
    ]
    rows.sort(key=lambda r: (r.received_at, r.id))
    kept: list[tuple[bytes, str, bytes, str, int]] = []
    used = 0
    for r in reversed(rows):
        # What a line costs in the answer's JSON, roughly (hex doubles the bytes).
        used += 2 * (len(r.group_id) + len(r.sender or b"")) + len(r.body.encode()) * 2 + 48
        if used > HISTORY_BUDGET:
            break
        kept.append((r.group_id, r.kind, r.sender or b"", r.body, r.sent_at))
    return tuple(reversed(kept))


async def _add_to_groups(
    session: Session, info: LinkRequestInfo, group_ids: list[bytes], wait_seconds: float
) -> list[str]:
    """Wait for the new device's KeyPackages, then add it to each group."""
    deadline = time.monotonic() + wait_seconds
    added: list[str] = []
    for group_id in group_ids:
        while True:
            try:
                package = await _commits.claim_own_device(session, info.device_key, group_id)
                break
            except UnknownUserError:
                if time.monotonic() >= deadline:
                    raise LinkError(
                        f"{info.name} did not finish linking in time; it is linked but in no"
                        " group yet: run `qpq device link` there again, or invite it"
                    ) from None
                await asyncio.sleep(_POLL_SECONDS)
        await _commits.add_devices(session, group_id, {info.device_key: package})
        group = session.store.group_by_id(group_id)
        if group is not None:
            added.append(group.name)
    return added


async def remove_device(session: Session, name: str) -> DeviceInfo:
    """Revoke a device of our account by name (or key prefix) and remove its leaves.

    Raises:
        UnknownDeviceError: no current device by that name, or several.
    """
    devices = await list_devices(session)
    matches = [
        d
        for d in devices
        if d.name == name or (len(name) >= 8 and d.device_key.hex().startswith(name))
    ]
    if len(matches) != 1:
        known = ", ".join(d.name for d in devices)
        what = "several devices" if matches else "no device"
        raise UnknownDeviceError(f"{what} named {name!r} (devices: {known}; give a key prefix)")
    (device,) = matches
    if device.current:
        raise UnknownDeviceError("this is the device you are on: remove it from another one")
    try:
        await session.conn.revoke_device(device.device_key)
    except NotFoundError:
        raise UnknownDeviceError(f"no device named {name!r}") from None
    for group in session.store.groups():
        if (
            group.status is GroupStatus.ACTIVE
            and group.group_id in session.mls.group_ids()
            and device.device_key in session.mls.members(group.group_id)
        ):
            await _commits.remove_leaves(session, group.group_id, [device.device_key])
    return device
