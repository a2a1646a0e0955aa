"""Every adapter turns its AWS client's failures into the relay's own errors, writes included, and no
message quotes what AWS said (it can echo request content). The AWS client is faked at the boundary:
a stand-in whose every call fails as botocore would; no sockets."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.parsers import ResponseParserError
from support import ROOT

from relay.adapters.archive import S3EventArchive
from relay.adapters.attempt_counter import DynamoAttemptCounter
from relay.adapters.audit import S3AuditSink
from relay.adapters.breaker_store import DynamoBreakerStore
from relay.adapters.claim_checks import S3ClaimChecks
from relay.adapters.cloudformation import stack_outputs
from relay.adapters.idempotency import DynamoDBIdempotencyStore
from relay.adapters.identity import caller_identity
from relay.adapters.rate_limit_store import DynamoRateLimitStore
from relay.adapters.secrets import SecretsManagerSecrets
from relay.adapters.sqs import SqsQueues
from relay.adapters.target_store import TargetStore
from relay.errors import (
    BreakerStoreUnavailable,
    ClaimCheckMissing,
    ConfigurationError,
    DependencyUnavailable,
    RelayError,
    UnreadableEvent,
)
from relay.models.breaker import BreakerState
from relay.models.delivery import DeadLetterNote, DlqReason, S3Ref
from relay.models.secrets import RotatingSecret
from relay.models.targets import Integration, Target

QUOTED = "request-content-that-must-not-leak"


class FailingClient:
    """A boto3 client stand-in: every operation raises ``error`` (a ClientError quoting the request)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error or ClientError(
            {"Error": {"Code": "InternalServerError", "Message": f"could not store {QUOTED}"}}, "Operation"
        )
        self.calls: list[str] = []

    def __getattr__(self, operation: str) -> Callable[..., Any]:
        def call(**kwargs: Any) -> Any:
            self.calls.append(operation)
            raise self.error

        return call


def target() -> Target:
    return Target(integration_id="int-1", target_id="t-1", name="t", url="https://example.com/h")


WRITES: list[tuple[str, Callable[[Any], object]]] = [
    ("put_target", lambda c: TargetStore(c, "targets").put_target(target())),
    ("save", lambda c: TargetStore(c, "targets").save(target(), expected_version=1)),
    (
        "put_integration",
        lambda c: TargetStore(c, "targets").put_integration(Integration(integration_id="i", name="n")),
    ),
    ("delete", lambda c: TargetStore(c, "targets").delete(target())),
    ("set_target_enabled", lambda c: TargetStore(c, "targets").set_target_enabled("int-1", "t-1", False)),
    ("list_integration_ids", lambda c: TargetStore(c, "targets").list_integration_ids()),
    (
        "secrets put",
        lambda c: SecretsManagerSecrets(c, cache_ttl_seconds=0).put(
            "relay/x", RotatingSecret(current=QUOTED)
        ),
    ),
    ("schedule_retry", lambda c: SqsQueues(c, delivery_queue_url="q").schedule_retry("r", 5)),
    (
        "defer",
        lambda c: SqsQueues(c, delivery_queue_url="q").defer(
            "{}", {}, attempts=1, deferrals=1, delay_seconds=5
        ),
    ),
    (
        "dead_letter",
        lambda c: SqsQueues(c, dead_letter_queue_url="dlq").dead_letter(
            "{}", {}, DeadLetterNote(DlqReason.POISON, 0)
        ),
    ),
    ("send", lambda c: SqsQueues(c, delivery_queue_url="q", sleep=lambda s: None).send(["{}"])),
    ("claim check put", lambda c: S3ClaimChecks(c, "bucket").put("events/k.json", b"{}")),
    ("claim check load", lambda c: S3ClaimChecks(c).load(S3Ref(bucket="b", key="k"))),
    ("audit write", lambda c: S3AuditSink(c, "bucket").write("2026-03-25", "t-1", "inv", [{"a": 1}])),
    ("stack outputs", lambda c: stack_outputs(c, "relay")),
    ("attempts read", lambda c: DynamoAttemptCounter(c, "attempts").failures("m-1")),
    ("attempts write", lambda c: DynamoAttemptCounter(c, "attempts").add_failure("m-1")),
    ("rate-limit read", lambda c: DynamoRateLimitStore(c, "breakers").load("int-1#t-1")),
    ("idempotency claim", lambda c: DynamoDBIdempotencyStore(c, "idempotency", ttl_seconds=60).claim("k")),
    ("archive lookup", lambda c: S3EventArchive(c, "bucket").claim_check_exists(S3Ref(bucket="b", key="k"))),
]

# What botocore raises when the answer is not AWS's (an HTML page from a proxy): neither a ClientError
# nor a BotoCoreError, and still only the dependency being unavailable.
NOT_AWS = ResponseParserError("Unable to parse response, invalid XML received: b'<html>'")


