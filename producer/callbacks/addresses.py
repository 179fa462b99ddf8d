"""Which IP addresses a webhook must not reach by default, judged without DNS."""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4_SPECIAL: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), label)
    for net, label in (
        ("0.0.0.0/8", "this-network"),
        ("100.64.0.0/10", "shared (carrier-grade NAT)"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
    )
)
_V6_SPECIAL: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), label)
    for net, label in (
        ("fc00::/7", "unique-local"),
        ("fec0::/10", "site-local"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignment"),
        ("2001:db8::/32", "documentation"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_block_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be called by default (e.g. "loopback"), or None for a public address.

    IPv6 forms that embed an IPv4 address (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4
    2002::/16) are judged by that IPv4 address, since that is where the packets end up. The
    explicit tables make the answer independent of the Python patch release, whose
    `ipaddress` flags have changed over time.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded, how = _embedded_ipv4(ip)
        if embedded is not None:
            reason = address_block_reason(embedded)
            return f"{reason} ({how} IPv4)" if reason else None
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    table = _V4_SPECIAL if isinstance(ip, ipaddress.IPv4Address) else _V6_SPECIAL
    for network, label in table:
        if ip in network:
            return label
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, str]:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "mapped"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    return None, ""


def literal_address(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, without DNS.

    Besides dotted quads and IPv6, this recognises the legacy forms that the C resolver also
    accepts and maps to an address ("127.1", "0x7f.1", "2130706433"), so they cannot pass as
    host names when resolution is skipped.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None
