"""Issue 13's closing proof in the local stack: find what happened to an event, and send it again.

50 signed events go to the default fixtures' two targets (one plain, one encrypting); the plain one's
receiver answers 200 to 5 of them and loses them. The operator finds those 5 with ``relay deliveries
show`` (they were delivered: the relay did its part), replays them to that target with ``relay
deliveries replay --stack-name relay-local``, and the receiver then holds all 50 exactly once by
``webhook-id``, every signature valid, while the other target got nothing twice. The dispatcher
wrote no S3 object per event: one archive object per invocation at most.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from support.waiting import wait_until

from relay.local.aws_stack import local_client, local_mode_environment
from relay.local.demo import fresh_event, load_samples
from relay.local.receiver import Behaviour, Receiver
from relay.local.stack import LocalStack
from relay.logic.signature import sign

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EVENTS = 50
LOST = 5
# What --stack-name stands for: the operator's shell sets none of them.
RESOURCE_VARIABLES = (
    "TARGETS_TABLE",
    "BREAKER_TABLE",
    "DELIVERY_QUEUE_URL",
    "DEAD_LETTER_QUEUE_URL",
    "AUDIT_BUCKET",
)
Relay = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack() as running:
        yield running


@pytest.fixture(scope="module")
def operator(stack: LocalStack) -> Relay:
    """``relay ...`` as the operator runs it in a shell holding AWS credentials and an endpoint (moto's)
    and naming no resource: every command finds its table, queue and bucket through --stack-name."""
    assert stack.resources is not None
    shell = {name: value for name, value in os.environ.items() if name not in RESOURCE_VARIABLES}
    shell.update(local_mode_environment(stack.resources.endpoint_url))

    def relay(*argv: str) -> tuple[int, str, str]:
        done = subprocess.run(
            [sys.executable, "-m", "relay", *argv, "--stack-name", stack.stack_name],
            capture_output=True,
            text=True,
            env=shell,
            timeout=60,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    return relay


def receivers(stack: LocalStack) -> tuple[str, Receiver, str, Receiver]:
    """(plain target id, its receiver, encrypting target id, its receiver)."""
    by_name = {r.target_name: r for r in stack.receivers.values()}
    plain, encrypted = by_name["crm-plain"], by_name["archive-encrypted"]
    return plain.target_id, plain.receiver, encrypted.target_id, encrypted.receiver


@pytest.fixture(scope="module")
def sent(stack: LocalStack) -> list[str]:
    """The ids of 50 events Genesys (as we sign like it) posted, once both receivers answered them all."""
    _, plain, _, encrypted = receivers(stack)
    plain.behaviour = Behaviour(lose=LOST)
    integration = stack.fixtures.integrations[0]
    samples = [s for s in load_samples() if s["type"] == "Text"]
    ids = []
    with requests.Session() as session:
        for n in range(EVENTS):
            event = fresh_event(samples[n % len(samples)], integration.id)
            body = json.dumps(event, separators=(",", ":")).encode()
            response = session.post(
                stack.webhook_url(integration.id),
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": sign(body, integration.signature_secret),
                },
                timeout=15,
            )
            assert response.status_code == 202, response.text
            ids.append(event["id"])
    wait_until(
        lambda: (
            len(plain.unique_delivery_ids) + len(plain.lost) == EVENTS
            and len(encrypted.unique_delivery_ids) == EVENTS
        ),
        what="both receivers answered every event",
        timeout=120,
    )
    settle(stack)
    return ids


def settle(stack: LocalStack) -> None:
    """Until no dispatcher invocation runs: the batches that delivered have written their audit."""
    poller = stack.poller
    assert poller is not None
    wait_until(lambda: poller.wait_idle(1), what="the dispatcher finished its batches", timeout=30)


def test_a_receiver_that_lost_five_events_gets_them_again_and_holds_all_fifty_once(
    stack: LocalStack, sent: list[str], operator: Relay
) -> None:
    plain_id, plain, encrypted_id, encrypted = receivers(stack)
    # Given the plain target's receiver answered 200 to 5 events and kept nothing of them
    lost = [request.event["id"] for request in plain.lost if request.event]
    assert len(lost) == LOST and len(plain.unique_delivery_ids) == EVENTS - LOST

    for event_id in lost:
        # When the operator looks each one up ...
        code, out, err = operator("deliveries", "show", event_id, "--format", "json")
        assert (code, err) == (0, "")
        timeline = json.loads(out)
        # ... the audit says the relay delivered it to both targets, on the first attempt, with a 200
        delivered = {(a["targetId"], a["attempt"], a["status"], a["outcome"]) for a in timeline["attempts"]}
        assert delivered == {(plain_id, 1, 200, "delivered"), (encrypted_id, 1, 200, "delivered")}
        # ... and replays it to the target that lost it
        code, out, err = operator("deliveries", "replay", event_id, "--target", plain_id)
        # (stderr has the relay's log line for the audited action, stdout only the command's answer)
        assert (code, [json.loads(line)["message"] for line in err.splitlines()]) == (0, ["operator action"])
        assert f"queued for {plain_id}" in out

    # Then the receiver holds all 50 exactly once by webhook-id, each signature valid
    wait_until(lambda: len(plain.unique_delivery_ids) == EVENTS, what="the replays arrived", timeout=60)
    settle(stack)  # ... and their batches' audit objects are written
    kept = Counter(request.webhook_id for request in plain.deliveries)
    assert len(kept) == EVENTS and set(kept.values()) == {1}
    assert {r.webhook_id for r in plain.lost} <= set(kept)  # the same webhook-ids: the ones it lost
    assert all(r.signature_valid for r in plain.deliveries)
    assert {r.event["id"] for r in plain.deliveries if r.event} == set(sent)
    # and the other target was not sent anything again
    assert len(encrypted.deliveries) == EVENTS and not any(r.duplicate for r in encrypted.deliveries)

    # Each replay is in its event's timeline, saying who, followed by the delivery it caused (all 50
    # events are of one conversation: one look shows them all)
    (conversation,) = {r.event.get("conversationId") for r in plain.deliveries if r.event}
    code, out, _ = operator("deliveries", "show", conversation, "--format", "json")
    assert code == 0
    by_event: dict[str, list[tuple[Any, ...]]] = {}
    for a in json.loads(out)["attempts"]:
        by_event.setdefault(a["eventId"], []).append(
            (a["targetId"], a["attempt"], a["outcome"], bool(a["actor"]))
        )
    assert set(by_event) == set(sent)
    for event_id in lost:
        assert by_event[event_id][-2:] == [
            (plain_id, None, "replayed", True),
            (plain_id, 1, "delivered", False),
        ]
    assert all(len(by_event[e]) == 2 for e in set(sent) - set(lost))


def test_the_archive_added_no_s3_object_per_event(stack: LocalStack, sent: list[str]) -> None:
    # The cost model: one audit object per invocation and target, one archive object per invocation;
    # never one per event.
    assert stack.resources is not None and stack.poller is not None
    s3 = local_client("s3", stack.resources.endpoint_url)
    keys = [
        entry["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.resources.audit_bucket)
        for entry in page.get("Contents", [])
    ]
    archive_objects = [k for k in keys if k.startswith("archive/")]
    # every dispatcher's: the first hop's, and the DeliveryQueue's for deferred records
    invocations = sum(poller.stats().invocations for poller in stack.pollers)
    assert 0 < len(archive_objects) <= invocations
    archived = Counter(
        json.loads(line)["eventId"]
        for key in archive_objects
        for line in s3.get_object(Bucket=stack.resources.audit_bucket, Key=key)["Body"].read().splitlines()
    )
    assert set(sent) <= set(archived)
