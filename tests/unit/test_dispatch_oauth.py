"""OAuth 2.0 and mTLS targets in the dispatcher's engine, on in-memory ports (relay.testing.fakes):
the token goes in the Authorization header, a 401 gets one retry with a fresh token in the same
attempt, a failing token endpoint is a retryable failure that sends nothing, the tokens never reach
the audit, and an mTLS target's requests carry its client certificate.

The token endpoint itself (caching, expiry, one request for many deliveries) is tested against a
loopback endpoint in tests/integration/test_oauth_tokens.py."""

from __future__ import annotations

from collections.abc import Mapping

from test_dispatch_engine import SLOW_QUEUE, Relay, answer, make_target, record, relay, start, warm
from test_dispatch_engine import running as running  # the fixture closing the dispatchers

from relay.models.breaker import DeliveryLane, Phase
from relay.models.delivery import DlqReason
from relay.models.http import HttpResult
from relay.models.secrets import RotatingSecret
from relay.models.targets import OAuth2Client, SecurityType, TargetSecurity

CLIENT_SECRET = "the-oauth-client-secret"
PEM_BUNDLE = "-----BEGIN CERTIFICATE-----\n(a client certificate and key)\n"
OAUTH = TargetSecurity(
    type=SecurityType.OAUTH2,
    secret_name="relay/auth/crm",
    oauth2=OAuth2Client(token_url="https://idp.example.com/oauth2/token", client_id="relay"),
)


