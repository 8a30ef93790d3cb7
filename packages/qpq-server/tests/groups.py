"""Real MLS groups on a real server, built the way a client builds them.

Every server test that needs messages in a queue gets them from a group:
each test identity is a :class:`Member` (an identity and its in-memory
qpq-core ``MlsClient``); the group is registered with CreateGroup, members
are added by a commit built from KeyPackages claimed on the server, the
joiners join from the Welcome the server routed to them, and application
messages are encrypted with MLS and published. Nothing here bypasses the
server's checks: what a test gets into a queue, a real client could.

Also here: the hand-made messages the attack tests send (an MLS message
with another cleartext epoch, a PrivateMessage "commit").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from server_helpers import authed, varint

import qpq_core
from qpq_proto import (
    Ack,
    CreateGroup,
    Envelope,
    Fetch,
    FetchGroupInfo,
    FetchKeyPackage,
    GroupSnapshot,
    MessageKind,
    Publish,
    Published,
    UploadKeyPackages,
)
from qpq_proto.errors import ServiceError
from qpq_server.testing import CallClient, RunningServer

#: The exporter label every test compares members by (RFC 9420 §8.5).
EXPORTER_LABEL = "qpq server test"


@dataclass(frozen=True, slots=True)
class Member:
    """A test identity with its MLS state (in memory, as a client keeps it)."""

    identity: qpq_core.Identity
    mls: qpq_core.MlsClient

    @classmethod
    def generate(cls) -> Member:
        identity = qpq_core.Identity.generate()
        return cls(identity, qpq_core.MlsClient(identity))

    @property
    def key(self) -> bytes:
        """The identity key: the server's name for this member."""
        return self.identity.public_key

    def epoch(self, group_id: bytes) -> int:
        return self.mls.epoch(group_id)

    def exporter(self, group_id: bytes) -> bytes:
        """The epoch's exporter secret: equal across members iff they share the epoch."""
        return self.mls.export_secret(group_id, EXPORTER_LABEL, b"", 32)

    def key_packages(self, count: int) -> tuple[bytes, ...]:
        return tuple(self.mls.create_key_packages(count).packages)


def members(count: int) -> list[Member]:
    return [Member.generate() for _ in range(count)]


# ---- calls ------------------------------------------------------------------


async def create_group(client: CallClient, member: Member, group_id: bytes | None = None) -> bytes:
    """A new group with ``member`` alone in it, registered on the server."""
    created = member.mls.create_group(group_id)
    await client.call(CreateGroup(group_info=created.group_info))
    return created.group_id


def commit_call(bundle: qpq_core.CommitBundle) -> Publish:
    """The Publish that carries a commit: its GroupInfo, and its Welcome if it adds."""
    return Publish(
        group_id=bundle.group_id,
        epoch=bundle.epoch,
        kind=MessageKind.COMMIT,
        payload=bundle.commit,
        welcome=bundle.welcome or b"",
        group_info=bundle.group_info,
    )


def commit_hash(bundle: qpq_core.CommitBundle) -> bytes:
    """What an epochConflict names when this commit took the epoch."""
    return hashlib.sha256(bundle.commit).digest()


async def publish_commit(
    client: CallClient, member: Member, bundle: qpq_core.CommitBundle
) -> Published:
    """Publish ``member``'s pending commit; merge it once accepted, clear it if refused.

    A refusal is raised after the commit is cleared, as a client does.
    """
    try:
        published: Published = await client.call(commit_call(bundle))
    except ServiceError:
        member.mls.clear_pending_commit(bundle.group_id)
        raise
    member.mls.merge_pending_commit(bundle.group_id)
    return published


def application(member: Member, group_id: bytes, plaintext: bytes) -> Publish:
    """An application message of ``member``, encrypted for the group's current epoch."""
    return Publish(
        group_id=group_id,
        epoch=member.epoch(group_id),
        kind=MessageKind.APPLICATION,
        payload=member.mls.encrypt(group_id, plaintext).message,
    )


async def send(client: CallClient, member: Member, group_id: bytes, plaintext: bytes) -> bytes:
    """Encrypt and publish an application message; return the payload the server stored."""
    call = application(member, group_id, plaintext)
    await client.call(call)
    return call.payload


async def upload_key_package(client: CallClient, member: Member) -> None:
    await client.call(UploadKeyPackages(packages=member.key_packages(1)))


async def claim(client: CallClient, key: bytes) -> bytes:
    return (await client.call(FetchKeyPackage(identity_key=key))).package  # type: ignore[no-any-return]


async def snapshot(client: CallClient, group_id: bytes) -> GroupSnapshot:
    """The group's stored epoch, GroupInfo and tree (the caller must be a member)."""
    return await client.call(FetchGroupInfo(group_id=group_id))  # type: ignore[no-any-return]


