"""Hostile bytes into every parsing entry point raise only qpq-core's errors
(MlsError subclasses, and qpq_proto's KeyPackage and ciphersuite errors that
qpq-core raises): never PanicException (a BaseException), never anything
else."""

from __future__ import annotations

import pytest
from conftest import User, make_group
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qpq_core import (
    InvalidKeyPackageError,
    MlsError,
    UnsupportedCiphersuiteError,
    peek_message,
    validate_key_package,
)

CORE_ERRORS = (MlsError, InvalidKeyPackageError, UnsupportedCiphersuiteError)
_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def corpus() -> tuple[dict[str, bytes], User]:
    """Real messages of each kind, and a member (Bob) who processes them."""
    alice, bob, carol, dave = User(), User(), User(), User()
    group_id = make_group(alice, bob, dave)
    proposal = dave.client.leave(group_id).proposal
    bundle = alice.client.add_members(group_id, [carol.key_package()])
    assert bundle.welcome is not None
    messages = {
        "key_package": carol.key_package(),
        "application": alice.client.encrypt(group_id, b"fuzz me").message,
        "commit": bundle.commit,
        "welcome": bundle.welcome,
        "proposal": proposal,
    }
    return messages, bob


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    flips = st.lists(
        st.tuples(st.integers(0, max(len(seed) - 1, 0)), st.integers(1, 255)),
        min_size=1,
        max_size=8,
    ).map(lambda edits: _flip(seed, edits))
    truncations = st.integers(0, len(seed)).map(lambda n: seed[:n])
    splices = st.tuples(st.integers(0, len(seed)), st.binary(max_size=64)).map(
        lambda t: seed[: t[0]] + t[1] + seed[t[0] :]
    )
    return st.one_of(flips, truncations, splices, st.binary(max_size=512))


def _flip(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(seed)
    for index, mask in edits:
        data[index] ^= mask
    return bytes(data)


def _only_mls_errors(call: object, data: bytes) -> None:
    try:
        call(data)  # type: ignore[operator]
    except CORE_ERRORS:
        pass
    except BaseException as error:
        pytest.fail(f"{type(error).__module__}.{type(error).__name__} escaped: {error!r}")


@pytest.mark.parametrize("kind", ["key_package", "application", "commit", "welcome", "proposal"])
def test_every_entry_point_on_mutated_messages(
    kind: str, corpus: tuple[dict[str, bytes], User]
) -> None:
    messages, bob = corpus

    @_SETTINGS
    @given(data=mutations(messages[kind]))
    def run(data: bytes) -> None:
        _only_mls_errors(validate_key_package, data)
        _only_mls_errors(peek_message, data)
        _only_mls_errors(bob.client.process, data)
        _only_mls_errors(bob.client.join_from_welcome, data)

    run()


@_SETTINGS
@given(data=st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    user = User()
    _only_mls_errors(validate_key_package, data)
    _only_mls_errors(peek_message, data)
    _only_mls_errors(user.client.process, data)
    _only_mls_errors(user.client.join_from_welcome, data)
