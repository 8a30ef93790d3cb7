"""Expensive work is paid for before it is done: batch costs and the stored-package cap.

In-process, with a frozen clock, so token counts are exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from server_helpers import answer_of

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
from qpq_server._mls import KeyPackageFacts, MessageFacts, VerifiedChange
from qpq_server._notifier import DeliveryNotifier
from qpq_server._sqlcipher import SqlCipherStorage

OWNER = b"o" * 32
GROUP = b"group"
TOKEN = "tok"


class FrozenClock(Clock):
    def wall_ms(self) -> int:
        return 1_700_000_000_000

    def monotonic(self) -> float:
        return 1000.0


class CountingGroup:
    """A group state that counts the handshakes it was asked to verify."""

    def __init__(self, members: tuple[bytes, ...]) -> None:
        self._members = members
        self.verified = 0

    def epoch(self) -> int:
        return 0

    def members(self) -> tuple[bytes, ...]:
        return self._members

    def ratchet_tree(self) -> bytes:
        return b"tree"

    def verify(self, message: bytes, group_info: bytes | None) -> VerifiedChange:
        self.verified += 1
        return VerifiedChange(epoch=1, sender=OWNER, is_commit=True, members=self._members)


class CountingMls:
    """Accepts every KeyPackage as the owner's, counting validations; groups are
    :class:`CountingGroup` over the stored roster."""

    def __init__(self) -> None:
        self.validated = 0
        self.groups: dict[bytes, CountingGroup] = {}
        self.roster: tuple[bytes, ...] = ()

    def verify_signature(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        pass

    def validate_key_package(
        self, data: bytes, *, now: int, max_lifetime_seconds: int
    ) -> KeyPackageFacts:
        self.validated += 1
        return KeyPackageFacts(OWNER, data.ljust(32, b"\0")[:32], now + 3600, last_resort=False)

    def peek_message(self, data: bytes) -> MessageFacts:
        if data.startswith(b"commit"):
            return MessageFacts(MessageKind.COMMIT, GROUP, 0, "public")
        return MessageFacts(MessageKind.APPLICATION, GROUP, 0, "private")

    def load_group(self, group_id: bytes, rows: list[tuple[bytes, bytes]]) -> CountingGroup:
        return self.groups.setdefault(group_id, CountingGroup(self.roster))


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqlCipherStorage]:
    opened = await SqlCipherStorage.open(tmp_path / "qpq.db", "key")
    yield opened
    await opened.close()


def _dispatcher(storage: SqlCipherStorage, mls: CountingMls, burst: int) -> Dispatcher:
    limits = dataclasses.replace(DEFAULT_LIMITS, rate_per_second=0.001, rate_burst=burst)
    app = App(
        config=ServerConfig(auth_token=TOKEN, limits=limits),
        storage=storage,
        mls=mls,
        notifier=DeliveryNotifier(),
        clock=FrozenClock(),
        version="test",
        started_at=0.0,
    )
    return Dispatcher(app, Metrics())


def _upload(first: int, count: int) -> Request:
    packages = tuple(b"kp-%d" % i for i in range(first, first + count))
    return Request(call=UploadKeyPackages(packages=packages), token=TOKEN)


async def _code(answer: Response | Subscription) -> ErrorCode | None:
    return answer.code if isinstance(answer, ErrorResponse) else None


async def test_a_big_key_package_batch_costs_more_than_one_token(
    storage: SqlCipherStorage,
) -> None:
    mls = CountingMls()
    dispatcher = _dispatcher(storage, mls, burst=10)
    connection = ConnectionState(peer=None, identity=OWNER)
    # 100 packages are 10 tokens: the whole burst.
    assert isinstance(await answer_of(dispatcher, _upload(0, 100), connection), Fingerprints)
    answer = await answer_of(dispatcher, _upload(100, 10), connection)
    assert await _code(answer) is ErrorCode.RATE_LIMITED
    assert mls.validated == 100


async def _group_with(storage: SqlCipherStorage, others: int) -> tuple[bytes, ...]:
    roster = (OWNER, *(i.to_bytes(32, "big") for i in range(1, others + 1)))
    await storage.create_group(
        GROUP,
        creator=OWNER,
        epoch=0,
        members=roster,
        state=(),
        group_info=b"group-info",
        now_ms=0,
        max_created=1,
    )
    return roster


def _publish(kind: MessageKind, payload: bytes) -> Request:
    return Request(call=Publish(GROUP, 0, kind, payload), token=TOKEN)


async def test_a_wide_publish_costs_more_than_one_token(storage: SqlCipherStorage) -> None:
    dispatcher = _dispatcher(storage, CountingMls(), burst=10)
    connection = ConnectionState(peer=None, identity=OWNER)
    await _group_with(storage, 1000)
    # 1000 recipients are 10 tokens: the whole burst, billed after the fan-out.
    answer = await answer_of(dispatcher, _publish(MessageKind.APPLICATION, b"m1"), connection)
    assert isinstance(answer, Published)
    assert answer.recipients == 1000
    answer = await answer_of(dispatcher, _publish(MessageKind.APPLICATION, b"m2"), connection)
    assert await _code(answer) is ErrorCode.RATE_LIMITED


async def test_a_commit_to_a_wide_group_is_paid_before_it_is_verified(
    storage: SqlCipherStorage,
) -> None:
    mls = CountingMls()
    dispatcher = _dispatcher(storage, mls, burst=5)
    connection = ConnectionState(peer=None, identity=OWNER)
    mls.roster = await _group_with(storage, 1000)
    answer = await answer_of(dispatcher, _publish(MessageKind.COMMIT, b"commit"), connection)
    assert await _code(answer) is ErrorCode.RATE_LIMITED
    assert mls.groups[GROUP].verified == 0
    assert await storage.group_version(GROUP) == (0, 0)


async def test_a_batch_over_the_stored_cap_is_refused_before_validation(
    storage: SqlCipherStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "MAX_STORED_KEY_PACKAGES", 5)
    mls = CountingMls()
    dispatcher = _dispatcher(storage, mls, burst=100)
    connection = ConnectionState(peer=None, identity=OWNER)
    assert isinstance(await answer_of(dispatcher, _upload(0, 3), connection), Fingerprints)
    answer = await answer_of(dispatcher, _upload(3, 3), connection)
    assert await _code(answer) is ErrorCode.INVALID_ARGUMENT
    assert mls.validated == 3


async def test_ipv6_peers_share_a_bucket_per_64(storage: SqlCipherStorage) -> None:
    dispatcher = _dispatcher(storage, CountingMls(), burst=2)

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
