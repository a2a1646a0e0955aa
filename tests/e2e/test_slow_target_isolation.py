"""Slow-target isolation through the whole local stack: a receiver that gets slow is moved to the slow
lane, a healthy one beside it keeps getting its events while the slow one is stuck, and the slow one
still gets every event, each with the attempts it needs (docs/dispatcher.md, "Slow lane")."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests
from support.waiting import wait_until

from relay.local.demo import fresh_event, load_samples
from relay.local.receiver import Behaviour, Receiver
from relay.local.stack import LocalStack
from relay.logic.signature import sign
from relay.models.breaker import DeliveryLane, target_key
from relay.wiring import breaker_store

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
INTEGRATION = "6685901b-6d0e-43db-95ff-d64406e9dce2"
SECRET = "e2e-slow-lane-signature-secret"
HEALTHY = "0c0ffee0-aaaa-4bbb-8ccc-000000000001"
SLOW = "0c0ffee0-aaaa-4bbb-8ccc-000000000002"
ENVIRONMENT = {
    "SLOW_TARGET_MS": "300",  # the slow receiver below answers in 600 ms: slow for this stack
    "SLOW_LANE_MIN_SECONDS": "600",  # no way back during the test
    "READ_TIMEOUT_SECONDS": "40",  # a held request is not cut off (and retried) while the test runs
}
WAIT = 60.0  # bound on each wait: generous, not a performance claim


@pytest.fixture
def fixtures(tmp_path: Path) -> Path:
    doc = {
        "integrations": [
            {
                "id": INTEGRATION,
                "name": "Slow lane e2e",
                "signatureSecret": SECRET,
                "targets": [
                    {"id": HEALTHY, "name": "healthy", "url": "http://127.0.0.1:0/hooks/healthy"},
                    {"id": SLOW, "name": "slow", "url": "http://127.0.0.1:0/hooks/slow"},
                ],
            }
        ]
    }
    path = tmp_path / "fixtures.json"
    path.write_text(json.dumps(doc))
    return path


def post_event(stack: LocalStack, session: requests.Session) -> str:
    event = fresh_event(load_samples()[0], INTEGRATION)
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, SECRET)}
    answer = session.post(stack.webhook_url(INTEGRATION), data=body, headers=headers, timeout=15)
    assert answer.status_code == 202, answer.text
    return str(event["id"])


def got(receiver: Receiver) -> set[str]:
    return {str((d.event or {}).get("id")) for d in receiver.deliveries}


def test_a_slow_target_moves_aside_the_healthy_one_keeps_flowing_and_nothing_is_lost(fixtures: Path) -> None:
    with LocalStack(fixtures, environment=ENVIRONMENT) as stack, requests.Session() as session:
        healthy, slow = stack.receivers[HEALTHY].receiver, stack.receivers[SLOW].receiver
        slow.behaviour = Behaviour(latency_seconds=0.6)
        assert stack.settings is not None
        store, key = breaker_store(stack.settings), target_key(INTEGRATION, SLOW)
        sent: list[str] = []

        # Given events to both targets, until the relay has measured the slow one and moved it
        def send_until_moved() -> bool:
            sent.append(post_event(stack, session))
            return store.load_with_lane(key)[1].lane is DeliveryLane.SLOW

        wait_until(send_until_moved, what="the slow target moved to the slow lane", timeout=WAIT)
        assert store.load_with_lane(target_key(INTEGRATION, HEALTHY))[1].lane is DeliveryLane.FAST

        # When the slow target stops answering altogether, and more events come
        gate = threading.Event()
        slow.behaviour = Behaviour(gate=gate, hang_seconds=WAIT)
        sent += [post_event(stack, session) for _ in range(20)]
        wait_until(lambda: slow.held, what="the slow target holding a request", timeout=WAIT)

        # Then the healthy target gets every event while the slow one is still stuck
        wait_until(lambda: set(sent) <= got(healthy), what="every event at the healthy target", timeout=WAIT)
        assert slow.held > 0

        # And once the slow target answers again it gets every event too, each with one attempt
        gate.set()
        wait_until(lambda: set(sent) <= got(slow), what="every event at the slow target", timeout=WAIT)
        attempts = Counter(r.webhook_id for r in slow.requests)
        assert set(attempts.values()) == {1}, attempts
        assert stack.slow_poller is not None and stack.slow_poller.stats().records >= 20
        assert stack.resources is not None
        assert (
            stack.sqs.receive_message(QueueUrl=stack.resources.dead_letter_queue_url).get("Messages", [])
            == []
        )
