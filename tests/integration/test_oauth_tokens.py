"""The OAuth 2.0 client-credentials adapter (relay.adapters.oauth) against a loopback token endpoint,
through a real HttpSender: the grant on the wire, one token for many uses, expiry with a clock moved
by hand, a fresh token for a refused one, and every way a token endpoint fails, each a clear
TokenUnavailable that never carries the client secret or a token."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from misbehaving_peer import Answer, complete, misbehaving_peer
from pydantic import SecretStr
from support.secure_peers import TokenEndpoint
from test_dispatch_support import ManualClock

from relay.adapters.http import HttpSender
from relay.adapters.oauth import ClientCredentialsTokens
from relay.errors import TokenUnavailable
from relay.logic.url_policy import UrlPolicy
from relay.models.targets import OAuth2Client, SecurityType, Target, TargetSecurity, TokenEndpointAuthMethod

pytestmark = pytest.mark.integration

TIMEOUTS = {"connect_timeout": 2.0, "read_timeout": 2.0, "total_timeout": 4.0}


@pytest.fixture
def sender() -> Iterator[HttpSender]:
    http = HttpSender(
        pool_size=2, body_limit_bytes=64, endpoint_check=UrlPolicy(allow_loopback=True).check_endpoint
    )
    yield http
    http.close()


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    with TokenEndpoint(client_id="relay client/1") as running:
        yield running


def target(token_url: str, **client: Any) -> Target:
    return Target(
        integration_id="int-1",
        target_id="crm",
        name="crm",
        url="https://crm.example.com/hook",
        security=TargetSecurity(
            type=SecurityType.OAUTH2,
            secret_name="relay/auth/crm",
            oauth2=OAuth2Client(token_url=token_url, **{"client_id": "relay client/1", **client}),
        ),
    )


def test_one_token_serves_every_use_until_it_is_near_its_expiry(
    sender: HttpSender, endpoint: TokenEndpoint
) -> None:
    # Given a token endpoint issuing 100 s tokens, and a clock we move
    endpoint.expires_in = 100
    clock = ManualClock(1_000.0)
    tokens = ClientCredentialsTokens(sender, clock=clock)
    crm = target(endpoint.url, scope="events:write", audience="https://crm.example.com")
    secret = SecretStr(endpoint.client_secret)

    # When it is asked five times, then again 69 s later, then past the renewal point
    first = [tokens.token(crm, secret, **TIMEOUTS) for _ in range(5)]
    clock.now += 69
    reused = tokens.token(crm, secret, **TIMEOUTS)
    clock.now += 2  # 71 s: inside the last 30 s (10 % of 100 s, at least 30 s, at most 50 s)
    renewed = tokens.token(crm, secret, **TIMEOUTS)

    # Then one request served the first six uses, and a second one the renewal
    assert len(endpoint.requests) == 2
    assert {t.get_secret_value() for t in first} == {reused.get_secret_value()} == {endpoint.issued[0]}
    assert renewed.get_secret_value() == endpoint.issued[1]
    # and the grant was client_secret_basic, the id and secret form-encoded (RFC 6749 §2.3.1)
    request = endpoint.requests[0]
    assert request.basic == ("relay client/1", endpoint.client_secret)
    assert request.form == {
        "grant_type": "client_credentials",
        "scope": "events:write",
        "audience": "https://crm.example.com",
    }


def test_client_secret_post_puts_the_client_in_the_form(sender: HttpSender, endpoint: TokenEndpoint) -> None:
    tokens = ClientCredentialsTokens(sender)
    crm = target(endpoint.url, token_endpoint_auth_method=TokenEndpointAuthMethod.CLIENT_SECRET_POST)

    token = tokens.token(crm, SecretStr(endpoint.client_secret), **TIMEOUTS)

    (request,) = endpoint.requests
    assert request.basic is None
    assert request.form == {
        "grant_type": "client_credentials",
        "client_id": "relay client/1",
        "client_secret": endpoint.client_secret,
    }
    assert endpoint.valid(f"Bearer {token.get_secret_value()}")


def test_a_refused_token_is_replaced_once_however_many_ask(
    sender: HttpSender, endpoint: TokenEndpoint
) -> None:
    tokens = ClientCredentialsTokens(sender)
    crm, secret = target(endpoint.url), SecretStr(endpoint.client_secret)
    old = tokens.token(crm, secret, **TIMEOUTS)

    # When two deliveries both got 401 with the same token and both ask for a fresh one
    fresh = [tokens.token(crm, secret, refused=old, **TIMEOUTS) for _ in range(2)]

    # Then one new token was fetched, and both got it
    assert len(endpoint.requests) == 2
    assert {t.get_secret_value() for t in fresh} == {endpoint.issued[1]}


def test_a_changed_client_secret_gets_a_new_token(sender: HttpSender, endpoint: TokenEndpoint) -> None:
    tokens = ClientCredentialsTokens(sender)
    crm = target(endpoint.url)
    tokens.token(crm, SecretStr(endpoint.client_secret), **TIMEOUTS)

    endpoint.client_secret = "rotated-" + endpoint.client_secret
    token = tokens.token(crm, SecretStr(endpoint.client_secret), **TIMEOUTS)

    assert len(endpoint.requests) == 2 and token.get_secret_value() == endpoint.issued[1]


def test_a_failed_token_request_is_not_remembered(sender: HttpSender, endpoint: TokenEndpoint) -> None:
    tokens = ClientCredentialsTokens(sender)
    crm, secret = target(endpoint.url), SecretStr(endpoint.client_secret)
    endpoint.status = 503
    with pytest.raises(TokenUnavailable, match="answered 503"):
        tokens.token(crm, secret, **TIMEOUTS)

    endpoint.status = None
    token = tokens.token(crm, secret, **TIMEOUTS)

    assert token.get_secret_value() == endpoint.issued[0]


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ({"client_secret": "not-the-secret"}, r"answered 401 \(invalid_client\)"),
        ({"status": 500}, r"answered 500 \(temporarily_unavailable\)"),
        ({"body": b'{"token_type":"Bearer","expires_in":60}'}, "without a usable access_token"),
        ({"body": b'{"access_token":"a b","token_type":"Bearer"}'}, "without a usable access_token"),
        ({"body": b'{"access_token":"abc\\n","token_type":"Bearer"}'}, "without a usable access_token"),
        ({"body": b'{"access_token":"abc","token_type":"mac"}'}, "not a bearer token"),
        ({"body": b'{"access_token":"abc","token_type":"Bearer","expires_in":-5}'}, "not a count of seconds"),
        ({"body": b"<html>sign in</html>"}, "without a usable access_token"),
        # within the answer's size limit, and nested deeper than Python's json parser goes
        ({"body": b"[" * 16_000}, "without a usable access_token"),
    ],
    ids=[
        "wrong-secret",
        "5xx",
        "no-token",
        "token-with-space",
        "token-with-trailing-line-break",
        "not-bearer",
        "negative-expiry",
        "not-json",
        "nested-too-deeply",
    ],
)
def test_an_unusable_answer_is_a_clear_token_failure_without_secrets(
    sender: HttpSender, endpoint: TokenEndpoint, script: dict[str, Any], reason: str
) -> None:
    secret = endpoint.client_secret
    for name, value in script.items():
        if name == "client_secret":
            secret = value
        else:
            setattr(endpoint, name, value)

    with pytest.raises(TokenUnavailable, match=reason) as failed:
        ClientCredentialsTokens(sender).token(target(endpoint.url), SecretStr(secret), **TIMEOUTS)

    message = str(failed.value)
    assert message.startswith("token endpoint 127.0.0.1")
    assert secret not in message and endpoint.client_secret not in message and "abc" not in message


@pytest.mark.parametrize(
    "error",
    ["cs-Echoed_secret-0001", "cs-Echoed_secret", "x-cs-Echoed_secret-0001-y"],
    ids=["whole", "part", "inside"],
)
def test_a_client_secret_echoed_as_the_error_code_is_not_quoted(sender: HttpSender, error: str) -> None:
    # Given a token endpoint that answers 400 with the client secret (or part of it) where the OAuth
    # error code belongs: it looks like a code ([\w.-]), and the error goes to the audit and the log
    secret = "cs-Echoed_secret-0001"
    answer = complete(400, json.dumps({"error": error}).encode())
    with misbehaving_peer(lambda *_: answer) as peer:
        with pytest.raises(TokenUnavailable, match="answered 400") as refused:
            ClientCredentialsTokens(sender).token(target(f"{peer.url}/token"), SecretStr(secret), **TIMEOUTS)

    assert str(refused.value) == "token endpoint 127.0.0.1 answered 400"


def test_a_token_without_a_type_or_with_a_null_one_is_taken_as_bearer(
    sender: HttpSender, endpoint: TokenEndpoint
) -> None:
    crm, secret = target(endpoint.url), SecretStr(endpoint.client_secret)
    for answer in (b'{"access_token":"tok-a"}', b'{"access_token":"tok-b","token_type":null}'):
        endpoint.body = answer
        token = ClientCredentialsTokens(sender).token(crm, secret, **TIMEOUTS)
        assert token.get_secret_value() == json.loads(answer)["access_token"]


def test_a_token_that_expires_at_once_serves_only_the_request_that_fetched_it(
    sender: HttpSender, endpoint: TokenEndpoint
) -> None:
    endpoint.expires_in = 0
    tokens = ClientCredentialsTokens(sender, clock=ManualClock(1_000.0))
    crm, secret = target(endpoint.url), SecretStr(endpoint.client_secret)

    used = [tokens.token(crm, secret, **TIMEOUTS).get_secret_value() for _ in range(2)]

    assert used == endpoint.issued[:2] and len(endpoint.requests) == 2


@pytest.mark.parametrize("expires_in", [b"1" + b"0" * 400, b"1e300"], ids=["past-a-float", "1e300"])
def test_a_lifetime_beyond_a_day_is_kept_a_day(
    sender: HttpSender, endpoint: TokenEndpoint, expires_in: bytes
) -> None:
    # Given a token answer whose expires_in is past a day (an integer too large for a float, even)
    endpoint.body = b'{"access_token":"tok-long","token_type":"Bearer","expires_in":' + expires_in + b"}"
    clock = ManualClock(1_000.0)
    tokens = ClientCredentialsTokens(sender, clock=clock)
    crm, secret = target(endpoint.url), SecretStr(endpoint.client_secret)

    # When it is used, then again late on the same day, then after a day
    tokens.token(crm, secret, **TIMEOUTS)
    clock.now += 86_400 * 0.85
    tokens.token(crm, secret, **TIMEOUTS)
    clock.now += 86_400 * 0.2
    tokens.token(crm, secret, **TIMEOUTS)

    # Then it served the day (its renewal margin is 10 % of it) and was fetched again after it
    assert len(endpoint.requests) == 2


def test_a_refusal_carries_the_token_endpoints_retry_after(
    sender: HttpSender, endpoint: TokenEndpoint
) -> None:
    endpoint.status, endpoint.retry_after = 429, "30"
    tokens = ClientCredentialsTokens(sender)
    crm, secret = target(endpoint.url), SecretStr(endpoint.client_secret)

    with pytest.raises(TokenUnavailable, match="answered 429") as refused:
        tokens.token(crm, secret, **TIMEOUTS)

    assert refused.value.retry_after == "30"


def test_a_redirect_is_not_followed(sender: HttpSender) -> None:
    redirect = b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n"
    with misbehaving_peer(lambda *_: Answer(head=redirect)) as peer:
        with pytest.raises(TokenUnavailable, match="answered 302"):
            ClientCredentialsTokens(sender).token(target(f"{peer.url}/token"), SecretStr("s"), **TIMEOUTS)
        assert peer.requests == [("POST", "/token")]


def test_a_token_endpoint_the_url_policy_refuses_is_never_connected_to() -> None:
    # Given a sender whose policy refuses loopback (a deployed relay) and a token endpoint on loopback
    http = HttpSender(pool_size=1, body_limit_bytes=64, endpoint_check=UrlPolicy().check_endpoint)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        try:
            with pytest.raises(TokenUnavailable, match="unsafe-address .*loopback"):
                ClientCredentialsTokens(http).token(
                    target(f"https://127.0.0.1:{port}/token"), SecretStr("s"), **TIMEOUTS
                )
        finally:
            http.close()
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # no connection attempt reached the listener
            listener.accept()


def test_a_trickling_token_endpoint_ends_at_the_attempts_deadline(sender: HttpSender) -> None:
    slow = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: " + b"p" * 60 + b"\r\n\r\n{}"
    with misbehaving_peer(lambda *_: Answer(trickle=slow)) as peer:
        started = time.monotonic()
        with pytest.raises(TokenUnavailable, match="deadline-exceeded"):
            ClientCredentialsTokens(sender).token(
                target(f"{peer.url}/token"),
                SecretStr("s"),
                connect_timeout=1.0,
                read_timeout=1.0,
                total_timeout=1.0,
            )
        took = time.monotonic() - started

    assert took < 5.0  # the peer would trickle for 15 s: the total deadline cut it, not the peer


def test_an_answer_larger_than_a_token_answer_is_refused(sender: HttpSender) -> None:
    big = complete(200, b'{"access_token":"' + b"x" * 20_000 + b'"}', after="close")
    with misbehaving_peer(lambda *_: big) as peer:
        with pytest.raises(TokenUnavailable, match="more than 16384 bytes"):
            ClientCredentialsTokens(sender).token(target(f"{peer.url}/token"), SecretStr("s"), **TIMEOUTS)


def test_a_token_endpoints_retry_after_is_waited_out_before_it_is_asked_again(
    sender: HttpSender, endpoint: TokenEndpoint
) -> None:
    # Given a token endpoint that answers 429 and asks for 30 s of quiet
    endpoint.status, endpoint.retry_after = 429, "30"
    clock = ManualClock(1_000.0)
    tokens = ClientCredentialsTokens(sender, clock=clock)
    crm, secret = target(endpoint.url), SecretStr(endpoint.client_secret)
    with pytest.raises(TokenUnavailable, match="answered 429"):
        tokens.token(crm, secret, **TIMEOUTS)

    # When more deliveries need a token 10 s later (the next batches)
    clock.now += 10
    waits = []
    for _ in range(3):
        with pytest.raises(TokenUnavailable, match="Retry-After") as quiet:
            tokens.token(crm, secret, **TIMEOUTS)
        waits.append(quiet.value.retry_after)

    # Then the endpoint was not asked again inside its quiet, and each retry waits out the rest of it
    assert len(endpoint.requests) == 1
    assert waits == ["20", "20", "20"]

    # and once the quiet is over, a token is fetched again
    endpoint.status, endpoint.retry_after = None, None
    clock.now += 20
    token = tokens.token(crm, secret, **TIMEOUTS)
    assert endpoint.valid(f"Bearer {token.get_secret_value()}")
    assert len(endpoint.requests) == 2
