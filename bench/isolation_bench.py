"""``make bench`` (isolation): one slow receiver must not slow the others (issue 11, points 1 and 2).

Each scenario runs in a fresh local stack with the template's concurrency settings (both lanes:
BatchSize 10, MaximumConcurrency 5, DeliveryConcurrency 10, PerTargetConcurrency 10; batching window
0 in the fast lane, 1 s in the slow lane; timeouts 3 + 10 s; SlowTargetMs 1000), both dispatchers in
worker processes started and invoked once before the clock (warm containers: a cold start costs the
same with or without isolation). Two integrations, one target each, half the traffic each:

    healthy   answers in 50 ms
    slow      variant "slow_2s": answers (successfully) in 2 s
              variant "timeout": answers in 2 s, but the first try of one delivery in five hangs past
              the read timeout (10 s) and its retry is answered

Tasks go onto the queue the intake queues them on (one DeliveryTask message per event and target, the
contract in docs/architecture.md; the FIFO first hop with the template's default
IntakeDeduplication=queue, each task its own message group, deduplicated on its delivery id): the
in-process intake (one container, tens of events per second here) would otherwise be what is
measured; its latency is ``latency_bench``'s subject.

Two loads, each for ``--seconds``:

    steady       ``--rate`` tasks per second per target (20): a live-chat stream the healthy target
                 and the slow lane can carry. Throughput is deliveries per second over the window;
                 ``wait_ms`` is each delivery's wait from being queued to its first byte at the
                 receiver (what a customer waits for).
    saturation   closed loop, at most ``--outstanding`` tasks per target queued or in flight (40), a
                 new one as soon as one is delivered: the most each target can get. Locally the fast
                 lane is then bound by moto (one receive at a time, each scanning the queue) and the
                 shared cores, not by its invocations; see docs/dispatcher.md.

Scenarios: the healthy target alone (its solo figure); per variant the slow target alone with
isolation off (the relay before the slow lane: the attempts each record needs alone), both targets
with isolation off (ISOLATE_SLOW_TARGETS=false: today's figure, the baseline) and with isolation on
(the default). For the isolated run also when the slow target moved to the slow lane and the healthy
target's figures from then on (steady state). For the slow target, once the load stopped and the
stack settled: tasks delivered, dead-lettered and lost (neither, counted from what its receiver got
and what the DLQ holds), and the attempts each record used against what it needs alone (the hanging
first tries are chosen by webhook-id, so each record needs exactly 1 attempt, or 2). The issue's own
measurement (171 -> 2.5 deliveries/s, 1.5 %, one dispatcher instance in process) is kept beside.

    .venv/bin/python bench/isolation_bench.py [--seconds S] [--rate R] [--outstanding N]
        [--variants slow_2s timeout] [--saturation slow_2s]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from relay.local.latency import summary
from relay.local.receiver import Behaviour, Receiver, hangs_first_try
from relay.local.stack import LocalStack
from relay.models.breaker import DeliveryLane, target_key
from relay.models.delivery import DeliveryTask
from relay.wiring import breaker_store

HEALTHY = ("6685901b-6d0e-43db-95ff-d64406e9dce2", "11111111-1111-4111-8111-111111111111")
SLOW = ("7796a12c-7e1f-44ec-86aa-e75517fa0df3", "22222222-2222-4222-8222-222222222222")
HEALTHY_SECONDS = 0.05
SLOW_SECONDS = 2.0
HANG_RATE = 0.2
SETTLE_SECONDS = 300.0
EVENT_JSON = json.dumps(
    {
        "id": "bench",
        "channel": {"id": "c-1", "platform": "Open", "type": "Private", "messageId": "m-1"},
        "type": "Text",
        "text": "Hello from Genesys " * 20,
        "direction": "Outbound",
    },
    separators=(",", ":"),
)
ISSUE_FIGURES = {
    "source": "issue 11: one dispatcher instance (build_dispatcher), batches of 10, in-batch concurrency 10",
    "healthy_solo_per_second": 171,
    "healthy_beside_2s_target_per_second": 2.5,
    "ratio": 0.015,
}
VARIANTS = {
    "slow_2s": Behaviour(latency_seconds=SLOW_SECONDS),
    "timeout": Behaviour(latency_seconds=SLOW_SECONDS, first_try_hang_rate=HANG_RATE),
}


def fixtures(*targets: tuple[str, str]) -> dict[str, Any]:
    names = {HEALTHY: "healthy", SLOW: "slow"}
    return {
        "integrations": [
            {
                "id": integration_id,
                "name": f"Bench {names[(integration_id, target_id)]}",
                "signatureSecret": f"bench-signature-secret-{names[(integration_id, target_id)]}",
                "targets": [
                    {
                        "id": target_id,
                        "name": names[(integration_id, target_id)],
                        "url": f"http://127.0.0.1:0/hooks/{names[(integration_id, target_id)]}",
                    }
                ],
            }
            for integration_id, target_id in targets
        ]
    }


@contextmanager
def local_stack(
    workdir: Path, log: IO[str], scenario: Scenario, *targets: tuple[str, str]
) -> Iterator[LocalStack]:
    path = workdir / f"fixtures-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(fixtures(*targets)))
    slow = scenario.slow
    environment = {"ISOLATE_SLOW_TARGETS": "true" if scenario.isolate else "false"}
    parameters = {"IntakeDeduplication": scenario.deduplication}
    with LocalStack(
        path, dispatcher_workers=True, function_output=log, environment=environment, parameters=parameters
    ) as stack:
        if HEALTHY[1] in stack.receivers:
            stack.receivers[HEALTHY[1]].receiver.behaviour = Behaviour(latency_seconds=HEALTHY_SECONDS)
        if SLOW[1] in stack.receivers and slow is not None:
            stack.receivers[SLOW[1]].receiver.behaviour = Behaviour(
                latency_seconds=slow.latency_seconds, first_try_hang_rate=slow.first_try_hang_rate
            )
        stack.warm_up_dispatchers(slow_lane=True)
        yield stack


@dataclass
class Load:
    """Queues one target's tasks until stopped: open loop at ``rate`` tasks per second, or closed loop
    with at most ``outstanding`` queued or in flight (a new one as soon as one is delivered)."""

    stack: LocalStack
    target: tuple[str, str]
    rate: float | None = None
    outstanding: int | None = None
    queued_at: dict[str, float] = field(default_factory=dict)  # deliveryId -> when it was queued
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def receiver(self) -> Receiver:
        return self.stack.receivers[self.target[1]].receiver

    @property
    def sent(self) -> int:
        return len(self.queued_at)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"load-{self.target[1][:4]}", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            if self.rate is not None:
                due = int((time.monotonic() - started) * self.rate) + 1 - self.sent
            else:
                assert self.outstanding is not None
                due = self.outstanding - (self.sent - self.receiver.unique_delivery_count)
            if due < (1 if self.rate is not None else 10):
                self.stop.wait(0.005)  # a load generator's pace, not a test's synchronisation
                continue
            self._queue(min(due, 10))

    def _queue(self, count: int) -> None:
        assert self.stack.resources is not None
        bodies = {str(uuid.uuid4()): i for i in range(count)}
        entries = [{"Id": str(i), "MessageBody": task(self.target, d)} for d, i in bodies.items()]
        # Where the intake would put them: the first hop (its own group, deduplicated on the delivery
        # id) with the template's default IntakeDeduplication=queue, else the DeliveryQueue.
        queue_url = self.stack.resources.delivery_queue_url
        if self.stack.environment.get("FIRST_HOP_QUEUE_URL"):
            queue_url = self.stack.resources.first_hop_queue_url
            for entry, delivery_id in zip(entries, bodies, strict=True):
                entry.update(MessageGroupId=delivery_id, MessageDeduplicationId=delivery_id)
        self.stack.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        now = time.time()
        self.queued_at.update(dict.fromkeys(bodies, now))


def task(target: tuple[str, str], delivery_id: str) -> str:
    """One DeliveryTask message body, as the intake queues it (docs/architecture.md)."""
    return DeliveryTask(
        delivery_id=uuid.UUID(delivery_id),
        integration_id=target[0],
        target_id=target[1],
        event_id=uuid.uuid4().hex,
        received_at=datetime.now(UTC),
        event_json=EVENT_JSON,
    ).model_dump_json(by_alias=True, exclude_none=True)


def first_arrivals(receiver: Receiver) -> dict[str, float]:
    """webhook-id (deliveryId) -> when its first 2xx-answered request arrived."""
    first: dict[str, float] = {}
    for request in receiver.deliveries:
        if request.webhook_id and request.webhook_id not in first:
            first[request.webhook_id] = request.arrived_at
    return first


def delivered(load: Load, start: float, end: float) -> dict[str, Any]:
    """The target's deliveries that arrived in [start, end): how many per second, and how long each
    waited from being queued to its first byte at the receiver (the customer's wait)."""
    arrived = {d: t for d, t in first_arrivals(load.receiver).items() if start <= t < end}
    waits = [(t - load.queued_at[d]) * 1000 for d, t in arrived.items() if d in load.queued_at]
    return {
        "delivered": len(arrived),
        "seconds": round(end - start, 1),
        "per_second": round(len(arrived) / (end - start), 1),
        "wait_ms": summary(waits),
    }


def dead_lettered(stack: LocalStack) -> set[str]:
    """deliveryIds of every DeliveryTask in the DLQ."""
    assert stack.resources is not None
    found: set[str] = set()
    while messages := stack.sqs.receive_message(
        QueueUrl=stack.resources.dead_letter_queue_url, MaxNumberOfMessages=10, VisibilityTimeout=300
    ).get("Messages", []):
        found |= {str(DeliveryTask.model_validate_json(m["Body"]).delivery_id) for m in messages}
    return found


def slow_outcome(stack: LocalStack, load: Load, behaviour: Behaviour) -> dict[str, Any]:
    """The slow target's tasks once everything settled: delivered, dead-lettered, lost, attempts."""
    settled = stack.wait_settled(SETTLE_SECONDS)
    attempts = Counter(r.webhook_id for r in load.receiver.requests if r.webhook_id)
    got = load.receiver.unique_delivery_ids
    dead = dead_lettered(stack)
    # Alone, each record needs one attempt, or two when its first try is one of those that hang.
    needed = {w: 1 + int(hangs_first_try(w, behaviour.first_try_hang_rate)) for w in attempts}
    return {
        "settled": settled,
        "tasks": load.sent,
        "delivered": len(got),
        "dead_lettered": len(dead),
        "lost": len(set(load.queued_at) - got - dead),
        "attempts_per_record": dict(sorted(Counter(attempts.values()).items())),
        "records_with_more_attempts_than_alone": sum(1 for w, n in attempts.items() if n > needed[w]),
        "duplicates": sum(1 for r in load.receiver.deliveries if r.duplicate),
    }


def moved_at(stack: LocalStack) -> float | None:
    """When the slow target's lane was written slow, if it is there."""
    assert stack.settings is not None
    _, lane = breaker_store(stack.settings).load_with_lane(target_key(*SLOW))
    return lane.changed_at if lane.lane is DeliveryLane.SLOW else None


@dataclass(frozen=True)
class Scenario:
    isolate: bool
    healthy: bool
    slow: Behaviour | None
    rate: float | None  # open loop, tasks per second per target
    outstanding: int | None = None  # closed loop
    deduplication: str = "queue"  # IntakeDeduplication: where the tasks go (the first hop by default)


def run(workdir: Path, log: IO[str], scenario: Scenario, seconds: float) -> dict[str, Any]:
    targets = ([HEALTHY] if scenario.healthy else []) + ([SLOW] if scenario.slow is not None else [])
    with local_stack(workdir, log, scenario, *targets) as stack:
        loads = {t: Load(stack, t, rate=scenario.rate, outstanding=scenario.outstanding) for t in targets}
        started = time.time()
        for load in loads.values():
            load.start()
        time.sleep(seconds)  # the measurement window
        ended = time.time()
        for load in loads.values():
            load.finish()
        figures: dict[str, Any] = {}
        if scenario.healthy:
            figures["healthy"] = delivered(loads[HEALTHY], started, ended)
            moved = moved_at(stack) if scenario.slow is not None and scenario.isolate else None
            if moved is not None:
                figures["moved_to_slow_lane_after_s"] = round(moved - started, 2)
                figures["healthy_after_move"] = delivered(loads[HEALTHY], moved, ended)
        if scenario.slow is not None:
            figures["slow"] = delivered(loads[SLOW], started, ended)
            figures["slow_tasks"] = slow_outcome(stack, loads[SLOW], scenario.slow)
            figures["slow_lane_records"] = stack.slow_poller.stats().records if stack.slow_poller else 0
        return figures


def ratio(part: dict[str, Any], whole: dict[str, Any]) -> float:
    return round(part["per_second"] / whole["per_second"], 3) if whole["per_second"] else 0.0


def compare(
    name: str,
    workdir: Path,
    log: IO[str],
    args: argparse.Namespace,
    solo: dict[str, Any],
    *,
    rate: float | None,
    outstanding: int | None,
) -> dict[str, Any]:
    """Slow alone (steady only), baseline and isolated for one variant and one load."""
    behaviour = VARIANTS[name]
    figures: dict[str, Any] = {}
    if rate is not None:
        figures["slow_alone"] = run(
            workdir,
            log,
            Scenario(False, False, behaviour, rate, deduplication=args.deduplication),
            args.seconds,
        )
    for label, isolate in (("baseline_isolation_off", False), ("isolation_on", True)):
        result = run(
            workdir,
            log,
            Scenario(isolate, True, behaviour, rate, outstanding, deduplication=args.deduplication),
            args.seconds,
        )
        result["healthy_ratio_to_solo"] = ratio(result["healthy"], solo)
        if "healthy_after_move" in result:
            result["healthy_after_move_ratio_to_solo"] = ratio(result["healthy_after_move"], solo)
        figures[label] = result
    return figures


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="slow-target isolation in the local stack")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window per run")
    parser.add_argument("--rate", type=float, default=20.0, help="steady load: tasks per second per target")
    parser.add_argument("--outstanding", type=int, default=40, help="saturation: tasks in flight per target")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--saturation", nargs="*", default=["slow_2s"], choices=list(VARIANTS))
    parser.add_argument(
        "--deduplication",
        choices=("queue", "table"),
        default="queue",
        help="IntakeDeduplication: tasks on the first hop (default) or on the DeliveryQueue",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="relay-isolation-bench-"))
    log = (workdir / "functions.log").open("w", encoding="utf-8")
    started = time.time()
    solo = run(
        workdir, log, Scenario(True, True, None, args.rate, deduplication=args.deduplication), args.seconds
    )["healthy"]
    results: dict[str, Any] = {"steady": {"healthy_alone": solo}}
    for name in args.variants:
        figures = compare(name, workdir, log, args, solo, rate=args.rate, outstanding=None)
        isolated, alone = figures["isolation_on"], figures["slow_alone"]["slow_tasks"]
        tasks = isolated["slow_tasks"]
        figures["targets"] = {
            "healthy_keeps_80pct_of_solo": isolated["healthy_ratio_to_solo"] >= 0.8,
            "slow_loses_nothing": tasks["lost"] == 0 and tasks["settled"],
            "slow_uses_no_more_attempts_than_alone": tasks["records_with_more_attempts_than_alone"] == 0
            and alone["records_with_more_attempts_than_alone"] == 0,
        }
        results["steady"][name] = figures
    if args.saturation:
        solo = run(
            workdir,
            log,
            Scenario(True, True, None, None, args.outstanding, deduplication=args.deduplication),
            args.seconds,
        )["healthy"]
        results["saturation"] = {"healthy_alone": solo}
        for name in args.saturation:
            results["saturation"][name] = compare(
                name, workdir, log, args, solo, rate=None, outstanding=args.outstanding
            )
    results["issue_baseline"] = ISSUE_FIGURES
    results["settings"] = {
        "seconds_per_run": args.seconds,
        "intake_deduplication": args.deduplication,
        "steady_rate_per_target": args.rate,
        "saturation_outstanding_per_target": args.outstanding,
        "healthy_latency_s": HEALTHY_SECONDS,
        "slow_latency_s": SLOW_SECONDS,
        "timeout_variant_first_try_hang_rate": HANG_RATE,
        "template": "BatchSize 10, window 0, MaximumConcurrency 5 per lane, DeliveryConcurrency 10, "
        "PerTargetConcurrency 10, timeouts 3 + 10 s, SlowTargetMs 1000",
        "function_log": str(workdir / "functions.log"),
    }
    results["bench_run_seconds"] = round(time.time() - started, 1)
    results["machine_load_average"] = [round(x, 2) for x in os.getloadavg()]
    return results


if __name__ == "__main__":
    from json_line import run_and_print  # bench/, beside this script

    run_and_print("isolation-bench", main)
