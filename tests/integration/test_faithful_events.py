"""The event a target receives is the event Genesys sent, byte for byte, plain or encrypted.

A signed body goes through the intake and the dispatcher to a real loopback receiver; what the receiver
finds in the envelope's ``sourceEvent`` (plain) or decrypts (encrypted) must be the body's exact text:
numbers keep their spelling (``1E+2``, long decimals, ``-0``, huge integers), escapes stay escapes,
whitespace stays. Numbers no 64-bit float holds (``1e400``) are refused at the intake with a 400.

The property test runs the real intake and dispatcher with in-memory stand-ins for the AWS ports (moto
would make a hundred examples take minutes) and real HTTP to the receiver; the issue's own example then
runs through moto and the template's handlers.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.events import api_gateway_event, sample, sqs_batch, sqs_record
from support.handlers import LoadHandler
from support.lambda_context import lambda_context
from support.queues import drain
from test_dispatch_support import (
    ENCRYPTED_TARGET,
    ENCRYPTION_SALT,
    ENCRYPTION_SECRET,
    INTEGRATION_ID,
    PLAIN_TARGET,
    SIGNING_SECRET,
    put_secret,
    secret_name,
    seed_target,
)

from relay.local.aws_stack import LocalResources
from relay.local.receiver import ReceivedRequest, Receiver
from relay.logic import crypto
from relay.logic.dispatch import Dispatcher
from relay.logic.intake import Intake
from relay.models.delivery import S3Ref
from relay.models.secrets import RotatingSecret, SecretKind
from relay.models.targets import Integration, IntegrationEntry, Target
from relay.settings import Settings
from relay.testing.fakes import (
    InMemoryBreakerStore,
    InMemoryClaimCheckStore,
    InMemoryDeliveryQueue,
    InMemoryIdempotencyStore,
    InMemoryRateLimitStore,
    InMemorySecrets,
)
from relay.wiring.dispatcher import build_dispatcher

pytestmark = pytest.mark.integration

SIGNATURE_SECRET = "faithful-events-signature-secret-01"
SAMPLE = sample("openmessaging_text.json")
ENVELOPE_TAIL = b',"formatVersion":"2.1"}'


# --- what a receiver finds -----------------------------------------------------------------------------


def source_event_text(delivery: ReceivedRequest) -> bytes:
    """The raw ``sourceEvent`` of a plain envelope, cut out of the body: the relay writes its own fields
    first and ``formatVersion`` last, so the event's text is everything between them."""
    head, found, tail = delivery.body.partition(b',"sourceEvent":')
    assert found and tail.endswith(ENVELOPE_TAIL), delivery.body[:200]
    json.loads(head + b"}")  # the relay's own fields are JSON on their own
    return tail[: -len(ENVELOPE_TAIL)]


def plaintext(delivery: ReceivedRequest) -> bytes:
    """The decrypted payload of an encrypted envelope, as bytes (decrypted as docs/receivers.md says)."""
    envelope = json.loads(delivery.body)
    assert envelope["sourceEvent"] == {}
    directive = envelope["encryptionDirective"]
    key = crypto.derive_key(ENCRYPTION_SECRET, bytes.fromhex(directive["salt"]))
    sealed = crypto.Sealed(
        iv=bytes.fromhex(directive["iv"]),
        ciphertext=bytes.fromhex(directive["encryptedPayload"]),
        tag=bytes.fromhex(directive["authTag"]),
    )
    return crypto.unseal(sealed, key, associated_data=envelope["deliveryId"].encode())


def exact(text: str | bytes) -> Any:
    """JSON with every number kept as written, to compare values without float rounding."""
    return json.loads(text, parse_float=lambda s: ("float", s), parse_int=lambda s: ("int", s))


def assert_received_as_sent(receiver: Receiver, delivery_ids: list[str], sent: bytes) -> None:
    got = {r.webhook_id: r for r in receiver.deliveries if r.webhook_id in delivery_ids}
    assert set(got) == set(delivery_ids)
    by_path = {r.path: r for r in got.values()}
    plain, encrypted = by_path["/hooks/crm"], by_path["/hooks/archive"]
    assert plain.signature_valid and encrypted.signature_valid
    assert source_event_text(plain) == sent
    assert exact(plain.body)["sourceEvent"] == exact(sent)  # and a parser reads the same value
    assert plaintext(encrypted) == sent
    assert encrypted.event == json.loads(sent)  # the receiver SDK opens it too


# --- JSON text with the spellings a re-encoding would change --------------------------------------------

whitespace = st.sampled_from(["", "", " ", "\n", "\t", "\r\n", "  \n "])
EDGE_NUMBERS = [
    "1E+2",
    "1e-2",
    "-0",
    "-0.0",
    "0.1000000000000000055511151231257827",
    "1e308",
    "-1.7976931348623157e308",
    "5e-324",
    "1e-400",  # underflows to 0.0 in a float, and is kept as written
    "2.50",
    "123456789012345678901234567890",
    "-" + "9" * 300,
]
numbers = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,3})?", fullmatch=True).filter(
        lambda text: math.isfinite(float(text))
    ),
)


