from __future__ import annotations

import pytest
from conftest import User, make_group

from qpq_core import MalformedMlsMessageError, MessageInfo, MlsMessageKind, peek_message


def test_peek_reads_kind_group_and_epoch_without_state(alice: User, bob: User, carol: User) -> None:
    group_id = make_group(alice, bob)
    application = alice.client.encrypt(group_id, b"hi").message
    assert peek_message(application) == peek_message(application)
    info = peek_message(application)
    assert (info.kind, info.group_id, info.epoch) == (MlsMessageKind.APPLICATION, group_id, 1)
    assert info.wire_format == "private"

    bundle = alice.client.add_members(group_id, [carol.key_package()])
    info = peek_message(bundle.commit)
    assert (info.kind, info.group_id, info.epoch) == (MlsMessageKind.COMMIT, group_id, 1)
    assert info.wire_format == "public"
    assert bundle.welcome is not None
    assert peek_message(bundle.welcome).kind is MlsMessageKind.WELCOME
    assert peek_message(bundle.welcome).group_id is None
    assert peek_message(bundle.welcome).wire_format is None
    info = peek_message(bundle.group_info)
    assert (info.kind, info.group_id, info.epoch) == (MlsMessageKind.GROUP_INFO, group_id, 2)
    assert info.wire_format is None

    proposal = bob.client.leave(group_id).proposal
    info = peek_message(proposal)
    assert (info.kind, info.group_id, info.epoch) == (MlsMessageKind.PROPOSAL, group_id, 1)
    assert info.wire_format == "public"


def test_peek_key_package(alice: User) -> None:
    info = peek_message(alice.key_package())
    assert info.kind is MlsMessageKind.KEY_PACKAGE
    assert info.group_id is None
    assert info.epoch is None
    assert info.wire_format is None


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x01", b"\x00\x01\x00\x09", b"\xff" * 40])
def test_peek_garbage_raises(data: bytes) -> None:
    with pytest.raises(MalformedMlsMessageError):
        peek_message(data)


def test_peek_refuses_oversized_input() -> None:
    with pytest.raises(MalformedMlsMessageError):
        peek_message(b"\x00" * (8 * 1024 * 1024 + 1))


def test_message_info_is_a_frozen_result_of_the_extension(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    message = alice.client.encrypt(group_id, b"hi").message
    info = peek_message(message)
    assert isinstance(info, MessageInfo)
    assert type(info).__module__ == "qpq_core._mls"
    assert hash(info) == hash(peek_message(message))
    assert info != peek_message(bob.client.leave(group_id).proposal)
    with pytest.raises(AttributeError):
        info.epoch = 2  # type: ignore[misc]
    assert repr(info) == (
        f"MessageInfo(kind=APPLICATION, group_id={group_id[:8].hex()}…, epoch=1,"
        " wire_format='private')"
    )
