"""Keeping the server stocked with our KeyPackages.

Others claim one of our KeyPackages to add us to a group; each is served at
most once. About :data:`TARGET` stay uploaded, refilled when fewer than
:data:`REFILL_BELOW` remain, plus a last-resort package the server hands out
only when none are left. The private keys are persisted before upload:
a package on the server whose keys we lost would make its Welcome useless.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpq_client._session import Session

__all__ = ["REFILL_BELOW", "TARGET", "KeyStatus", "ensure_key_packages"]

TARGET = 100
REFILL_BELOW = 50
_BATCH = 100


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """KeyPackages on the server, after any refill.

    Attributes:
        available: unclaimed single-use KeyPackages.
        has_last_resort: whether the last-resort package is uploaded.
        uploaded: how many this check uploaded (last resort included).
    """

    available: int
    has_last_resort: bool
    uploaded: int


async def ensure_key_packages(
    session: Session, *, force: bool = False, new_last_resort: bool = False
) -> KeyStatus:
    """Refill KeyPackages when below :data:`REFILL_BELOW` (or ``force``: up to TARGET).

    A fresh last-resort package is uploaded when none is (``force`` or
    ``new_last_resort``: in any case). ``new_last_resort`` is for after a
    join that used ours: the join deleted its keys (so that the Welcome,
    replayed, cannot join again), and the server would go on handing out a
    package nobody can join with.
    """
    count = await session.conn.count_key_packages()
    available, uploaded = count.count, 0
    if available < REFILL_BELOW or (force and available < TARGET):
        missing = TARGET - available
        while missing > 0:
            packages = _create(session, min(missing, _BATCH), last_resort=False)
            await session.conn.upload_key_packages(packages)
            missing -= len(packages)
            uploaded += len(packages)
        available = TARGET
    has_last_resort = count.has_last_resort
    if not has_last_resort or force or new_last_resort:
        (package,) = _create(session, 1, last_resort=True)
        await session.conn.upload_last_resort(package)
        has_last_resort = True
        uploaded += 1
    return KeyStatus(available, has_last_resort, uploaded)


def _create(session: Session, count: int, *, last_resort: bool) -> tuple[bytes, ...]:
    created = session.mls.create_key_packages(count, last_resort=last_resort)
    session.persist(lambda tx: tx.apply_changes(created.changes))
    return created.packages