@pytest.mark.parametrize(("name", "use"), WRITES, ids=[name for name, _ in WRITES])
@pytest.mark.parametrize(
    "error",
    [None, EndpointConnectionError(endpoint_url="https://aws.example"), NOT_AWS],
    ids=["client-error", "connection-error", "not-an-aws-answer"],
)
def test_aws_failures_become_dependency_unavailable_without_quoting_aws(
    name: str, use: Callable[[Any], object], error: Exception | None
) -> None:
    client = FailingClient(error)

    with pytest.raises(DependencyUnavailable) as raised:
        use(client)

    assert client.calls, "the adapter made no call"
    assert QUOTED not in str(raised.value) and "aws.example" not in str(raised.value)


@pytest.mark.parametrize(
    "use",
    [
        lambda c: DynamoBreakerStore(c, "breakers").load("int-1#t-1"),
        lambda c: DynamoBreakerStore(c, "breakers").save("int-1#t-1", BreakerState(), expected_version=0),
    ],
    ids=["load", "save"],
)
@pytest.mark.parametrize("error", [None, NOT_AWS], ids=["client-error", "not-an-aws-answer"])
def test_breaker_store_failures_are_breaker_store_unavailable(
    use: Callable[[Any], object], error: Exception | None
) -> None:
    with pytest.raises(BreakerStoreUnavailable):
        use(FailingClient(error))


def test_an_identity_sts_cannot_give_is_the_os_user_alone() -> None:
    # STS answering something that is not AWS's: the audit record still names the OS user
    assert caller_identity(FailingClient(NOT_AWS)).startswith("os user ")


def test_a_claim_checked_event_that_is_not_utf8_is_unreadable_not_a_dependency_failure() -> None:
    class S3:
        def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
            return {"Body": io.BytesIO(b"\xff\xfe{}")}

    with pytest.raises(UnreadableEvent):
        S3ClaimChecks(S3()).load(S3Ref(bucket="b", key="k"))


def s3_answering(code: str, status: int) -> FailingClient:
    """An S3 client whose every call fails the way S3 answers ``code`` (botocore's ClientError)."""
    return FailingClient(
        ClientError(
            {
                "Error": {"Code": code, "Message": f"about {QUOTED}"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "GetObject",
        )
    )


# A key with no object, or a delete marker as its current version (lifecycle expiry in a versioned
# bucket): NoSuchKey from GetObject; a bare 404 from endpoints that send no error body.
@pytest.mark.parametrize(("code", "status"), [("NoSuchKey", 404), ("NotFound", 404), ("404", 404)])
def test_a_claim_check_that_is_gone_is_missing_not_a_dependency_failure(code: str, status: int) -> None:
    ref = S3Ref(bucket="audit", key="events/int-1/abc.json")

    with pytest.raises(ClaimCheckMissing) as raised:
        S3ClaimChecks(s3_answering(code, status)).load(ref)

    assert "s3://audit/events/int-1/abc.json" in str(raised.value) and QUOTED not in str(raised.value)


# S3 failing, or the deployment wrong (no such bucket; no s3:GetObject): the event may still be there.
@pytest.mark.parametrize(
    ("code", "status"),
    [("NoSuchBucket", 404), ("AccessDenied", 403), ("InternalError", 500), ("SlowDown", 503)],
)
def test_other_claim_check_failures_stay_dependency_failures(code: str, status: int) -> None:
    with pytest.raises(DependencyUnavailable):
        S3ClaimChecks(s3_answering(code, status)).load(S3Ref(bucket="audit", key="events/k.json"))


@pytest.mark.parametrize(
    "stored",
    ["not json", "[]", '{"previous": "x"}', "[" * 100_000 + "]" * 100_000],
    ids=["not-json", "not-an-object", "no-current", "nested-too-deep"],
)
def test_a_secret_not_in_the_relays_shape_is_a_configuration_error(stored: str) -> None:
    class SecretsManager:
        def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
            return {"SecretString": stored}

    with pytest.raises(ConfigurationError, match="not in the relay's JSON shape"):
        SecretsManagerSecrets(SecretsManager(), cache_ttl_seconds=0).get("relay/signing/t-1")


def test_every_relay_error_is_rooted_in_relay_errors() -> None:
    import relay.errors as errors

    defined = [
        value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert defined and all(issubclass(cls, RelayError) for cls in defined)


def test_adapters_catch_aws_failures_through_the_shared_tuples() -> None:
    # Catching botocore's classes one by one is how ResponseParserError escaped as a bug (exit 70)
    adapters = ROOT / "layers" / "core" / "relay" / "adapters"
    shared = {"aws_errors.py", "aws.py"}  # the tuples; OutOfTime is a BotoCoreError
    naming = [
        p.name for p in adapters.glob("*.py") if p.name not in shared and "BotoCoreError" in p.read_text()
    ]
    assert (adapters / "aws_errors.py").exists() and naming == []