async def rejoin(client: CallClient, member: Member, group_id: bytes) -> Published:
    """Catch up by external commit from what the server serves (RFC 9420 §12.4.3.2)."""
    served = await snapshot(client, group_id)
    bundle = member.mls.rejoin(group_id, served.group_info, served.ratchet_tree)
    return await publish_commit(client, member, bundle)


# ---- queues -----------------------------------------------------------------


async def fetch_all(client: CallClient) -> tuple[Envelope, ...]:
    """Everything queued for the connection's identity, left in the queue."""
    return (await client.call(Fetch(limit=1000))).messages  # type: ignore[no-any-return]


async def drain(client: CallClient) -> tuple[Envelope, ...]:
    """Everything queued for the connection's identity, acknowledged."""
    taken: list[Envelope] = []
    while batch := await fetch_all(client):
        taken.extend(batch)
        await client.call(Ack(up_to_seq=batch[-1].seq))
    return tuple(taken)


def is_welcome(payload: bytes) -> bool:
    return qpq_core.peek_message(payload).kind is qpq_core.MlsMessageKind.WELCOME


def process(member: Member, envelopes: Sequence[Envelope]) -> list[object]:
    """What MLS makes of each envelope: a join for a Welcome, else ``process``; a gap
    notice is returned as it is. The first message MLS refuses raises."""
    results: list[object] = []
    for envelope in envelopes:
        if envelope.is_gap:
            results.append(envelope)
        elif is_welcome(envelope.payload):
            results.append(member.mls.join_from_welcome(envelope.payload))
        else:
            results.append(member.mls.process(envelope.payload))
    return results


async def receive(client: CallClient, member: Member) -> list[object]:
    """Drain the queue and process what it held (see :func:`process`)."""
    return process(member, await drain(client))


def plaintexts(results: Sequence[object]) -> list[bytes]:
    return [r.plaintext for r in results if isinstance(r, qpq_core.ApplicationMessage)]


# ---- whole groups -----------------------------------------------------------


async def add(
    server: RunningServer, client: CallClient, committer: Member, group_id: bytes, *joiners: Member
) -> Published:
    """``committer`` adds ``joiners`` (each uploads a KeyPackage, which is claimed),
    and each joiner joins from its Welcome and acknowledges it."""
    for joiner in joiners:
        async with authed(server, joiner.identity) as own:
            await upload_key_package(own, joiner)
    packages = [await claim(client, joiner.key) for joiner in joiners]
    published = await publish_commit(
        client, committer, committer.mls.add_members(group_id, packages)
    )
    for joiner in joiners:
        async with authed(server, joiner.identity) as own:
            (joined,) = await receive(own, joiner)
            assert isinstance(joined, qpq_core.Joined)
            assert joined.group_id == group_id
    return published


async def build_group(
    server: RunningServer, owner: Member, *joiners: Member, group_id: bytes | None = None
) -> bytes:
    """A group of ``owner`` and ``joiners`` on ``server``, every queue empty afterwards."""
    async with authed(server, owner.identity) as client:
        group_id = await create_group(client, owner, group_id)
        if joiners:
            await add(server, client, owner, group_id, *joiners)
    return group_id


