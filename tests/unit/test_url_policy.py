"""The SSRF guard: only public https targets on allowed ports, one host-name normalisation, checked at
configuration and at connect time."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from urllib3.util import parse_url

from relay.errors import UnsafeUrl
from relay.logic.url_policy import UrlPolicy, check_address, normalize_url
from relay.settings import Settings

PUBLIC = "93.184.216.34"

REFUSED = [
    "127.0.0.1",
    "127.9.9.9",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.0.1",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.10",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "2002:a00:1::",
    "64:ff9b::a00:1",
    "fec0::1",
    "3fff::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_address(address)


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("255.255.255.255", "broadcast"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("2001:db8::1", "documentation"),
        ("240.0.0.1", "reserved address (240/4)"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("100.64.0.1", "shared"),
        ("0.1.2.3", "this network"),
        ("0.0.0.0", "unspecified"),
        ("10.0.0.1", "private"),
        ("fd12:3456::1", "unique local"),
        ("169.254.169.254", "metadata"),
        ("169.254.3.4", "link-local"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("192.0.0.8", "IETF protocol assignment"),
        ("::ffff:192.0.2.1", "documentation"),  # judged by the IPv4 inside
    ],
)
def test_refusals_name_the_real_category(address: str, category: str) -> None:
    with pytest.raises(UnsafeUrl, match=re.escape(category)):
        check_address(address)


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    check_address(address)  # raises on refusal


def test_loopback_is_allowed_only_when_asked_and_only_loopback() -> None:
    check_address("127.0.0.1", allow_loopback=True)
    with pytest.raises(UnsafeUrl):
        check_address("10.0.0.1", allow_loopback=True)
    with pytest.raises(UnsafeUrl):
        check_address("169.254.169.254", allow_loopback=True)


class Resolver:
    """Answers every name with ``addresses`` and remembers which names it was asked."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses or [PUBLIC])
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        return self.addresses


def test_https_to_a_public_name_passes_and_comes_back_normalised() -> None:
    assert UrlPolicy().check_url("HTTPS://Hooks.Example.COM:443/x?a=1", resolve=Resolver()) == (
        "https://hooks.example.com/x?a=1"
    )


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://hooks\u3002example\u3002com/hook", "https://hooks.example.com/hook"),  # ideographic stops
        ("https://fa\u00df.example.com/hook", "https://xn--fa-hia.example.com/hook"),  # IDNA 2008: no fass
        ("https://B\u00dcCHER.example/hook", "https://xn--bcher-kva.example/hook"),
        ("https://xn--bcher-kva.example/hook", "https://xn--bcher-kva.example/hook"),
        ("https://[2606:4700:4700:0::1111]:8443/x", "https://[2606:4700:4700::1111]:8443/x"),
        ("https://93.184.216.34/x", "https://93.184.216.34/x"),
    ],
)
def test_host_names_are_normalised_once_to_ascii_a_labels(url: str, normalised: str) -> None:
    assert normalize_url(url) == normalised


def test_the_resolver_is_asked_the_name_the_dispatcher_will_connect_to() -> None:
    resolver = Resolver()
    url = UrlPolicy().check_url("https://fa\u00df.example.com/hook", resolve=resolver)
    assert resolver.asked == [("xn--fa-hia.example.com", 443)]
    # requests and urllib3 send to that same name, unchanged
    assert requests.Request("POST", url).prepare().url == url
    assert parse_url(url).host == "xn--fa-hia.example.com"


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks..example.com/hook",  # empty label
        "https://" + "a" * 64 + ".example.com/hook",  # label too long
        "https://" + ".".join(["a" * 60] * 5) + "/hook",  # name too long
        "https://-hooks.example.com/",
        "https://hooks_1.example.com/",
        "https://xn--zz.example.com/",  # not valid punycode
        "https://ex%61mple.com/",
        "https://hooks.example.com:99999/",
        "https://hooks.example.com:http/",
        "https://[::1/",
        "https://",
        "not a url",
        "https://u:p@example.com/",
    ],
)
def test_every_malformed_url_is_an_unsafe_url_never_a_unicode_or_value_error(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        UrlPolicy().check_url(url, resolve=Resolver())


def test_a_url_urlsplit_refuses_is_refused_without_quoting_its_password() -> None:
    # urlsplit's NFKC check quotes the whole netloc: "u:<password>@host" would reach config sync's report
    with pytest.raises(UnsafeUrl, match="NFKC") as refused:
        UrlPolicy().check_url("https://u:pass-SECRET\u2100word@example.com/", resolve=Resolver())
    assert "SECRET" not in str(refused.value)


@given(st.text(max_size=80))
def test_any_host_text_is_normalised_or_refused_cleanly(host: str) -> None:
    try:
        url = normalize_url(f"https://{host}/hook")
    except UnsafeUrl:
        return
    # Whatever passes has an ASCII host that urllib3 and requests pass through unchanged.
    normalised = urlsplit(url).hostname or ""
    assert normalised.isascii()
    assert (parse_url(url).host or "").strip("[]") == normalised
    assert urlsplit(requests.Request("POST", url).prepare().url).hostname == normalised


@pytest.mark.parametrize(
    "url", ["http://hooks.example.com/x", "ftp://hooks.example.com", "https:///hook", "//hooks.example.com/"]
)
def test_bad_schemes_and_shapes_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        UrlPolicy().check_url(url, resolve=Resolver())


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x\r\nHost: evil.example.com",
        "https://hooks.example.com/a\tb",
        "https://hooks.exa\nmple.com/",
        "https://hooks.example.com/?token=a\x00b",
        "https://hooks.example.com/\x7f",
    ],
)
def test_a_control_character_inside_a_url_is_refused_not_dropped(url: str) -> None:
    # urlsplit drops tabs and line breaks: the URL stored would be one nobody wrote
    with pytest.raises(UnsafeUrl, match="line break, tab or other control character"):
        UrlPolicy().check_url(url, resolve=Resolver())


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    # Given a public-looking name that resolves to the metadata service among other addresses
    with pytest.raises(UnsafeUrl, match="link-local"):
        UrlPolicy().check_url("https://rebind.example.com/", resolve=Resolver(PUBLIC, "169.254.169.254"))