def _escape(char: str, upper: bool) -> str:
    """``\\uXXXX`` for a BMP character, an escaped surrogate pair for an astral one."""
    code = ord(char)
    if code > 0xFFFF:
        code -= 0x10000
        units = [0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)]
    else:
        units = [code]
    text = "".join(f"\\u{unit:04x}" for unit in units)
    return text.upper().replace("\\U", "\\u") if upper else text


raw_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\').filter(lambda c: c >= " ")
string_pieces = st.one_of(
    raw_chars,
    st.sampled_from(['\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]),
    st.builds(_escape, st.characters(blacklist_categories=("Cs",)), st.booleans()),
    st.builds(_escape, st.characters(min_codepoint=0, max_codepoint=0x1F), st.booleans()),
    st.builds(_escape, st.characters(min_codepoint=0x10000, blacklist_categories=("Cs",)), st.booleans()),
)
strings = st.lists(string_pieces, max_size=12).map(lambda pieces: '"' + "".join(pieces) + '"')


def _array(items: list[str], spaces: list[str]) -> str:
    return "[" + spaces[0] + ("," + spaces[1]).join(items) + spaces[2] + "]"


def _object(pairs: list[tuple[str, str]], spaces: list[str]) -> str:
    members = [key + spaces[0] + ":" + spaces[1] + value for key, value in pairs]
    return "{" + spaces[2] + ("," + spaces[0]).join(members) + spaces[1] + "}"


json_texts = st.recursive(
    numbers | strings | st.sampled_from(["true", "false", "null"]),
    lambda children: (
        st.builds(_array, st.lists(children, max_size=4), st.lists(whitespace, min_size=3))
        | st.builds(
            _object, st.lists(st.tuples(strings, children), max_size=4), st.lists(whitespace, min_size=3)
        )
    ),
    max_leaves=16,
)


@st.composite
def bodies(draw: st.DrawFn) -> str:
    """A valid Text message's JSON text with an arbitrary JSON value in an extra field."""
    message = dict(SAMPLE, id=uuid.uuid4().hex)
    head = json.dumps(message, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2])))
    spaces = [draw(whitespace) for _ in range(5)]
    return (
        spaces[0]
        + head[:-1].rstrip()
        + ","
        + spaces[1]
        + '"extra"'
        + spaces[2]
        + ":"
        + spaces[3]
        + draw(json_texts)
        + spaces[4]
        + "}"
        + draw(whitespace)
    )


# --- the property, through the real intake and dispatcher -----------------------------------------------


class Targets:
    """The TargetStore lookups the intake and the dispatcher make, over one integration."""

    def __init__(self, entry: IntegrationEntry) -> None:
        self.entry = entry

    def get(self, integration_id: str) -> IntegrationEntry | None:
        return self.entry if integration_id == INTEGRATION_ID else None

    def get_target(self, integration_id: str, target_id: str) -> Target | None:
        return self.entry.target(target_id)

    def set_target_enabled(self, integration_id: str, target_id: str, enabled: bool) -> bool:
        raise AssertionError("no target answers 410 here")


class ClaimChecks(InMemoryClaimCheckStore):
    """The intake's claim-check store and the dispatcher's reader, over one dict."""

    def load(self, ref: S3Ref) -> str:
        return self.objects[ref.key].decode("utf-8")


