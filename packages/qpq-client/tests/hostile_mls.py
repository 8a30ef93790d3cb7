"""Hostile MLS messages a member can make that a delivery service cannot tell apart.

Just enough RFC 9420 TLS presentation (after packages/qpq-core/tests/_tls.py)
to take a member's real commit or GroupInfo apart and put it together again,
re-signed with the member's own identity:

- :func:`with_broken_membership_tag`: a commit whose membership tag (the
  MAC only members can check, RFC 9420 §6.2) is wrong;
- :func:`with_garbage_path`: a commit whose encrypted path secrets (RFC 9420
  §12.4.2) nobody can decrypt, yet whose signature, membership tag and
  transcript are all recomputed so that everything checkable holds, with the
  GroupInfo of the epoch it creates to match (§8.2 transcript hashes);
- :func:`with_external_pub`: a GroupInfo naming an external key of the
  signer's choosing (§12.4.3.2), signed again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

from qpq_core import Identity

#: ExtensionType external_pub (RFC 9420 §17.3).
EXTERNAL_PUB = 4
#: WireFormat mls_public_message (RFC 9420 §6).
PUBLIC_MESSAGE = 1


def varint(n: int) -> bytes:
    """RFC 9420 §2.1.2 variable-length integer."""
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return (n | 0x4000).to_bytes(2, "big")
    return (n | 0x80000000).to_bytes(4, "big")


def vec(data: bytes) -> bytes:
    return varint(len(data)) + data


def sign_with_label(identity: Identity, label: bytes, content: bytes) -> bytes:
    """SignWithLabel (RFC 9420 §5.1.2)."""
    return identity.sign(vec(b"MLS 1.0 " + label) + vec(content))


class Reader:
    """A cursor over TLS-serialized bytes."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        if len(out) != n:
            raise ValueError("truncated")
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vec_span(self) -> tuple[int, int]:
        """Where the next vector's content starts and ends; the cursor moves past it."""
        first = self.data[self.pos]
        size = 1 << (first >> 6)
        n = int.from_bytes(self.take(size), "big") & ((1 << (8 * size - 2)) - 1)
        start = self.pos
        self.take(n)
        return start, self.pos

    def vec(self) -> bytes:
        start, end = self.vec_span()
        return self.data[start:end]


# ---- GroupInfo ------------------------------------------------------------------


@dataclass
class GroupContext:
    """RFC 9420 §8.1, split where a hostile committer rewrites it."""

    head: bytes  # version, cipher_suite, group_id<V>, epoch
    tree_hash: bytes
    confirmed_transcript_hash: bytes
    extensions: bytes  # the vector's content

    @classmethod
    def read(cls, r: Reader) -> GroupContext:
        start = r.pos
        r.take(4)  # version, cipher_suite
        r.vec()  # group_id
        r.take(8)  # epoch
        head = r.data[start : r.pos]
        return cls(head, r.vec(), r.vec(), r.vec())

    def serialize(self) -> bytes:
        return (
            self.head
            + vec(self.tree_hash)
            + vec(self.confirmed_transcript_hash)
            + vec(self.extensions)
        )


def _extensions(data: bytes) -> list[tuple[int, bytes]]:
    r = Reader(data)
    found = []
    while r.pos < len(data):
        kind = r.u16()
        found.append((kind, r.vec()))
    return found


def _extensions_vec(items: list[tuple[int, bytes]]) -> bytes:
    return vec(b"".join(kind.to_bytes(2, "big") + vec(body) for kind, body in items))


