from __future__ import annotations

from conftest import User, secret

from qpq_core import ApplicationMessage, CommitApplied, Identity, MlsClient


def test_hundred_member_group_is_built_and_messaged() -> None:
    creator = User()
    group_id = creator.persist(creator.client.create_group()).group_id
    members = [MlsClient(Identity.generate()) for _ in range(99)]
    packages = [m.create_key_packages(1).packages[0] for m in members]
    bundle = creator.persist(creator.client.add_members(group_id, packages))
    creator.persist(creator.client.merge_pending_commit(group_id))
    assert bundle.welcome is not None
    for member in members:
        assert len(member.join_from_welcome(bundle.welcome).members) == 100
    assert len(creator.client.members(group_id)) == 100

    message = creator.persist(creator.client.encrypt(group_id, b"hello hundred")).message
    for member in members:
        result = member.process(message)
        assert isinstance(result, ApplicationMessage)
        assert result.plaintext == b"hello hundred"
    reply = members[42].encrypt(group_id, b"from 42").message
    result = creator.client.process(reply)
    assert isinstance(result, ApplicationMessage)
    assert result.sender == members[42].identity.public_key

    # One member removed by another; everyone follows.
    removal = members[0].remove_members(group_id, [members[99 - 1].identity.public_key])
    members[0].merge_pending_commit(group_id)
    for client in [creator.client, *members[1:]]:
        applied = client.process(removal.commit)
        assert isinstance(applied, CommitApplied)
        assert applied.epoch == 2
    expected = secret(creator, group_id)
    assert all(m.export_secret(group_id, "qpq test", b"", 32) == expected for m in members[:-1])
