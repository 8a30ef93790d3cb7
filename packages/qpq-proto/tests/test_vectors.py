"""Golden wire vectors: the committed bytes decode to the expected values and
re-encode to the same bytes. A failure here is a wire-format change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from proto_samples import DECODERS, ENCODERS, VECTORS, union_members

from qpq_proto import Call, ErrorCode, Request, Result
from qpq_proto._schema import schema

VECTOR_DIR = Path(__file__).parent / "vectors"


def _vector(name: str) -> bytes:
    return (VECTOR_DIR / f"{name}.bin").read_bytes()


def test_every_vector_file_is_listed_and_every_listed_vector_exists() -> None:
    on_disk = {p.stem for p in VECTOR_DIR.glob("*.bin")}
    assert on_disk == set(VECTORS)


def test_vectors_cover_every_call_result_and_error_code() -> None:
    values = [value for _kind, value in VECTORS.values()]
    calls = {type(v.call) for v in values if isinstance(v, Request)}
    results = {type(v) for kind, v in VECTORS.values() if kind == "response"}
    codes = {v.code for kind, v in VECTORS.values() if kind == "response" and hasattr(v, "code")}
    assert calls == union_members(Call)
    assert union_members(Result) <= results
    assert codes == set(ErrorCode)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_decodes_to_expected_value(name: str) -> None:
    kind, expected = VECTORS[name]
    decoded: Any = DECODERS[kind](_vector(name))
    assert decoded == expected
    assert type(decoded) is type(expected)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_reencodes_to_identical_bytes(name: str) -> None:
    kind, expected = VECTORS[name]
    assert ENCODERS[kind](expected) == _vector(name)


def test_health_request_bytes_are_the_documented_example() -> None:
    # The example in docs/protocol.md: a tokenless Health request, 56 bytes.
    assert _vector("request_health_no_token").hex() == (
        "0000000006000000"  # one segment of 6 words
        "0000000001000200"  # root: struct, data 1 word, 2 pointers
        "0100000000000000"  # version=1, call discriminant 0 (health)
        "0400000000000100"  # auth: struct, 0 data words, 1 pointer
        "0000000000000000"  # call payload pointer (void: null)
        "010000000a000000"  # auth.token: text of 1 byte (the NUL)
        "0000000000000000"
    )


def test_vectors_read_with_the_plain_schema() -> None:
    # Another implementation only has qpq.capnp: check the layout without our codec.
    with schema().Request.from_bytes(_vector("request_fetch")) as request:
        assert request.version == 1
        assert request.auth.token == "s3cret-token-value"
        assert request.call.which() == "fetch"
        assert request.call.fetch.limit == 100
    with schema().Response.from_bytes(_vector("response_error_invalid_argument")) as response:
        assert response.which() == "error"
        assert response.error.code == "invalidArgument"
        assert response.error.field == "limit"
    with schema().Event.from_bytes(_vector("event_message")) as event:
        assert event.which() == "message"
        assert event.message.seq == 1


@pytest.mark.parametrize(
    ("name", "expected"), [("event_message", "ENVELOPE_1"), ("event_gap", "GAP")]
)
def test_events_from_before_the_envelope_grew_still_decode(name: str, expected: str) -> None:
    # vectors/before/ holds the bytes of these events as a server wrote them
    # before Envelope gained groupId and groupInfoDigest (appended fields,
    # docs/protocol.md §10): a newer client reads them, the new fields empty.
    import proto_samples

    decoded = DECODERS["event"]((VECTOR_DIR / "before" / f"{name}.bin").read_bytes())
    assert decoded == getattr(proto_samples, expected)
    assert decoded.group_id == b""
    assert decoded.group_info_digest == b""


def test_results_from_before_they_grew_still_decode() -> None:
    # vectors/before/ holds the bytes of a challenge and a KeyPackage count as a
    # server wrote them before the limits and lastResortServed were appended
    # (docs/protocol.md §10): a newer client reads them, the new fields 0.
    from proto_samples import NONCE

    from qpq_proto import ChallengeNonce, KeyPackageCount

    before = VECTOR_DIR / "before"
    challenge = DECODERS["response"]((before / "response_challenge.bin").read_bytes())
    assert challenge == ChallengeNonce(nonce=NONCE)
    assert (challenge.max_payload_bytes, challenge.message_ttl_seconds) == (0, 0)
    count = DECODERS["response"]((before / "response_key_package_count.bin").read_bytes())
    assert count == KeyPackageCount(count=12, has_last_resort=True, last_resort_served=0)


def test_calls_and_answers_from_before_accounts_still_decode() -> None:
    # vectors/before/ holds a RegisterUser, a Usernames answer and a commit's
    # event as they were written before RegisterUser.invite, Usernames.statuses
    # and Envelope.accountDeleted were appended (docs/protocol.md §10): they
    # read with the new fields empty.
    from proto_samples import BOB, COMMIT_ENVELOPE, TOKEN

    from qpq_proto import RegisterUser, Request, Usernames

    before = VECTOR_DIR / "before"
    request = DECODERS["request"]((before / "request_register_user.bin").read_bytes())
    assert request == Request(call=RegisterUser(username="alice"), token=TOKEN)
    assert request.call.invite == ""
    answer = DECODERS["response"]((before / "response_usernames.bin").read_bytes())
    assert answer == Usernames(usernames=("alice", "", "bob"))
    assert answer.statuses == ()
    event = DECODERS["event"]((before / "event_commit.bin").read_bytes())
    assert event == COMMIT_ENVELOPE
    assert event.account_deleted == b""
    assert not event.is_deletion
    assert COMMIT_ENVELOPE.sender == BOB


def test_key_package_calls_from_before_suites_still_decode() -> None:
    # vectors/before/ holds a claim and a count as encoded before
    # FetchKeyPackage gained ciphersuite and KeyPackageCount gained suites
    # (appended fields, docs/protocol.md §10): read now, the claim is for the
    # default suite and the count's top-level fields are that suite's.
    from proto_samples import BOB, TOKEN

    from qpq_proto import DEFAULT_CIPHERSUITE, FetchKeyPackage, KeyPackageCount, Request

    before = VECTOR_DIR / "before"
    claim = DECODERS["request"]((before / "request_fetch_key_package.bin").read_bytes())
    assert claim == Request(call=FetchKeyPackage(identity_key=BOB), token=TOKEN)
    assert claim.call.ciphersuite == 0
    assert claim.call.suite == DEFAULT_CIPHERSUITE
    count = DECODERS["response"]((before / "response_key_package_count_one_suite.bin").read_bytes())
    assert count == KeyPackageCount(count=12, has_last_resort=True, last_resort_served=3)
    assert count.suites == ()
    one = count.for_suite(DEFAULT_CIPHERSUITE)
    assert (one.count, one.has_last_resort, one.last_resort_served) == (12, True, 3)
    assert count.for_suite(0x004D).count == 0


def test_challenge_and_acked_from_before_stream_acks_still_decode() -> None:
    # vectors/before/ holds a challenge and an Acked answer as a server wrote
    # them before ChallengeNonce.streamAcks and Acked.upToSeq were appended
    # (docs/protocol.md §10): they read with the new fields empty, so a newer
    # client takes such a server for one that serves no SubscribeWithAcks.
    from proto_samples import NONCE

    from qpq_proto import Acked, ChallengeNonce

    before = VECTOR_DIR / "before"
    challenge = DECODERS["response"]((before / "response_challenge_limits.bin").read_bytes())
    assert isinstance(challenge, ChallengeNonce)
    assert challenge.nonce == NONCE
    assert challenge.max_message_bytes == 8 * 1024 * 1024
    assert challenge.stream_acks is False
    acked = DECODERS["response"]((before / "response_acked.bin").read_bytes())
    assert acked == Acked(removed=2, up_to_seq=0)
