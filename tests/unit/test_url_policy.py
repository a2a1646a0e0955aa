"""The SSRF guard: only public https targets, checked at configuration and at connect time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import UnsafeUrl
from relay.logic.url_policy import check_address, check_url

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
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    check_address(address)  # raises on refusal


def test_loopback_is_allowed_only_when_asked_and_only_loopback() -> None:
    check_address("127.0.0.1", allow_loopback=True)
    with pytest.raises(UnsafeUrl):
        check_address("10.0.0.1", allow_loopback=True)
    with pytest.raises(UnsafeUrl):
        check_address("169.254.169.254", allow_loopback=True)


def _resolver(answer: list[str]):  # type: ignore[no-untyped-def]
    return lambda host, port: answer


def test_https_to_a_public_name_passes() -> None:
    check_url("https://hooks.example.com/x", resolve=_resolver(["93.184.216.34"]))


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "ftp://hooks.example.com",
        "https://",
        "not a url",
        "https://u:p@example.com/",
    ],
)
def test_bad_schemes_and_shapes_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url(url, resolve=_resolver(["93.184.216.34"]))


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    # Given a public-looking name that resolves to the metadata service among other addresses
    with pytest.raises(UnsafeUrl, match="link-local"):
        check_url("https://rebind.example.com/", resolve=_resolver(["93.184.216.34", "169.254.169.254"]))


def test_local_http_loopback_needs_the_local_setting() -> None:
    with pytest.raises(UnsafeUrl):
        check_url("http://127.0.0.1:9000/hook")
    check_url("http://127.0.0.1:9000/hook", allow_loopback=True)
    with pytest.raises(UnsafeUrl):
        check_url(
            "http://localhost.evil.example:9000/hook", allow_loopback=True, resolve=_resolver(["127.0.0.1"])
        )


@given(st.ip_addresses(v=4))
def test_every_ipv4_address_mapped_into_ipv6_is_judged_like_itself(address) -> None:  # type: ignore[no-untyped-def]
    def verdict(a: str) -> bool:
        try:
            check_address(a)
            return True
        except UnsafeUrl:
            return False

    assert verdict(str(address)) == verdict(f"::ffff:{address}")