@dataclass
class GroupInfo:
    """An MLSMessage(GroupInfo) (RFC 9420 §12.4.3)."""

    context: GroupContext
    extensions: list[tuple[int, bytes]]
    confirmation_tag: bytes
    signer: int

    @classmethod
    def parse(cls, message: bytes) -> GroupInfo:
        r = Reader(message)
        if (r.u16(), r.u16()) != (1, 4):  # mls10, mls_group_info
            raise ValueError("not an MLSMessage(GroupInfo)")
        context = GroupContext.read(r)
        extensions = _extensions(r.vec())
        tag = r.vec()
        signer = int.from_bytes(r.take(4), "big")
        r.vec()  # signature
        if r.pos != len(message):
            raise ValueError("trailing bytes")
        return cls(context, extensions, tag, signer)

    def serialize(self, identity: Identity) -> bytes:
        tbs = (
            self.context.serialize()
            + _extensions_vec(self.extensions)
            + vec(self.confirmation_tag)
            + self.signer.to_bytes(4, "big")
        )
        signature = sign_with_label(identity, b"GroupInfoTBS", tbs)
        return (1).to_bytes(2, "big") + (4).to_bytes(2, "big") + tbs + vec(signature)


def with_external_pub(group_info: bytes, key: bytes, identity: Identity) -> bytes:
    """``group_info`` naming ``key`` as the epoch's external key, signed by ``identity``."""
    parsed = GroupInfo.parse(group_info)
    kept = [(k, d) for k, d in parsed.extensions if k != EXTERNAL_PUB]
    parsed.extensions = [*kept, (EXTERNAL_PUB, vec(key))]
    return parsed.serialize(identity)


# ---- commits ----------------------------------------------------------------------


@dataclass
class PublicCommit:
    """A member's PublicMessage commit (RFC 9420 §6.2), split into its parts.

    ``content`` is the FramedContent; ``ciphertexts`` are the spans, inside
    it, of each HPKECiphertext.ciphertext of the UpdatePath (§12.4.2).
    """

    content: bytearray
    signature: bytes
    confirmation_tag: bytes
    membership_tag: bytes
    ciphertexts: list[tuple[int, int]]

    @classmethod
    def parse(cls, message: bytes) -> PublicCommit:
        r = Reader(message)
        if (r.u16(), r.u16()) != (1, PUBLIC_MESSAGE):
            raise ValueError("not a PublicMessage")
        start = r.pos
        r.vec()  # group_id
        r.take(8)  # epoch
        if r.u8() != 1:  # SenderType member
            raise ValueError("not a member's message")
        r.take(4)  # leaf_index
        r.vec()  # authenticated_data
        if r.u8() != 3:  # ContentType commit
            raise ValueError("not a commit")
        r.vec()  # proposals
        ciphertexts: list[tuple[int, int]] = []
        if r.u8():  # optional<UpdatePath>
            _skip_leaf_node(r)
            nodes_start, nodes_end = r.vec_span()
            nodes = Reader(r.data, nodes_start)
            while nodes.pos < nodes_end:
                nodes.vec()  # encryption_key
                secrets_start, secrets_end = nodes.vec_span()
                cts = Reader(r.data, secrets_start)
                while cts.pos < secrets_end:
                    cts.vec()  # kem_output
                    begin, end = cts.vec_span()
                    ciphertexts.append((begin - start, end - start))
        content = bytearray(message[start : r.pos])
        signature, tag, membership = r.vec(), r.vec(), r.vec()
        if r.pos != len(message):
            raise ValueError("trailing bytes")
        return cls(content, signature, tag, membership, ciphertexts)

    def serialize(self) -> bytes:
        return (
            (1).to_bytes(2, "big")
            + PUBLIC_MESSAGE.to_bytes(2, "big")
            + bytes(self.content)
            + vec(self.signature)
            + vec(self.confirmation_tag)
            + vec(self.membership_tag)
        )

    def tbs(self, context: GroupContext) -> bytes:
        """FramedContentTBS (RFC 9420 §6.1) of a member's message."""
        return (
            (1).to_bytes(2, "big")
            + PUBLIC_MESSAGE.to_bytes(2, "big")
            + bytes(self.content)
            + context.serialize()
        )

    def tbm(self, context: GroupContext) -> bytes:
        """AuthenticatedContentTBM (RFC 9420 §6.2)."""
        return self.tbs(context) + vec(self.signature) + vec(self.confirmation_tag)


