"""Which target URLs the relay may deliver to (SSRF guard): one host-name policy, one port policy.

``UrlPolicy.check_url`` runs when a target is configured (config sync, ``relay targets check``): it
normalises the URL, then checks the scheme, the port and every address the host name resolves to,
and returns the **normalised** URL, which is what the sync stores. ``UrlPolicy.check_endpoint``
runs at connect time (relay.adapters.connections) on every address the name resolves to *then*,
before the TCP handshake, so DNS rebinding cannot slip a refused address through.

Host names are normalised once, with IDNA 2008 and UTS 46 (the ``idna`` package, non-transitional:
``faß`` stays ``faß``, ideographic full stops separate labels), to lower-case ASCII A-labels. That is
a form requests and urllib3 pass through unchanged, so the name checked here is the name the
dispatcher resolves and connects to. Every parse, IDNA or port error is an ``UnsafeUrl`` with the
reason, never a UnicodeError or ValueError.

Ports: only ``allowed_ports`` (ALLOWED_TARGET_PORTS, default 443). Addresses: only public unicast;
refusals name the real category (private, loopback, documentation, benchmarking, shared, ...), for
IPv4 and IPv6, with IPv4-mapped and 6to4/Teredo-embedded IPv4 addresses judged by the IPv4 inside.
Only the local stack may allow loopback (``allow_loopback``): http://127.0.0.1 on any port, and
loopback addresses on any port; nothing else.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from relay.errors import UnsafeUrl
from relay.settings import Settings

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"https": 443, "http": 80}


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeUrl(f"host {host!r} does not resolve ({exc.strerror})") from None
    except UnicodeError:
        raise UnsafeUrl(f"host {host!r} is not a valid host name") from None
    return sorted({str(info[4][0]) for info in infos})


# Special-purpose ranges (IANA registries), most specific first: the first match names the refusal.
_CATEGORIES: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(network), category)
    for network, category in (
        ("169.254.169.254/32", "the link-local cloud metadata address"),
        ("255.255.255.255/32", "the limited broadcast address"),
        ("0.0.0.0/32", "the unspecified address"),
        ("0.0.0.0/8", 'a "this network" address (0.0.0.0/8)'),
        ("127.0.0.0/8", "a loopback address"),
        ("10.0.0.0/8", "a private address (10/8)"),
        ("172.16.0.0/12", "a private address (172.16/12)"),
        ("192.168.0.0/16", "a private address (192.168/16)"),
        ("100.64.0.0/10", "a shared address (carrier-grade NAT, 100.64/10)"),
        ("169.254.0.0/16", "a link-local address (cloud metadata lives here)"),
        ("192.0.0.0/24", "an IETF protocol assignment address (192.0.0/24)"),
        ("192.0.2.0/24", "a documentation address (TEST-NET-1)"),
        ("198.51.100.0/24", "a documentation address (TEST-NET-2)"),
        ("203.0.113.0/24", "a documentation address (TEST-NET-3)"),
        ("198.18.0.0/15", "a benchmarking address (198.18/15)"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address (240/4)"),
        ("::1/128", "a loopback address"),
        ("::/128", "the unspecified address"),
        ("64:ff9b::/96", "a NAT64 translation address"),
        ("64:ff9b:1::/48", "a local-use NAT64 translation address"),
        ("100::/64", "a discard-only address (100::/64)"),
        ("2001:2::/48", "a benchmarking address (2001:2::/48)"),
        ("2001:db8::/32", "a documentation address (2001:db8::/32)"),
        ("2001::/23", "an IETF protocol assignment address (2001::/23)"),
        ("3fff::/20", "a documentation address (3fff::/20)"),
        ("fc00::/7", "a unique local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address (deprecated, still routed internally by some networks)"),
        ("ff00::/8", "a multicast address"),
    )
)


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


def _ip(address: str) -> IPAddress:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        raise UnsafeUrl(f"{address!r} is not an IP address") from None


def check_address(address: str, *, allow_loopback: bool = False) -> None:
    """Raise UnsafeUrl, naming the address's category, unless ``address`` is a public unicast address
    (or an allowed loopback address)."""
    ip = _ip(address)
    inner = _embedded_ipv4(ip)
    if inner is not None:
        check_address(str(inner), allow_loopback=allow_loopback)
        return
    if ip.is_loopback and allow_loopback:
        return
    for network, category in _CATEGORIES:
        if ip in network:
            raise UnsafeUrl(f"{ip} is {category}")
    # Ranges the table does not name yet (the registries grow): the standard library's view.
    if ip.is_loopback:
        raise UnsafeUrl(f"{ip} is a loopback address")
    if ip.is_link_local:
        raise UnsafeUrl(f"{ip} is a link-local address")
    if ip.is_multicast:
        raise UnsafeUrl(f"{ip} is a multicast address")
    if ip.is_unspecified:
        raise UnsafeUrl(f"{ip} is the unspecified address")
    if ip.is_private:
        raise UnsafeUrl(f"{ip} is a private address")
    if ip.is_reserved or not ip.is_global:
        raise UnsafeUrl(f"{ip} is a reserved or non-global address")


def normalize_url(url: str) -> str:
    """``url`` with its scheme lower-cased, its host as lower-case ASCII A-labels (IDNA 2008, UTS 46)
    or a canonical IP literal, and a default port dropped. UnsafeUrl for anything unparseable."""
    parts = _split(url)
    scheme = parts.scheme.lower()
    port = _port(parts)
    host = _ascii_host(parts.hostname or "")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS.get(scheme):
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


def unreadable_reason(exc: ValueError) -> str:
    """Why ``urlsplit`` refused a URL, without the URL: its NFKC check quotes the whole netloc, a
    password before the host included (the others quote no more than a bracketed host)."""
    if "NFKC" in str(exc):
        return "its host part holds characters that NFKC normalization turns into '/', '?', '#', '@' or ':'"
    return str(exc)


# C0 controls and DEL, refused by name: urlsplit drops tabs and line breaks silently, so "/x\r\nHost: y"
# would be stored as "/xHost: y", a URL nobody wrote.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def _split(url: str) -> SplitResult:
    url = url.strip()
    if _CONTROL_CHARACTER.search(url):
        raise UnsafeUrl("URL holds a line break, tab or other control character: percent-encode it")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UnsafeUrl(f"malformed URL: {unreadable_reason(exc)}") from None
    if not parts.hostname:
        raise UnsafeUrl("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("URL must not carry credentials; use the target's security settings")
    return parts


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        raise UnsafeUrl("URL has a malformed or out-of-range port") from None


def _ascii_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    import idna  # requests' own IDNA 2008 implementation; only config-time paths need it

    try:
        encoded: bytes = idna.encode(host, uts46=True, std3_rules=True, transitional=False)
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise UnsafeUrl(f"host {host!r} is not a valid host name: {exc}") from None
    return encoded.decode("ascii")


def _is_loopback_literal(host: str) -> bool:
    try:
        return _ip(host).is_loopback
    except UnsafeUrl:
        return False


@dataclass(frozen=True)
class UrlPolicy:
    """The URL policy of one deployment: loopback (local stack only) and the allowed ports."""

    allow_loopback: bool = False
    allowed_ports: frozenset[int] = frozenset({443})

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        return cls(settings.allow_loopback_targets, frozenset(settings.allowed_target_ports))

    def check_url(self, url: str, *, resolve: Resolver = system_resolver) -> str:
        """The normalised URL, if it is https (or allowed loopback http) to a public host on an
        allowed port; UnsafeUrl with the reason otherwise."""
        normalised = normalize_url(url)
        parts = urlsplit(normalised)
        host = parts.hostname or ""
        if parts.scheme == "http" and self.allow_loopback and _is_loopback_literal(host):
            return normalised
        if parts.scheme != "https":
            # Locally, plain http is fine to a loopback address written as one: say so, or
            # http://localhost:... reads as if http were refused outright.
            also = ", or http to a loopback address such as 127.0.0.1" if self.allow_loopback else ""
            raise UnsafeUrl(f"only https URLs are allowed{also}, not {parts.scheme or 'no scheme'}")
        # Port 0 is no port a server listens on; urllib3 would quietly connect to 443 instead.
        port = DEFAULT_PORTS["https"] if parts.port is None else parts.port
        if not self.allow_loopback:
            self._check_port(port)  # before any DNS lookup: no address can make it allowed
        addresses = resolve(host, port)
        if not addresses:
            raise UnsafeUrl(f"host {host!r} resolves to no address")
        for address in addresses:
            self.check_endpoint(address, port)
        return normalised

    def check_endpoint(self, address: str, port: int) -> None:
        """Connect time: raise UnsafeUrl unless ``address``:``port`` may be connected to."""
        check_address(address, allow_loopback=self.allow_loopback)
        if self.allow_loopback and _is_loopback_literal(address):
            return  # the local stack's receivers listen on any port
        self._check_port(port)

    def _check_port(self, port: int) -> None:
        if port not in self.allowed_ports:
            allowed = ", ".join(str(p) for p in sorted(self.allowed_ports)) or "none"
            raise UnsafeUrl(f"port {port} is not allowed (ALLOWED_TARGET_PORTS: {allowed})")