@pytest.mark.parametrize("port", [0, 22, 80, 6379, 8443])
def test_only_allowed_ports_pass(port: int) -> None:
    resolver = Resolver()
    with pytest.raises(UnsafeUrl, match=f"port {port} is not allowed"):
        UrlPolicy().check_url(f"https://hooks.example.com:{port}/x", resolve=resolver)
    assert resolver.asked == []  # refused before any DNS lookup
    with pytest.raises(UnsafeUrl, match="not allowed"):
        UrlPolicy().check_endpoint(PUBLIC, port)


def test_the_allow_list_admits_other_ports() -> None:
    policy = UrlPolicy(allowed_ports=frozenset({443, 8443}))
    assert policy.check_url("https://hooks.example.com:8443/x", resolve=Resolver()) == (
        "https://hooks.example.com:8443/x"
    )
    policy.check_endpoint(PUBLIC, 8443)
    with pytest.raises(UnsafeUrl):
        policy.check_endpoint(PUBLIC, 22)


def test_local_loopback_needs_the_local_setting_and_may_use_any_port() -> None:
    local = UrlPolicy(allow_loopback=True)
    with pytest.raises(UnsafeUrl):
        UrlPolicy().check_url("http://127.0.0.1:9000/hook")
    assert local.check_url("http://127.0.0.1:9000/hook") == "http://127.0.0.1:9000/hook"
    assert local.check_url("https://localhost:9000/hook", resolve=Resolver("127.0.0.1", "::1")) == (
        "https://localhost:9000/hook"
    )
    local.check_endpoint("127.0.0.1", 9000)
    # Only loopback: a public address on a port outside the list is still refused
    with pytest.raises(UnsafeUrl, match="port 9000"):
        local.check_endpoint(PUBLIC, 9000)
    with pytest.raises(UnsafeUrl, match="port 9000"):
        local.check_url("https://hooks.example.com:9000/hook", resolve=Resolver(PUBLIC))
    with pytest.raises(UnsafeUrl):
        local.check_url("http://localhost.evil.example:9000/hook", resolve=Resolver("127.0.0.1"))
    # A name is no loopback literal: the refusal says what locally is allowed instead
    with pytest.raises(UnsafeUrl, match="or http to a loopback address such as 127.0.0.1, not http$"):
        local.check_url("http://localhost:9000/hook", resolve=Resolver("127.0.0.1"))
    with pytest.raises(UnsafeUrl, match="^only https URLs are allowed, not http$"):
        UrlPolicy().check_url("http://localhost:9000/hook", resolve=Resolver("127.0.0.1"))


def test_the_connect_time_check_refuses_addresses_like_the_config_time_check() -> None:
    with pytest.raises(UnsafeUrl, match="private"):
        UrlPolicy().check_endpoint("10.1.2.3", 443)
    UrlPolicy().check_endpoint(PUBLIC, 443)


@given(st.ip_addresses(v=4))
def test_every_ipv4_address_mapped_into_ipv6_is_judged_like_itself(address) -> None:  # type: ignore[no-untyped-def]
    def verdict(a: str) -> bool:
        try:
            check_address(a)
            return True
        except UnsafeUrl:
            return False

    assert verdict(str(address)) == verdict(f"::ffff:{address}")


def test_the_policy_comes_from_the_settings() -> None:
    assert UrlPolicy.from_settings(Settings.model_validate({})) == UrlPolicy(False, frozenset({443}))
    env = {"ALLOWED_TARGET_PORTS": " 443, 8443 ", "RELAY_ALLOW_LOOPBACK_TARGETS": "true"}
    assert UrlPolicy.from_settings(Settings.model_validate(env)) == UrlPolicy(True, frozenset({443, 8443}))


@pytest.mark.parametrize("ports", ["", "0", "65536", "443,https"])
def test_a_bad_port_list_is_a_settings_error(ports: str) -> None:
    with pytest.raises(ValueError):
        Settings.model_validate({"ALLOWED_TARGET_PORTS": ports})
