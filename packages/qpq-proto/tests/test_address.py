"""``HOST:PORT`` text: one rule for writing and reading it (qpq_proto.format_host_port,
qpq_proto.parse_host_port), and the endpoint written by it."""

from __future__ import annotations

import pytest

from qpq_proto import Endpoint, format_host_port, parse_host_port


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("example.org", 7000, "example.org:7000"),
        ("127.0.0.1", 0, "127.0.0.1:0"),
        ("::1", 7000, "[::1]:7000"),
        ("2001:db8::1", 443, "[2001:db8::1]:443"),
    ],
)
def test_written_and_read_back(host: str, port: int, text: str) -> None:
    assert format_host_port(host, port) == text
    assert parse_host_port(text) == (host, port)
    assert parse_host_port(f"  {text}\n") == (host, port)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org", ("example.org", 7000)),
        ("[::1]", ("::1", 7000)),
        ("::1", ("::1", 7000)),  # an IPv6 literal alone: never a port after its last colon
        ("fe80::1:7001", ("fe80::1:7001", 7000)),
        ("example.org:7100", ("example.org", 7100)),
        ("[::1]:7100", ("::1", 7100)),
    ],
)
def test_a_host_alone_takes_the_default_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, default_port=7000) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nohost", "expected HOST:PORT, got 'nohost'"),
        ("[::1]", r"expected \[IPV6\]:PORT, got '\[::1\]'"),
        ("[::1", r"expected \[IPV6\]:PORT"),
        ("::1:7000", "IPv6 takes brackets"),
        (":7000", "missing host in ':7000'"),
        ("h:99999", r"port must be in 0\.\.65535, got 99999"),
        ("h:seven", "port must be a number, got 'seven'"),
        ("h:+1", "port must be a number, got '\\+1'"),
        ("[not-v6]:1", "invalid IPv6 address 'not-v6'"),
    ],
)
def test_what_is_no_address_is_one_clear_line(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_host_port(text)
    assert "\n" not in str(caught.value)


def test_an_endpoint_is_written_by_the_same_rule() -> None:
    assert str(Endpoint("::1", 7000)) == "[::1]:7000"
    assert str(Endpoint("peer.example", 7001)) == "peer.example:7001"
