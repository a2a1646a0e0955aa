"""docs/openapi.yaml matches the intake: route, every status and error code, and the bodies' shapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from support.events import SIGNATURE_SECRET, api_gateway_event, sample, with_member_twice
from test_intake_fakes import Secrets, answer, make_intake

from relay.errors import ConfigurationError, DependencyUnavailable
from relay.local.template import load_template
from relay.models.idempotency import Claim
from relay.testing.fakes import InMemoryDeliveryQueue, InMemoryIdempotencyStore

ROOT = Path(__file__).resolve().parents[2]
DOC: dict[str, Any] = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
OPERATION = DOC["paths"]["/webhooks/{integrationId}"]["post"]


def schema(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}


class DownQueue(InMemoryDeliveryQueue):
    def send(self, bodies: Sequence[str]) -> None:
        raise DependencyUnavailable("queue down")


class BusyIdempotency(InMemoryIdempotencyStore):
    def claim(self, key: str) -> Claim:
        return Claim(key=key, state="in_progress")


def missing_secret(name: str) -> Any:
    raise ConfigurationError(f"secret {name} does not exist")


def broken_message() -> dict[str, Any]:
    message = sample("openmessaging_text.json")
    del message["channel"]["time"]
    return message


def message_for_another_integration() -> dict[str, Any]:
    message = sample("openmessaging_text.json")
    message["channel"]["id"] = "another-integration"
    return message


def message_with_its_id_twice() -> str:
    return with_member_twice(sample("openmessaging_text.json"), ("id",), "another-event")


# Each case: the intake's collaborators, the request, and the answer it must get.
CASES: list[tuple[dict[str, Any], dict[str, Any], int, str | None]] = [
    ({}, api_gateway_event(), 202, None),
    ({}, api_gateway_event("{nope"), 400, "bad_request"),
    ({}, api_gateway_event(broken_message()), 400, "invalid_message"),
    ({}, api_gateway_event(message_for_another_integration()), 400, "integration_mismatch"),
    ({}, api_gateway_event(message_with_its_id_twice()), 400, "repeated_member"),
    ({}, api_gateway_event(sign_with=None), 401, "signature_missing"),
    ({}, api_gateway_event(headers={"x-hub-signature-256": "sha256=xyz"}), 401, "signature_malformed"),
    ({}, api_gateway_event(sign_with="wrong-secret-0000000"), 401, "signature_mismatch"),
    ({}, api_gateway_event(integration_id="unknown"), 404, "unknown_integration"),
    ({}, api_gateway_event(method="GET"), 405, "method_not_allowed"),
    ({"max_body_bytes": 10}, api_gateway_event(), 413, "payload_too_large"),
    ({}, api_gateway_event(headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
    ({"idempotency": BusyIdempotency()}, api_gateway_event(), 429, "duplicate_in_progress"),
    ({"queue": DownQueue()}, api_gateway_event(), 503, "service_unavailable"),
    ({"get_secret": missing_secret}, api_gateway_event(), 500, "internal_error"),
]


# A second mismatch within the secret's re-read interval (the first one re-read it).
RECHECK_PENDING = (api_gateway_event(sign_with="wrong-secret-0000000"), 429, "signature_recheck_pending")


@pytest.mark.parametrize(("collaborators", "event", "status", "code"), CASES)
def test_every_answer_is_documented_and_matches_its_schema(
    collaborators: dict[str, Any], event: dict[str, Any], status: int, code: str | None
) -> None:
    intake, _ = make_intake(**collaborators)
    assert_documented(intake.handle(event), status, code)


def test_a_mismatch_before_the_secret_may_be_read_again_is_documented() -> None:
    event, status, code = RECHECK_PENDING
    intake, _ = make_intake(refresh_secret=Secrets(current=SIGNATURE_SECRET))
    assert intake.handle(event)["statusCode"] == 401  # this one re-read the secret
    assert_documented(intake.handle(event), status, code)


def assert_documented(response: dict[str, Any], status: int, code: str | None) -> None:
    assert response["statusCode"] == status
    documented = OPERATION["responses"][str(status)]
    body_schema = documented["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    jsonschema.validate(answer(response), schema(body_schema))
    if code is not None:
        assert answer(response)["error"] == code
    for header in documented.get("headers", {}):
        assert int(response["headers"][header.lower()]) >= 1


def test_the_documented_statuses_and_error_codes_are_exactly_the_ones_the_intake_gives() -> None:
    assert {str(status) for _, _, status, _ in CASES} == set(OPERATION["responses"])
    documented_codes = set(DOC["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    assert documented_codes == {code for _, _, _, code in CASES if code} | {RECHECK_PENDING[2]}


def test_the_route_is_the_templates() -> None:
    events = load_template().function("IntakeFunction").events
    http = [e["Properties"] for e in events.values() if e["Type"] == "HttpApi"]
    assert [(p["Method"].lower(), p["Path"]) for p in http] == [("post", "/webhooks/{integrationId}")]
    assert list(DOC["paths"]) == ["/webhooks/{integrationId}"] and list(DOC["paths"][http[0]["Path"]]) == [
        "parameters",
        "post",
    ]


@pytest.mark.parametrize(
    "name", ["openmessaging_text.json", "openmessaging_typing.json", "openmessaging_receipt.json"]
)
def test_the_genesys_samples_match_the_documented_request_body(name: str) -> None:
    jsonschema.validate(sample(name), schema("OpenMessage"))


@pytest.mark.parametrize("time", [None, 1_774_444_805, "2026-03-25T13:20:05.493", "2026-03-25 13:20:05Z"])
def test_a_message_the_intake_refuses_is_refused_by_the_document_too(time: Any) -> None:
    message = broken_message()
    if time is not None:
        message["channel"]["time"] = time
    intake, _ = make_intake()
    assert intake.handle(api_gateway_event(message))["statusCode"] == 400
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(message, schema("OpenMessage"))


@pytest.mark.parametrize("member", ["firstName", "lastName", "nickname", "idType"])
def test_a_participant_member_the_intake_checks_is_in_the_document_too(member: str) -> None:
    # The intake refuses a participant's name that is not a string: so must the document, or a
    # message valid by the document would be answered 400.
    message = sample("openmessaging_text.json")
    message["channel"]["from"][member] = 5
    intake, _ = make_intake()
    assert intake.handle(api_gateway_event(message))["statusCode"] == 400
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(message, schema("OpenMessage"))
