"""Just enough RFC 9420 TLS presentation to rewrite and re-sign a
KeyPackage, so tests can craft packages OpenMLS itself would never build
(another ciphersuite, a credential that is not the signature key)."""

from __future__ import annotations

from dataclasses import dataclass

from qpq_core import Identity


def varint(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return (n | 0x4000).to_bytes(2, "big")
    return (n | 0x80000000).to_bytes(4, "big")


def vec(data: bytes) -> bytes:
    return varint(len(data)) + data


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vec(self) -> bytes:
        first = self.data[self.pos]
        size = 1 << (first >> 6)
        n = int.from_bytes(self.take(size), "big") & ((1 << (8 * size - 2)) - 1)
        return self.take(n)


@dataclass
class KeyPackage:
    ciphersuite: int
    init_key: bytes
    encryption_key: bytes
    signature_key: bytes
    identity: bytes
    capabilities: bytes  # the five raw vectors, re-emitted as they were
    source: bytes  # leaf_node_source byte + lifetime
    leaf_extensions: bytes
    extensions: bytes

    @classmethod
    def parse(cls, message: bytes) -> KeyPackage:
        r = Reader(message)
        assert r.u16() == 1
        assert r.u16() == 5
        assert r.u16() == 1
        ciphersuite = r.u16()
        init_key = r.vec()
        encryption_key = r.vec()
        signature_key = r.vec()
        assert r.u16() == 1  # basic credential
        identity = r.vec()
        start = r.pos
        for _ in range(5):
            r.vec()
        capabilities = r.data[start : r.pos]
        source = r.take(17)
        leaf_extensions = r.vec()
        r.vec()  # leaf signature
        extensions = r.vec()
        r.vec()  # signature
        assert r.pos == len(message)
        return cls(
            ciphersuite,
            init_key,
            encryption_key,
            signature_key,
            identity,
            capabilities,
            source,
            leaf_extensions,
            extensions,
        )

    def serialize(self, signer: Identity) -> bytes:
        def sign(label: bytes, content: bytes) -> bytes:
            return vec(signer.sign(vec(b"MLS 1.0 " + label) + vec(content)))

        leaf_tbs = (
            vec(self.encryption_key)
            + vec(self.signature_key)
            + (1).to_bytes(2, "big")
            + vec(self.identity)
            + self.capabilities
            + self.source
            + vec(self.leaf_extensions)
        )
        leaf = leaf_tbs + sign(b"LeafNodeTBS", leaf_tbs)
        tbs = (
            (1).to_bytes(2, "big")
            + self.ciphersuite.to_bytes(2, "big")
            + vec(self.init_key)
            + leaf
            + vec(self.extensions)
        )
        return (1).to_bytes(2, "big") + (5).to_bytes(2, "big") + tbs + sign(b"KeyPackageTBS", tbs)


#: ExtensionType external_pub (RFC 9420 §17.3).
EXTERNAL_PUB = 4


def extensions(data: bytes) -> list[tuple[int, bytes]]:
    """The (type, data) pairs of a TLS-serialized extensions vector's content."""
    r = Reader(data)
    found = []
    while r.pos < len(data):
        kind = r.u16()
        found.append((kind, r.vec()))
    return found


def extensions_vec(items: list[tuple[int, bytes]]) -> bytes:
    return vec(b"".join(kind.to_bytes(2, "big") + vec(body) for kind, body in items))


@dataclass
class GroupInfo:
    """An MLSMessage(GroupInfo), split where a hostile signer would rewrite it."""

    context: bytes  # the GroupContext, raw
    extensions: list[tuple[int, bytes]]
    confirmation_tag: bytes
    signer: int

    @classmethod
    def parse(cls, message: bytes) -> GroupInfo:
        r = Reader(message)
        assert r.u16() == 1
        assert r.u16() == 4  # mls_group_info
        start = r.pos
        r.take(4)  # version, cipher_suite
        r.vec()  # group_id
        r.take(8)  # epoch
        r.vec()  # tree_hash
        r.vec()  # confirmed_transcript_hash
        r.vec()  # extensions
        context = r.data[start : r.pos]
        found = extensions(r.vec())
        tag = r.vec()
        signer = int.from_bytes(r.take(4), "big")
        r.vec()  # signature
        assert r.pos == len(message)
        return cls(context, found, tag, signer)

    def with_external_pub(self, key: bytes) -> GroupInfo:
        kept = [(k, d) for k, d in self.extensions if k != EXTERNAL_PUB]
        return GroupInfo(
            self.context, [*kept, (EXTERNAL_PUB, vec(key))], self.confirmation_tag, self.signer
        )

    def serialize(self, signer: Identity) -> bytes:
        tbs = (
            self.context
            + extensions_vec(self.extensions)
            + vec(self.confirmation_tag)
            + self.signer.to_bytes(4, "big")
        )
        signature = signer.sign(vec(b"MLS 1.0 GroupInfoTBS") + vec(tbs))
        return (1).to_bytes(2, "big") + (4).to_bytes(2, "big") + tbs + vec(signature)