def _skip_leaf_node(r: Reader) -> None:
    """A LeafNode (RFC 9420 §7.2) whose source is a commit."""
    r.vec()  # encryption_key
    r.vec()  # signature_key
    if r.u16() != 1:  # basic credential
        raise ValueError("not a basic credential")
    r.vec()  # identity
    for _ in range(5):  # capabilities: versions, ciphersuites, extensions, proposals, credentials
        r.vec()
    source = r.u8()
    if source == 1:  # key_package: lifetime
        r.take(16)
    elif source == 3:  # commit: parent_hash
        r.vec()
    r.vec()  # extensions
    r.vec()  # signature


def with_broken_membership_tag(commit: bytes) -> bytes:
    """``commit`` with one bit of its membership tag (its last field) flipped."""
    return commit[:-1] + bytes([commit[-1] ^ 1])


def membership_key(rows: list[tuple[bytes, bytes]], group_id: bytes) -> bytes:
    """The current epoch's membership key, read from a member's stored MLS state
    (OpenMLS's JSON ``MessageSecrets`` row, docs/mls.md "What the host persists")."""
    key = json.dumps({"value": {"vec": list(group_id)}}, separators=(",", ":"))
    label = b"MessageSecrets" + key.encode()
    for key, value in rows:
        if key.startswith(label):
            secrets = json.loads(value)["message_secrets"]
            return bytes(secrets["membership_key"]["secret"]["value"]["vec"])
    raise LookupError("no message secrets for this group")


def with_garbage_path(
    commit: bytes,
    new_group_info: bytes,
    *,
    current_group_info: bytes,
    membership_key: bytes,
    identity: Identity,
) -> tuple[bytes, bytes]:
    """A member's commit whose encrypted path secrets are garbage, and the
    GroupInfo of the epoch it creates, both made to verify as far as anyone
    but the members can check.

    ``commit`` and ``new_group_info`` are the member's real ones (a
    ``CommitBundle``); ``current_group_info`` is the GroupInfo of the epoch
    the commit is for (its GroupContext is what the signature covers, its
    confirmed transcript hash and confirmation tag give the interim
    transcript hash); ``membership_key`` is that epoch's.

    The path's public keys (so the tree and its hash) stay as they were; every
    HPKE ciphertext is flipped. Then: the FramedContentTBS is signed again
    (RFC 9420 §6.1), the confirmed transcript hash recomputed (§8.2: the
    interim hash of the epoch, then the commit's
    ConfirmedTranscriptHashInput), the GroupInfo rebuilt with it and signed
    again, and the membership tag recomputed over the AuthenticatedContentTBM
    with the epoch's membership key (HMAC-SHA256, §6.2). The confirmation tag
    stays: only the members, who derive the new epoch's keys from the path,
    could tell that it is wrong.
    """
    parsed = PublicCommit.parse(commit)
    if not parsed.ciphertexts:
        raise ValueError("the commit has no UpdatePath")
    for start, end in parsed.ciphertexts:
        for at in range(start, end):
            parsed.content[at] ^= 0x5A
    current = GroupInfo.parse(current_group_info)
    parsed.signature = sign_with_label(identity, b"FramedContentTBS", parsed.tbs(current.context))
    interim = hashlib.sha256(
        current.context.confirmed_transcript_hash + vec(current.confirmation_tag)
    ).digest()
    confirmed_input = (
        PUBLIC_MESSAGE.to_bytes(2, "big") + bytes(parsed.content) + vec(parsed.signature)
    )
    confirmed = hashlib.sha256(interim + confirmed_input).digest()
    parsed.membership_tag = hmac.new(
        membership_key, parsed.tbm(current.context), hashlib.sha256
    ).digest()
    new = GroupInfo.parse(new_group_info)
    if new.confirmation_tag != parsed.confirmation_tag:
        raise ValueError("the GroupInfo is not of this commit")
    new.context.confirmed_transcript_hash = confirmed
    return parsed.serialize(), new.serialize(identity)
