"""Which target URLs the relay may deliver to (SSRF guard).

Two checks, because DNS can change between them: ``check_url`` when a target is configured (config
sync: scheme, host, every address the name resolves to), and ``check_address`` at connect time on
the address actually connected to (the dispatcher's HTTP adapter), so DNS rebinding cannot slip a
private address through.

Refused: private, loopback, link-local (169.254.0.0/16 and the metadata address 169.254.169.254
included), multicast, unspecified, reserved, shared (100.64/10) and other non-global ranges, for
IPv4 and IPv6, with IPv4-mapped and 6to4/Teredo-embedded IPv4 addresses judged by the IPv4 inside.
Only the local stack may allow http://127.0.0.1 (``allow_loopback``), and only loopback.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from relay.errors import UnsafeUrl

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeUrl(f"host {host!r} does not resolve ({exc.strerror})") from None
    return sorted({str(info[4][0]) for info in infos})


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    # IPv4-compatible ::a.b.c.d (deprecated, still routable by some stacks)
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def check_address(address: str, *, allow_loopback: bool = False) -> None:
    """Raise UnsafeUrl unless ``address`` is a public unicast address (or allowed loopback)."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        raise UnsafeUrl(f"{address!r} is not an IP address") from None
    inner = _embedded_ipv4(ip)
    if inner is not None:
        check_address(str(inner), allow_loopback=allow_loopback)
        return
    if allow_loopback and ip.is_loopback:
        return
    if ip.is_loopback:
        raise UnsafeUrl(f"{ip} is a loopback address")
    if ip.is_link_local:
        raise UnsafeUrl(f"{ip} is a link-local address (cloud metadata lives here)")
    if ip.is_multicast:
        raise UnsafeUrl(f"{ip} is a multicast address")
    if ip.is_unspecified:
        raise UnsafeUrl(f"{ip} is the unspecified address")
    if ip.is_private:
        raise UnsafeUrl(f"{ip} is a private address")
    if ip.is_reserved or not ip.is_global:
        raise UnsafeUrl(f"{ip} is a reserved or non-global address")


def check_url(url: str, *, allow_loopback: bool = False, resolve: Resolver = system_resolver) -> None:
    """Raise UnsafeUrl unless ``url`` is https (or allowed loopback http) to a public host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"malformed URL: {exc}") from None
    host = parts.hostname
    if not host:
        raise UnsafeUrl("URL has no host")
    if parts.username or parts.password:
        raise UnsafeUrl("URL must not carry credentials; use the target's security settings")
    if parts.scheme == "http" and allow_loopback and _is_loopback_literal(host):
        return
    if parts.scheme != "https":
        raise UnsafeUrl(f"only https URLs are allowed, not {parts.scheme or 'no scheme'}")
    addresses = resolve(host, port or 443)
    if not addresses:
        raise UnsafeUrl(f"host {host!r} resolves to no address")
    for address in addresses:
        check_address(address, allow_loopback=allow_loopback)


def _is_loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