class QueueOps:
    """Every delivery here succeeds: any retry, deferral or dead letter is a failure of the test."""

    def schedule_retry(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a delivery was retried")

    def defer(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a delivery was deferred")

    def dead_letter(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a delivery was dead-lettered")


SECRETS = {
    "signature": RotatingSecret(current=SIGNATURE_SECRET),
    "signing": RotatingSecret(current=SIGNING_SECRET),
    "encryption": RotatingSecret(current=ENCRYPTION_SECRET, key_id="k1", salt=ENCRYPTION_SALT),
}


@pytest.fixture(scope="module")
def relay_to() -> Iterator[tuple[Targets, ClaimChecks, Dispatcher, Receiver]]:
    with Receiver(
        signing_secrets={"*": [SIGNING_SECRET]}, encryption_secrets={"*": [ENCRYPTION_SECRET]}
    ) as receiver:
        targets = tuple(
            Target(
                integration_id=INTEGRATION_ID,
                target_id=target_id,
                name=path,
                url=f"{receiver.url}/hooks/{path}",
                signing_secret_name="signing",
                encryption_key_name="encryption" if path == "archive" else None,
            )
            for target_id, path in ((PLAIN_TARGET, "crm"), (ENCRYPTED_TARGET, "archive"))
        )
        lookup = Targets(
            IntegrationEntry(
                Integration(integration_id=INTEGRATION_ID, name="Acme", signature_secret_name="signature"),
                targets,
            )
        )
        claim_checks = ClaimChecks()
        dispatcher = build_dispatcher(
            Settings.model_validate({"RELAY_ALLOW_LOOPBACK_TARGETS": "true"}),
            targets=lookup,
            queue=QueueOps(),
            breakers=InMemoryBreakerStore(),
            rate_limits=InMemoryRateLimitStore(),
            audit=None,
            secrets=InMemorySecrets(SECRETS),
            claim_checks=claim_checks,
        )
        try:
            yield lookup, claim_checks, dispatcher, receiver
        finally:
            dispatcher.close()


@settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(body=bodies(), claim_checked=st.sampled_from([False, False, False, True]))
def test_any_json_value_reaches_plain_and_encrypted_targets_byte_for_byte(
    relay_to: tuple[Targets, ClaimChecks, Dispatcher, Receiver], body: str, claim_checked: bool
) -> None:
    targets, claim_checks, dispatcher, receiver = relay_to
    sent = body.encode()
    # Given the intake in front of the two targets (a tiny inline limit forces the claim check)
    queue = InMemoryDeliveryQueue()
    intake = Intake(
        integrations=targets,
        get_secret=SECRETS.__getitem__,
        queue=queue,
        idempotency=InMemoryIdempotencyStore(),
        claim_checks=claim_checks,
        max_inline_body_bytes=1 if claim_checked else 240_000,
    )

    # When Genesys posts the signed body and the dispatcher delivers what was queued
    response = intake.handle(api_gateway_event(body, sign_with=SIGNATURE_SECRET))
    assert response["statusCode"] == 202, response["body"]
    answer = json.loads(response["body"])
    assert answer["claimCheck"] is claim_checked
    records = [sqs_record(text) for text in queue.bodies]
    assert dispatcher.handle_batch(records) == {"batchItemFailures": []}

    # Then the plain target's sourceEvent and the encrypted target's plaintext are the sent bytes
    assert_received_as_sent(receiver, answer["deliveryIds"], sent)


# --- the example, through moto and the template's handlers --------------------------------------


@pytest.fixture
def both_targets(aws_stack: LocalResources, receiver: Receiver) -> None:
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET, encrypted=True)
    put_secret(secret_name(SecretKind.SIGNATURE, INTEGRATION_ID), RotatingSecret(current=SIGNATURE_SECRET))


Post = Callable[[str], dict[str, Any]]


@pytest.fixture
def post(function_handler: LoadHandler) -> Post:
    """Posts a body to the template's intake handler, signed as Genesys signs it."""

    def call(body: str) -> dict[str, Any]:
        event = api_gateway_event(body, sign_with=SIGNATURE_SECRET)
        response: dict[str, Any] = function_handler("intake")(event, lambda_context("intake"))
        return response

    return call


def _with_field(value: str, *, padding: int = 0) -> str:
    message = dict(SAMPLE, text=SAMPLE["text"] + " " * padding)
    return json.dumps(message, indent=2)[:-2] + ',\n  "f": ' + value + "\n}"


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "-Infinity"])
def test_a_number_no_float_holds_is_400_at_the_intake_and_nothing_is_queued(
    aws_stack: LocalResources, both_targets: None, post: Post, number: str
) -> None:
    response = post(_with_field(number))
    assert response["statusCode"] == 400
    answer = json.loads(response["body"])
    assert answer["error"] == "bad_request" and number in answer["message"] and "finite" in answer["message"]
    assert drain(aws_stack.delivery_queue_url) == []


@pytest.mark.parametrize("claim_checked", [False, True])
def test_1e2_and_a_long_decimal_arrive_unchanged_plain_and_encrypted(
    aws_stack: LocalResources,
    both_targets: None,
    post: Post,
    function_handler: LoadHandler,
    receiver: Receiver,
    claim_checked: bool,
) -> None:
    # Given a signed message with numbers a re-encoding would respell (large enough for S3 if asked)
    body = _with_field(
        "[1E+2, 0.1000000000000000055511151231257827, -0, 5e-324]", padding=245_000 if claim_checked else 0
    )

    # When the intake accepts it and the dispatcher delivers what it queued
    response = post(body)
    assert response["statusCode"] == 202, response
    answer = json.loads(response["body"])
    assert answer["claimCheck"] is claim_checked
    records = drain(aws_stack.delivery_queue_url)
    assert len(records) == 2
    dispatcher = function_handler("dispatcher")
    assert dispatcher(sqs_batch(*records), lambda_context("dispatcher")) == {"batchItemFailures": []}

    # Then both targets hold exactly the bytes Genesys sent
    assert_received_as_sent(receiver, answer["deliveryIds"], body.encode())
    assert b"[1E+2, 0.1000000000000000055511151231257827, -0, 5e-324]" in source_event_text(
        next(r for r in receiver.deliveries if r.path == "/hooks/crm")
    )
