"""The dispatcher's engine against in-memory fakes of its ports (relay.testing.fakes): no moto, no sockets.

Every settling branch, breaker admission (deliver, probe, defer, store down), the time budget, poison
and unknown or disabled targets, the 410 lane stop, the partial batch response and slow-target
isolation (routing to the slow lane, lane moves). What is observed is
what the outside world would see: the requests the HTTP port received, the queue operations, the
breaker store's state, the audit lines and ``batchItemFailures``.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from support.emf import dimension_sets, emf_blobs, in_lambda
from support.waiting import wait_until

from relay.logic.breaker_control import lift_quiet
from relay.logic.dispatch import Dispatcher
from relay.logic.dispatch.attempt import settle_margin_seconds
from relay.logic.dispatch.isolation import EWMA_ALPHA, FORGET_AFTER_SECONDS, LatencyTracker
from relay.models.breaker import BreakerState, DeliveryLane, LaneState, Phase, target_key
from relay.models.delivery import ATTR_ATTEMPTS, ATTR_DEFERRALS, DeliveryTask, DlqReason, S3Ref
from relay.models.http import CONNECT_TIMEOUT, READ_TIMEOUT, HttpResult
from relay.models.rate_limit import BucketState, RateLimit, rate_key
from relay.models.secrets import RotatingSecret
from relay.models.targets import RetryMatrix, SecurityType, Target, TargetSecurity
from relay.settings import Settings
from relay.testing.fakes import (
    InMemoryAuditSink,
    InMemoryBreakerStore,
    InMemoryClaimCheckStore,
    InMemoryRateLimitStore,
    InMemorySecrets,
    InMemoryTargets,
    ManualClock,
    RecordingQueueOps,
    ScriptedHttp,
    ScriptedTokens,
)

INTEGRATION = "int-1"
EVENT_JSON = '{"id":"e-1","text":"hello","n":1E+2}'
NOW = datetime(2026, 3, 25, 13, 20, 5, tzinfo=UTC).timestamp()


def make_target(target_id: str = "crm", *, attempts: int = 3, **fields: Any) -> Target:
    return Target(
        integration_id=INTEGRATION,
        target_id=target_id,
        name=target_id,
        url=f"https://{target_id}.example.com/hook",
        retry_matrix=RetryMatrix(
            attempts=attempts, base_interval_ms=1_000, max_interval_ms=8_000, multiplier=2
        ),
        **fields,
    )


def record(
    target_id: str = "crm",
    *,
    receive_count: int = 1,
    attempts: int | None = None,
    deferrals: int | None = None,
    event_json: str | None = EVENT_JSON,
    event_ref: S3Ref | None = None,
    body: str | None = None,
    event_id: str = "e-1",
    sent_at: float | None = None,
) -> dict[str, Any]:
    """An SQS event record carrying one DeliveryTask, as Lambda hands it over (``sent_at``: its
    SentTimestamp, epoch seconds)."""
    if body is None:
        task = DeliveryTask(
            delivery_id=uuid.uuid4(),
            integration_id=INTEGRATION,
            target_id=target_id,
            event_id=event_id,
            received_at=datetime.now(UTC),
            event_json=event_json,
            event_ref=event_ref,
        )
        body = task.model_dump_json(by_alias=True, exclude_none=True)
    attributes: dict[str, Any] = {}
    if attempts is not None:
        attributes[ATTR_ATTEMPTS] = {"stringValue": str(attempts), "dataType": "Number"}
    if deferrals is not None:
        attributes[ATTR_DEFERRALS] = {"stringValue": str(deferrals), "dataType": "Number"}
    message_id = str(uuid.uuid4())
    sqs_attributes = {"ApproximateReceiveCount": str(receive_count)}
    if sent_at is not None:
        sqs_attributes["SentTimestamp"] = str(round(sent_at * 1000))
    return {
        "messageId": message_id,
        "receiptHandle": f"receipt-{message_id}",
        "body": body,
        "attributes": sqs_attributes,
        "messageAttributes": attributes,
    }


def answer(status: int | None = 200, *, error_code: str | None = None, **fields: Any) -> HttpResult:
    return HttpResult(status, 12.5, error_code=error_code, **fields)


@dataclass
class Relay:
    """A dispatcher on in-memory ports, and the ports, for a test to drive and observe."""

    targets: InMemoryTargets
    http: ScriptedHttp
    queue: RecordingQueueOps = field(default_factory=RecordingQueueOps)
    breakers: InMemoryBreakerStore = field(default_factory=InMemoryBreakerStore)
    rate_limits: InMemoryRateLimitStore = field(default_factory=InMemoryRateLimitStore)
    audit: InMemoryAuditSink = field(default_factory=InMemoryAuditSink)
    secrets: InMemorySecrets = field(default_factory=InMemorySecrets)
    claim_checks: InMemoryClaimCheckStore = field(default_factory=InMemoryClaimCheckStore)
    clock: ManualClock = field(default_factory=lambda: ManualClock(NOW))
    settings: Settings = field(default_factory=lambda: Settings.model_validate({}))
    tokens: ScriptedTokens = field(default_factory=ScriptedTokens)
    dispatcher: Dispatcher | None = None

    def start(self) -> Relay:
        self.dispatcher = Dispatcher(
            settings=self.settings,
            targets=self.targets,
            http=self.http,
            queue=self.queue,
            breakers=self.breakers,
            rate_limits=self.rate_limits,
            audit=self.audit,
            secrets=self.secrets,
            claim_checks=self.claim_checks,
            clock=self.clock,
            rng=random.Random(7),
            sleep=self.clock.sleep,
            tokens=self.tokens,
        )
        return self

    def batch(self, *records: dict[str, Any], remaining_ms: Callable[[], int] | None = None) -> list[str]:
        """Deliver one batch; the message ids reported failed."""
        assert self.dispatcher is not None
        response = self.dispatcher.handle_batch(
            list(records), invocation_id="inv-1", remaining_ms=remaining_ms
        )
        return [item["itemIdentifier"] for item in response["batchItemFailures"]]

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for body in self.audit.objects.values() for line in body.splitlines()]

    def breaker(self, target_id: str = "crm") -> BreakerState:
        return self.breakers.load(target_key(INTEGRATION, target_id))

    def set_breaker(self, state: BreakerState, target_id: str = "crm") -> None:
        assert self.breakers.save(target_key(INTEGRATION, target_id), state, expected_version=0)

    def lane(self, target_id: str = "crm") -> LaneState:
        return self.breakers.load_with_lane(target_key(INTEGRATION, target_id))[1]

    def set_lane(self, lane: LaneState, target_id: str = "crm") -> None:
        assert self.breakers.save_lane(target_key(INTEGRATION, target_id), lane, expected_version=0)


def relay(
    *targets: Target,
    answer_with: Callable[[str, str, Mapping[str, str], bytes], HttpResult] | None = None,
    **settings: str,
) -> Relay:
    return Relay(
        targets=InMemoryTargets(*(targets or (make_target(),))),
        http=ScriptedHttp(answer_with),
        settings=Settings.model_validate(settings),
    )


@pytest.fixture
def running() -> Iterator[list[Relay]]:
    """Closes every dispatcher a test started (its thread pool)."""
    started: list[Relay] = []
    yield started
    for each in started:
        if each.dispatcher is not None:
            each.dispatcher.close()


def start(running: list[Relay], built: Relay) -> Relay:
    running.append(built.start())
    return built


def always(status: int | None, **fields: Any) -> Callable[[str, str, Mapping[str, str], bytes], HttpResult]:
    return lambda method, url, headers, body: answer(status, **fields)


# --- settling ------------------------------------------------------------------------------------------


def test_a_2xx_is_delivered_with_nothing_to_report(running: list[Relay]) -> None:
    r = start(running, relay())

    failed = r.batch(record())

    assert failed == []
    assert (r.queue.retries, r.queue.dead_letters, r.queue.deferrals) == ([], [], [])
    ((method, url, headers, body),) = r.http.requests
    assert (method, url) == ("POST", "https://crm.example.com/hook")
    assert b'"sourceEvent":{"id":"e-1","text":"hello","n":1E+2}' in body  # the event's text, untouched
    (line,) = r.audit_lines()
    assert (line["outcome"], line["status"], line["errorCode"], line["attempt"]) == (
        "delivered",
        200,
        None,
        1,
    )
    assert line["startedAt"] == "2026-03-25T13:20:05.000Z"


def test_a_retryable_answer_with_attempts_left_schedules_a_retry_and_is_reported_failed(
    running: list[Relay],
) -> None:
    r = start(running, relay(answer_with=always(503)))
    first = record(receive_count=1)

    failed = r.batch(first)

    assert failed == [first["messageId"]]
    ((handle, delay),) = r.queue.retries
    assert handle == first["receiptHandle"] and 0 <= delay <= 1  # attempt 1: uniform(0, 1 s)
    assert r.queue.dead_letters == []
    (line,) = r.audit_lines()
    assert (line["outcome"], line["retryInSeconds"], line["errorCode"]) == (
        "retry-scheduled",
        delay,
        "http-503",
    )


def test_a_retry_after_is_a_floor_for_the_backoff(running: list[Relay]) -> None:
    r = start(running, relay(answer_with=always(429, headers={"retry-after": "120"})))

    r.batch(record())

    assert [delay for _, delay in r.queue.retries] == [120]


@pytest.mark.parametrize(
    ("age_days", "retried"), [(13.0, True), (13.9, False)], ids=["retry-in-time", "retention-ending"]
)
def test_a_retry_that_would_come_after_the_queues_retention_is_dead_lettered_instead(
    running: list[Relay], age_days: float, retried: bool
) -> None:
    # Given a message SQS took age_days ago (it deletes it unseen at 14 days), whose receiver answers
    # 503 asking for 12 h, with attempts left
    r = start(running, relay(answer_with=always(503, headers={"retry-after": "43200"})))
    old = record(receive_count=2, sent_at=NOW - age_days * 86_400)  # attempt 2 of 3

    failed = r.batch(old)

    # Then the retry is scheduled while it still comes back in time; past that, the message is
    # dead-lettered, explained, rather than deleted by SQS with no trace
    if retried:
        assert failed == [old["messageId"]] and r.queue.dead_letters == []
        assert [delay for _, delay in r.queue.retries] == [43_200 - 300]
    else:
        assert failed == [] and r.queue.retries == []
        (letter,) = r.queue.dead_letters
        assert (letter["reason"], letter["attempts"], letter["last_status"]) == (DlqReason.EXHAUSTED, 2, 503)


def test_the_last_planned_attempt_failing_dead_letters_it_as_exhausted(running: list[Relay]) -> None:
    r = start(running, relay(answer_with=always(500)))
    last = record(receive_count=2, attempts=1)  # attempt 1 + 2 = 3 of 3

    failed = r.batch(last)

    assert failed == []  # the DLQ holds it now: SQS may delete the original
    (letter,) = r.queue.dead_letters
    assert (letter["reason"], letter["attempts"], letter["last_status"], letter["last_error"]) == (
        DlqReason.EXHAUSTED,
        3,
        500,
        "http-500",
    )
    (line,) = r.audit_lines()
    assert (line["outcome"], line["dlqReason"], line["attempt"]) == ("dead-lettered", "exhausted", 3)


def test_a_network_failure_is_retried_like_a_5xx(running: list[Relay]) -> None:
    r = start(running, relay(answer_with=always(None, error_code=CONNECT_TIMEOUT, error="connect timed out")))
    rec = record()

    assert r.batch(rec) == [rec["messageId"]]
    (line,) = r.audit_lines()
    assert (line["errorCode"], line["error"], line["status"]) == (
        "connect-timeout",
        "connect timed out",
        None,
    )


@pytest.mark.parametrize("status", [301, 400, 404, 422, 101])
def test_a_permanent_answer_is_dead_lettered_at_once(running: list[Relay], status: int) -> None:
    r = start(running, relay(answer_with=always(status)))

    assert r.batch(record()) == []
    (letter,) = r.queue.dead_letters
    assert (letter["reason"], letter["attempts"], letter["last_status"]) == (
        DlqReason.PERMANENT_STATUS,
        1,
        status,
    )


def test_a_410_disables_the_target_and_its_waiting_records_are_dead_lettered_without_an_attempt(
    running: list[Relay],
) -> None:
    # Given a target answering 410, one request at a time, and three of its records in one batch
    r = start(running, relay(answer_with=always(410), PER_TARGET_CONCURRENCY="1", DELIVERY_CONCURRENCY="4"))
    records = [record(receive_count=2) for _ in range(3)]

    # When the batch runs
    failed = r.batch(*records)

    # Then exactly one request went out, the target is disabled, and all three are in the DLQ as gone
    assert failed == [] and len(r.http.requests) == 1
    assert r.targets.disabled == [(INTEGRATION, "crm")]
    assert [letter["reason"] for letter in r.queue.dead_letters] == [DlqReason.TARGET_GONE] * 3
    attempted = [letter for letter in r.queue.dead_letters if letter["last_status"] == 410]
    unattempted = [letter for letter in r.queue.dead_letters if letter["last_status"] is None]
    assert len(attempted) == 1 and attempted[0]["attempts"] == 2
    assert len(unattempted) == 2
    assert all(letter["attempts"] == 1 for letter in unattempted)  # no attempt used
    assert all("410" in letter["last_error"] for letter in unattempted)
    assert sorted(line.get("errorCode") for line in r.audit_lines()) == [
        "http-410",
        "target-gone",
        "target-gone",
    ]


def test_a_410_still_dead_letters_when_the_target_cannot_be_disabled(running: list[Relay]) -> None:
    r = start(running, relay(answer_with=always(410)))
    r.targets.writes_unavailable = True

    assert r.batch(record()) == []
    assert [letter["reason"] for letter in r.queue.dead_letters] == [DlqReason.TARGET_GONE]


def test_when_the_retry_cannot_be_scheduled_the_queue_timeout_brings_it_back(running: list[Relay]) -> None:
    r = start(running, relay(answer_with=always(503)))
    r.queue.unavailable.add("schedule_retry")
    rec = record()

    assert r.batch(rec) == [rec["messageId"]]
    (line,) = r.audit_lines()
    assert (line["outcome"], line["retryInSeconds"]) == ("retry-scheduled", None)


def test_when_the_dlq_is_down_the_record_is_left_for_redelivery(running: list[Relay]) -> None:
    r = start(running, relay(answer_with=always(400)))
    r.queue.unavailable.add("dead_letter")
    rec = record()

    assert r.batch(rec) == [rec["messageId"]]
    (line,) = r.audit_lines()
    assert (line["outcome"], line["dlqReason"]) == ("left-for-redelivery", "permanent-status")


def test_a_missing_secret_sends_nothing_and_is_retried(running: list[Relay]) -> None:
    target = make_target(security=TargetSecurity(type=SecurityType.BEARER, secret_name="relay/auth/crm"))
    r = start(running, relay(target))
    rec = record()

    assert r.batch(rec) == [rec["messageId"]]
    assert r.http.requests == []
    (line,) = r.audit_lines()
    assert (line["errorCode"], line["status"], line["outcome"]) == ("configuration", None, "retry-scheduled")


@pytest.mark.parametrize(
    "token", ["bearer-token-0123\n", "bearer-token-0123\r\nX-Extra: 1", "bearer-\u20ac-0123"]
)
def test_a_bearer_secret_no_authorization_header_can_carry_is_a_configuration_error(
    running: list[Relay], token: str
) -> None:
    # Given a bearer target whose token was provisioned by hand with a line break (a pasted value's
    # last one, too) or a character no header can carry (config sync refuses these; Secrets
    # Manager takes anything)
    target = make_target(security=TargetSecurity(type=SecurityType.BEARER, secret_name="auth"))
    r = start(running, relay(target))
    r.secrets.secrets["auth"] = RotatingSecret(current=token)
    rec = record()

    # When a delivery is made
    assert r.batch(rec) == [rec["messageId"]]

    # Then nothing is sent and it is retried as a configuration error, not dead-lettered as if the
    # target had answered a permanent status; the token is named by its place, never quoted
    assert r.http.requests == []
    (line,) = r.audit_lines()
    assert (line["errorCode"], line["status"], line["outcome"]) == ("configuration", None, "retry-scheduled")
    assert "bearer" in line["error"] and token.strip() not in json.dumps(line)


def test_secrets_manager_down_sends_nothing_and_is_retried(running: list[Relay]) -> None:
    target = make_target(signing_secret_name="relay/signing/crm")
    r = start(running, relay(target))
    r.secrets.unavailable = True

    r.batch(record())

    assert r.http.requests == []
    assert [line["errorCode"] for line in r.audit_lines()] == ["dependency-unavailable"]


def test_only_a_configuration_error_has_the_targets_secrets_read_again_soon(running: list[Relay]) -> None:
    # Given an encrypted target whose key has no keyId (written by hand), signed and with a bearer token
    target = make_target(
        security=TargetSecurity(type=SecurityType.BEARER, secret_name="auth"),
        signing_secret_name="signing",
        encryption_key_name="encryption",
    )
    r = start(running, relay(target, answer_with=always(503)))
    r.secrets.secrets.update(
        auth=RotatingSecret(current="bearer-token-0123456789"),
        signing=RotatingSecret(current="whsec_c2lnbmluZy1zZWNyZXQtMDEyMzQ1Njc4OQ=="),
        encryption=RotatingSecret(current="encryption-key-0123"),
    )

    # When a delivery fails on it, then (key fixed) one fails at the endpoint, then Secrets Manager is down
    def failure_and_distrusted() -> tuple[str, list[str]]:
        r.batch(record())
        (line,) = r.audit_lines()  # this batch's
        return line["errorCode"], sorted(r.secrets.distrusted)

    assert failure_and_distrusted() == ("configuration", ["auth", "encryption", "signing"])
    r.secrets.distrusted.clear()
    fixed = RotatingSecret(current="encryption-key-0123", key_id="k1", salt="5a" * 16)
    r.secrets.secrets["encryption"] = fixed
    assert failure_and_distrusted() == ("http-503", [])
    r.secrets.unavailable = True

    # Then only the configuration error told the reader to read the target's secrets again soon
    assert failure_and_distrusted() == ("dependency-unavailable", [])


def test_the_target_secrets_sign_and_authorise_and_never_reach_the_audit(running: list[Relay]) -> None:
    # Given a target that echoes its bearer token back in the response body
    target = make_target(
        security=TargetSecurity(type=SecurityType.BEARER, secret_name="auth"), signing_secret_name="signing"
    )
    token = "bearer-token-value-0001"
    r = relay(target, answer_with=always(200, body=f"you sent {token}".encode()))
    r.secrets.secrets.update(
        auth=RotatingSecret(current=token),
        signing=RotatingSecret(current="whsec_YmVuY2gtc2lnbmluZy1zZWNyZXQtMDEyMzQ1Njc4OQ=="),
    )
    start(running, r)

    r.batch(record())

    ((_, _, headers, _),) = r.http.requests
    assert headers["Authorization"] == f"Bearer {token}" and headers["webhook-signature"].startswith("v1,")
    (line,) = r.audit_lines()
    assert line["responseBody"] == "you sent [redacted]"


@pytest.mark.parametrize(
    ("escape", "kept"),
    [
        (lambda encoded: encoded, "Authorization: Basic [redacted]"),
        # its padding JSON-escaped (\u003d), as some JSON writers do
        (lambda encoded: encoded.replace("=", "\\u003d"), "Authorization: Basic [redacted]Q\\u003d\\u003d"),
    ],
    ids=["as-sent", "padding-json-escaped"],
)
def test_a_basic_credential_echoed_in_its_header_form_never_reaches_the_audit(
    running: list[Relay], escape: Callable[[str], str], kept: str
) -> None:
    # Given a target that echoes the Authorization header it got, base64 and all
    target = make_target(security=TargetSecurity(type=SecurityType.BASIC, secret_name="auth"))
    credential = "archive:basic-password-01"
    encoded = base64.b64encode(credential.encode()).decode()
    r = relay(target, answer_with=always(200, body=f"Authorization: Basic {escape(encoded)}".encode()))
    r.secrets.secrets.update(auth=RotatingSecret(current=credential))
    start(running, r)

    r.batch(record())

    ((_, _, headers, _),) = r.http.requests
    assert headers["Authorization"] == f"Basic {encoded}" and encoded.endswith("=")
    (line,) = r.audit_lines()
    assert line["responseBody"] == kept


@pytest.mark.parametrize(
    ("echoed", "secret"),
    [
        ("password={}", "basic-password-01"),  # a Basic password on its own, not the whole credential
        ("query api_key={}", "qs-token-0123456789"),  # a token the URL carries in its query
        ("no route for /hook?{}", "bare-token-0123456789"),  # ... or as a query part without a name
        # ... or with a literal '+' (raw base64), echoed as it was sent, not as the space it decodes to
        ("no route for /hook?sig={}", "qs+plus/token+0123"),
        ("header X-Api-Key: {}", "hdr-key-0123456789"),  # a configured header's value
        ("header b64 {}", base64.b64encode(b"hdr-key-0123456789").decode()),
    ],
    ids=[
        "basic-password-alone",
        "url-query-token",
        "url-query-bare-token",
        "url-query-token-with-plus",
        "header-value",
        "header-value-base64",
    ],
)
def test_what_a_target_is_sent_as_credentials_never_reaches_the_audit_when_echoed(
    running: list[Relay], echoed: str, secret: str
) -> None:
    # Given a target with Basic credentials, tokens in its URL's query and an API key header
    target = make_target(
        headers={"X-Api-Key": "hdr-key-0123456789", "X-Team": "crm"},
        security=TargetSecurity(type=SecurityType.BASIC, secret_name="auth"),
    ).model_copy(
        update={
            "url": "https://crm.example.com/hook?api_key=qs-token-0123456789&v=2&bare-token-0123456789"
            "&sig=qs+plus/token+0123"
        }
    )
    r = relay(target, answer_with=always(200, body=echoed.format(secret).encode()))
    r.secrets.secrets.update(auth=RotatingSecret(current="archive:basic-password-01"))
    start(running, r)

    # When the target echoes one of them in its answer
    r.batch(record())

    # Then the audit keeps the answer without it
    (line,) = r.audit_lines()
    assert secret not in line["responseBody"] and "[redacted]" in line["responseBody"]


def test_a_token_cut_off_where_the_answer_was_truncated_never_reaches_the_audit(running: list[Relay]) -> None:
    # Given a target whose answer echoes its bearer token just where the body read stops (64 KiB): the
    # body kept ends in the token's first characters, which no whole form of the token matches
    token = "probe-bearer-token-0123456789"
    target = make_target(security=TargetSecurity(type=SecurityType.BEARER, secret_name="auth"))
    kept = b"x" * 100 + f"Authorization: Bearer {token[:15]}".encode()
    r = relay(target, answer_with=always(200, body=kept, body_truncated=True))
    r.secrets.secrets.update(auth=RotatingSecret(current=token))
    start(running, r)

    r.batch(record())

    (line,) = r.audit_lines()
    assert line["responseBody"].endswith("Authorization: Bearer [redacted]")
    assert token[:15] not in line["responseBody"]


def test_a_header_value_echoed_in_the_latin1_bytes_it_was_sent_in_never_reaches_the_audit(
    running: list[Relay],
) -> None:
    # Given a target with an API key header holding a Latin-1 letter, sent as Latin-1 (HTTP's header
    # charset), and an endpoint echoing the bytes it got: read as UTF-8 the letter is U+FFFD, and the
    # rest of the key would be kept
    key = "hdr-key-\u00e9-0123456789"
    target = make_target(headers={"X-Api-Key": key})
    r = relay(target, answer_with=always(200, body=b"X-Api-Key was: " + key.encode("latin-1")))
    start(running, r)

    r.batch(record())

    ((_, _, headers, _),) = r.http.requests
    assert headers["X-Api-Key"] == key
    (line,) = r.audit_lines()
    assert line["responseBody"] == "[not kept: the answer holds a secret]"


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(
            lambda token: json.dumps({"auth": f"Bearer {token}"}).replace("/", "\\/"), id="json-slashes"
        ),
        pytest.param(lambda token: json.dumps({"auth": f"Bearer {token}"}), id="json-ascii-escapes"),
        pytest.param(lambda token: f"auth=Bearer%20{quote(token, safe='')}", id="percent-encoded"),
        # .NET's System.Text.Json escapes + as \u002B; some writers escape / as \u002F, = as \u003d
        pytest.param(lambda token: f"Bearer {token}".replace("+", "\\u002B"), id="json-plus-escaped"),
        pytest.param(lambda token: f"Bearer {token}".replace("/", "\\u002f"), id="json-slash-as-u002f"),
        pytest.param(lambda token: f"Bearer {token}".replace("=", "\\u003d"), id="json-equals-escaped"),
        pytest.param(lambda token: "".join(f"\\u{ord(c):04x}" for c in token), id="every-character-escaped"),
        pytest.param(lambda token: f"Bearer {token}".replace("=", "%3D"), id="only-equals-percent-encoded"),
        pytest.param(lambda token: f"auth={quote_plus('Bearer ' + token)}", id="form-encoded"),
    ],
)
def test_a_token_echoed_escaped_or_encoded_never_reaches_the_audit(
    running: list[Relay], echo: Callable[[str], str]
) -> None:
    # Given a target whose endpoint echoes the bearer token it got the way its framework writes text:
    # JSON with escaped slashes (PHP's json_encode), non-ASCII as \uXXXX, or percent-encoded
    target = make_target(security=TargetSecurity(type=SecurityType.BEARER, secret_name="auth"))
    token = "probe/bearer+token/é-SECRET=="
    r = relay(target, answer_with=always(200, body=echo(token).encode()))
    r.secrets.secrets.update(auth=RotatingSecret(current=token))
    start(running, r)

    r.batch(record())

    (line,) = r.audit_lines()
    assert "SECRET" not in line["responseBody"] and "SECRET" not in json.dumps(line).encode().decode(
        "unicode_escape"
    )
    assert (
        "[redacted]" in line["responseBody"]
        or line["responseBody"] == "[not kept: the answer holds a secret]"
    )


@pytest.mark.parametrize(
    "page",
    [
        lambda header: f"<p>Refused: {html.escape(header)}</p>",
        lambda header: f"<p>Refused: {html.escape(header, quote=False)}</p>",
        lambda header: "<p>" + "".join(f"&#{ord(c)};" for c in header) + "</p>",  # every character
    ],
    ids=["html-escaped", "html-escaped-no-quotes", "numeric-references"],
)
def test_a_credential_echoed_in_an_html_error_page_never_reaches_the_audit(
    running: list[Relay], page: Callable[[str], str]
) -> None:
    # Given a bearer token holding characters HTML escapes, and an endpoint whose error page quotes the
    # Authorization header it got
    target = make_target(security=TargetSecurity(type=SecurityType.BEARER, secret_name="auth"))
    token = "tok&<SECRET>\"quoted'-0123"
    r = relay(
        target,
        answer_with=lambda method, url, headers, body: answer(
            400, body=page(headers["Authorization"]).encode()
        ),
    )
    r.secrets.secrets.update(auth=RotatingSecret(current=token))
    start(running, r)

    r.batch(record())

    (line,) = r.audit_lines()
    assert "SECRET" not in line["responseBody"]
    assert (
        "[redacted]" in line["responseBody"]
        or line["responseBody"] == "[not kept: the answer holds a secret]"
    )


def _b64(text: str, encode: Callable[[bytes], bytes] = base64.b64encode) -> str:
    return encode(text.encode()).decode()


def _decodes_to(text: str, secret: str, depth: int = 2) -> bool:
    """Whether any run of base64 characters in ``text``, read from any of its first four characters
    on, in either alphabet, decodes (once, or ``depth`` times over) to text that holds ``secret``."""
    for run in re.findall(r"[A-Za-z0-9+/_=-]{4,}", text):
        standard = run.replace("-", "+").replace("_", "/").rstrip("=")
        for start_at in range(4):
            chunk = standard[start_at:]
            chunk = chunk[: len(chunk) - 1] if len(chunk) % 4 == 1 else chunk
            decoded = base64.b64decode(chunk + "=" * (-len(chunk) % 4)).decode("latin-1")
            if secret in decoded or (depth > 1 and _decodes_to(decoded, secret, depth - 1)):
                return True
    return False


@pytest.mark.parametrize(
    ("security", "credential", "echo"),
    [
        # the Authorization header the target got, echoed base64-encoded whole: the token sits inside
        # the encoded text at an offset of its own, so its base64 on its own is not in the answer
        (SecurityType.BEARER, "probe-bearer-token-xyz", lambda header: _b64(header)),
        (SecurityType.BEARER, "probe-bearer-token-xyz", lambda header: _b64(f'{{"a": "{header}"}}')),
        (SecurityType.BEARER, "probe-bearer-token-xyz", lambda h: _b64(h + "!", base64.urlsafe_b64encode)),
        (SecurityType.BASIC, "archive:basic-password-01", lambda header: _b64(header)),  # base64 twice
    ],
    ids=["bearer-header-base64", "inside-base64-json", "url-safe-base64", "basic-header-base64"],
)
def test_a_credential_echoed_inside_longer_base64_text_never_reaches_the_audit(
    running: list[Relay], security: SecurityType, credential: str, echo: Callable[[str], str]
) -> None:
    # Given a target whose endpoint answers with base64 of text that holds the credential it was sent
    target = make_target(security=TargetSecurity(type=security, secret_name="auth"))
    r = relay(
        target,
        answer_with=lambda method, url, headers, body: answer(
            200, body=echo(headers["Authorization"]).encode()
        ),
    )
    r.secrets.secrets.update(auth=RotatingSecret(current=credential))
    start(running, r)

    r.batch(record())

    # Then the audit keeps the answer, but nothing in it decodes to the credential
    ((_, _, headers, _),) = r.http.requests
    assert _decodes_to(echo(headers["Authorization"]), credential)  # the echo did hold it
    (line,) = r.audit_lines()
    assert "[redacted]" in line["responseBody"]
    assert not _decodes_to(line["responseBody"], credential)


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(lambda body: body, id="the-envelope-as-sent"),
        pytest.param(lambda body: json.dumps({"got": body.decode()}).encode(), id="inside-a-json-string"),
        pytest.param(lambda body: json.dumps(json.loads(body), indent=2).encode(), id="reformatted"),
    ],
)
def test_an_answer_that_echoes_the_event_is_not_kept(
    running: list[Relay], echo: Callable[[bytes], bytes]
) -> None:
    # Given an endpoint that answers with what it was sent, as it is, quoted, or reformatted
    event_json = json.dumps({"id": "5671a4dfeafa4c9c8bc1e85699874672", "text": "the customer's words"})
    r = start(running, relay(answer_with=lambda method, url, headers, body: answer(200, body=echo(body))))

    r.batch(record(event_json=event_json, event_id="5671a4dfeafa4c9c8bc1e85699874672"))

    # Then the audit keeps the answer's size but not its text: the event's text is the archive's alone
    (line,) = r.audit_lines()
    assert line["responseBody"] == "[not kept: the answer holds the event]" and line["responseBytes"] > 0


@pytest.mark.parametrize(
    "answered",
    [
        lambda text: json.dumps({"got": text}).encode(),  # JSON-escaped, non-ASCII as \uXXXX
        lambda text: json.dumps({"got": text}, ensure_ascii=False).encode(),
        lambda text: f"received: {text}".encode(),
    ],
    ids=["json-ascii", "json-utf8", "plain"],
)
def test_an_answer_that_echoes_the_customers_message_alone_is_not_kept(
    running: list[Relay], answered: Callable[[str], bytes]
) -> None:
    # Given an endpoint that answers with the message's text only (not the whole event, nor its id)
    text = "Mein Passwort ist hunter2 und IBAN DE89370400440532013000 – ü"
    event_json = json.dumps({"id": "e-1", "type": "Text", "text": text, "channel": {"text": "short"}})
    r = start(running, relay(answer_with=lambda method, url, headers, body: answer(200, body=answered(text))))

    r.batch(record(event_json=event_json, event_id="e-1"))

    # Then the customer's words stay in the archive: the audit keeps the answer's size, not its text
    (line,) = r.audit_lines()
    assert line["responseBody"] == "[not kept: the answer holds the event]" and line["responseBytes"] > 0


def test_an_answer_that_holds_only_a_short_text_of_the_event_is_kept(running: list[Relay]) -> None:
    # Given a message too short to tell from any answer ("ok"), which the endpoint's answer holds
    event_json = json.dumps({"id": "e-1", "type": "Text", "text": "ok"})
    body = json.dumps({"status": "ok"}).encode()
    r = start(running, relay(answer_with=lambda method, url, headers, _: answer(200, body=body)))

    r.batch(record(event_json=event_json, event_id="e-1"))

    (line,) = r.audit_lines()
    assert line["responseBody"] == '{"status": "ok"}'


def test_a_delivery_step_that_raises_is_left_for_redelivery_and_says_so_in_the_audit(
    running: list[Relay],
) -> None:
    # Given a Basic credential no request can carry (an unpaired surrogate), stored before config sync
    # refused such text
    target = make_target(security=TargetSecurity(type=SecurityType.BASIC, secret_name="auth"))
    r = relay(target)
    r.secrets.secrets.update(auth=RotatingSecret(current="user:pass-\udc00-word"))
    start(running, r)
    rec = record()

    # When its record is handled, SQS shows it again, and the audit names the failure, not the secret
    assert r.batch(rec) == [rec["messageId"]]
    assert r.http.requests == []
    (line,) = r.audit_lines()
    assert (line["outcome"], line["errorCode"], line["error"]) == (
        "left-for-redelivery",
        "internal-error",
        "internal error: UnicodeEncodeError",
    )


# --- records that cannot be attempted ---------------------------------------------------------------------


def test_a_body_that_is_not_a_delivery_task_is_poison(running: list[Relay]) -> None:
    r = start(running, relay())

    assert r.batch(record(body='{"not": "a task"}')) == []
    (letter,) = r.queue.dead_letters
    assert (letter["reason"], letter["target_id"], letter["attempts"]) == (DlqReason.POISON, None, 0)
    assert r.http.requests == [] and r.audit_lines() == []


@pytest.mark.parametrize("event_json", ["[1, 2]", '{"n": 1e400}', '{"cut": '])
def test_an_event_that_is_not_one_json_object_is_poison_and_never_sent(
    running: list[Relay], event_json: str
) -> None:
    r = start(running, relay())

    assert r.batch(record(event_json=event_json)) == []
    assert [(x["reason"], x["last_error"]) for x in r.queue.dead_letters] == [
        (DlqReason.POISON, "event unreadable")
    ]
    assert r.http.requests == []


def test_a_claim_checked_event_is_loaded_and_one_that_is_not_utf8_is_poison(running: list[Relay]) -> None:
    r = start(running, relay())
    good = r.claim_checks.put("events/good.json", EVENT_JSON.encode())
    bad = r.claim_checks.put("events/bad.json", b"\xff\xfe{}")

    assert r.batch(record(event_json=None, event_ref=good), record(event_json=None, event_ref=bad)) == []

    assert len(r.http.requests) == 1 and EVENT_JSON.encode() in r.http.requests[0][3]
    assert [letter["reason"] for letter in r.queue.dead_letters] == [DlqReason.POISON]


def test_unknown_and_disabled_targets_are_dead_lettered_with_their_reasons(running: list[Relay]) -> None:
    r = start(running, relay(make_target("crm"), make_target("old", enabled=False)))

    assert r.batch(record("nobody"), record("old")) == []
    assert sorted((x["reason"], x["target_id"]) for x in r.queue.dead_letters) == [
        (DlqReason.TARGET_DISABLED, "old"),
        (DlqReason.UNKNOWN_TARGET, "nobody"),
    ]
    assert r.http.requests == []


def test_targets_table_down_leaves_the_record_for_redelivery_and_sends_nothing(running: list[Relay]) -> None:
    r = start(running, relay())
    r.targets.unavailable = True
    rec = record()

    assert r.batch(rec) == [rec["messageId"]]
    assert r.http.requests == [] and r.queue.dead_letters == []


def test_a_bug_in_a_step_is_not_taken_for_poison_the_record_comes_back(running: list[Relay]) -> None:
    # Given a secret reader with a bug (a ValueError is no longer read as "the event is poison")
    def broken(name: str) -> RotatingSecret:
        raise ValueError("a bug, not bad input")

    r = relay(make_target(signing_secret_name="signing"))
    r.secrets = broken  # type: ignore[assignment]
    start(running, r)
    rec = record()

    # When a record meets it, then it is neither dead-lettered nor lost: SQS shows it again
    assert r.batch(rec) == [rec["messageId"]]
    assert r.queue.dead_letters == []


def test_a_bug_while_deferring_reports_the_record_failed_instead_of_losing_it(running: list[Relay]) -> None:
    class BrokenDefer(RecordingQueueOps):
        def defer(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("a bug")

    r = relay()
    r.queue = BrokenDefer()
    start(running, r)
    r.set_breaker(BreakerState(Phase.OPEN, 5, 1, NOW + 30, 1))
    rec = record()

    assert r.batch(rec) == [rec["messageId"]]


# --- the partial batch response ---------------------------------------------------------------------------


def test_only_records_sqs_should_show_again_are_reported_failed(running: list[Relay]) -> None:
    statuses = {"ok": 200, "busy": 503, "bad": 400}

    def by_target(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        return answer(statuses[url.split("//")[1].split(".")[0]])

    r = start(running, relay(*(make_target(t) for t in statuses), answer_with=by_target))
    ok, busy, bad, poison = record("ok"), record("busy"), record("bad"), record(body="nope")

    assert r.batch(ok, busy, bad, poison) == [busy["messageId"]]
    assert len(r.queue.dead_letters) == 2 and len(r.queue.retries) == 1


# --- breaker admission ----------------------------------------------------------------------------------


def test_an_open_breaker_defers_its_records_without_using_attempts(running: list[Relay]) -> None:
    r = start(running, relay())
    r.set_breaker(BreakerState(Phase.OPEN, 5, 1, NOW + 30, 1))

    assert r.batch(record(receive_count=2, deferrals=1)) == []

    assert r.http.requests == []
    (deferral,) = r.queue.deferrals
    assert deferral["attempts"] == 1 and deferral["deferrals"] == 2
    assert 30 <= deferral["delay_seconds"] <= 32  # until the breaker may half-open, + 0-2 s jitter
    (line,) = r.audit_lines()
    assert (line["outcome"], line["errorCode"], line["attempt"], line["breakerState"]) == (
        "deferred",
        "breaker-open",
        None,
        "open",
    )


def test_past_its_reset_timeout_one_probe_goes_first_and_its_success_closes_the_breaker(
    running: list[Relay],
) -> None:
    r = start(running, relay())
    r.set_breaker(BreakerState(Phase.OPEN, 5, 1, NOW - 1, 1))

    assert r.batch(*(record() for _ in range(3))) == []

    assert len(r.http.requests) == 3 and r.queue.deferrals == []
    assert r.breaker().phase is Phase.CLOSED
    probes = [line for line in r.audit_lines() if line["probe"]]
    assert len(probes) == 1 and probes[0]["breakerState"] == "half-open"


def test_a_failed_probe_opens_the_breaker_again_and_defers_the_rest(running: list[Relay]) -> None:
    r = start(running, relay(answer_with=always(503)))
    r.set_breaker(BreakerState(Phase.OPEN, 5, 1, NOW - 1, 1))

    failed = r.batch(*(record() for _ in range(3)))

    assert len(r.http.requests) == 1  # the probe only
    assert len(failed) == 1 and len(r.queue.deferrals) == 2
    state = r.breaker()
    assert (state.phase, state.trips) == (Phase.OPEN, 2)
    assert all(55 <= d["delay_seconds"] <= 62 for d in r.queue.deferrals)  # the next, longer reset


def test_a_probe_claimed_by_another_dispatcher_defers_this_batch(running: list[Relay]) -> None:
    r = start(running, relay())
    r.set_breaker(BreakerState(Phase.HALF_OPEN, 5, 1, NOW + 10, 2))

    r.batch(record())

    assert r.http.requests == [] and len(r.queue.deferrals) == 1


def test_consecutive_failures_open_the_breaker(running: list[Relay]) -> None:
    r = start(running, relay(answer_with=always(503)))

    r.batch(*(record() for _ in range(5)))

    state = r.breaker()
    assert (state.phase, state.consecutive_failures, state.trips) == (Phase.OPEN, 5, 1)


@contextmanager
def beside_a_held_neighbour(running: list[Relay]) -> Iterator[Relay]:
    """A batch running on a thread of its own while inside: one record for crm, answered 500 at once,
    and one for slow, whose answer is held (a neighbour that holds the batch) until the block is left;
    the batch has ended then."""
    released = threading.Event()

    def respond(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        if url.startswith("https://slow."):
            released.wait(timeout=30)
            return answer(200)
        return answer(500)

    r = start(running, relay(make_target("crm"), make_target("slow"), answer_with=respond))
    batch = threading.Thread(target=r.batch, args=(record("crm"), record("slow")))
    batch.start()
    try:
        yield r
    finally:
        released.set()
        batch.join(timeout=30)
    assert not batch.is_alive()


def test_a_lane_reports_to_its_breaker_once_its_records_are_done_not_when_the_batch_ends(
    running: list[Relay],
) -> None:
    # Given one batch with a failing target and a neighbour whose answer is held
    with beside_a_held_neighbour(running) as r:
        # Then the failure is in the breaker while the neighbour's request is still held
        wait_until(lambda: r.breaker().consecutive_failures == 1, what="crm's failure folded", timeout=10)

    # And the batch's end does not fold it a second time
    assert r.breaker().consecutive_failures == 1


def test_a_success_another_batch_folds_meanwhile_is_not_undone_by_a_slow_neighbours_batch(
    running: list[Relay],
) -> None:
    # Given a batch whose crm record failed, held by its slow neighbour, and the failure folded
    with beside_a_held_neighbour(running) as first:
        wait_until(lambda: first.breaker().consecutive_failures == 1, what="crm's failure folded", timeout=10)

        # When another invocation delivers crm's retry meanwhile, then the held batch ends
        other = Relay(InMemoryTargets(make_target("crm")), ScriptedHttp(), breakers=first.breakers)
        assert start(running, other).batch(record("crm")) == []

    # Then the breaker shows the target as it is now, recovered: the old failure came first
    assert first.breaker().consecutive_failures == 0


def test_after_a_successful_probe_its_lane_reports_the_rest_of_its_records_too(running: list[Relay]) -> None:
    # Given an open breaker past its reset timeout, and an endpoint that answers the probe, then fails
    statuses = iter([200, 500, 500])

    def endpoint(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        r.clock.now += 0.1  # an answer takes a moment: the failures are answered after the probe
        return answer(next(statuses))

    r = start(running, relay(answer_with=endpoint))
    r.set_breaker(BreakerState(Phase.OPEN, 5, 1, NOW - 1, 1))

    r.batch(record(), record(), record())

    # Then the breaker folded the probe and both failures after it
    state = r.breaker()
    assert (state.phase, state.consecutive_failures) == (Phase.CLOSED, 2)


def test_the_breaker_keeps_when_each_failed_request_was_sent(running: list[Relay]) -> None:
    # Given an endpoint that fails, answering 2 s after it is asked
    def slow_failure(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        r.clock.now += 2
        return answer(500)

    r = start(running, relay(answer_with=slow_failure))

    r.batch(record())

    # Then the breaker folded the failure at its send time (another invocation's results merge by it)
    assert r.breaker().failure_run == (NOW,)


def test_a_timeout_answered_after_a_later_request_succeeded_does_not_count_against_the_endpoint(
    running: list[Relay],
) -> None:
    # Given an endpoint that answers its first request at once and times out its second, answering 5 s
    # after it was sent
    answers = iter([200, 504])

    def endpoint(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        status = next(answers)
        if status == 504:
            r.clock.now = NOW + 5
        return answer(status)

    r = start(running, relay(answer_with=endpoint))
    r.set_breaker(BreakerState(Phase.CLOSED, 1, 0, 0.0, 1, failure_times=(NOW - 60,)))

    # When one invocation's request, sent at t=1, succeeds ...
    r.clock.now = NOW + 1
    r.batch(record())
    assert r.breaker().last_success_at == NOW + 1
    # ... and another's, sent earlier (t=0), times out and is answered last (t=5)
    r.clock.now = NOW
    r.batch(record())

    # Then the timeout is history: the endpoint answered a request sent after it. (By answer time,
    # requests sent together line their timeouts up last, and five in a row opened the breaker.)
    assert r.breaker().failure_run == ()


def test_a_lane_whose_delivery_crashes_still_reports_its_other_results(running: list[Relay]) -> None:
    # Given an HTTP port with a bug for the first request (it raises), and an endpoint failing the rest
    calls = itertools.count()

    def buggy(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        if next(calls) == 0:
            raise RuntimeError("bug")
        return answer(500)

    r = start(running, relay(answer_with=buggy))

    # When a batch of two is delivered, both are shown again (the crash, the retry)
    assert len(r.batch(record(), record())) == 2

    # Then the failure the endpoint answered is in the breaker
    assert r.breaker().consecutive_failures == 1


class BreakerStoreWithABug(InMemoryBreakerStore):
    """A store whose writes raise what no store should (not BreakerStoreUnavailable): a bug."""

    def save(self, key: str, state: BreakerState, *, expected_version: int) -> bool:
        raise RuntimeError("bug")


def test_a_bug_in_the_breaker_report_never_sends_a_delivered_record_again(running: list[Relay]) -> None:
    # Given a target with two failures counted, whose breaker store has a bug in its writes
    r = relay()
    r.breakers = BreakerStoreWithABug()
    counted = BreakerState(consecutive_failures=2, version=1)
    InMemoryBreakerStore.save(r.breakers, target_key(INTEGRATION, "crm"), counted, expected_version=0)
    start(running, r)

    # When a record is delivered (the report then writes the failures back to 0, and raises)
    failed = r.batch(record())

    # Then the record is done, not shown again to be delivered twice
    assert failed == []
    assert [line["outcome"] for line in r.audit_lines()] == ["delivered"]


def test_a_breaker_opened_at_an_old_url_does_not_hold_back_the_new_one(running: list[Relay]) -> None:
    # Given a target whose breaker opened on failures at its URL (far from its next probe)
    old = make_target()
    r = start(
        running,
        relay(old, answer_with=lambda method, url, headers, body: answer(503 if "old" in url else 200)),
    )
    r.targets.targets[(INTEGRATION, "crm")] = old.model_copy(update={"url": "https://old.example.com/hook"})
    r.batch(*(record() for _ in range(5)))
    assert r.breaker().phase is Phase.OPEN

    # When its config points at a new URL (config sync wrote it; this container's cache now has it)
    r.targets.targets[(INTEGRATION, "crm")] = old.model_copy(update={"url": "https://new.example.com/hook"})
    r.http.requests.clear()
    r.batch(record(), record())

    # Then the new URL gets the records at once: the failures were the old endpoint's
    assert [request[1] for request in r.http.requests] == ["https://new.example.com/hook"] * 2
    assert r.queue.deferrals == []

    # And a dispatcher still holding the old URL (its cache not yet refreshed) keeps deferring there
    r.targets.targets[(INTEGRATION, "crm")] = old.model_copy(update={"url": "https://old.example.com/hook"})
    r.http.requests.clear()
    r.batch(record())
    assert r.http.requests == [] and len(r.queue.deferrals) == 1


def test_a_healthy_closed_breaker_is_read_once_and_never_written(running: list[Relay]) -> None:
    r = start(running, relay())

    r.batch(*(record() for _ in range(10)))

    assert (r.breakers.reads, r.breakers.writes) == (1, 0)


def test_when_the_breaker_store_is_down_records_are_delivered_anyway(running: list[Relay]) -> None:
    r = start(running, relay())
    r.breakers.unavailable = True

    assert r.batch(record(), record()) == []
    assert len(r.http.requests) == 2
    assert {line["breakerState"] for line in r.audit_lines()} == {"unknown"}


# --- the time budget ------------------------------------------------------------------------------------


def test_a_record_that_could_not_finish_before_the_timeout_is_deferred_untouched(
    running: list[Relay],
) -> None:
    r = start(running, relay())
    # One request may take connect + read timeout (3 + 10 s); settling needs the margin more: at least
    # one try of an AWS call (2 + 5 s by default) and the answer's half second.
    assert settle_margin_seconds(r.settings) == 7.5
    just_short = (3 + 10 + 7.5) * 1000 - 1

    assert r.batch(record(receive_count=2), remaining_ms=lambda: just_short) == []

    assert r.http.requests == []
    (deferral,) = r.queue.deferrals
    assert deferral["attempts"] == 1  # no attempt used
    assert [line["errorCode"] for line in r.audit_lines()] == ["out-of-time"]


def test_a_record_with_time_for_one_whole_request_is_sent(running: list[Relay]) -> None:
    r = start(running, relay())
    enough = (3 + 10 + settle_margin_seconds(r.settings)) * 1000

    assert r.batch(record(), remaining_ms=lambda: enough) == []
    assert len(r.http.requests) == 1


@pytest.mark.parametrize(
    ("function_seconds", "target_timeouts", "sent_with"),
    [
        ("15", {}, (3.0, 6.5)),  # the deployment's 3 + 10 s in the template's shortest function
        ("60", {"read_timeout_seconds": 60}, (3.0, 51.5)),  # what config sync accepts, per target
        ("60", {"connect_timeout_seconds": 30, "read_timeout_seconds": 30}, (27.25, 27.25)),
        ("60", {"read_timeout_seconds": 20}, (3.0, 20.0)),  # fits: untouched
    ],
)
def test_a_target_whose_timeouts_do_not_fit_in_the_function_is_attempted_with_them_cut_to_fit(
    running: list[Relay],
    function_seconds: str,
    target_timeouts: dict[str, float],
    sent_with: tuple[float, float],
) -> None:
    # Given a target whose connect + read timeouts (and the margin to settle: 3.5 s with the AWS call
    # bounds the template gives the dispatchers) exceed the function's timeout
    target = make_target(**target_timeouts)
    r = start(
        running,
        relay(
            target,
            DISPATCHER_TIMEOUT_SECONDS=function_seconds,
            AWS_CONNECT_TIMEOUT_SECONDS="1",
            AWS_READ_TIMEOUT_SECONDS="2",
        ),
    )
    fresh_invocation = int(function_seconds) * 1000 - 500  # what Lambda reports as the batch starts

    # When a fresh invocation gets its record
    failed = r.batch(record(), remaining_ms=lambda: fresh_invocation)

    # Then it is attempted (never handed back as out of time for ever), within timeouts that fit
    assert failed == [] and r.queue.deferrals == []
    assert r.http.timeouts == [sent_with]


def test_a_dispatcher_timeout_too_short_for_any_request_is_refused_at_start() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="DISPATCHER_TIMEOUT_SECONDS"):
        Settings.model_validate({"DISPATCHER_TIMEOUT_SECONDS": "4"})


# --- concurrency ------------------------------------------------------------------------------------------


def test_no_target_gets_more_requests_at_once_than_its_slots(running: list[Relay]) -> None:
    # Given an HTTP port that records how many requests are in flight per target
    lock, in_flight, peak = threading.Lock(), {"a": 0, "b": 0}, {"a": 0, "b": 0}
    release = threading.Event()

    def slow(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        name = url.split("//")[1].split(".")[0]
        with lock:
            in_flight[name] += 1
            peak[name] = max(peak[name], in_flight[name])
            if sum(peak.values()) >= 4:
                release.set()
        release.wait(timeout=5)
        with lock:
            in_flight[name] -= 1
        return answer(200)

    r = start(
        running,
        relay(
            make_target("a"),
            make_target("b"),
            answer_with=slow,
            DELIVERY_CONCURRENCY="8",
            PER_TARGET_CONCURRENCY="2",
        ),
    )

    # When six records per target arrive in one batch
    assert r.batch(*(record(t) for t in "ab" * 6)) == []

    # Then both targets were served side by side, never more than two at once each
    assert peak == {"a": 2, "b": 2} and len(r.http.requests) == 12


class InFlight:
    """An HTTP port whose requests wait until ``wanted`` are in flight at once (or ``patience`` seconds
    pass), each answering 200 as taking ``elapsed_ms``; it records the peak and which threads sent them."""

    def __init__(self, wanted: int, elapsed_ms: float = 12.5) -> None:
        self._lock, self._now = threading.Lock(), 0
        self._elapsed_ms = elapsed_ms
        self._enough = threading.Event()
        self.expect(wanted)

    def expect(self, wanted: int, *, patience: float = 5.0) -> None:
        """From now on: wait for ``wanted`` in flight; peak and threads counted afresh."""
        self._wanted, self._patience, self.peak = wanted, patience, 0
        self.threads: set[int] = set()
        self._enough.clear()

    def __call__(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        with self._lock:
            self._now += 1
            self.peak = max(self.peak, self._now)
            self.threads.add(threading.get_ident())
            if self._now >= self._wanted:
                self._enough.set()
        self._enough.wait(timeout=self._patience)
        with self._lock:
            self._now -= 1
        return HttpResult(200, self._elapsed_ms)


def test_records_to_a_target_that_answers_at_once_go_one_after_another_on_one_thread(
    running: list[Relay],
) -> None:
    # Given a target that answered in 1 ms here, and a serial budget no batch here can use up
    http = InFlight(wanted=1, elapsed_ms=1.0)
    r = start(running, relay(answer_with=http, SERIAL_BUDGET_MS="600000"))
    assert r.batch(record()) == []

    # When two batches of ten arrive, each request waiting 50 ms for a second one to be in flight
    http.expect(2, patience=0.05)
    assert r.batch(*(record() for _ in range(10))) == []
    assert r.batch(*(record() for _ in range(10))) == []

    # Then all twenty went out one after another, from a single thread: none ever met another
    assert len(r.http.requests) == 21 and http.peak == 1 and len(http.threads) == 1


def test_a_batch_still_waiting_after_the_serial_budget_gets_the_other_threads(running: list[Relay]) -> None:
    # Given a target that answered in 1 ms lately, whose requests now only answer once four are in flight
    http = InFlight(wanted=1, elapsed_ms=1.0)
    r = start(running, relay(answer_with=http, DELIVERY_CONCURRENCY="4"))
    assert r.batch(record()) == []
    http.expect(4)

    # When six records arrive (the first one waits past the 20 ms serial budget)
    assert r.batch(*(record() for _ in range(6))) == []

    # Then the batch was given its four threads, all six delivered
    assert http.peak == 4 and len(http.threads) == 4 and len(r.http.requests) == 7


@pytest.mark.parametrize("measured_ms", [None, 20_000], ids=["not-measured-here", "answered-in-20-s"])
def test_a_target_not_known_to_answer_quickly_gets_its_records_side_by_side_from_the_start(
    running: list[Relay], measured_ms: float | None
) -> None:
    # Given a target never sent to here, or whose last request took 20 s, and a serial budget (10 s)
    # longer than this test
    http = InFlight(wanted=1, elapsed_ms=measured_ms or 12.5)
    r = start(running, relay(answer_with=http, DELIVERY_CONCURRENCY="4", SERIAL_BUDGET_MS="10000"))
    measured = 0 if measured_ms is None else 1
    if measured:
        assert r.batch(record()) == []

    # When four records arrive, each request answering only once all four are in flight
    http.expect(4)
    assert r.batch(*(record() for _ in range(4))) == []

    # Then all four were sent side by side at once (one thread would have waited 5 s per request)
    assert http.peak == 4 and len(http.threads) == 4 and len(r.http.requests) == measured + 4


# In Lambda (AWS_LAMBDA_FUNCTION_NAME/VERSION set) the crash names the release too; elsewhere it cannot.
@pytest.mark.parametrize("function_name", [None, "relay-prod-DispatcherFunction-x1"], ids=["local", "lambda"])
def test_a_record_whose_delivery_crashes_is_reported_failed_and_the_rest_still_go(
    running: list[Relay], capsys: pytest.CaptureFixture[str], function_name: str | None
) -> None:
    # Given an HTTP port with a bug for target b (it raises instead of answering)
    def buggy(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        if url.startswith("https://b."):
            raise RuntimeError("bug")
        return answer(200)

    targets = (make_target("a"), make_target("b"))
    r = start(running, relay(*targets, answer_with=buggy, **in_lambda(function_name)))
    crashing = record("b")

    # When b's record comes first in a batch run on one thread
    failed = r.batch(crashing, record("a"), record("a"))

    # Then only b's record is reported failed (SQS shows it again); a's two were delivered after it
    assert failed == [crashing["messageId"]]
    assert [url for _, url, _, _ in r.http.requests].count("https://a.example.com/hook") == 2
    # And the crash is counted for the rollback alarm: the invocation itself returns normally
    emitted = emf_blobs(capsys.readouterr().out)
    crashes = [doc for doc in emitted if "DeliveryCrashed" in doc]
    assert [(doc["DeliveryCrashed"], doc.get("target")) for doc in crashes] == [([1.0], None)]
    # per service, and in Lambda per release as well: the alarm of this function's
    # deploy watches its new version only, never the crashes of the old one it replaces
    release = [{"service": "relay", "function": function_name, "version": "7"}] if function_name else []
    assert dimension_sets(crashes[0]) == [{"service": "relay"}, *release]
    # and no other metric carries the release (each dimension set is one more metric billed)
    assert all(dimension_sets(doc)[1:] == [] for doc in emitted if doc not in crashes)


# --- slow-target isolation (relay.logic.dispatch.isolation) ------------------------------------------------
SLOW_QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/relay-SlowDeliveryQueue"


def by_host(**elapsed_ms: float) -> Callable[[str, str, Mapping[str, str], bytes], HttpResult]:
    """200 from every target, each taking its own time (``by_host(slow=2000)``; others 50 ms)."""

    def respond(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        return HttpResult(200, elapsed_ms.get(url.split("//")[1].split(".")[0], 50.0))

    return respond


def requested(r: Relay, target_id: str) -> int:
    return sum(1 for _, url, _, _ in r.http.requests if url.startswith(f"https://{target_id}."))


def fast_lane(*targets: Target, **settings: str) -> Relay:
    return relay(*targets, SLOW_DELIVERY_QUEUE_URL=SLOW_QUEUE, **settings)


def warm(r: Relay) -> Relay:
    """A container past its first invocation (which builds clients and connections, and is not measured)."""
    r.batch()
    return r


def test_the_fast_lane_routes_a_slow_targets_records_unattempted_and_claims_no_probe(
    running: list[Relay],
) -> None:
    # Given a target already in the slow lane, whose breaker may be probed, and a healthy target
    r = start(running, fast_lane(make_target("slow"), make_target("crm"), answer_with=by_host()))
    r.set_lane(LaneState(DeliveryLane.SLOW, 1, NOW - 5), "slow")
    r.set_breaker(BreakerState(Phase.OPEN, 5, 1, NOW - 1, 3), "slow")
    retried = record("slow", receive_count=2, attempts=1, deferrals=2)

    # When a batch holds records of both
    failed = r.batch(retried, record("crm"))

    # Then the healthy one is delivered here, the slow one handed to the slow lane with its attempts
    assert failed == []
    assert (requested(r, "crm"), requested(r, "slow")) == (1, 0)
    assert r.queue.slow_lane == [{"body": retried["body"], "attempts": 2, "deferrals": 2}]
    assert r.breaker("slow").version == 3, "no probe was claimed for records that are not attempted here"
    routed = [line for line in r.audit_lines() if line["targetId"] == "slow"]
    assert [(line["outcome"], line["errorCode"], line["attempt"]) for line in routed] == [
        ("routed-to-slow-lane", "slow-target", None)
    ]


def test_a_target_measured_slow_moves_to_the_slow_lane_with_one_write(running: list[Relay]) -> None:
    r = warm(
        start(running, fast_lane(make_target("slow"), make_target("crm"), answer_with=by_host(slow=2_000)))
    )

    # When one batch finds the target slow (three answers of 2 s each)
    assert r.batch(*(record(t) for t in ["slow", "crm"] * 3)) == []

    # Then its records were delivered, and its lane written slow once (the healthy one's never)
    assert (requested(r, "slow"), requested(r, "crm")) == (3, 3)
    assert r.lane("slow") == LaneState(DeliveryLane.SLOW, 1, NOW)
    assert r.lane("crm") == LaneState()
    writes = r.breakers.writes

    # And the next batches route its records without measuring or writing again
    r.batch(*(record(t) for t in ["slow", "crm"] * 3))
    r.batch(record("slow"), record("crm"))
    assert (requested(r, "slow"), requested(r, "crm")) == (3, 7)
    assert len(r.queue.slow_lane) == 4
    assert r.breakers.writes == writes


HANGED = HttpResult(None, 10_000.0, error_code=READ_TIMEOUT, error="read timed out")


def moved_slow_within(r: Relay, *, seconds: float) -> bool:
    """Whether the target's lane reads slow within ``seconds`` (asked from a request that hangs)."""
    try:
        wait_until(lambda: r.lane().lane is DeliveryLane.SLOW, what="lane written", timeout=seconds)
    except AssertionError:
        return False
    return True


