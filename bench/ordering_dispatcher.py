"""The ordered path's own throughput: ordered dispatchers in process, delivering to a real loopback
receiver that answers after 50 ms, without moto (which would measure moto: the local stack's figure in
bench/ordering.py is its ceiling, not the dispatcher's).

``CONVERSATIONS`` conversations of ``EVENTS // CONVERSATIONS`` events each are queued in a stand-in of
the FIFO queue that keeps SQS's rules (a group's messages in order, none of a group while one is in
flight); ``CONCURRENCY`` invocations (the template's OrderedDispatcherMaximumConcurrency), each its
own container (Dispatcher), take batches of up to 10. How SQS fills a batch is not specified beyond
"as many messages of the same group as possible" first, so two batch shapes are measured:

- ``same_group_first``: a batch takes one conversation's next messages (up to 10), then the next
  conversation's: the worst case for the ordered path, whose records of one conversation go one
  after another;
- ``interleaved``: one message from each of ten conversations: the best case.

Real: the dispatcher (relay.logic.dispatch, its ordered path), envelope, signing, HTTP adapter,
receiver, loopback TCP. In-memory (relay.testing.fakes): targets, secrets, breaker and rate-limit
stores, the attempts table, the queue operations.

    .venv/bin/python -m bench.ordering_dispatcher
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

from relay.local.receiver import Behaviour, Receiver
from relay.models.secrets import RotatingSecret
from relay.models.targets import Ordering, Target
from relay.settings import Settings
from relay.testing.fakes import (
    InMemoryAttemptCounter,
    InMemoryAuditSink,
    InMemoryBreakerStore,
    InMemoryRateLimitStore,
    InMemorySecrets,
    InMemoryTargets,
    RecordingOrderedQueueOps,
    RecordingQueueOps,
)
from relay.wiring.dispatcher import build_dispatcher

EVENTS = 1_000
CONVERSATIONS = 50
CONCURRENCY = 5
BATCH_SIZE = 10
LATENCY_SECONDS = 0.05
SIGNING_SECRET = "whsec_YmVuY2gtc2lnbmluZy1zZWNyZXQtMDEyMzQ1Njc4OQ=="


def record(conversation: str, seq: int) -> dict[str, Any]:
    body = {
        "schemaVersion": 2,
        "deliveryId": str(uuid.uuid4()),
        "integrationId": "bench-integration",
        "targetId": "bench-target",
        "eventId": f"{conversation}-{seq}",
        "eventSource": "open-messaging",
        "receivedAt": datetime.now(UTC).isoformat(),
        "eventJson": json.dumps({"id": f"{conversation}-{seq}", "conversationId": conversation, "seq": seq}),
    }
    message_id = str(uuid.uuid4())
    return {
        "messageId": message_id,
        "receiptHandle": message_id,
        "body": json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1", "MessageGroupId": conversation},
        "messageAttributes": {},
    }


class FifoStandIn:
    """Each conversation's messages in order; a batch never takes a group that is in flight."""

    def __init__(self, conversations: int, per_conversation: int, shape: str) -> None:
        self.groups = {
            f"c{n:03d}": deque(record(f"c{n:03d}", seq) for seq in range(per_conversation))
            for n in range(conversations)
        }
        self.shape = shape
        self.in_flight: set[str] = set()
        self.lock = threading.Lock()

    def take(self) -> list[dict[str, Any]]:
        with self.lock:
            free = [g for g, messages in self.groups.items() if messages and g not in self.in_flight]
            batch: list[dict[str, Any]] = []
            if self.shape == "same_group_first":
                for group in free:
                    while self.groups[group] and len(batch) < BATCH_SIZE:
                        batch.append(self.groups[group].popleft())
                    self.in_flight.add(group)
                    if len(batch) == BATCH_SIZE:
                        break
            else:
                for group in free[:BATCH_SIZE]:
                    batch.append(self.groups[group].popleft())
                    self.in_flight.add(group)
            return batch

    def done(self, batch: list[dict[str, Any]], failed: set[str]) -> None:
        with self.lock:
            for message in reversed(batch):  # failed ones go back to the head of their group, in order
                group = message["attributes"]["MessageGroupId"]
                if message["messageId"] in failed:
                    self.groups[group].appendleft(message)
            for message in batch:
                self.in_flight.discard(message["attributes"]["MessageGroupId"])

    def empty(self) -> bool:
        with self.lock:
            return not any(self.groups.values()) and not self.in_flight


