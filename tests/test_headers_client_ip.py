"""Client-IP derivation through trusted proxies: table cases and properties."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authproxy.core.headers import IPNetwork, client_ip, forwarded_value, parse_ip

LB = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]

CASES = [
    # (peer, X-Forwarded-For, trusted, expected)
    ("203.0.113.9", None, [], "203.0.113.9"),
    ("203.0.113.9", "1.2.3.4", [], "203.0.113.9"),  # nobody trusted: the header is ignored
    ("203.0.113.9", "1.2.3.4", LB, "203.0.113.9"),  # an untrusted peer cannot speak for others
    ("10.0.0.1", None, LB, "10.0.0.1"),
    ("10.0.0.1", "", LB, "10.0.0.1"),
    ("10.0.0.1", "198.51.100.7", LB, "198.51.100.7"),
    ("10.0.0.1", "6.6.6.6, 198.51.100.7", LB, "198.51.100.7"),  # a spoofed left entry is ignored
    ("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.1.1", LB, "198.51.100.7"),  # two trusted hops
    ("10.0.0.1", "10.9.9.9, 10.1.1.1", LB, "10.9.9.9"),  # every hop trusted: the farthest one
    ("10.0.0.1", "garbage, 10.1.1.1", LB, "10.1.1.1"),  # garbage stops at the proxy that wrote it
    ("10.0.0.1", "198.51.100.7, garbage", LB, "10.0.0.1"),
    ("10.0.0.1", "198.51.100.7:51234", LB, "198.51.100.7"),  # a port after an IPv4 hop
    ("10.0.0.1", "[2001:db8::5]:443", LB, "2001:db8::5"),
    ("10.0.0.1", "2001:db8::5", LB, "2001:db8::5"),
    ("10.0.0.1", " 198.51.100.7 ,10.2.2.2 ", LB, "198.51.100.7"),
    ("fd00::1", "198.51.100.7", LB, "198.51.100.7"),
    ("::ffff:10.0.0.1", "198.51.100.7", LB, "198.51.100.7"),  # IPv4-mapped peer on a dual-stack socket
    ("::ffff:203.0.113.9", None, [], "203.0.113.9"),
    ("127.0.0.1", "198.51.100.7", [ipaddress.ip_network("127.0.0.1/32")], "198.51.100.7"),
    (None, "198.51.100.7", LB, "0.0.0.0"),
    ("", None, LB, "0.0.0.0"),
    ("10.0.0.1", "unknown", LB, "10.0.0.1"),
    ("10.0.0.1", ",,,", LB, "10.0.0.1"),
    ("10.0.0.1", "198.51.100.7, 2001:db8::1", LB, "2001:db8::1"),
]


@pytest.mark.parametrize(("peer", "xff", "trusted", "expected"), CASES)
def test_client_ip_table(peer: str | None, xff: str | None, trusted: list[IPNetwork], expected: str) -> None:
    assert client_ip(peer, xff, trusted) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("", None),
        ("[::1", None),
        ("999.1.1.1", None),
        ("example.com", None),
    ],
)
def test_parse_ip(value: str, expected: str | None) -> None:
    parsed = parse_ip(value)
    assert (str(parsed) if parsed else None) == expected


def test_forwarded_value_only_from_trusted_peers() -> None:
    assert forwarded_value("https", peer_trusted=False) is None
    assert forwarded_value("http, https", peer_trusted=True) == "https"
    assert forwarded_value("", peer_trusted=True) is None


ipv4 = st.ip_addresses(v=4).map(str)
untrusted_ipv4 = ipv4.filter(lambda ip: ipaddress.ip_address(ip) not in LB[0])
trusted_ipv4 = st.integers(0, 2**24 - 1).map(lambda n: str(ipaddress.ip_address(0x0A000000 + n)))


@settings(max_examples=300, deadline=None)
@given(untrusted_ipv4, st.lists(st.text(max_size=20), max_size=4), st.text(max_size=40))
def test_untrusted_peer_is_always_the_client(peer: str, spoofed: list[str], junk: str) -> None:
    assert client_ip(peer, ", ".join([*spoofed, junk]), LB) == peer


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(max_size=20), max_size=4),
    untrusted_ipv4,
    st.lists(trusted_ipv4, max_size=4),
    trusted_ipv4,
)
def test_client_is_first_untrusted_hop_from_the_right(
    spoofed: list[str], real: str, hops: list[str], peer: str
) -> None:
    # Whatever the client prepends, the answer is the address our trusted proxies saw.
    header = ", ".join([*spoofed, real, *hops])
    assert client_ip(peer, header, LB) == real


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=30)), st.one_of(st.none(), st.text(max_size=80)))
def test_never_raises(peer: str | None, header: str | None) -> None:
    assert isinstance(client_ip(peer, header, LB), str)