def test_a_target_is_moved_as_soon_as_it_measures_slow_not_when_its_batch_ends(running: list[Relay]) -> None:
    # Given a target whose first three answers take 2 s and whose fourth request hangs (a time-out
    # holds an invocation for its whole read timeout): the hanging request waits until the lane reads
    # slow, with a bound
    relays: list[Relay] = []
    answered = 0
    lock = threading.Lock()
    all_sent = threading.Barrier(4, timeout=5)  # the four requests are in flight together
    lane_written_while_hanging: list[bool] = []

    def answer(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        nonlocal answered
        all_sent.wait()
        with lock:
            answered += 1
            hangs = answered == 4
        if not hangs:
            return HttpResult(200, 2_000.0)
        lane_written_while_hanging.append(moved_slow_within(relays[0], seconds=5))
        return HANGED

    relays.append(r := warm(start(running, fast_lane(answer_with=answer))))

    # When one batch carries four of its records
    r.batch(*(record() for _ in range(4)))

    # Then the lane was written slow while the batch still waited on the hanging request (the other
    # containers route the target from then on), with one write
    assert lane_written_while_hanging == [True]
    assert r.lane() == LaneState(DeliveryLane.SLOW, 1, NOW)


def test_a_request_that_hangs_moves_its_target_before_it_ends(running: list[Relay]) -> None:
    # Given a target this container has measured fast, and one request at a time per target
    relays: list[Relay] = []
    hanging = threading.Event()
    moved_while_hanging: list[bool] = []

    def answer(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        if not hanging.is_set():
            return HttpResult(200, 50.0)
        hanging.clear()  # only the first request of the batch hangs
        relays[0].clock.now += 5  # 5 s pass with the request still in flight
        moved_while_hanging.append(moved_slow_within(relays[0], seconds=5))
        return HANGED

    relays.append(r := warm(start(running, fast_lane(answer_with=answer, PER_TARGET_CONCURRENCY="1"))))
    assert r.batch(*(record() for _ in range(3))) == []  # three quick answers: measured fast
    assert r.lane() == LaneState()

    # When a request hangs (a time-out, 10 s later) with more records of the target waiting behind it
    hanging.set()
    r.batch(*(record() for _ in range(4)))

    # Then the target was moved while the request still hung (the other containers route it from
    # then on, instead of meeting its hangs too), and the records behind it went to the slow lane
    assert moved_while_hanging == [True]
    assert r.lane() == LaneState(DeliveryLane.SLOW, 1, NOW + 5)
    assert len(r.http.requests) == 3 + 1 and len(r.queue.slow_lane) == 3


def test_a_request_in_flight_counts_as_a_sample_only_beside_enough_others() -> None:
    # One long request is not a slow target: the same rule as for answers (MIN_SAMPLES)
    tracker = LatencyTracker(ManualClock(NOW))
    tracker.record("k", 50.0, lane_version=0)
    assert tracker.latency_ms("k", 0, pending_ms=5_000.0) is None

    tracker.record("k", 50.0, lane_version=0)
    # as if it had ended now: 0.3 x 5,000 + 0.7 x 50
    assert tracker.latency_ms("k", 0, pending_ms=5_000.0) == pytest.approx(1_535.0)
    assert tracker.latency_ms("k", 0) is None  # nothing was recorded


def test_time_outs_count_as_slow_for_their_whole_duration(running: list[Relay]) -> None:
    timed_out = HttpResult(None, 10_000.0, error_code=READ_TIMEOUT, error="read timed out")
    r = warm(start(running, fast_lane(answer_with=lambda *_: timed_out)))

    r.batch(*(record() for _ in range(3)))

    assert r.lane().lane is DeliveryLane.SLOW


def test_records_waiting_for_a_target_that_turns_out_slow_are_routed_instead(running: list[Relay]) -> None:
    # Given one request at a time per target, and a target answering in 2 s
    r = warm(start(running, fast_lane(answer_with=by_host(crm=2_000), PER_TARGET_CONCURRENCY="1")))

    # When five of its records arrive in one batch
    assert r.batch(*(record() for _ in range(5))) == []

    # Then the records still waiting once three answers showed it slow went to the slow lane
    assert len(r.http.requests) == 3 and len(r.queue.slow_lane) == 2
    assert r.queue.slow_lane[0]["attempts"] == 0


def test_a_containers_first_invocation_is_not_measured(running: list[Relay]) -> None:
    # Its connections are opened and its clients built there: its latencies describe the container
    r = start(running, fast_lane(answer_with=by_host(crm=2_000)))

    r.batch(*(record() for _ in range(5)))
    assert r.lane() == LaneState() and len(r.http.requests) == 5

    r.batch(*(record() for _ in range(3)))
    assert r.lane().lane is DeliveryLane.SLOW


def test_one_slow_answer_or_a_fast_target_moves_nothing(running: list[Relay]) -> None:
    r = warm(
        start(running, fast_lane(make_target("slow"), make_target("crm"), answer_with=by_host(slow=5_000)))
    )

    r.batch(record("slow"), *(record("crm") for _ in range(9)))

    assert (r.lane("slow"), r.lane("crm")) == (LaneState(), LaneState())
    assert r.breakers.writes == 0


def test_the_slow_lane_brings_a_target_back_once_fast_after_its_minimum_stay(running: list[Relay]) -> None:
    # Given the slow lane's dispatcher and a target moved there just now, fast again
    r = warm(start(running, relay(answer_with=by_host(crm=50), DISPATCH_LANE="slow")))
    r.set_lane(LaneState(DeliveryLane.SLOW, 1, NOW))

    # When it delivers the target's records, it keeps the target there for the minimum stay
    assert r.batch(*(record() for _ in range(3))) == []
    assert len(r.http.requests) == 3 and r.queue.slow_lane == []
    assert r.lane() == LaneState(DeliveryLane.SLOW, 1, NOW)

    # Then after it the target goes back to the fast lane (one conditional write)
    r.clock.now += 60
    r.batch(record())
    assert r.lane() == LaneState(DeliveryLane.FAST, 2, NOW + 60)


def test_the_slow_lane_keeps_a_target_that_is_still_slow(running: list[Relay]) -> None:
    r = warm(start(running, relay(answer_with=by_host(crm=800), DISPATCH_LANE="slow")))
    r.set_lane(LaneState(DeliveryLane.SLOW, 1, NOW - 3_600))

    r.batch(*(record() for _ in range(5)))

    # 800 ms is under the 1 s threshold but not under half of it: no flapping back and forth
    assert r.lane() == LaneState(DeliveryLane.SLOW, 1, NOW - 3_600)


def test_with_isolation_off_every_record_is_delivered_where_it_arrived(running: list[Relay]) -> None:
    r = warm(start(running, fast_lane(answer_with=by_host(crm=2_000), ISOLATE_SLOW_TARGETS="false")))
    r.set_lane(LaneState(DeliveryLane.SLOW, 1, NOW))

    r.batch(*(record() for _ in range(4)))

    assert len(r.http.requests) == 4 and r.queue.slow_lane == []
    assert r.lane() == LaneState(DeliveryLane.SLOW, 1, NOW)  # nothing written either


def test_when_the_slow_lane_cannot_be_reached_its_records_are_delivered_here(running: list[Relay]) -> None:
    r = start(running, fast_lane(answer_with=by_host()))
    r.set_lane(LaneState(DeliveryLane.SLOW, 1, NOW))
    r.queue.unavailable.add("to_slow_lane")

    assert r.batch(record(), record()) == []

    assert len(r.http.requests) == 2
    assert [line["outcome"] for line in r.audit_lines()] == ["delivered", "delivered"]


def test_a_containers_measure_forgets_old_samples_and_samples_from_another_lane() -> None:
    clock = ManualClock(NOW)
    tracker = LatencyTracker(clock)
    for _ in range(3):
        tracker.record("k", 2_000.0, lane_version=0)
    assert tracker.latency_ms("k", lane_version=0) == 2_000.0

    # Samples taken before the target moved say nothing about it in its new lane
    assert tracker.latency_ms("k", lane_version=2) is None
    # ... and those from long ago nothing about it now
    for _ in range(3):
        tracker.record("k", 2_000.0, lane_version=2)
    clock.now += FORGET_AFTER_SECONDS + 1
    assert tracker.latency_ms("k", lane_version=2) is None


def test_the_measure_is_a_moving_average_judged_after_a_few_samples() -> None:
    tracker = LatencyTracker(ManualClock(NOW))
    tracker.record("k", 100.0, lane_version=0)
    tracker.record("k", 100.0, lane_version=0)
    assert tracker.latency_ms("k", lane_version=0) is None  # two samples are not enough
    tracker.record("k", 1_100.0, lane_version=0)
    assert tracker.latency_ms("k", lane_version=0) == pytest.approx(100 + EWMA_ALPHA * 1_000)


# --- rate limits (issue 14, points 2 and 3) -----------------------------------------------------------


def limited(per_second: float, burst: int | None = None, target_id: str = "crm") -> Target:
    return make_target(target_id, rate_limit=RateLimit(per_second=per_second, burst=burst))


def bucket(r: Relay, target_id: str = "crm") -> BucketState | None:
    return r.rate_limits.load(rate_key(INTEGRATION, target_id))


def test_a_limited_target_gets_its_burst_then_a_paced_second_and_the_rest_is_deferred(
    running: list[Relay],
) -> None:
    # Given a target limited to 2 requests per second, 3 at once
    r = start(running, relay(limited(2, burst=3)))

    # When a batch brings eight of its records
    failed = r.batch(*(record(receive_count=2) for _ in range(8)))

    # Then three go at once and two more within the next second, the batch waiting for their times
    assert failed == [] and len(r.http.requests) == 5
    assert r.clock.now == NOW + 1.0
    # And three are deferred: re-queued with attempts unchanged, back about when they would fit
    assert [(d["attempts"], d["deferrals"]) for d in r.queue.deferrals] == [(1, 1)] * 3
    assert all(1 <= d["delay_seconds"] <= 3 for d in r.queue.deferrals)  # 0.5-1.5 s after, + 0-2 s jitter
    held = [line for line in r.audit_lines() if line["outcome"] == "deferred"]
    assert [(line["errorCode"], line["attempt"]) for line in held] == [("rate-limited", None)] * 3
    # And the batch took its tokens with one write
    assert r.rate_limits.writes == 1
    state = bucket(r)
    assert state is not None and state.booked_until == pytest.approx(NOW + 2.5)


def test_a_target_without_a_limit_costs_no_bucket_call(running: list[Relay]) -> None:
    r = start(running, relay())

    r.batch(*(record() for _ in range(10)))

    assert len(r.http.requests) == 10 and r.rate_limits.writes == 0 and bucket(r) is None


def test_a_bucket_this_dispatcher_saw_full_costs_no_write_until_it_has_room(running: list[Relay]) -> None:
    r = start(running, relay(limited(0.5, burst=1)))
    r.batch(record(), record())  # one goes, booked 2 s ahead; the other is deferred
    assert (len(r.http.requests), r.rate_limits.writes, len(r.queue.deferrals)) == (1, 1, 1)

    # Half a second later nothing fits, and the dispatcher knows it without asking
    r.clock.now += 0.5
    r.batch(record())
    assert (len(r.http.requests), r.rate_limits.writes, len(r.queue.deferrals)) == (1, 1, 2)

    # Once the next booking is within a second, one more is taken, and sent at its time
    r.clock.now += 0.5
    r.batch(record())
    assert (len(r.http.requests), r.rate_limits.writes) == (2, 2)
    assert r.clock.now == NOW + 2


def test_a_breaker_deferral_takes_no_tokens(running: list[Relay]) -> None:
    r = start(running, relay(limited(5)))
    r.set_breaker(BreakerState(Phase.OPEN, 5, 1, NOW + 30, 1))

    r.batch(record(), record())

    assert r.rate_limits.writes == 0
    assert {line["errorCode"] for line in r.audit_lines()} == {"breaker-open"}


@pytest.mark.parametrize("retry_after", ["3600", "9" * 400])
def test_a_retry_after_floor_is_clamped_to_the_longest_retry_delay(
    running: list[Relay], retry_after: str
) -> None:
    # Given MAX_RETRY_DELAY_SECONDS 60, and a limited target that answers 429 asking for an hour, or
    # for longer than a float holds
    throttling = always(429, headers={"retry-after": retry_after})
    r = start(running, relay(limited(10), answer_with=throttling, MAX_RETRY_DELAY_SECONDS="60"))

    r.batch(record())

    # Then the target's deliveries stop for at most that long, as its retries do
    state = bucket(r)
    assert state is not None and state.floor_until == NOW + 60
    assert [delay for _, delay in r.queue.retries] == [60]


def test_429s_cut_the_shared_rate_set_a_floor_and_do_not_open_the_breaker(running: list[Relay]) -> None:
    # Given a target limited to 10/s that answers ten requests with 429 and Retry-After: 2
    r = start(running, relay(limited(10, burst=10), answer_with=always(429, headers={"retry-after": "2"})))

    r.batch(*(record() for _ in range(10)))

    # Then its bucket holds the cut rate (x 0.75) and the floor, and its breaker stays closed
    state = bucket(r)
    assert state is not None and (state.cut_rate, state.cut_at, state.floor_until) == (7.5, NOW, NOW + 2)
    assert r.breaker().phase is Phase.CLOSED
    assert all(delay >= 2 for _, delay in r.queue.retries)  # each record's retry waits Retry-After too

    # And another dispatcher sends nothing before the floor, and after it less than the limit allowed
    r.http = ScriptedHttp()
    r.dispatcher = None
    start(running, r)
    r.clock.now += 1
    r.batch(*(record() for _ in range(20)))
    assert r.http.requests == []
    r.clock.now += 1
    r.batch(*(record() for _ in range(20)))
    # 10/s would let all 20 go within this batch's 1.9 s of bookings; about 7.75/s lets 15
    assert len(r.http.requests) == 15


def test_throttles_within_the_cooldown_cut_once(running: list[Relay]) -> None:
    r = start(running, relay(limited(10, burst=10), answer_with=always(429)))

    r.batch(record())
    r.clock.now += 0.5
    r.batch(record())

    state = bucket(r)
    assert state is not None and state.cut_rate == 7.5  # the second 429 answered a request sent before


def test_a_throttled_target_without_a_limit_gets_an_implicit_one_from_what_got_through(
    running: list[Relay],
) -> None:
    # Given an unlimited target that took ten records a second, then answers 429
    statuses = [200] * 10 + [429] * 10

    def scripted(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        return answer(statuses.pop(0) if statuses else 200)

    r = start(running, relay(answer_with=scripted, PER_TARGET_CONCURRENCY="1", DELIVERY_CONCURRENCY="1"))
    r.batch(*(record() for _ in range(10)))
    assert r.rate_limits.writes == 0
    r.clock.now += 1
    r.batch(*(record() for _ in range(10)))

    # Then an implicit limit starts at 0.75 x the 10/s that got through
    state = bucket(r)
    assert state is not None and state.cut_rate == pytest.approx(7.5) and state.cut_at == NOW + 1

    # And the target is metered from then on: the next batch takes tokens, and 7.5/s lets 16 of 20 go
    # (one second's worth at once, one more second paced)
    r.clock.now += 0.1
    before = len(r.http.requests)
    r.batch(*(record() for _ in range(20)))
    assert r.rate_limits.writes == 2 and len(r.http.requests) - before == 16


def test_a_throttle_one_dispatcher_met_holds_an_unlimited_target_back_in_every_dispatcher(
    running: list[Relay],
) -> None:
    # Given two containers sharing the tables, and an unlimited target that answers the first one's
    # batch 429 with Retry-After: 30
    first = start(running, relay(answer_with=always(429, headers={"retry-after": "30"})))
    second = start(
        running,
        replace(
            relay(answer_with=always(200)),
            breakers=first.breakers,
            rate_limits=first.rate_limits,
            clock=first.clock,
        ),
    )
    first.batch(*(record() for _ in range(4)))

    # When the second container, which was never throttled, gets the target's next records in the window
    first.clock.now += 1
    held = second.batch(*(record() for _ in range(5)))

    # Then it sends none before the floor, as the first would: they are held back, not lost
    assert second.http.requests == [] and held == []
    assert len(second.queue.deferrals) == 5
    assert all(d["delay_seconds"] >= 29 for d in second.queue.deferrals)
    assert first.lane().retry_after_until == pytest.approx(NOW + 30)  # the quiet the target asked for


@pytest.mark.parametrize("limit", [None, RateLimit(per_second=10)], ids=["unlimited", "limited"])
def test_a_quiet_lifted_by_an_operator_no_longer_holds_a_dispatcher_that_saw_it(
    running: list[Relay], limit: RateLimit | None
) -> None:
    # Given a target that answered one dispatcher 429 asking for an hour of quiet, then got well
    statuses = [429]

    def scripted(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        return answer(statuses.pop(0), headers={"retry-after": "3600"}) if statuses else answer(200)

    target = make_target(rate_limit=limit)
    r = start(running, relay(target, answer_with=scripted))
    r.batch(record())
    r.clock.now += 1
    assert r.batch(record()) == [] and len(r.http.requests) == 1  # held back for the hour

    # When an operator lifts the quiet (relay breaker reset)
    lifted = lift_quiet(r.breakers, r.rate_limits, target, r.clock.now)

    # Then the same dispatcher, which saw the hour's floor, sends the target's next record at once (at
    # the rate the 429 left it: the quiet is lifted, not the cut)
    assert (lifted.lifted_until, lifted.kept_until) == (pytest.approx(NOW + 3600), 0.0)
    r.clock.now += 1
    assert r.batch(record()) == [] and len(r.http.requests) == 2
    assert r.queue.deferrals[1:] == []


def test_a_quiet_seen_still_holds_when_the_bucket_cannot_be_read_again(running: list[Relay]) -> None:
    # Given a limited target that asked this dispatcher for an hour of quiet
    r = start(running, relay(limited(10), answer_with=always(429, headers={"retry-after": "3600"})))
    r.batch(record())

    # When its bucket cannot be read (DynamoDB down) as the next batch looks whether it was lifted
    r.rate_limits.unavailable = True
    r.clock.now += 1
    assert r.batch(record()) == []

    # Then the quiet it saw still holds: held back, not sent as if the target had no limit
    assert len(r.http.requests) == 1
    held = [line["errorCode"] for line in r.audit_lines() if line["outcome"] == "deferred"]
    assert held == ["rate-limited"]


def test_a_shorter_retry_after_after_a_lifted_quiet_still_reaches_every_dispatcher(
    running: list[Relay],
) -> None:
    # Given an unlimited target that asked one dispatcher for an hour of quiet, lifted by an operator
    statuses = [(429, "3600"), (429, "5")]

    def scripted(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        status, retry_after = statuses.pop(0) if statuses else (200, "0")
        return answer(status, headers={"retry-after": retry_after})

    target = make_target()
    r = start(running, relay(target, answer_with=scripted))
    r.batch(record())
    lift_quiet(r.breakers, r.rate_limits, target, r.clock.now)

    # When the same dispatcher is asked for 5 s of quiet, shorter than the hour it marked before
    r.clock.now += 3  # past the implicit limit's first second of bookings
    r.batch(record())

    # Then that quiet is marked for every dispatcher, not taken for one marked already
    assert len(r.http.requests) == 2
    assert r.lane().retry_after_until == pytest.approx(r.clock.now + 5)


def test_a_retry_after_holds_back_the_targets_later_records_of_the_same_batch(running: list[Relay]) -> None:
    # Given a target that answers its first request 429 asking for 30 s of quiet, then 200
    statuses = [429]

    def scripted(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        return answer(statuses.pop(0), headers={"retry-after": "30"}) if statuses else answer(200)

    r = start(running, relay(answer_with=scripted, PER_TARGET_CONCURRENCY="1", DELIVERY_CONCURRENCY="1"))

    # When one batch brings five of its records, sent one after another
    failed = r.batch(*(record() for _ in range(5)))

    # Then the four after the 429 are not sent within the quiet: deferred without an attempt, about when
    # it ends, and the throttled one is retried after it
    assert len(r.http.requests) == 1 and len(failed) == 1
    assert [delay for _, delay in r.queue.retries] == [30]
    assert [(d["attempts"], d["deferrals"]) for d in r.queue.deferrals] == [(0, 1)] * 4
    assert all(30 <= d["delay_seconds"] <= 32 for d in r.queue.deferrals)  # + 0-2 s jitter
    held = [line for line in r.audit_lines() if line["outcome"] == "deferred"]
    assert [(line["errorCode"], line["attempt"]) for line in held] == [("rate-limited", None)] * 4


@pytest.mark.parametrize("limit", [None, RateLimit(per_second=10)], ids=["unlimited", "limited"])
def test_a_retry_after_is_stored_for_every_dispatcher_when_it_is_answered_not_when_the_batch_ends(
    running: list[Relay], limit: RateLimit | None
) -> None:
    # Given a batch holding a record for a target that answers 429 with Retry-After: 30, then one for
    # another target, sent after it; while the batch is still running (the second request), what
    # every other dispatcher would read about the first target is looked at
    floors_seen: list[float | None] = []

    def scripted(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        if "busy" in url:
            return answer(429, headers={"retry-after": "30"})
        bucket_floor = (bucket(r, "busy") or BucketState()).floor_until
        floors_seen.append(r.lane("busy").retry_after_until if limit is None else bucket_floor)
        return answer(200)

    targets = (make_target("busy", rate_limit=limit), make_target("other"))
    r = start(running, relay(*targets, answer_with=scripted, DELIVERY_CONCURRENCY="1"))

    r.batch(record("busy"), record("other"))

    # Then the quiet it asked for was stored before the batch went on to the other target
    assert floors_seen == [pytest.approx(NOW + 30)]


def test_a_paced_record_keeps_the_quiet_another_dispatcher_was_asked_for_while_it_waited(
    running: list[Relay],
) -> None:
    # Given a target limited to 2 requests per second, one at once: of two records, the second is paced
    # half a second on; while the first is under way, another dispatcher gets a Retry-After of 5 s and
    # stores its floor
    def scripted(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        r.rate_limits.raise_floor(rate_key(INTEGRATION, "crm"), floor_until=r.clock.now + 5)
        return answer(200)

    r = start(running, relay(limited(2, burst=1), answer_with=scripted, DELIVERY_CONCURRENCY="1"))

    failed = r.batch(record(), record())

    # Then the paced one, once its time came, is not sent inside that quiet: it is deferred past it
    assert failed == [] and len(r.http.requests) == 1
    (deferral,) = r.queue.deferrals
    assert deferral["delay_seconds"] >= 4  # the floor, 4.5 s away when it woke
    held = [line for line in r.audit_lines() if line["outcome"] == "deferred"]
    assert [line["errorCode"] for line in held] == ["rate-limited"]


def test_a_record_that_waited_for_its_turn_keeps_the_quiet_another_dispatcher_was_asked_for(
    running: list[Relay],
) -> None:
    # Given an unlimited target answering each request in 0.6 s, one request at a time; while the
    # first is under way, another dispatcher gets a Retry-After of 5 s and marks it on the breaker item
    def scripted(method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        r.clock.now += 0.6
        r.breakers.mark_retry_after(target_key(INTEGRATION, "crm"), r.clock.now + 5)
        return answer(200)

    r = start(running, relay(answer_with=scripted, DELIVERY_CONCURRENCY="1"))

    failed = r.batch(record(), record())

    # Then the second, whose turn came inside that quiet, is deferred past it, not sent
    assert failed == [] and len(r.http.requests) == 1
    (deferral,) = r.queue.deferrals
    assert deferral["delay_seconds"] >= 4
    held = [line for line in r.audit_lines() if line["outcome"] == "deferred"]
    assert [line["errorCode"] for line in held] == ["rate-limited"]


def test_when_the_bucket_store_is_down_records_go_anyway(running: list[Relay]) -> None:
    r = start(running, relay(limited(1, burst=1)))
    r.rate_limits.unavailable = True

    assert r.batch(record(), record(), record()) == []
    assert len(r.http.requests) == 3


def test_a_record_held_back_again_and_again_waits_longer_each_time(running: list[Relay]) -> None:
    r = start(running, relay(limited(0.5, burst=1)))

    r.batch(record(), record(deferrals=3))

    (deferral,) = r.queue.deferrals
    assert deferral["deferrals"] == 4 and 8 <= deferral["delay_seconds"] <= 10  # 2^3 s, + 0-2 s jitter


def test_a_record_held_back_many_times_waits_half_a_minute_not_minutes(running: list[Relay]) -> None:
    r = start(running, relay(limited(0.5, burst=1)))

    r.batch(record(), record(deferrals=12))

    (deferral,) = r.queue.deferrals
    assert deferral["deferrals"] == 13 and 32 <= deferral["delay_seconds"] <= 34  # 2^5 s at most, + jitter


def test_an_implicit_limit_from_a_dispatcher_that_got_nothing_through_starts_at_half_what_it_sent(
    running: list[Relay],
) -> None:
    # Given an unlimited target answering 429 to every one of a batch's ten records
    r = start(running, relay(answer_with=always(429)))

    r.batch(*(record() for _ in range(10)))

    # Then the implicit limit starts at 0.75 x half the 10/s that were sent, not at nothing
    state = bucket(r)
    assert state is not None and state.cut_rate == pytest.approx(3.75)


def test_a_limited_target_in_the_slow_lane_takes_no_tokens_in_the_fast_lane(running: list[Relay]) -> None:
    # Given a rate-limited target already moved to the slow lane
    r = start(running, fast_lane(limited(2, burst=3)))
    r.set_lane(LaneState(DeliveryLane.SLOW, 1, NOW - 5))

    # When the fast lane receives eight of its records
    assert r.batch(*(record() for _ in range(8))) == []

    # Then all eight go to the slow lane, none deferred, and its bucket is left for the slow lane's
    # dispatcher (which delivers them, under the limit)
    assert len(r.queue.slow_lane) == 8 and r.queue.deferrals == []
    assert r.rate_limits.writes == 0 and bucket(r) is None
