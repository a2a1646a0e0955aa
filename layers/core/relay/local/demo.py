"""``relay local demo``: Genesys-signed sample events through the whole local stack, then a tally.

The sample Open Messaging events in events/ (``openmessaging_*.json``) are sent round-robin with
fresh ids and times, each signed as Genesys signs (``X-Hub-Signature-256``, base64 HMAC-SHA256 of the
raw body with the integration's signature secret), at ``rate`` events per second (live-chat pace:
10 by default). The demo then waits until the delivery queues are empty and the pollers idle, and
counts from what actually happened:

- ``delivered``: accepted events that reached every one of their targets: a demo receiver got them,
  or, for a target at a URL of your own (which the demo cannot see), the relay's audit says the
  target answered 2xx;
- ``dead_lettered``: accepted events with a delivery task in a DLQ, the standard one or the ordered
  lane's (their messages are read and their ``DeliveryTask`` bodies decoded), delivered elsewhere;
- ``pending``: when the queues did not drain in time, accepted events with a delivery neither made
  nor dead-lettered yet: the relay is still on it (a retry or a deferral not yet due);
- ``lost``: once the queues drained, accepted events with a target that neither got them nor has
  them in a DLQ.

Latency, per (event, target): ``p50_ms``/``p99_ms`` end to end (the POST leaving the demo to the
receiver accepting it), and ``latency`` the relay-added latency (the intake's 202 to the request's
first byte at the receiver) with its breakdown and the relay's own share (relay.local.latency).
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from relay.adapters.audit import S3AuditReader
from relay.local.aws_stack import local_client
from relay.local.fixtures import FixtureIntegration
from relay.local.latency import ReceiveLog, Timing, latency_report, percentile
from relay.local.receiver import ReceivedRequest
from relay.local.stack import LocalStack, targets_by_integration
from relay.logic.dispatch.batch import DELIVERED
from relay.logic.intake.filters import EventFacts, filtered_out
from relay.logic.signature import sign
from relay.models.delivery import DeliveryTask
from relay.models.targets import Ordering

EVENTS_DIR = Path(__file__).resolve().parents[4] / "events"
SAMPLE_GLOB = "openmessaging_*.json"


@dataclass
class SentEvent:
    event_id: str
    integration_id: str
    sent_at: float  # time.time(), comparable with the receivers' received_at
    status: int
    accepted_at: float = 0.0  # when the intake's answer was back
    # The targets it is meant for: the integration's enabled ones whose event filters let it through.
    targets: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class DemoReport:
    sent: int = 0
    accepted: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    pending: int = 0  # not settled yet when the demo stopped waiting (drained is false)
    lost: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    rate_per_second: float | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    deliveries: int = 0
    duplicates: int = 0
    rejected_by_intake: dict[str, int] = field(default_factory=dict)
    filtered_out: int = 0  # accepted (event, target) pairs a target's event filters leave out: not expected
    for_no_target: int = 0  # accepted events every target's filters leave out: neither delivered nor expected
    pending_by_queue: dict[str, dict[str, int]] = field(default_factory=dict)  # where ``pending`` waits
    unobserved_targets: list[str] = field(default_factory=list)
    drained: bool = False
    elapsed_s: float = 0.0
    poller: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        settled = self.delivered + self.for_no_target
        return self.lost == 0 and settled == self.accepted == self.sent and self.drained

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.__dict__}


def load_samples(events_dir: Path = EVENTS_DIR) -> list[dict[str, Any]]:
    paths = sorted(events_dir.glob(SAMPLE_GLOB))
    if not paths:
        raise FileNotFoundError(f"no sample events {SAMPLE_GLOB} in {events_dir}")
    return [json.loads(p.read_text()) for p in paths]


def fresh_event(sample: dict[str, Any], integration_id: str) -> dict[str, Any]:
    """A copy of ``sample`` for ``integration_id`` with a new message id and the current time."""
    event: dict[str, Any] = json.loads(json.dumps(sample))
    message_id = uuid.uuid4().hex
    event["id"] = message_id
    channel = event.setdefault("channel", {})
    channel["id"] = integration_id
    channel["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if event.get("type") != "Receipt":  # a receipt's messageId names the message it acknowledges
        channel["messageId"] = message_id
    return event


def run_demo(
    stack: LocalStack, count: int = 30, *, timeout_seconds: float = 120.0, rate: float | None = 10.0
) -> DemoReport:
    """Send ``count`` events through a started stack at ``rate`` per second (None: as fast as they
    are answered), wait for it to settle, and tally the outcome."""
    started = time.monotonic()
    report = DemoReport(rate_per_second=rate)
    receipts = ReceiveLog()
    for poller in stack.pollers:
        poller.add_receive_observer(receipts)
    sent = _send(stack, count, report, rate)
    report.drained = _wait_until_settled(stack, sent, timeout_seconds)
    _tally(stack, sent, report, receipts)
    report.elapsed_s = round(time.monotonic() - started, 2)
    return report


def _send(stack: LocalStack, count: int, report: DemoReport, rate: float | None) -> list[SentEvent]:
    samples = load_samples()
    integrations = [i for i in stack.fixtures.integrations if any(t.enabled for t in i.targets)]
    if not integrations:
        raise ValueError("the fixtures have no integration with an enabled target")
    plan: Iterator[tuple[dict[str, Any], Any]] = zip(
        itertools.cycle(samples), itertools.cycle(integrations), strict=False
    )
    sent: list[SentEvent] = []
    pace = time.monotonic()
    with requests.Session() as session:
        for sample, integration in itertools.islice(plan, count):
            if rate:
                time.sleep(max(0.0, pace - time.monotonic()))  # not a wait: the sending rate
                pace += 1 / rate
            event = fresh_event(sample, integration.id)
            body = json.dumps(event, separators=(",", ":")).encode()
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "relay-local-demo",
                "X-Hub-Signature-256": sign(body, integration.signature_secret),
            }
            meant_for = _meant_for(integration, event)
            sent_at = time.time()
            response = session.post(stack.webhook_url(integration.id), data=body, headers=headers, timeout=15)
            sent.append(
                SentEvent(event["id"], integration.id, sent_at, response.status_code, time.time(), meant_for)
            )
            if not 200 <= response.status_code < 300:
                key = str(response.status_code)
                report.rejected_by_intake[key] = report.rejected_by_intake.get(key, 0) + 1
    report.sent = len(sent)
    report.accepted = sum(1 for s in sent if s.accepted)
    return sent


def _meant_for(integration: FixtureIntegration, event: dict[str, Any]) -> tuple[str, ...]:
    """The enabled targets whose event filters (docs/config-sync.md, "Event filters") take ``event``."""
    facts = EventFacts.of_open_message(event)
    return tuple(
        t.id
        for t in integration.targets
        if t.enabled and (t.filters is None or filtered_out(t.filters, facts) is None)
    )


def _expected_pairs(sent: list[SentEvent]) -> set[tuple[str, str]]:
    return {(s.event_id, target_id) for s in sent if s.accepted for target_id in s.targets}


def _delivered(stack: LocalStack) -> dict[tuple[str, str], ReceivedRequest]:
    """(event id, target id) -> the first request its target's receiver accepted."""
    first: dict[tuple[str, str], ReceivedRequest] = {}
    for demo_receiver in stack.receivers.values():
        for request in demo_receiver.receiver.deliveries:
            event_id = (request.event or {}).get("id")
            if event_id is None:
                continue
            key = (str(event_id), demo_receiver.target_id)
            if key not in first or request.received_at < first[key].received_at:
                first[key] = request
    return first


