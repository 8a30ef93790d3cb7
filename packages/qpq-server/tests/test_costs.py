"""Expensive work is paid for before it is done: batch costs and the stored-package cap.

In-process, with a frozen clock, so token counts are exact, and real MLS:
where the order of paying and checking matters, the payload is one that
the check would refuse, so a rate-limit answer shows nothing was checked.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from groups import Member, commit_call
from server_helpers import answer_of, proven

from qpq_core import DeliveryGroup
from qpq_proto import (
    DEFAULT_LIMITS,
    Endpoint,
    ErrorCode,
    ErrorResponse,
    Fingerprints,
    Health,
    MessageKind,
    Publish,
    Published,
    Request,
    Response,
    UploadKeyPackages,
)
from qpq_server._config import ServerConfig
from qpq_server._context import App, Clock, ConnectionState
from qpq_server._dispatch import Dispatcher, Subscription
from qpq_server._handlers import keys
from qpq_server._metrics import Metrics
from qpq_server._notifier import DeliveryNotifier
from qpq_server._sqlcipher import SqlCipherStorage

TOKEN = "tok"
#: Now, frozen: KeyPackages made by this run are valid at it.
NOW_MS = time.time_ns() // 1_000_000


class FrozenClock(Clock):
    def wall_ms(self) -> int:
        return NOW_MS

    def monotonic(self) -> float:
        return 1000.0


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqlCipherStorage]:
    opened = await SqlCipherStorage.open(tmp_path / "qpq.db", "key")
    yield opened
    await opened.close()


@pytest.fixture
def owner() -> Member:
    return Member.generate()


def _dispatcher(storage: SqlCipherStorage, burst: int) -> Dispatcher:
    limits = dataclasses.replace(DEFAULT_LIMITS, rate_per_second=0.001, rate_burst=burst)
    app = App(
        config=ServerConfig(auth_token=TOKEN, limits=limits),
        storage=storage,
        notifier=DeliveryNotifier(),
        clock=FrozenClock(),
        version="test",
        started_at=0.0,
    )
    return Dispatcher(app, Metrics())


def _upload(packages: tuple[bytes, ...]) -> Request:
    return Request(call=UploadKeyPackages(packages=packages), token=TOKEN)


def _garbage(count: int) -> tuple[bytes, ...]:
    """KeyPackages validation refuses (``invalid_key_package``) if it ever sees them."""
    return tuple(b"not a KeyPackage %d" % i for i in range(count))


async def _code(answer: Response | Subscription) -> ErrorCode | None:
    return answer.code if isinstance(answer, ErrorResponse) else None


async def _stored(storage: SqlCipherStorage, owner: Member) -> int:
    count, _ = await storage.count_key_packages(owner.key, NOW_MS // 1000)
    return count


async def test_a_big_key_package_batch_costs_more_than_one_token(
    storage: SqlCipherStorage, owner: Member
) -> None:
    dispatcher = _dispatcher(storage, burst=10)
    connection = proven(owner.key)
    # 100 packages are 10 tokens: the whole burst.
    answer = await answer_of(dispatcher, _upload(owner.key_packages(100)), connection)
    assert isinstance(answer, Fingerprints)
    # Refused for its cost before any package is looked at: validation would
    # have answered invalid_key_package.
    answer = await answer_of(dispatcher, _upload(_garbage(10)), connection)
    assert await _code(answer) is ErrorCode.RATE_LIMITED
    assert await _stored(storage, owner) == 100


async def _group_with(storage: SqlCipherStorage, owner: Member, others: int) -> bytes:
    """A group the owner created, whose stored roster holds ``others`` more keys."""
    group_id = owner.mls.create_group().group_id
    roster = (owner.key, *(i.to_bytes(32, "big") for i in range(1, others + 1)))
    await storage.create_group(
        group_id,
        creator=owner.key,
        epoch=0,
        members=roster,
        state=(),
        group_info=b"group-info",
        now_ms=0,
        max_created=1,
    )
    return group_id


def _publish(call: Publish) -> Request:
    return Request(call=call, token=TOKEN)


async def test_a_wide_publish_costs_more_than_one_token(
    storage: SqlCipherStorage, owner: Member
) -> None:
    dispatcher = _dispatcher(storage, burst=10)
    connection = proven(owner.key)
    group_id = await _group_with(storage, owner, 1000)

    def message(text: bytes) -> Request:
        payload = owner.mls.encrypt(group_id, text).message
        return _publish(Publish(group_id, 0, MessageKind.APPLICATION, payload))

    # 1000 recipients are 10 tokens: the whole burst, billed after the fan-out.
    answer = await answer_of(dispatcher, message(b"m1"), connection)
    assert isinstance(answer, Published)
    assert answer.recipients == 1000
    answer = await answer_of(dispatcher, message(b"m2"), connection)
    assert await _code(answer) is ErrorCode.RATE_LIMITED


async def test_a_commit_to_a_wide_group_is_paid_before_it_is_verified(
    storage: SqlCipherStorage, owner: Member
) -> None:
    # 101 members: beyond the first 100 recipients a commit pays one more
    # token, which a burst of 1 (the call's own token) cannot.
    dispatcher = _dispatcher(storage, burst=1)
    connection = proven(owner.key)
    group_id = owner.mls.create_group().group_id
    joiners = [Member.generate() for _ in range(100)]
    owner.mls.add_members(group_id, [joiner.key_packages(1)[0] for joiner in joiners])
    owner.mls.merge_pending_commit(group_id)
    state, registered = DeliveryGroup.create(owner.mls.export_group_info(group_id))
    assert len(state.members()) == 101
    await storage.create_group(
        group_id,
        creator=owner.key,
        epoch=registered.epoch,
        members=registered.members,
        state=registered.changes,
        group_info=owner.mls.export_group_info(group_id),
        now_ms=0,
        max_created=1,
    )
    # A commit for the group's id and epoch, framed right, that verification
    # refuses (another state signed it): a rate-limit answer means it was
    # never verified.
    stranger = Member.generate()
    stranger.mls.create_group(group_id)
    stranger.mls.self_update(group_id)
    stranger.mls.merge_pending_commit(group_id)
    forged = commit_call(stranger.mls.self_update(group_id))
    assert forged.epoch == registered.epoch
    answer = await answer_of(dispatcher, _publish(forged), connection)
    assert await _code(answer) is ErrorCode.RATE_LIMITED
    assert await storage.group_version(group_id) == (registered.epoch, 0)


async def test_a_batch_over_the_stored_cap_is_refused_before_validation(
    storage: SqlCipherStorage, owner: Member, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "MAX_STORED_KEY_PACKAGES", 5)
    dispatcher = _dispatcher(storage, burst=100)
    connection = proven(owner.key)
    answer = await answer_of(dispatcher, _upload(owner.key_packages(3)), connection)
    assert isinstance(answer, Fingerprints)
    # Over the cap is answered before validation, which would have said
    # invalid_key_package.
    answer = await answer_of(dispatcher, _upload(_garbage(3)), connection)
    assert isinstance(answer, ErrorResponse)
    assert answer.code is ErrorCode.INVALID_ARGUMENT
    assert answer.field == "packages"
    assert await _stored(storage, owner) == 3


async def test_ipv6_peers_share_a_bucket_per_64(storage: SqlCipherStorage) -> None:
    dispatcher = _dispatcher(storage, burst=2)

    async def health_from(host: str) -> ErrorCode | None:
        connection = ConnectionState(peer=Endpoint(host=host, port=4433))
        return await _code(await answer_of(dispatcher, Request(call=Health()), connection))

    assert await health_from("2001:db8:1:2::1") is None
    assert await health_from("2001:db8:1:2:ffff::9") is None
    # A third address in the same /64 is the same host: its bucket is empty.
    assert await health_from("2001:db8:1:2::3") is ErrorCode.RATE_LIMITED
    # Another /64, and IPv4 addresses, have their own buckets.
    assert await health_from("2001:db8:1:3::1") is None
    assert await health_from("192.0.2.1") is None
    assert await health_from("192.0.2.2") is None