def oauth_relay(running: list[Relay], statuses: Mapping[str, int] | None = None, **fields: object) -> Relay:
    """A dispatcher for one oauth2 target. ``statuses``: the answer to each token (default 200)."""

    def by_token(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        return answer((statuses or {}).get(token, 200), body=headers.get("Authorization", "").encode())

    r = relay(make_target(security=OAUTH, **fields), answer_with=by_token)
    r.secrets.secrets["relay/auth/crm"] = RotatingSecret(current=CLIENT_SECRET)
    return start(running, r)


def sent_authorizations(r: Relay) -> list[str]:
    return [headers.get("Authorization", "") for _, _, headers, _ in r.http.requests]


def test_an_oauth2_target_gets_its_access_token_as_a_bearer_token(running: list[Relay]) -> None:
    r = oauth_relay(running)

    assert r.batch(record(), record()) == []

    assert sent_authorizations(r) == ["Bearer token-1", "Bearer token-1"]
    assert r.tokens.calls == [("crm", None), ("crm", None)]  # the token port caches; it is asked each time


def test_a_401_gets_one_retry_with_a_fresh_token_in_the_same_attempt(running: list[Relay]) -> None:
    # Given a target that refuses the first token (revoked early, say) and accepts the next
    r = oauth_relay(running, statuses={"token-1": 401})

    # When one record is delivered
    assert r.batch(record()) == []

    # Then the same request went again with a fresh token, and the record is delivered on attempt 1
    assert sent_authorizations(r) == ["Bearer token-1", "Bearer token-2"]
    assert r.tokens.calls == [("crm", None), ("crm", "token-1")]
    assert [body for _, _, _, body in r.http.requests][0] == r.http.requests[1][3]
    (line,) = r.audit_lines()
    assert (line["outcome"], line["status"], line["attempt"]) == ("delivered", 200, 1)
    assert r.queue.retries == [] and r.queue.dead_letters == []


def test_a_401_to_the_fresh_token_too_is_the_answer(running: list[Relay]) -> None:
    r = oauth_relay(running, statuses={"token-1": 401, "token-2": 401})

    assert r.batch(record()) == []

    # Exactly one refresh and one retry, then the 401 is permanent like any other auth failure
    assert sent_authorizations(r) == ["Bearer token-1", "Bearer token-2"]
    (letter,) = r.queue.dead_letters
    assert (letter["reason"], letter["last_status"]) == (DlqReason.PERMANENT_STATUS, 401)


def test_a_failing_token_endpoint_sends_nothing_and_is_retried_with_a_clear_code(
    running: list[Relay],
) -> None:
    r = oauth_relay(running)
    r.tokens.failure = "token endpoint idp.example.com answered 503"
    rec = record()

    assert r.batch(rec) == [rec["messageId"]]

    assert r.http.requests == []
    assert len(r.queue.retries) == 1
    (line,) = r.audit_lines()
    assert (line["outcome"], line["errorCode"], line["status"]) == (
        "retry-scheduled",
        "oauth-token-failed",
        None,
    )
    assert line["error"] == "token endpoint idp.example.com answered 503"


def test_a_token_endpoints_retry_after_is_the_retrys_floor(running: list[Relay]) -> None:
    # Given a token endpoint that answers 429 and asks for 30 s of quiet
    r = oauth_relay(running)
    r.tokens.failure, r.tokens.retry_after = "token endpoint idp.example.com answered 429", "30"

    # When a record's attempt needs a token
    r.batch(record())

    # Then nothing is sent, and the retry waits at least the 30 s asked (the default first wait is 1 s)
    assert r.http.requests == []
    (line,) = r.audit_lines()
    assert (line["outcome"], line["errorCode"]) == ("retry-scheduled", "oauth-token-failed")
    assert line["retryInSeconds"] >= 30


def test_a_request_cut_short_by_a_slow_token_request_is_retried_and_not_held_against_the_endpoint(
    running: list[Relay],
) -> None:
    # Given a fast-lane dispatcher (it measures targets and moves slow ones aside), a token endpoint that
    # takes 1.9 s of the attempt's 3 s (connect 1 s + read 2 s), and a request that then runs out of
    # the 1.1 s left
    cut_off = HttpResult(None, 1_090.0, error_code="deadline-exceeded", error="deadline passed")
    cut = relay(
        make_target(security=OAUTH, connect_timeout_seconds=1, read_timeout_seconds=2),
        answer_with=lambda *_: cut_off,
        SLOW_DELIVERY_QUEUE_URL=SLOW_QUEUE,
    )
    cut.secrets.secrets["relay/auth/crm"] = RotatingSecret(current=CLIENT_SECRET)
    cut.tokens.before_answer = lambda: cut.clock.sleep(1.9)  # not a wait: the manual clock moves on
    r = warm(start(running, cut))

    # When three records are attempted, a batch each (the breaker would open at 5 failures in a row)
    lines = []
    for n in range(3):
        r.batch(record(event_id=f"e-{n}"))
        lines += r.audit_lines()  # each batch's audit object (one invocation id: the last one kept)

    # Then each is retried, says it was cut short, and the breaker holds nothing against the endpoint
    assert [line["outcome"] for line in lines] == ["retry-scheduled"] * 3
    assert (r.breaker().phase, r.breaker().consecutive_failures) == (Phase.CLOSED, 0)
    assert all("cut short: 1.10 s of the attempt's 3.00 s were left" in line["error"] for line in lines)
    # ...while the time the requests took still counts: a slow token endpoint holds the invocation like
    # a slow receiver, so the target is moved aside (docs/dispatcher.md, "Slow lane")
    assert r.lane().lane is DeliveryLane.SLOW


def test_a_failing_token_endpoint_on_the_last_attempt_dead_letters_it_as_exhausted(
    running: list[Relay],
) -> None:
    r = oauth_relay(running)
    r.tokens.failure = "token endpoint idp.example.com: connect-timeout (connect timed out)"

    assert r.batch(record(receive_count=3)) == []

    (letter,) = r.queue.dead_letters
    assert (letter["reason"], letter["last_error"]) == (DlqReason.EXHAUSTED, "oauth-token-failed")


def test_no_fresh_token_after_a_401_is_retried_later_not_dead_lettered(running: list[Relay]) -> None:
    # Given a target that refuses the token, and a token endpoint that fails when asked for a new one
    r = oauth_relay(running, statuses={"token-1": 401})
    r.tokens.refresh_failure = "token endpoint idp.example.com answered 500"
    rec = record()

    # When a record goes out
    assert r.batch(rec) == [rec["messageId"]]

    # Then the 401 is not taken as the target's verdict: retried later, with the token failure's code;
    # but what the endpoint answered is on record: its status, its time and its body (the token in it
    # redacted)
    assert sent_authorizations(r) == ["Bearer token-1"]
    (line,) = r.audit_lines()
    assert (line["outcome"], line["errorCode"], line["status"]) == (
        "retry-scheduled",
        "oauth-token-failed",
        401,
    )
    assert line["latencyMs"] is not None and line["responseBody"] == "Bearer [redacted]"
    assert r.queue.dead_letters == []


def test_401s_with_no_fresh_token_to_follow_do_not_open_the_breaker(running: list[Relay]) -> None:
    # Given a target that refuses its token, a token endpoint that fails when asked for a new one, and
    # as many such attempts as open a breaker when they are the target's failures
    r = oauth_relay(running, statuses={"token-1": 401})
    r.tokens.refresh_failure = "token endpoint idp.example.com answered 500"
    threshold = r.settings.breaker_failure_threshold

    # When they go out, then one more
    r.batch(*(record() for _ in range(threshold)))
    r.batch(record())

    # Then the last one was sent too (a 401 says the endpoint is up; the token endpoint failed)
    assert len(r.http.requests) == threshold + 1
    assert {line["breakerState"] for line in r.audit_lines()} == {"closed"}


def test_a_bearer_target_answering_401_is_not_retried(running: list[Relay]) -> None:
    target = make_target(security=TargetSecurity(type=SecurityType.BEARER, secret_name="relay/auth/crm"))
    r = start(running, relay(target, answer_with=lambda *_: answer(401)))
    r.secrets.secrets["relay/auth/crm"] = RotatingSecret(current="static-bearer")

    assert r.batch(record()) == []

    assert len(r.http.requests) == 1 and r.tokens.calls == []
    assert [letter["reason"] for letter in r.queue.dead_letters] == [DlqReason.PERMANENT_STATUS]


def test_tokens_echoed_by_the_target_never_reach_the_audit(running: list[Relay]) -> None:
    # The scripted target echoes the Authorization header in its answer body
    r = oauth_relay(running, statuses={"token-1": 401})

    r.batch(record())

    (line,) = r.audit_lines()
    assert line["responseBody"] == "Bearer [redacted]"
    assert "token-" not in str(r.audit.objects) and CLIENT_SECRET not in str(r.audit.objects)


def test_an_mtls_target_presents_its_client_certificate_and_others_none(running: list[Relay]) -> None:
    mtls = TargetSecurity(client_certificate_name="relay/mtls/crm")
    r = relay(make_target("crm", security=mtls), make_target("erp"))
    r.secrets.secrets["relay/mtls/crm"] = RotatingSecret(current=PEM_BUNDLE)
    start(running, r)

    assert r.batch(record("crm"), record("erp")) == []

    presented = {
        url: certificate.get_secret_value() if certificate else None
        for (_, url, _, _), certificate in zip(r.http.requests, r.http.client_certificates, strict=True)
    }
    assert presented == {"https://crm.example.com/hook": PEM_BUNDLE, "https://erp.example.com/hook": None}


def test_a_missing_client_certificate_secret_sends_nothing(running: list[Relay]) -> None:
    r = start(running, relay(make_target(security=TargetSecurity(client_certificate_name="relay/mtls/crm"))))
    rec = record()

    assert r.batch(rec) == [rec["messageId"]]

    assert r.http.requests == []
    (line,) = r.audit_lines()
    assert (line["errorCode"], line["outcome"]) == ("configuration", "retry-scheduled")