def _wait_until_settled(stack: LocalStack, sent: list[SentEvent], timeout_seconds: float) -> bool:
    """Until every expected delivery arrived and the queue is empty with the poller idle (True)."""
    expected = _expected_pairs(sent)
    deadline = time.monotonic() + timeout_seconds
    quiet_checks = 0
    while time.monotonic() < deadline:
        all_delivered = expected <= set(_delivered(stack))
        if stack.deliveries_pending():
            quiet_checks = 0
        else:
            quiet_checks += 1
        # Two quiet looks in a row: nothing was between a receive and an invocation at either.
        if quiet_checks >= 2 and (all_delivered or quiet_checks >= 5):
            return True
        time.sleep(0.2)
    return False


def _dead_lettered(stack: LocalStack) -> tuple[set[tuple[str, str]], int]:
    """(event id, target id) of every delivery task in the DLQs that can be read, the standard one and
    the ordered lane's; and how many more the ordered DLQ holds that cannot be: it is FIFO, and once a
    receive holds a conversation's first ten letters SQS shows none of its later ones."""
    assert stack.resources is not None
    ordered_dlq = stack.resources.ordered_dead_letter_queue_url
    found: set[tuple[str, str]] = set()
    read_from_ordered = 0
    for queue_url in filter(None, [stack.resources.dead_letter_queue_url, ordered_dlq]):
        while messages := stack.sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=60,  # read each message once; they stay in the DLQ
            WaitTimeSeconds=0,
        ).get("Messages", []):
            read_from_ordered += len(messages) if queue_url == ordered_dlq else 0
            for message in messages:
                try:
                    task = DeliveryTask.model_validate_json(message["Body"])
                except ValueError:
                    continue  # not a delivery task: it cannot stand for any sent event
                found.add((task.event_id, task.target_id))
    if not ordered_dlq:
        return found, 0
    attributes = stack.sqs.get_queue_attributes(
        QueueUrl=ordered_dlq,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    held = sum(int(value) for value in attributes.values())
    return found, max(0, held - read_from_ordered)


def _audited_deliveries(stack: LocalStack, targets: set[str], since: float) -> set[tuple[str, str]]:
    """(event id, target id) the dispatchers audited as delivered (the target answered 2xx) for
    ``targets``: what the demo knows of targets at URLs of your own, whose requests it cannot see."""
    assert stack.resources is not None
    if not targets:
        return set()
    reader = S3AuditReader(local_client("s3", stack.resources.endpoint_url), stack.resources.audit_bucket)
    days = sorted({datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d") for t in (since, time.time())})
    return {
        (str(line.get("eventId")), str(line.get("targetId")))
        for line in reader.lines(days, containing=DELIVERED)
        if line.get("outcome") == DELIVERED and line.get("targetId") in targets
    }


def _tally(stack: LocalStack, sent: list[SentEvent], report: DemoReport, receipts: ReceiveLog) -> None:
    targets = targets_by_integration(stack.fixtures)
    observed = {r.target_id for r in stack.receivers.values()}
    unobserved = [t for ts in targets.values() for t in ts if t.id not in observed]
    report.unobserved_targets = sorted(t.name for t in unobserved)
    first_sent = min((s.sent_at for s in sent), default=time.time())
    audited = _audited_deliveries(stack, {t.id for t in unobserved}, first_sent)
    delivered = _delivered(stack)
    dead, unread_letters = _dead_lettered(stack)
    ordered = {t.id for ts in targets.values() for t in ts if t.ordering is Ordering.CONVERSATION}
    latencies: list[float] = []
    timings: list[Timing] = []
    for event in (s for s in sent if s.accepted):
        report.filtered_out += len(targets[event.integration_id]) - len(event.targets)
        pairs = [(event.event_id, target_id) for target_id in event.targets]
        made = [p for p in pairs if p in delivered or p in audited]
        missing = [p for p in pairs if p not in made and p not in dead]
        if not pairs:
            report.for_no_target += 1
        elif len(made) == len(pairs):
            report.delivered += 1
        elif any(p in dead for p in pairs) and not missing:
            report.dead_lettered += 1
        elif report.drained and all(p[1] in ordered for p in missing) and unread_letters >= len(missing):
            # Letters of ordered targets the ordered DLQ holds but could not show (see _dead_lettered).
            unread_letters -= len(missing)
            report.dead_lettered += 1
        elif not report.drained:
            report.pending += 1
        else:
            report.lost += 1
        for request in (delivered[p] for p in pairs if p in delivered):
            latencies.append((request.received_at - event.sent_at) * 1000)
            polled = receipts.first(request.webhook_id) if request.webhook_id else None
            timings.append(Timing(event.sent_at, event.accepted_at, polled, request.arrived_at))
    report.deliveries = sum(len(r.receiver.deliveries) for r in stack.receivers.values())
    report.duplicates = sum(1 for r in stack.receivers.values() for d in r.receiver.deliveries if d.duplicate)
    report.p50_ms = percentile(latencies, 50)
    report.p99_ms = percentile(latencies, 99)
    report.latency = latency_report(timings)
    lanes = [poller.stats() for poller in stack.pollers]  # the fast, slow and ordered lanes together
    report.poller = {
        "invocations": sum(stats.invocations for stats in lanes),
        "failed_invocations": sum(stats.failed_invocations for stats in lanes),
        "records": sum(stats.records for stats in lanes),
        "max_in_flight": max((stats.max_in_flight for stats in lanes), default=0),
    }
    if report.pending:
        report.pending_by_queue = {q: c for q, c in stack.pending().items() if any(c.values())}
