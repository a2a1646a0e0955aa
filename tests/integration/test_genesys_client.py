"""GenesysClient drives the real PureCloudPlatformClientV2 SDK over HTTP against the fake Genesys API.

Every error path the issue names: expired tokens (before expiry and on a 401), 403 naming the scope,
429 with Retry-After (honoured up to a bound, never slept on by urllib3), slow responses past the
timeout, malformed bodies, connection failures, bad credentials.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from misbehaving_peer import Answer, complete, misbehaving_peer
from pydantic import SecretStr

from relay.adapters.genesys import (
    SCOPE_INTEGRATIONS,
    SCOPE_OPEN_MESSAGING,
    GenesysClient,
    GenesysCredentials,
    api_host_for,
)
from relay.errors import (
    GenesysAuthError,
    GenesysDeadlineExceeded,
    GenesysError,
    GenesysForbidden,
    GenesysItemError,
    GenesysLoginError,
    GenesysMalformedResponse,
    GenesysNotFound,
    GenesysRateLimited,
    GenesysRunError,
    GenesysTimeout,
    GenesysUnavailable,
)
from relay.local.fake_genesys import FakeGenesys, Fault
from relay.local.fixtures import Fixtures
from relay.settings import Settings

pytestmark = pytest.mark.integration

FIXTURES = Fixtures.load()
OPEN_ID = FIXTURES.integrations[0].id
TARGET_ID = FIXTURES.integrations[0].targets[0].id
TOKEN_PATH = r"^/oauth/token$"
API_PATH = r"^/api/v2/"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class RecordingSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGenesys]:
    with FakeGenesys(FIXTURES, token_lifetime_seconds=3_600) as server:
        yield server


@pytest.fixture
def genesys(fake: FakeGenesys) -> Iterator[FakeGenesys]:
    fake.reset(FIXTURES)
    yield fake
    fake.clear_faults()


def _client(fake: FakeGenesys, *, secret: str | None = None, **kwargs: object) -> GenesysClient:
    credentials = GenesysCredentials(fake.client_id, SecretStr(secret or fake.client_secret))
    options: dict[str, object] = {"timeout_seconds": 2.0, "sleep": RecordingSleep()}
    options.update(kwargs)
    return GenesysClient(fake.base_url, credentials, **options)  # type: ignore[arg-type]


def _assert_no_secret(exc: BaseException, fake: FakeGenesys) -> None:
    text = f"{exc} {exc!r}"
    assert fake.client_secret not in text
    assert "Bearer" not in text


def test_reads_deserialize_through_the_sdk_models(genesys: FakeGenesys) -> None:
    client = _client(genesys)

    open_integration = client.get_open_integration(OPEN_ID)
    integration = client.get_integration(TARGET_ID)
    config = client.get_integration_config(TARGET_ID)
    credential = client.get_credential(config["credentials"]["security"]["id"])

    assert open_integration["id"] == OPEN_ID and open_integration["status"] == "Active"
    assert integration["intendedState"] == "ENABLED"
    assert integration["integrationType"]["id"] == "webhook"
    assert config["properties"]["openMessagingIntegrationId"] == OPEN_ID
    assert credential["credentialFields"] == {"value": FIXTURES.integrations[0].targets[0].security.value}
    assert client.logins == 1


def test_an_integration_id_the_sdk_percent_encodes_is_found() -> None:
    # Given a fixtures file whose integration id holds a ":" (the fixtures allow it, as the intake does)
    raw = json.loads(json.dumps(FIXTURES.model_dump(by_alias=True, mode="json")))
    raw["integrations"][0]["id"] = "open:channel.1"
    fixtures = Fixtures.model_validate(raw)
    with FakeGenesys(fixtures) as server:
        # When the SDK reads it (it sends the ":" as %3A, as it does for Genesys)
        found = _client(server).get_open_integration("open:channel.1")

    # Then the fake decodes the path as Genesys does, instead of answering 404
    assert found["id"] == "open:channel.1"


def test_logs_in_again_before_the_token_expires(genesys: FakeGenesys) -> None:
    # Given a client logged in with a one-hour token
    clock = FakeClock()
    client = _client(genesys, clock=clock)
    client.get_integration(TARGET_ID)
    logins_before = genesys.count(TOKEN_PATH)

    # When the clock nears the token's expiry (inside the refresh margin) and we read again
    clock.now += 3_600 - 60
    client.get_integration(TARGET_ID)

    # Then the client logged in again first, so the fake never saw an expired token
    assert genesys.count(TOKEN_PATH) == logins_before + 1
    assert client.logins == 2
    assert all(r.authorized for r in genesys.requests if r.method == "GET")


def test_a_short_lived_token_is_reused_for_half_its_life() -> None:
    # Given Genesys issues 10 s tokens (shorter than the 30 s minimum refresh margin)
    clock = FakeClock()
    with FakeGenesys(FIXTURES, token_lifetime_seconds=10) as short:
        client = _client(short, clock=clock)

        # When the client reads once a second for the first half of the token's life
        for _ in range(5):
            client.get_integration(TARGET_ID)
            clock.now += 1
        logins_in_first_half = short.count(TOKEN_PATH)
        # And once more past halfway
        clock.now += 0.5
        client.get_integration(TARGET_ID)

    # Then it logged in once for the first five reads, and again only past halfway
    assert logins_in_first_half == 1
    assert short.count(TOKEN_PATH) == 2


def test_a_401_triggers_one_fresh_login_and_the_read_succeeds(genesys: FakeGenesys) -> None:
    client = _client(genesys)
    client.get_integration(TARGET_ID)

    # When Genesys revokes every token early
    genesys.expire_tokens()
    result = client.get_integration(TARGET_ID)

    # Then the client logged in once more and got its answer
    assert result["id"] == TARGET_ID
    assert client.logins == 2


def test_a_401_after_a_fresh_login_is_an_auth_error(genesys: FakeGenesys) -> None:
    client = _client(genesys)
    genesys.add_fault(Fault("status", status=401, path=API_PATH, times=2))

    with pytest.raises(GenesysAuthError) as caught:
        client.get_integration(TARGET_ID)

    assert client.logins == 2
    _assert_no_secret(caught.value, genesys)


def test_wrong_client_secret_is_an_auth_error_without_the_secret(genesys: FakeGenesys) -> None:
    client = _client(genesys, secret="definitely-not-the-secret")

    with pytest.raises(GenesysAuthError, match="client id and secret") as caught:
        client.get_integration(TARGET_ID)

    assert "definitely-not-the-secret" not in str(caught.value)
    assert genesys.count(API_PATH) == 0


@pytest.mark.parametrize(
    ("read", "scope"),
    [("get_open_integration", SCOPE_OPEN_MESSAGING), ("get_integration", SCOPE_INTEGRATIONS)],
)
def test_403_names_the_missing_permission(genesys: FakeGenesys, read: str, scope: str) -> None:
    client = _client(genesys)
    genesys.deny(path=API_PATH)

    with pytest.raises(GenesysForbidden) as caught:
        getattr(client, read)(OPEN_ID if read == "get_open_integration" else TARGET_ID)

    assert caught.value.scope == scope
    assert scope in str(caught.value)


def test_429_is_honoured_within_the_bound(genesys: FakeGenesys) -> None:
    # Given Genesys rate-limits the next two reads with Retry-After: 2
    sleep = RecordingSleep()
    client = _client(genesys, sleep=sleep, max_rate_limit_retries=3, max_retry_after_seconds=5)
    client.login()
    genesys.rate_limit(retry_after=2, path=API_PATH, times=2)

    # When we read
    result = client.get_integration(TARGET_ID)

    # Then we waited out Retry-After twice ourselves and got the answer on the third request
    assert result["id"] == TARGET_ID
    assert sleep.waits == [2.0, 2.0]
    assert genesys.count(API_PATH) == 3


def test_429_past_the_bound_ends_the_run_with_a_clear_error(genesys: FakeGenesys) -> None:
    sleep = RecordingSleep()
    client = _client(genesys, sleep=sleep, max_rate_limit_retries=2, max_retry_after_seconds=5)
    client.login()
    genesys.rate_limit(retry_after=1, path=API_PATH, times=10)

    with pytest.raises(GenesysRateLimited, match="this run ends") as caught:
        client.get_integration(TARGET_ID)

    assert sleep.waits == [1.0, 1.0]
    assert genesys.count(API_PATH) == 3
    assert caught.value.retry_after_seconds == 1.0


def test_a_long_retry_after_is_not_slept_on_by_the_sdk(genesys: FakeGenesys) -> None:
    # Given a 429 asking for an hour's wait (urllib3's default Retry would sleep on it silently)
    sleep = RecordingSleep()
    client = _client(genesys, sleep=sleep, max_retry_after_seconds=10)
    client.login()
    genesys.rate_limit(retry_after=3_600, path=API_PATH, times=1)

    # When we read, the run ends at once: one request, no wait anywhere
    with pytest.raises(GenesysRateLimited):
        client.get_integration(TARGET_ID)

    assert genesys.count(API_PATH) == 1
    assert sleep.waits == []


def test_429_on_login_is_honoured_too(genesys: FakeGenesys) -> None:
    sleep = RecordingSleep()
    client = _client(genesys, sleep=sleep)
    genesys.rate_limit(retry_after=1, path=TOKEN_PATH, times=1)

    client.login()

    assert sleep.waits == [1.0]
    assert genesys.count(TOKEN_PATH) == 2


def test_slow_api_response_past_the_timeout_is_a_timeout_error(genesys: FakeGenesys) -> None:
    client = _client(genesys, timeout_seconds=0.3)
    client.login()
    genesys.slow_down(1.5, path=API_PATH)

    with pytest.raises(GenesysTimeout, match="did not answer"):
        client.get_integration(TARGET_ID)

    # urllib3 did not retry behind our back
    assert genesys.count(API_PATH) == 1


def test_slow_token_endpoint_is_a_timeout_error(genesys: FakeGenesys) -> None:
    client = _client(genesys, timeout_seconds=0.3)
    genesys.slow_down(1.5, path=TOKEN_PATH)

    with pytest.raises(GenesysTimeout):
        client.login()


TOKEN = json.dumps({"access_token": "t0k3n-value", "token_type": "bearer", "expires_in": 3600}).encode()
SLOW_JSON = json.dumps({"id": TARGET_ID, "name": "x" * 40}).encode()


def test_a_token_endpoint_trickling_its_answer_ends_at_the_timeout() -> None:
    # Given a token endpoint that sends its answer one byte every 0.2 s (about 30 s in all)
    answer = complete(200, TOKEN).head
    with misbehaving_peer(lambda *_: Answer(trickle=answer)) as peer:
        client = GenesysClient(
            peer.url, GenesysCredentials("id", SecretStr("s3cret-value")), timeout_seconds=1.0
        )
        started = time.monotonic()

        # When the client logs in with a 1 s timeout
        with pytest.raises(GenesysTimeout) as caught:
            client.login()

    # Then the login ends as a timeout at about 1 s, not when the peer is done, without the secret
    assert time.monotonic() - started < 3.0
    assert "did not answer login" in str(caught.value) and "s3cret-value" not in str(caught.value)


def test_an_api_endpoint_trickling_its_body_ends_at_the_timeout() -> None:
    # Given a prompt token endpoint, and an API whose answer's body comes one byte every 0.2 s
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(SLOW_JSON)

    def answer(method: str, path: str) -> Answer:
        return (
            complete(200, TOKEN) if path.startswith("/oauth/token") else Answer(head=head, trickle=SLOW_JSON)
        )

    with misbehaving_peer(answer) as peer:
        client = GenesysClient(
            peer.url, GenesysCredentials("id", SecretStr("s3cret-value")), timeout_seconds=1.0
        )
        client.login()
        started = time.monotonic()

        with pytest.raises(GenesysTimeout, match="did not answer"):
            client.get_integration(TARGET_ID)

        assert time.monotonic() - started < 3.0
        assert [path for _, path in peer.requests].count(f"/api/v2/integrations/{TARGET_ID}") == 1


NESTED_TOO_DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("body", [None, NESTED_TOO_DEEP], ids=["truncated", "nested-too-deep"])
def test_malformed_body_is_a_malformed_response_error(genesys: FakeGenesys, body: bytes | None) -> None:
    client = _client(genesys)
    client.login()
    genesys.malform(path=API_PATH, body=body)

    with pytest.raises(GenesysMalformedResponse):
        client.get_integration(TARGET_ID)


@pytest.mark.parametrize("body", [None, NESTED_TOO_DEEP], ids=["truncated", "nested-too-deep"])
def test_malformed_token_answer_is_a_login_error(genesys: FakeGenesys, body: bytes | None) -> None:
    genesys.malform(path=TOKEN_PATH, body=body)

    with pytest.raises(GenesysLoginError, match="unreadable"):
        _client(genesys).get_integration(TARGET_ID)


def test_a_token_answer_without_expires_in_is_a_login_error(genesys: FakeGenesys) -> None:
    genesys.omit_expires_in()

    with pytest.raises(GenesysLoginError, match="expires_in") as caught:
        _client(genesys).get_integration(TARGET_ID)

    assert genesys.count(TOKEN_PATH) == 1 and genesys.count(API_PATH) == 0
    _assert_no_secret(caught.value, genesys)


def test_a_404_at_login_is_a_login_error(genesys: FakeGenesys) -> None:
    genesys.add_fault(Fault("status", status=404, path=TOKEN_PATH))

    with pytest.raises(GenesysLoginError, match="404"):
        _client(genesys).login()


# --- the run's deadline ---------------------------------------------------------------------------


def test_no_request_starts_after_the_run_deadline(genesys: FakeGenesys) -> None:
    clock = FakeClock()
    client = _client(genesys, clock=clock, deadline_seconds=60)
    client.get_integration(TARGET_ID)

    clock.now += 60
    with pytest.raises(GenesysDeadlineExceeded, match="60 s"):
        client.get_integration(TARGET_ID)

    assert genesys.count(API_PATH) == 1


def test_a_request_near_the_deadline_gets_only_the_time_left(genesys: FakeGenesys) -> None:
    # Given a 10 s request timeout, and 0.3 s left before the run's deadline
    clock = FakeClock()
    client = _client(genesys, clock=clock, timeout_seconds=10, deadline_seconds=100)
    client.login()
    clock.now += 100 - 0.3
    # And Genesys answering the next read after 1.5 s (well within the request timeout)
    genesys.slow_down(1.5, path=API_PATH)

    # When we read, the request gives up at the deadline instead of waiting for the answer
    with pytest.raises(GenesysDeadlineExceeded, match="before the run's deadline"):
        client.get_integration(TARGET_ID)

    assert genesys.count(API_PATH) == 1


def test_a_retry_after_past_the_deadline_is_not_waited_for(genesys: FakeGenesys) -> None:
    # Given 5 s left in the run, and a 429 asking for 6 s (within the per-wait bound of 10 s)
    clock = FakeClock()
    sleep = RecordingSleep()
    client = _client(genesys, clock=clock, sleep=sleep, deadline_seconds=30)
    client.login()
    clock.now += 25
    genesys.rate_limit(retry_after=6, path=API_PATH)

    # When we read, the run ends at once: no wait, one request
    with pytest.raises(GenesysDeadlineExceeded, match="Retry-After 6 s"):
        client.get_integration(TARGET_ID)

    assert sleep.waits == []
    assert genesys.count(API_PATH) == 1


def test_unknown_integration_is_not_found(genesys: FakeGenesys) -> None:
    with pytest.raises(GenesysNotFound):
        _client(genesys).get_integration("00000000-0000-4000-8000-000000000000")


@pytest.mark.parametrize("retry_after", [None, 1.0], ids=["plain", "with Retry-After"])
def test_5xx_is_unavailable(genesys: FakeGenesys, retry_after: float | None) -> None:
    client = _client(genesys)
    client.login()
    genesys.add_fault(Fault("status", status=503, path=API_PATH, retry_after=retry_after))

    with pytest.raises(GenesysUnavailable, match="503"):
        client.get_integration(TARGET_ID)


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = GenesysClient(
        f"http://127.0.0.1:{port}", GenesysCredentials("id", SecretStr("s3cret-value")), timeout_seconds=1
    )

    with pytest.raises(GenesysUnavailable) as caught:
        client.login()

    assert not isinstance(caught.value, GenesysTimeout)
    assert "s3cret-value" not in str(caught.value)


def test_every_error_ends_the_run_or_concerns_one_item() -> None:
    run_level = (
        GenesysAuthError,
        GenesysLoginError,
        GenesysForbidden,
        GenesysRateLimited,
        GenesysDeadlineExceeded,
        GenesysUnavailable,
        GenesysTimeout,
    )
    assert all(issubclass(error, GenesysRunError) for error in run_level)
    assert all(issubclass(error, GenesysItemError) for error in (GenesysNotFound, GenesysMalformedResponse))
    assert not issubclass(GenesysRunError, GenesysItemError) and not issubclass(
        GenesysItemError, GenesysRunError
    )
    assert issubclass(GenesysRunError, GenesysError) and issubclass(GenesysItemError, GenesysError)


@pytest.mark.parametrize(
    ("env", "host"),
    [
        ({"GENESYS_REGION": "eu-west-1"}, "https://api.mypurecloud.ie"),
        ({"GENESYS_REGION": "mypurecloud.com.au"}, "https://api.mypurecloud.com.au"),
        ({"GENESYS_REGION": "eu-west-1", "GENESYS_API_HOST": "http://127.0.0.1:9/"}, "http://127.0.0.1:9"),
    ],
)
def test_api_host_from_region_or_override(env: dict[str, str], host: str) -> None:
    assert api_host_for(Settings.model_validate(env)) == host


def test_token_endpoint_403_is_an_auth_error(genesys: FakeGenesys) -> None:
    genesys.deny(path=TOKEN_PATH)

    with pytest.raises(GenesysAuthError, match="login refused"):
        _client(genesys).login()


def _control(fake: FakeGenesys, method: str, action: str, body: dict[str, object] | None = None) -> Any:
    request = urllib.request.Request(
        f"{fake.base_url}/_fake/{action}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_faults_can_be_set_at_runtime_over_http(genesys: FakeGenesys) -> None:
    # Given a client logged in, and a 403 set through the fake's control endpoint (as from another process)
    client = _client(genesys)
    client.login()
    _control(genesys, "POST", "faults", {"kind": "status", "status": 403, "path": "^/api/v2/integrations/"})

    # Then the next read is denied, naming the permission
    with pytest.raises(GenesysForbidden):
        client.get_integration(TARGET_ID)

    # And expiring tokens over HTTP forces a fresh login on the next read
    _control(genesys, "POST", "expire-tokens")
    assert client.get_integration(TARGET_ID)["id"] == TARGET_ID
    assert client.logins == 2
    seen = _control(genesys, "GET", "requests")
    assert [r["path"] for r in seen].count("/oauth/token") == 2


def test_control_endpoint_refuses_an_unknown_fault(genesys: FakeGenesys) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        _control(genesys, "POST", "faults", {"kind": "explode"})
    assert caught.value.code == 400
