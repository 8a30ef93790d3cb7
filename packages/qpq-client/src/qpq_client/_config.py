"""Configuration of a client: one frozen dataclass per concern, built at the edge.

Nothing below the CLI reads the environment; the CLI reads the variables
named here and passes values in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

# Environment variables read by the CLI (and only there).
from qpq_client._env import (
    ENV_CA_CERT,
    ENV_HOME,
    ENV_INVITE,
    ENV_PIN,
    ENV_SERVER,
    ENV_STATE_KEY,
    ENV_TOKEN,
)
from qpq_client._errors import TrustNotConfiguredError
from qpq_p2p import PeerConfig
from qpq_proto import DEFAULT_PORT, format_host_port, parse_host_port
from qpq_proto.errors import ConnectionFailedError

__all__ = [
    "ENV_CA_CERT",
    "ENV_HOME",
    "ENV_INVITE",
    "ENV_PIN",
    "ENV_SERVER",
    "ENV_STATE_KEY",
    "ENV_TOKEN",
    "DirectDelivery",
    "ServerAddress",
    "Trust",
]


_PIN = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where the server listens (UDP)."""

    host: str
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, text: str) -> ServerAddress:
        """Parse ``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT``.

        The rule is :func:`qpq_proto.parse_host_port`'s; a host alone takes port 7000.

        Raises:
            ConnectionFailedError: not such an address, or port 0.
        """
        try:
            host, port = parse_host_port(text, default_port=DEFAULT_PORT)
        except ValueError as error:
            raise ConnectionFailedError(f"bad server address: {error}") from None
        if port == 0:
            raise ConnectionFailedError(f"bad server address {text.strip()!r}: port 0")
        return cls(host, port)

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class Trust:
    """How the client decides the server is the right one.

    Exactly one of ``ca_pem`` (PEM text of the CA that issued the server
    certificate, checked with the host name) or ``pin`` (SHA-256 hex of the
    server's leaf certificate DER) is set. There is no insecure mode.
    """

    ca_pem: str | None = field(default=None, repr=False)
    pin: str | None = None

    def __post_init__(self) -> None:
        if (self.ca_pem is None) == (self.pin is None):
            raise TrustNotConfiguredError(
                "give exactly one of --ca-cert PEM or --pin SHA256 to trust the server"
            )
        if self.pin is not None and not _PIN.match(self.pin):
            raise TrustNotConfiguredError("--pin must be 64 lowercase hex digits (SHA-256)")

    @classmethod
    def from_options(cls, ca_cert: str | Path | None, pin: str | None) -> Trust:
        """Build from CLI-style options: a CA file path or a fingerprint."""
        if ca_cert is not None and pin is not None:
            raise TrustNotConfiguredError("give --ca-cert or --pin, not both")
        if ca_cert is not None:
            try:
                pem = Path(ca_cert).read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as error:
                raise TrustNotConfiguredError(f"cannot read CA certificate {ca_cert}") from error
            if "BEGIN CERTIFICATE" not in pem:
                raise TrustNotConfiguredError(f"{ca_cert} is not a PEM certificate")
            return cls(ca_pem=pem)
        if pin is not None:
            return cls(pin=pin.strip().lower().replace(":", ""))
        raise TrustNotConfiguredError(
            "no way to trust the server: give --ca-cert PEM or --pin SHA256 "
            f"(or set ${ENV_CA_CERT} / ${ENV_PIN})"
        )

    def to_setting(self) -> str:
        """Serialized form for the encrypted state."""
        return f"pin:{self.pin}" if self.pin is not None else f"ca:{self.ca_pem}"

    @classmethod
    def from_setting(cls, value: str) -> Trust:
        """Inverse of :meth:`to_setting`."""
        kind, _, rest = value.partition(":")
        return cls(pin=rest) if kind == "pin" else cls(ca_pem=rest)


@dataclass(frozen=True, slots=True)
class DirectDelivery:
    """Whether this profile talks directly with the members it can reach (qpq-p2p).

    Attributes:
        enabled: send application messages directly first, accept direct
            connections while connected; commits always go through the server.
        host: the address to listen on (``0.0.0.0``: every IPv4 interface).
        port: the UDP port to listen on; 0 picks a free one each time.
        lan: also find members on the local network by mDNS.
    """

    enabled: bool = False
    host: str = "0.0.0.0"  # noqa: S104 - reachable by members on the network is the point
    port: int = 0
    lan: bool = False

    def __post_init__(self) -> None:
        if not self.host or not 0 <= self.port < 65536:
            raise ValueError("direct delivery needs a host and a port in [0, 65535]")

    @classmethod
    def parse_listen(cls, text: str) -> tuple[str, int]:
        """``HOST:PORT`` or ``[V6]:PORT`` to listen on (port 0: any free one).

        Raises:
            ValueError: not such an address.
        """
        try:
            return parse_host_port(text)
        except ValueError as error:
            raise ValueError(f"bad listen address: {error}") from None

    def peer_config(self) -> PeerConfig:
        """The qpq-p2p node settings this stands for."""
        return PeerConfig(listen_host=self.host, listen_port=self.port, lan_discovery=self.lan)

    def to_setting(self) -> str:
        """Serialized form for the encrypted state."""
        return json.dumps(
            {"on": self.enabled, "host": self.host, "port": self.port, "lan": self.lan}
        )

    @classmethod
    def from_setting(cls, value: str | None) -> DirectDelivery:
        """Inverse of :meth:`to_setting`; the default when nothing is stored."""
        if not value:
            return cls()
        fields = json.loads(value)
        return cls(
            bool(fields["on"]), str(fields["host"]), int(fields["port"]), bool(fields["lan"])
        )