def dispatcher(url: str) -> Any:
    settings = Settings.model_validate(
        {
            "RELAY_ALLOW_LOOPBACK_TARGETS": "true",
            "TARGETS_TABLE": "bench",
            "BREAKER_TABLE": "bench",
            "ORDERED_QUEUE_URL": "bench.fifo",
            "ORDERED_DEAD_LETTER_QUEUE_URL": "bench-dlq.fifo",
            "ORDERED_ATTEMPTS_TABLE": "bench",
        }
    )
    target = Target(
        integration_id="bench-integration",
        target_id="bench-target",
        name="bench",
        url=f"{url}/hooks/bench",
        signing_secret_name="signing",
        ordering=Ordering.CONVERSATION,
    )
    return build_dispatcher(
        settings,
        targets=InMemoryTargets(target),
        queue=RecordingQueueOps(),
        breakers=InMemoryBreakerStore(),
        rate_limits=InMemoryRateLimitStore(),
        audit=InMemoryAuditSink(),
        secrets=InMemorySecrets({"signing": RotatingSecret(current=SIGNING_SECRET)}),
        ordered_queue=RecordingOrderedQueueOps(),
        attempts=InMemoryAttemptCounter(),
    )


def measure(shape: str) -> dict[str, Any]:
    receiver = Receiver(behaviour=Behaviour(latency_seconds=LATENCY_SECONDS))
    url = receiver.start()
    try:
        return _measure(url, receiver, shape)
    finally:
        receiver.stop()


def _measure(url: str, receiver: Receiver, shape: str) -> dict[str, Any]:
    queue = FifoStandIn(CONVERSATIONS, EVENTS // CONVERSATIONS, shape)
    containers = [dispatcher(url) for _ in range(CONCURRENCY)]
    for container in containers:  # warm: connections
        container.handle_batch([record("warm", 0)])
    batch_sizes: list[int] = []

    def invocations(container: Any) -> None:
        while not queue.empty():
            batch = queue.take()
            if not batch:
                time.sleep(0.001)  # not a wait: every group is in flight, as a poller finds it
                continue
            batch_sizes.append(len(batch))
            response = container.handle_batch(batch)
            queue.done(batch, {item["itemIdentifier"] for item in response["batchItemFailures"]})

    started = time.perf_counter()
    threads = [threading.Thread(target=invocations, args=(c,)) for c in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for container in containers:
        container.close()
    arrived: dict[str, list[int]] = {}
    requests = [r for r in receiver.requests if (r.event or {}).get("conversationId") != "warm"]
    for request in requests:
        event = request.event or {}
        arrived.setdefault(str(event.get("conversationId")), []).append(int(event.get("seq", -1)))
    per = EVENTS // CONVERSATIONS
    return {
        "deliveries": len(requests),
        "in_order": all(arrived.get(f"c{n:03d}") == list(range(per)) for n in range(CONVERSATIONS)),
        "elapsed_s": round(elapsed, 2),
        "deliveries_per_s": round(len(requests) / elapsed, 1),
        "mean_batch_size": round(sum(batch_sizes) / len(batch_sizes), 1),
    }


def main() -> dict[str, Any]:
    return {
        "events": EVENTS,
        "conversations": CONVERSATIONS,
        "receiver_latency_ms": LATENCY_SECONDS * 1000,
        "concurrent_invocations": CONCURRENCY,
        "batch_size": BATCH_SIZE,
        "same_group_first": measure("same_group_first"),
        "interleaved": measure("interleaved"),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
