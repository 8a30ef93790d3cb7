"""Keeping the server stocked with our KeyPackages, of every ciphersuite.

Others claim one of our KeyPackages to add us to a group; each is served at
most once. A group takes only KeyPackages of its own ciphersuite (RFC 9420
§12.1.1), so each suite qpq-core speaks (``qpq_core.SUITES``: the default and
the post-quantum one) has its own stock: about :data:`TARGET` uploaded,
refilled when fewer than :data:`REFILL_BELOW` remain, plus a last-resort
package the server hands out only when none of that suite are left. The
private keys are persisted before upload: a package on the server whose keys
we lost would make its Welcome useless.

The count is checked when we connect, after each Welcome, and at least every
:data:`CHECK_SECONDS` while a client runs (a follower that only listens
included): claims that bring no Welcome (someone draining the stock; the
server limits how fast, per target and per claimer) are noticed and refilled
before the stock runs out. How often the last resort went out since it was
uploaded is shown (``qpq keys status``): each such Welcome reused its keys.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from qpq_client._session import OUR_FAILURES, Session
from qpq_core import SUITES, Suite
from qpq_proto import SuiteKeyPackageCount

__all__ = [
    "CHECK_SECONDS",
    "REFILL_BELOW",
    "TARGET",
    "KeyStatus",
    "SuiteKeyStatus",
    "ensure_key_packages",
    "keys_due",
    "refill_if_due",
]

TARGET = 100
REFILL_BELOW = 50
#: The longest a running client goes without counting its KeyPackages.
CHECK_SECONDS = 300.0
_BATCH = 100
_log = logging.getLogger("qpq_client")


@dataclass(frozen=True, slots=True)
class SuiteKeyStatus:
    """KeyPackages of one ciphersuite on the server, after any refill.

    Attributes:
        suite: the ciphersuite.
        available: unclaimed single-use KeyPackages.
        has_last_resort: whether the last-resort package is uploaded.
        uploaded: how many this check uploaded (last resort included).
        last_resort_served: how many claims the server answered with the
            last-resort package since it was uploaded (before this check
            replaced it, if it did): Welcomes that reuse its keys.
    """

    suite: Suite
    available: int
    has_last_resort: bool
    uploaded: int
    last_resort_served: int = 0


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """KeyPackages on the server, after any refill.

    Attributes:
        available: unclaimed single-use KeyPackages of the default suite.
        has_last_resort: whether its last-resort package is uploaded.
        uploaded: how many this check uploaded, every suite and last
            resort included.
        last_resort_served: how many claims the server answered with the
            default suite's last-resort package since it was uploaded
            (before this check replaced it, if it did): Welcomes that
            reuse its keys.
        suites: the same for each suite, the default first.
    """

    available: int
    has_last_resort: bool
    uploaded: int
    last_resort_served: int = 0
    suites: tuple[SuiteKeyStatus, ...] = ()


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
    session.keys_checked_at = time.monotonic()
    # We do not know which suite's last resort a join used: each is replaced
    # (one package each).
    suites = tuple(
        [
            await _ensure_suite(
                session, suite, count.for_suite(suite), force=force, new_last_resort=new_last_resort
            )
            for suite in SUITES
        ]
    )
    default = suites[0]
    return KeyStatus(
        default.available,
        default.has_last_resort,
        sum(s.uploaded for s in suites),
        default.last_resort_served,
        suites,
    )


async def _ensure_suite(
    session: Session,
    suite: Suite,
    count: SuiteKeyPackageCount,
    *,
    force: bool,
    new_last_resort: bool,
) -> SuiteKeyStatus:
    available, uploaded = count.count, 0
    if available < REFILL_BELOW or (force and available < TARGET):
        missing = TARGET - available
        while missing > 0:
            packages = _create(session, min(missing, _BATCH), last_resort=False, suite=suite)
            await session.conn.upload_key_packages(packages)
            missing -= len(packages)
            uploaded += len(packages)
        available = TARGET
    has_last_resort = count.has_last_resort
    if not has_last_resort or force or new_last_resort:
        (package,) = _create(session, 1, last_resort=True, suite=suite)
        await session.conn.upload_last_resort(package)
        has_last_resort = True
        uploaded += 1
    return SuiteKeyStatus(suite, available, has_last_resort, uploaded, count.last_resort_served)


def keys_due(session: Session) -> bool:
    """Whether our KeyPackages were last counted :data:`CHECK_SECONDS` ago or more."""
    checked = session.keys_checked_at
    return checked is None or time.monotonic() - checked >= CHECK_SECONDS


async def refill_if_due(session: Session) -> None:
    """:func:`ensure_key_packages` if :func:`keys_due`.

    A failure is not the caller's: it is logged, and tried again next time.
    """
    if not keys_due(session):
        return
    try:
        await ensure_key_packages(session)
    except OUR_FAILURES as error:
        session.keys_checked_at = time.monotonic()
        _log.warning("could not refill KeyPackages now (%s)", type(error).__name__)


def _create(session: Session, count: int, *, last_resort: bool, suite: Suite) -> tuple[bytes, ...]:
    created = session.mls.create_key_packages(count, last_resort=last_resort, suite=suite)
    session.persist(lambda tx: tx.apply_changes(created.changes))
    return created.packages
