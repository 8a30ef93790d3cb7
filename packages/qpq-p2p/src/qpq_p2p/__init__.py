"""qpq-p2p: members of a group talk directly over QUIC, and fall back to the server.

Two clients that share an MLS group connect to each other (ALPN
``qpq-p2p/1``, the same qpq-proto codec and call state machines as the
server calls), prove their identity keys to each other on the connection,
and hand each other the group's application messages: the same MLS bytes
that would go through the server. Commits and proposals always go through
the server, which orders them. A message a member did not acknowledge
(after its host persisted it) goes through the server too; the digest of
the MLS bytes lets a member that got both copies process it once::

    async with PeerNode(identity, mls, receive, PeerConfig()) as node:
        await node.attach_server(connection)        # publish, resolve through it
        await node.send(message, via_server=publish)
        for peer in node.peers(): ...

See the package README for the protocol, the guarantees and what a host does.
"""

from qpq_p2p._certificate import DeviceCertificate
from qpq_p2p._config import PeerConfig, StaticPeer
from qpq_p2p._delivery import DirectFailure, DirectMessage, Receiver, SendReport, message_digest
from qpq_p2p._discovery import AddressSource, PeerAddress, Resolver, StaticResolver
from qpq_p2p._errors import (
    DeliveryDeferredError,
    PeerAuthenticationError,
    PeerError,
    PeerRefusedError,
    PeerUnreachableError,
)
from qpq_p2p._groups import GroupRosters
from qpq_p2p._mdns import EXPORTER_LABEL, SERVICE_TYPE, MdnsDiscovery, rotating_id
from qpq_p2p._node import PeerNode
from qpq_p2p._peers import PeerInfo
from qpq_p2p._proof import DialerProof, ListenerGate, Signer
from qpq_p2p._rendezvous import RendezvousServer, ServerRendezvous
from qpq_p2p._version import __version__

__all__ = [
    "EXPORTER_LABEL",
    "SERVICE_TYPE",
    "AddressSource",
    "DeliveryDeferredError",
    "DeviceCertificate",
    "DialerProof",
    "DirectFailure",
    "DirectMessage",
    "GroupRosters",
    "ListenerGate",
    "MdnsDiscovery",
    "PeerAddress",
    "PeerAuthenticationError",
    "PeerConfig",
    "PeerError",
    "PeerInfo",
    "PeerNode",
    "PeerRefusedError",
    "PeerUnreachableError",
    "Receiver",
    "RendezvousServer",
    "Resolver",
    "SendReport",
    "ServerRendezvous",
    "Signer",
    "StaticPeer",
    "StaticResolver",
    "__version__",
    "message_digest",
    "rotating_id",
]
