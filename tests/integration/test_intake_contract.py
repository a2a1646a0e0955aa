"""docs/openapi.yaml against the running intake: schemathesis cases over HTTP through the local API adapter.

The adapter (relay.local.api_adapter) turns each request into the event API Gateway would send and the
template's own IntakeFunction handler answers it, with moto behind. Schemathesis generates requests
from the document; a share of them is signed with the integration's real secret and sent to its real
id, so accepted, refused and schema-invalid messages are all exercised. Every answer must conform to
the document (status code, content type, headers, body schema) and none may be a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.queues import drain
from test_intake_handler import queued_tasks, seed_fixture_integrations

from relay.local.api_adapter import ApiAdapter
from relay.local.aws_stack import LocalResources
from relay.logic.signature import sign
from relay.models.genesys import OPEN_MESSAGE

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = schemathesis.openapi.from_path(str(ROOT / "docs" / "openapi.yaml"))
OPERATION = SCHEMA["/webhooks/{integrationId}"]["POST"]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 400


@pytest.fixture
def api(aws_stack: LocalResources) -> Iterator[str]:
    with ApiAdapter(aws_stack.template) as adapter:
        yield adapter.base_url


@pytest.mark.slow
def test_the_running_intake_conforms_to_its_openapi_document(aws_stack: LocalResources, api: str) -> None:
    # Given the fixtures' integration behind the local HTTP API
    fixture = seed_fixture_integrations().integrations[0]
    session = requests.Session()
    statuses: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=OPERATION.as_strategy(), sender=st.sampled_from(["genesys", "forger", "stranger"]))
    def check(case: Any, sender: str) -> None:
        channel = case.body.get("channel") if isinstance(case.body, dict) else None
        if sender == "genesys" and isinstance(channel, dict):
            channel["id"] = fixture.id  # Genesys names its own integration (else integration_mismatch)
        body = json.dumps(case.body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **(case.headers or {})}
        integration_id = case.path_parameters["integrationId"]
        if sender != "stranger":  # the real integration, with the generated signature header...
            integration_id = fixture.id
        if sender == "genesys":  # ...or signed as Genesys signs
            headers["X-Hub-Signature-256"] = sign(body, fixture.signature_secret)

        # When it is posted to the running API
        response = session.post(f"{api}/webhooks/{integration_id}", data=body, headers=headers, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        # Then the answer is what the document says, and what was queued is valid
        case.validate_response(response, checks=CHECKS)
        queued = queued_tasks(aws_stack.delivery_queue_url) if response.status_code == 202 else []
        for task in queued:
            assert task.event_json == body.decode()
            OPEN_MESSAGE.validate_python(json.loads(task.event_json or ""))

    check()
    assert drain(aws_stack.delivery_queue_url) == []
    assert statuses.get(202, 0) > 0 and {401, 404} <= set(statuses), statuses
    assert all(status < 500 for status in statuses)
