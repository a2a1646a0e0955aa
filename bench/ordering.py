"""The ordering proof (issue 15): conversations arrive in their send order through faults and an outage.

Run by ``make chaos`` at full size; tests/e2e/test_ordering.py runs it scaled. One JSON line on stdout.

Phase 1, the proof. One integration, two targets with identical receivers: "ordered" (``ordering:
conversation``) and "unordered" (the control, ``ordering: none``). ``EVENTS`` Genesys-signed events
over ``CONVERSATIONS`` conversations; each conversation's events are posted one after another (each
waits for its 202), conversations side by side, and each event carries its conversation's sequence
number. Both receivers fail ``FAULT_RATE`` of requests at random (5xx, dropped connections) and
go down for ``DOWN_SECONDS`` in the middle. Then, from what the receivers and the DLQs hold: per
conversation, the sequence numbers in the order they were accepted (2xx, first time) must be exactly
0, 1, 2, ... for the ordered target; the unordered one shows out-of-order arrivals (so the check can
fail); lost (neither delivered nor dead-lettered) must be 0.

Phase 2, throughput. A third target on its own integration, ordered, whose receiver answers after
50 ms. With the ordered dispatcher's poller paused, ``THROUGHPUT_EVENTS`` events over
``THROUGHPUT_CONVERSATIONS`` conversations are queued; the poller resumes and the deliveries per second
until the last one arrives are reported (a figure for this machine, not a test).

Run: ``make chaos`` or ``.venv/bin/python -m bench.ordering [--events N --conversations N ...]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import requests

from relay.local.receiver import Behaviour, Receiver
from relay.local.stack import LocalStack
from relay.logic.signature import sign
from relay.models.delivery import DeliveryTask

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "events" / "openmessaging_text.json"

EVENTS = 1_000
CONVERSATIONS = 50
FAULT_RATE = 0.3
DOWN_SECONDS = 10.0
THROUGHPUT_EVENTS = 1_000
THROUGHPUT_CONVERSATIONS = 50
RECEIVER_LATENCY_SECONDS = 0.05
SENDERS = 8
# Failures, not throttles: a 429 is a request to slow down, which the dispatchers honour with an
# implicit rate limit per target (docs/dispatcher.md, "Rate limits"); at 30 % of all answers it would
# throttle both targets far below what this run is about. Ordering under throttling: the unit tests.
FAULTS = ("5xx", "drop")
# The outage starts once the ordered receiver has accepted this share of the proof's events.
DOWN_AT_SHARE = 0.4
PARAMETERS = {"DispatcherTimeoutSeconds": "15"}
ENVIRONMENT = {
    "READ_TIMEOUT_SECONDS": "2",
    "CONNECT_TIMEOUT_SECONDS": "1",
    "BREAKER_RESET_SECONDS": "1",
    "BREAKER_MAX_RESET_SECONDS": "4",
}
# Enough attempts that a 30 % fault rate never exhausts one (a dead letter would leave a gap); the
# unordered control stays below the delivery queue's redrive backstop (MaxReceiveCount 10).
ORDERED_RETRIES = {"attempts": 40, "baseIntervalMs": 100, "maxIntervalMs": 1000, "multiplier": 2}
UNORDERED_RETRIES = {"attempts": 9, "baseIntervalMs": 100, "maxIntervalMs": 1000, "multiplier": 2}
SETTLE_TIMEOUT_SECONDS = 600.0
SEQUENCE = re.compile(r"ordering-proof conversation (\S+) message (\d+)")


def _chaos() -> ModuleType:
    """bench/chaos.py (not an installed package): its log capture is reused here."""
    loaded = sys.modules.get("relay_bench_chaos")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("relay_bench_chaos", Path(__file__).with_name("chaos.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Sizes:
    events: int = EVENTS
    conversations: int = CONVERSATIONS
    fault_rate: float = FAULT_RATE
    down_seconds: float = DOWN_SECONDS
    throughput_events: int = THROUGHPUT_EVENTS
    throughput_conversations: int = THROUGHPUT_CONVERSATIONS


@dataclass
class Ids:
    proof: str = field(default_factory=lambda: str(uuid.uuid4()))
    throughput: str = field(default_factory=lambda: str(uuid.uuid4()))
    ordered: str = field(default_factory=lambda: str(uuid.uuid4()))
    unordered: str = field(default_factory=lambda: str(uuid.uuid4()))
    steady: str = field(default_factory=lambda: str(uuid.uuid4()))
    baseline: str = field(default_factory=lambda: str(uuid.uuid4()))
    proof_secret: str = field(default_factory=lambda: "ordering-sig-" + secrets.token_urlsafe(18))
    throughput_secret: str = field(default_factory=lambda: "ordering-sig-" + secrets.token_urlsafe(18))


def fixtures_document(ids: Ids) -> dict[str, Any]:
    def target(target_id: str, name: str, ordering: str, retries: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": target_id,
            "name": name,
            "url": f"http://127.0.0.1:0/hooks/{name}",
            "ordering": ordering,
            "retryMatrix": retries,
        }

    return {
        "integrations": [
            {
                "id": ids.proof,
                "name": "Ordering proof",
                "signatureSecret": ids.proof_secret,
                "targets": [
                    target(ids.ordered, "ordered", "conversation", ORDERED_RETRIES),
                    target(ids.unordered, "unordered", "none", UNORDERED_RETRIES),
                ],
            },
            {
                "id": ids.throughput,
                "name": "Ordering throughput",
                "signatureSecret": ids.throughput_secret,
                "targets": [
                    target(ids.steady, "steady", "conversation", ORDERED_RETRIES),
                    target(ids.baseline, "baseline", "none", UNORDERED_RETRIES),
                ],
            },
        ]
    }


class OrderingRun:
    """The stack with the proof's fixtures; ``execute()`` runs both phases and returns the summary."""

    def __init__(self, workdir: Path, sizes: Sizes | None = None) -> None:
        self.sizes = sizes or Sizes()
        self.ids = Ids()
        self.workdir = workdir
        self.fixtures_path = workdir / "ordering-fixtures.json"
        self.fixtures_path.write_text(json.dumps(fixtures_document(self.ids)))
        self.function_log_path = workdir / "functions.log"
        self.stack_log_path = workdir / "stack.log"
        self.function_log: IO[str] = self.function_log_path.open("a", encoding="utf-8")
        self.stack_log: IO[str] = self.stack_log_path.open("a", encoding="utf-8")
        chaos = _chaos()
        self._divert = chaos.divert_existing_handlers
        self._capture = chaos.captured_output(self.function_log, self.stack_log)
        self.real_stdout: IO[str] = sys.stdout
        self.stack: LocalStack | None = None
        self.conversations: dict[str, list[str]] = {}  # conversation -> event ids in send order
        self.rejected: Counter[str] = Counter()
        self.timeline: dict[str, float] = {}

    # --- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> OrderingRun:
        self.real_stdout = self._capture.__enter__()
        self._divert(self.function_log, self.real_stdout)
        self.stack = LocalStack(
            self.fixtures_path,
            parameters=PARAMETERS,
            environment=ENVIRONMENT,
            dispatcher_workers=True,
            function_output=self.function_log,
        )
        self.stack.start()
        self._divert(self.function_log, self.real_stdout)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.stack is not None:
                self.stack.stop()
        finally:
            self._capture.__exit__(None, None, None)
            self.function_log.close()
            self.stack_log.close()

    def receiver(self, target_id: str) -> Receiver:
        assert self.stack is not None
        return self.stack.receivers[target_id].receiver

    # --- the run ---------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        started = time.monotonic()
        proof = self._proof()
        throughput = self._throughput()
        return {
            **proof,
            "throughput": throughput,
            "settings": {
                **self.sizes.__dict__,
                "ordered_retry_matrix": ORDERED_RETRIES,
                "unordered_retry_matrix": UNORDERED_RETRIES,
                "receiver_latency_ms": RECEIVER_LATENCY_SECONDS * 1000,
                "environment": ENVIRONMENT,
                "parameters": PARAMETERS,
            },
            "elapsed_s": round(time.monotonic() - started, 1),
        }

    def _proof(self) -> dict[str, Any]:
        sizes = self.sizes
        flaky = Behaviour(fault_rate=sizes.fault_rate, faults=FAULTS)
        control = Behaviour(fault_rate=sizes.fault_rate, faults=FAULTS)
        ordered, unordered = self.receiver(self.ids.ordered), self.receiver(self.ids.unordered)
        ordered.behaviour, unordered.behaviour = flaky, control
        per_conversation = max(1, sizes.events // sizes.conversations)
        plan = {f"c{n:03d}-{uuid.uuid4().hex[:8]}": per_conversation for n in range(sizes.conversations)}
        self.timeline["send_start"] = time.time()
        sender = threading.Thread(target=self._send, args=(self.ids.proof, self.ids.proof_secret, plan))
        sender.start()
        down_after = int(sizes.events * DOWN_AT_SHARE)
        while sender.is_alive() and len(_accepted(ordered)) < down_after:
            time.sleep(0.05)  # not a wait: the outage starts mid-run, whenever that is
        flaky.up = control.up = False
        self.timeline["down_start"] = time.time()
        time.sleep(sizes.down_seconds)  # not a wait: the outage's length
        flaky.up = control.up = True
        self.timeline["down_end"] = time.time()
        sender.join()
        assert self.stack is not None
        drained = self.stack.wait_settled(SETTLE_TIMEOUT_SECONDS)
        letters = self._dead_letters()
        t0 = self.timeline["send_start"]
        sent = {c: events for c, events in self.conversations.items() if c in plan}
        return {
            "events_sent": sum(len(events) for events in sent.values()),
            "rejected_by_intake": dict(self.rejected),
            "conversations": len(sent),
            "ordered": _verdict(ordered, sent, letters.get(self.ids.ordered, set())),
            "unordered_control": _verdict(unordered, sent, letters.get(self.ids.unordered, set())),
            "outage": {
                "down_window_s": [
                    round(self.timeline["down_start"] - t0, 1),
                    round(self.timeline["down_end"] - t0, 1),
                ],
                "ordered_requests_while_down": sum(
                    1
                    for r in ordered.requests
                    if self.timeline["down_start"] <= r.received_at < self.timeline["down_end"]
                ),
            },
            "drained": drained,
        }

    def _throughput(self) -> dict[str, Any]:
        """The same events queued for an ordered and an unordered target (both 50 ms), both pollers
        paused; then each lane alone, the ordered one first: deliveries per second until its last one.
        The unordered figure is the local stack's own ceiling (moto, worker processes) beside it."""
        sizes = self.sizes
        if sizes.throughput_events <= 0:
            return {}
        stack = self.stack
        assert stack is not None and stack.ordered_poller is not None and stack.poller is not None
        for target_id in (self.ids.steady, self.ids.baseline):
            self.receiver(target_id).behaviour = Behaviour(latency_seconds=RECEIVER_LATENCY_SECONDS)
        per_conversation = max(1, sizes.throughput_events // sizes.throughput_conversations)
        plan = {
            f"t{n:03d}-{uuid.uuid4().hex[:8]}": per_conversation
            for n in range(sizes.throughput_conversations)
        }
        # Queue everything first: each figure is its lane's alone (the pollers pause, then resume).
        stack.ordered_poller.pause()
        stack.poller.pause()
        self._send(self.ids.throughput, self.ids.throughput_secret, plan)
        sent = {c: self.conversations[c] for c in plan}
        ordered = self._drain_lane(stack.ordered_poller, self.ids.steady, sent)
        unordered = self._drain_lane(stack.poller, self.ids.baseline, sent)
        return {
            "conversations": len(plan),
            "events": per_conversation * len(plan),
            **ordered,
            "ordered_batch_size": stack.ordered_poller.source.batch_size,
            "ordered_maximum_concurrency": stack.ordered_poller.source.maximum_concurrency,
            "receiver_latency_ms": RECEIVER_LATENCY_SECONDS * 1000,
            "unordered_baseline": unordered,
        }

    def _drain_lane(self, poller: Any, target_id: str, sent: dict[str, list[str]]) -> dict[str, Any]:
        receiver = self.receiver(target_id)
        queued = sum(len(events) for events in sent.values())
        started = time.time()
        poller.resume()
        deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
        while len(_accepted(receiver)) < queued and time.monotonic() < deadline:
            time.sleep(0.05)  # not a wait: measuring until the last delivery arrives
        accepted = _accepted(receiver)
        finished = max((r.received_at for r in accepted), default=started)
        elapsed = max(finished - started, 1e-9)
        verdict = _verdict(receiver, sent, set())
        return {
            "delivered": len(accepted),
            "in_order": verdict["conversations_in_order"] == len(sent),
            "elapsed_s": round(elapsed, 2),
            "deliveries_per_s": round(len(accepted) / elapsed, 1),
        }

    # --- pieces ----------------------------------------------------------------------------------------
    def _send(self, integration_id: str, secret: str, plan: dict[str, int]) -> None:
        """Post each conversation's events one after another (each after the last one's 202),
        conversations side by side from SENDERS connections."""
        assert self.stack is not None
        url = self.stack.webhook_url(integration_id)
        names = list(plan)
        lock = threading.Lock()

        def send(mine: list[str]) -> None:
            with requests.Session() as session:
                for seq in range(max(plan.values())):
                    for conversation in mine:
                        if seq >= plan[conversation]:
                            continue
                        event_id, body = self._event(integration_id, conversation, seq)
                        headers = {
                            "Content-Type": "application/json",
                            "X-Hub-Signature-256": sign(body, secret),
                        }
                        status = 0
                        for _ in range(5):  # a 503 or 429 is retried, as Genesys retries
                            try:
                                status = session.post(url, data=body, headers=headers, timeout=30).status_code
                            except requests.RequestException:
                                status = 0
                            if status not in (0, 429, 503):
                                break
                        with lock:
                            if 200 <= status < 300:
                                self.conversations.setdefault(conversation, []).append(event_id)
                            else:
                                self.rejected[str(status)] += 1

        threads = [threading.Thread(target=send, args=(names[n::SENDERS],)) for n in range(SENDERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _event(self, integration_id: str, conversation: str, seq: int) -> tuple[str, bytes]:
        event: dict[str, Any] = json.loads(SAMPLE.read_text())
        event_id = uuid.uuid4().hex
        event["id"] = event["channel"]["messageId"] = event_id
        event["channel"]["id"] = integration_id
        event["channel"]["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        event["conversationId"] = conversation
        event["text"] = f"ordering-proof conversation {conversation} message {seq}"
        return event_id, json.dumps(event, separators=(",", ":")).encode()

    def _dead_letters(self) -> dict[str, set[str]]:
        """target id -> event ids in either dead-letter queue."""
        assert self.stack is not None and self.stack.resources is not None
        found: dict[str, set[str]] = {}
        for url in (
            self.stack.resources.dead_letter_queue_url,
            self.stack.resources.ordered_dead_letter_queue_url,
        ):
            while True:
                messages = self.stack.sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600, WaitTimeSeconds=0
                ).get("Messages", [])
                if not messages:
                    break
                for message in messages:
                    task = DeliveryTask.model_validate_json(message["Body"])
                    found.setdefault(task.target_id, set()).add(task.event_id)
        return found


def _accepted(receiver: Receiver) -> list[Any]:
    """Requests answered 2xx for the first time (a delivery, not a repeat), in arrival order."""
    return [r for r in receiver.requests if r.answered and 200 <= r.answered < 300 and not r.duplicate]


def _verdict(receiver: Receiver, sent: dict[str, list[str]], dead_lettered: set[str]) -> dict[str, Any]:
    """Per conversation, the sequence numbers in arrival order against the send order."""
    arrived: dict[str, list[int]] = {}
    delivered: set[str] = set()
    for request in _accepted(receiver):
        if (place := _place(request)) is None:
            continue
        conversation, seq = place
        arrived.setdefault(conversation, []).append(seq)
        delivered.add(str((request.event or {}).get("id")))
    in_order = out_of_order = 0
    inversions = 0
    not_in_order: dict[str, list[int]] = {}  # a few, to explain a failure: what arrived, in order
    trails: dict[str, list[dict[str, Any]]] = {}  # and every request of theirs, answered or not
    for conversation, event_ids in sent.items():
        seen = arrived.get(conversation, [])
        if seen == list(range(len(event_ids))):
            in_order += 1
        elif len(not_in_order) < 3:
            not_in_order[conversation] = seen
            trails[conversation] = _trail(receiver, conversation, event_ids)
        if any(later < earlier for earlier, later in zip(seen, seen[1:], strict=False)):
            out_of_order += 1
            inversions += sum(1 for earlier, later in zip(seen, seen[1:], strict=False) if later < earlier)
    expected = {event_id for event_ids in sent.values() for event_id in event_ids}
    return {
        "delivered": len(expected & delivered),
        "dead_lettered": len(expected & dead_lettered),
        "lost": len(expected - delivered - dead_lettered),
        "conversations_in_order": in_order,
        "conversations_out_of_order": out_of_order,
        "adjacent_inversions": inversions,
        "not_in_order_examples": not_in_order,
        "not_in_order_trails": trails,
        "requests": len(receiver.requests),
        "duplicates": sum(1 for r in receiver.requests if r.duplicate),
    }


def _place(request: Any) -> tuple[str, int] | None:
    """(conversation, sequence number) of a proof event the receiver got; None for anything else."""
    match = SEQUENCE.fullmatch(str((request.event or {}).get("text", "")))
    return (match[1], int(match[2])) if match else None


def _trail(receiver: Receiver, conversation: str, event_ids: list[str]) -> list[dict[str, Any]]:
    """Every request the receiver saw for one conversation, in arrival order: when, which message
    (its sequence number, and whether the intake's 202 for it came in that order), what was answered."""
    sent_as = {event_id: seq for seq, event_id in enumerate(event_ids)}
    trail: list[dict[str, Any]] = []
    for request in receiver.requests:
        place = _place(request)
        if place is None or place[0] != conversation:
            continue
        trail.append(
            {
                "seq": place[1],
                "sent_as": sent_as.get(str((request.event or {}).get("id"))),  # None: its 202 never came
                "arrived_at": round(request.arrived_at, 3),
                "answered_at": round(request.received_at, 3),
                "answered": request.answered,
                "duplicate": request.duplicate,
                "webhook_id": request.webhook_id,
                "port": request.client_port,
            }
        )
    return trail


def ok(summary: dict[str, Any], sizes: Sizes) -> bool:
    """What the issue requires of the proof."""
    ordered, control = summary["ordered"], summary["unordered_control"]
    return bool(
        summary["drained"]
        and summary["events_sent"] == sizes.events // sizes.conversations * sizes.conversations
        and ordered["conversations_in_order"] == summary["conversations"]
        and ordered["lost"] == 0
        and ordered["dead_lettered"] == 0
        and control["lost"] == 0
        and control["conversations_out_of_order"] > 0
        and (not summary["throughput"] or summary["throughput"]["in_order"])
    )


def run(workdir: Path, sizes: Sizes) -> dict[str, Any]:
    with OrderingRun(workdir, sizes) as proof:
        summary = proof.execute()
        real_stdout = proof.real_stdout
    summary = {"ok": ok(summary, sizes), **summary}
    summary["logs"] = {"functions": str(proof.function_log_path), "stack": str(proof.stack_log_path)}
    real_stdout.write(json.dumps(summary) + "\n")
    real_stdout.flush()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--conversations", type=int, default=CONVERSATIONS)
    parser.add_argument("--fault-rate", type=float, default=FAULT_RATE)
    parser.add_argument("--down-seconds", type=float, default=DOWN_SECONDS)
    parser.add_argument("--throughput-events", type=int, default=THROUGHPUT_EVENTS)
    parser.add_argument("--throughput-conversations", type=int, default=THROUGHPUT_CONVERSATIONS)
    parser.add_argument("--workdir", type=Path, default=None, help="where the fixtures and logs go")
    args = parser.parse_args()
    sizes = Sizes(
        args.events,
        args.conversations,
        args.fault_rate,
        args.down_seconds,
        args.throughput_events,
        args.throughput_conversations,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="relay-ordering-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return 0 if run(workdir, sizes)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
