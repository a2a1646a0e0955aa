"""The fixtures file names the integration Genesys EventBridge events fan out to in the local stack."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from relay.local.fixtures import DEFAULT_FIXTURES, Fixtures


def fixtures_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DEFAULT_FIXTURES.read_text())
    second = {**doc["integrations"][0], "id": "0c3f6a1e-2b4d-4e5f-8a9b-1c2d3e4f5a6b", "targets": []}
    doc["integrations"].append(second)
    return doc


def test_by_default_the_first_integration_gets_eventbridge_events() -> None:
    doc = fixtures_doc()
    assert Fixtures.model_validate(doc).eventbridge_integration == doc["integrations"][0]["id"]


def test_eventbridge_integration_id_chooses_another() -> None:
    doc = fixtures_doc()
    doc["eventBridgeIntegrationId"] = doc["integrations"][1]["id"]
    fixtures = Fixtures.model_validate(doc)
    assert fixtures.eventbridge_integration == doc["integrations"][1]["id"]
    assert fixtures.to_json()["eventBridgeIntegrationId"] == doc["integrations"][1]["id"]


def test_an_eventbridge_integration_id_that_is_not_listed_is_refused() -> None:
    doc = fixtures_doc()
    doc["eventBridgeIntegrationId"] = "not-an-integration"
    with pytest.raises(ValidationError, match="eventBridgeIntegrationId"):
        Fixtures.model_validate(doc)
