"""Hostile bytes into every parsing entry point raise only qpq-core's errors
(MlsError subclasses, and qpq_proto's KeyPackage and ciphersuite errors that
qpq-core raises): never PanicException (a BaseException), never anything
else."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Server, User, make_group_with_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qpq_core import (
    DeliveryGroup,
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


Corpus = tuple[dict[str, bytes], list[Callable[[bytes], object]]]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    """Real messages of each kind, and every entry point that parses them:
    a member (Bob) and the delivery service of the group."""
    alice, bob, carol, dave = User(), User(), User(), User()
    group_id, server = make_group_with_server(alice, bob, dave)
    proposal = dave.client.leave(group_id).proposal
    bundle = alice.client.add_members(group_id, [carol.key_package()])
    assert bundle.welcome is not None
    messages = {
        "key_package": carol.key_package(),
        "application": alice.client.encrypt(group_id, b"fuzz me").message,
        "commit": bundle.commit,
        "welcome": bundle.welcome,
        "group_info": bundle.group_info,
        "proposal": proposal,
    }
    return messages, _entry_points(bob, group_id, server, bundle.commit)


def _entry_points(
    member: User, group_id: bytes, server: Server, commit: bytes
) -> list[Callable[[bytes], object]]:
    return [
        validate_key_package,
        peek_message,
        member.client.process,
        member.client.join_from_welcome,
        lambda data: member.client.rejoin(group_id, data, b""),
        lambda data: member.client.rejoin(
            group_id, member.client.export_group_info(group_id), data
        ),
        DeliveryGroup.create,
        server.group.verify,
        lambda data: server.group.verify(commit, data),
    ]


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


KINDS = ["key_package", "application", "commit", "welcome", "group_info", "proposal"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_entry_point_on_mutated_messages(kind: str, corpus: Corpus) -> None:
    messages, entry_points = corpus

    @_SETTINGS
    @given(data=mutations(messages[kind]))
    def run(data: bytes) -> None:
        for call in entry_points:
            _only_mls_errors(call, data)

    run()


@_SETTINGS
@given(data=st.binary(max_size=2048))
def test_random_bytes(data: bytes, corpus: Corpus) -> None:
    for call in corpus[1]:
        _only_mls_errors(call, data)
