"""The intake handler against a real moto server: signed Genesys events in, one task per target out."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from relay.adapters.aws import client
from relay.adapters.secrets import RotatingSecret, SecretKind, put_secret, secret_name
from relay.adapters.target_store import TargetStore
from relay.local.aws_stack import LocalResources
from relay.local.fixtures import Fixtures
from relay.models.delivery import DeliveryTask
from relay.models.targets import Integration, Target
from relay.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"


def load_intake_handler() -> ModuleType:
    """The handler module the way the local stack loads it (CodeUri + Handler from template.yaml)."""
    path = ROOT / "functions" / "intake" / "intake_handler.py"
    spec = importlib.util.spec_from_file_location("intake_handler", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("intake_handler", module)
    spec.loader.exec_module(module)
    return module


class LambdaContext:
    function_name = "IntakeFunction"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:IntakeFunction"
    aws_request_id = "test-request"

    def get_remaining_time_in_millis(self) -> int:
        return 8_000


def seed_fixture_integrations(previous_secret: str | None = None) -> Fixtures:
    """The default fixtures' integrations, targets and signature secrets, as config sync would store them."""
    fixtures = Fixtures.load()
    store = TargetStore(get_settings().need("targets_table"))
    for item in fixtures.integrations:
        name = secret_name(SecretKind.SIGNATURE, item.id)
        put_secret(name, RotatingSecret(current=item.signature_secret, previous=previous_secret))
        store.put_integration(Integration(integration_id=item.id, name=item.name, signature_secret_name=name))
        for target in item.targets:
            store.put_target(
                Target(
                    integration_id=item.id,
                    target_id=target.id,
                    name=target.name,
                    url=target.url.replace(":0/", ":9/"),
                    enabled=target.enabled,
                )
            )
    return fixtures


def drain(queue_url: str) -> list[dict[str, Any]]:
    sqs = client("sqs")
    bodies: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = got.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture
def intake_handler(aws_stack: LocalResources) -> ModuleType:
    return load_intake_handler()


def test_signed_text_event_is_queued_once_per_target(
    aws_stack: LocalResources, intake_handler: ModuleType
) -> None:
    # Given the default fixtures' integration with two targets
    fixtures = seed_fixture_integrations()
    event = json.loads((EVENTS / "apigw_text.json").read_text())

    # When Genesys posts the signed text message
    response = intake_handler.lambda_handler(event, LambdaContext())

    # Then the answer is 202 JSON and the queue holds one valid task per target, carrying the event
    assert response["statusCode"] == 202, response
    assert response["headers"]["content-type"] == "application/json"
    answer = json.loads(response["body"])
    tasks = [DeliveryTask.model_validate(body) for body in drain(aws_stack.delivery_queue_url)]
    assert sorted(t.target_id for t in tasks) == sorted(t.id for t in fixtures.integrations[0].targets)
    assert sorted(answer["deliveryIds"]) == sorted(str(t.delivery_id) for t in tasks)
    sent = json.loads(event["body"])
    assert all(t.event == sent and t.event_id == sent["id"] for t in tasks)