@contextlib.asynccontextmanager
async def connections(server: RunningServer, *people: Member) -> AsyncIterator[list[CallClient]]:
    """One authenticated connection per member, in order."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(authed(server, p.identity)) for p in people]


# ---- hand-made messages -------------------------------------------------------


def _varint_size(first: int) -> int:
    return {0: 1, 1: 2, 2: 4}[first >> 6]


def with_epoch(message: bytes, epoch: int) -> bytes:
    """``message`` (a PublicMessage or PrivateMessage) claiming another epoch.

    Both start, after the 4-byte MLSMessage header, with ``group_id<V>`` and
    the 8-byte epoch (RFC 9420 §6.1, §6.3); nothing else changes, so the
    signature or AEAD tag no longer holds.
    """
    length_size = _varint_size(message[4])
    length = int.from_bytes(message[4 : 4 + length_size], "big") & ~(
        0xC0 << (8 * (length_size - 1))
    )
    at = 4 + length_size + length
    return message[:at] + epoch.to_bytes(8, "big") + message[at + 8 :]


def with_broken_signature(commit: bytes) -> bytes:
    """A member's PublicMessage commit with one bit of its signature flipped.

    Such a commit ends with its signature<V> (64 bytes), confirmation_tag<V>
    and membership_tag<V> (32 bytes each, one-byte lengths; RFC 9420 §6.1, §6.2).
    """
    at = len(commit) - 2 * 33 - 32
    return commit[:at] + bytes([commit[at] ^ 1]) + commit[at + 1 :]


def private_commit(group_id: bytes, epoch: int) -> bytes:
    """A hand-made PrivateMessage whose cleartext content type says commit (RFC 9420 §6.3):
    random sender data and ciphertext no one could open."""
    return (
        b"\x00\x01"  # mls10
        + b"\x00\x02"  # mls_private_message
        + varint(len(group_id))
        + group_id
        + epoch.to_bytes(8, "big")
        + b"\x03"  # ContentType commit
        + varint(0)  # authenticated_data
        + varint(32)
        + os.urandom(32)  # encrypted_sender_data
        + varint(96)
        + os.urandom(96)  # ciphertext
    )


def _read_vec(data: bytes, at: int) -> tuple[bytes, int]:
    """One ``<V>`` vector of RFC 9420 §2.1.2 at ``at``: its content and where it ends."""
    size = _varint_size(data[at])
    length = int.from_bytes(data[at : at + size], "big") & ~(0xC0 << (8 * (size - 1)))
    return data[at + size : at + size + length], at + size + length


def with_external_pub(group_info: bytes, key: bytes, signer: qpq_core.Identity) -> bytes:
    """``group_info`` (an MLSMessage(GroupInfo)) with its external_pub extension
    replaced by ``key`` and signed again by ``signer`` (RFC 9420 §12.4.3): what a
    committer who lies about its epoch's external key sends. The server cannot
    tell; the members can."""
    at = 4 + 4  # MLSMessage header; GroupContext version and cipher_suite
    _, at = _read_vec(group_info, at)  # group_id
    at += 8  # epoch
    for _ in range(3):  # tree_hash, confirmed_transcript_hash, extensions
        _, at = _read_vec(group_info, at)
    context = group_info[4:at]
    body, at = _read_vec(group_info, at)
    kept = b""
    pos = 0
    while pos < len(body):
        kind = int.from_bytes(body[pos : pos + 2], "big")
        _data, end = _read_vec(body, pos + 2)
        if kind != 4:  # external_pub (RFC 9420 §17.3)
            kept += body[pos:end]
        pos = end
    external_pub = varint(len(key)) + key  # ExternalPub { HPKEPublicKey external_pub; }
    extensions = kept + (4).to_bytes(2, "big") + varint(len(external_pub)) + external_pub
    tag, at = _read_vec(group_info, at)
    signer_index = group_info[at : at + 4]
    tbs = context + varint(len(extensions)) + extensions + varint(len(tag)) + tag + signer_index
    label = b"MLS 1.0 GroupInfoTBS"
    signature = signer.sign(varint(len(label)) + label + varint(len(tbs)) + tbs)
    return group_info[:4] + tbs + varint(len(signature)) + signature


def _group_context(group_info: bytes) -> bytes:
    """The TLS-serialized GroupContext an MLSMessage(GroupInfo) starts with (RFC 9420 §8.1)."""
    at = 4 + 4  # MLSMessage header; GroupContext version and cipher_suite
    _, at = _read_vec(group_info, at)  # group_id
    at += 8  # epoch
    for _ in range(3):  # tree_hash, confirmed_transcript_hash, extensions
        _, at = _read_vec(group_info, at)
    return group_info[4:at]


def forged_add(
    group_info: bytes, signer: qpq_core.Identity, leaf: int, key_package: bytes
) -> bytes:
    """A PublicMessage commit by the member at ``leaf`` adding ``key_package`` (an
    MLSMessage), framed and signed by hand (RFC 9420 §6.1, §6.2, §12.4) for the
    epoch of ``group_info``: what a client sends that does not check the
    KeyPackage's ciphersuite against the group's (qpq-core and OpenMLS refuse
    to build it). The signature holds; the confirmation and membership tags
    are random, which the server cannot check (it holds no epoch secrets)."""
    context = _group_context(group_info)
    group_id, at = _read_vec(context, 4)
    epoch = context[at : at + 8]
    proposal = b"\x01" + b"\x00\x01" + key_package[4:]  # ProposalOrRef{proposal, Add}
    content = (
        varint(len(group_id))
        + group_id
        + epoch
        + b"\x01"  # sender_type member
        + leaf.to_bytes(4, "big")
        + varint(0)  # authenticated_data
        + b"\x03"  # content_type commit
        + varint(len(proposal))
        + proposal
        + b"\x00"  # no path
    )
    header = b"\x00\x01\x00\x01"  # mls10, mls_public_message
    label = b"MLS 1.0 FramedContentTBS"
    tbs = header + content + context
    signature = signer.sign(varint(len(label)) + label + varint(len(tbs)) + tbs)
    return (
        header
        + content
        + varint(len(signature))
        + signature
        + varint(32)
        + os.urandom(32)  # confirmation_tag
        + varint(32)
        + os.urandom(32)  # membership_tag
    )
