"""Size caps before any decoder runs, with qpq_proto's default limits."""

from __future__ import annotations

import pytest
from conftest import User, make_group

from qpq_core import (
    MAX_KEY_PACKAGE_BYTES,
    MAX_MESSAGE_BYTES,
    ApplicationMessage,
    MalformedMlsMessageError,
    validate_key_package,
)
from qpq_proto import DEFAULT_LIMITS


def test_caps_are_qpq_protos_limits() -> None:
    assert MAX_KEY_PACKAGE_BYTES == DEFAULT_LIMITS.max_key_package_bytes == 1024 * 1024
    assert MAX_MESSAGE_BYTES == DEFAULT_LIMITS.max_message_bytes == 8 * 1024 * 1024


def test_oversized_input_is_refused_before_decoding(alice: User, bob: User) -> None:
    group_id = make_group(alice)
    message = b"\x00" * (MAX_MESSAGE_BYTES + 1)
    package = b"\x00" * (MAX_KEY_PACKAGE_BYTES + 1)
    with pytest.raises(MalformedMlsMessageError, match="exceeds"):
        bob.client.process(message)
    with pytest.raises(MalformedMlsMessageError, match="exceeds"):
        bob.client.join_from_welcome(message)
    with pytest.raises(MalformedMlsMessageError, match="exceeds"):
        validate_key_package(package)
    with pytest.raises(MalformedMlsMessageError, match="exceeds"):
        alice.client.add_members(group_id, [bob.key_package(), package])
    assert not alice.client.has_pending_commit(group_id)


def test_bytes_like_messages_are_accepted(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    message = alice.persist(alice.client.encrypt(group_id, b"in a bytearray")).message
    result = bob.persist(bob.client.process(bytearray(message)))  # type: ignore[arg-type]
    assert isinstance(result, ApplicationMessage)
    assert result.plaintext == b"in a bytearray"
