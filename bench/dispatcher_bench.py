"""Dispatcher throughput: one dispatcher instance, in process, delivering to a real loopback receiver.

Prints one JSON object (last line of stdout). For each receiver latency (0, 50, 200 ms) and with
encryption off and on: deliveries per second, CPU seconds per delivery (this process only: the
receiver runs in a child process), breaker-table calls per batch; and the same workload through a
strictly sequential loop (DELIVERY_CONCURRENCY=1) as the baseline.

What is real and what is not: the delivery logic (relay.logic.dispatch), envelope, signing,
encryption, the HTTP adapter and the receiver are the real code over real loopback TCP, wired by
relay.wiring.dispatcher.build_dispatcher from a Settings object. The AWS parts are in-memory
stand-ins from relay.testing.fakes (InMemoryBreakerStore with DynamoDB's conditional semantics,
InMemoryTargets, InMemorySecrets, RecordingQueueOps, InMemoryAuditSink): moto is far slower than
DynamoDB/SQS and would measure moto, not the dispatcher. The records are schemaVersion 2 tasks with
``eventJson``, as the intake queues them.

    .venv/bin/python bench/dispatcher_bench.py [--quick]
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

BATCH_SIZE = 10
CONCURRENCY = 10
WARMUP_BATCHES = 2  # per mode, before measuring
SIGNING_SECRET = "whsec_YmVuY2gtc2lnbmluZy1zZWNyZXQtMDEyMzQ1Njc4OQ=="
ENCRYPTION_SECRET = "bench-encryption-secret"
EVENT = {
    "id": "b1d6c1a2-6c0a-4d7e-9e0c-2f7a5d8e1c01",
    "channel": {"id": "c7e2f0d4", "platform": "Open", "type": "Private", "messageId": "m-1"},
    "type": "Text",
    "text": "Hello from Genesys " * 20,
    "direction": "Outbound",
}
EVENT_JSON = json.dumps(EVENT, separators=(",", ":"))


def serve_receiver(latency: float) -> None:
    """Child-process mode: run a receiver, print its URL, stop when stdin closes."""
    from relay.local.receiver import Behaviour, Receiver

    receiver = Receiver(behaviour=Behaviour(latency_seconds=latency))
    print(receiver.start(), flush=True)
    sys.stdin.read()
    receiver.stop()


@contextlib.contextmanager
def receiver_process(latency: float) -> Iterator[str]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-receiver", str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


def make_records(target_id: str, count: int) -> list[dict[str, Any]]:
    records = []
    for _ in range(count):
        body = {
            "schemaVersion": 2,
            "deliveryId": str(uuid.uuid4()),
            "integrationId": "bench-integration",
            "targetId": target_id,
            "eventId": EVENT["id"],
            "eventSource": "open-messaging",
            "receivedAt": datetime.now(UTC).isoformat(),
            "eventJson": EVENT_JSON,  # the event's text, as the intake queues it (relay.models.delivery)
        }
        records.append(
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "bench",
                "body": json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
            }
        )
    return records


def make_dispatcher(
    url: str, *, encrypted: bool, concurrency: int, serial_budget_ms: float | None = None
) -> tuple[Any, Any, Any]:
    from relay.models.secrets import RotatingSecret
    from relay.models.targets import SecurityType, Target, TargetSecurity
    from relay.settings import Settings
    from relay.testing.fakes import (
        InMemoryAuditSink,
        InMemoryBreakerStore,
        InMemoryRateLimitStore,
        InMemorySecrets,
        InMemoryTargets,
        RecordingQueueOps,
    )
    from relay.wiring.dispatcher import build_dispatcher

    settings = Settings.model_validate(
        {
            "DELIVERY_CONCURRENCY": str(concurrency),
            "PER_TARGET_CONCURRENCY": str(concurrency),
            "RELAY_ALLOW_LOOPBACK_TARGETS": "true",
            "TARGETS_TABLE": "bench",
            "BREAKER_TABLE": "bench",
            "DELIVERY_QUEUE_URL": "bench",
            "DEAD_LETTER_QUEUE_URL": "bench",
        }
        | ({} if serial_budget_ms is None else {"SERIAL_BUDGET_MS": str(serial_budget_ms)})
    )
    target = Target(
        integration_id="bench-integration",
        target_id="bench-target",
        name="bench",
        url=f"{url}/hooks/bench",
        headers={"X-Team": "bench"},
        security=TargetSecurity(type=SecurityType.BEARER, secret_name="auth"),
        signing_secret_name="signing",
        encryption_key_name="encryption" if encrypted else None,
    )
    secrets = InMemorySecrets(
        {
            "auth": RotatingSecret(current="bench-bearer-token"),
            "signing": RotatingSecret(current=SIGNING_SECRET),
            "encryption": RotatingSecret(current=ENCRYPTION_SECRET, key_id="k1", salt="5a" * 16),
        }
    )
    breakers = InMemoryBreakerStore()
    queue = RecordingQueueOps()
    dispatcher = build_dispatcher(
        settings,
        targets=InMemoryTargets(target),
        queue=queue,
        breakers=breakers,
        rate_limits=InMemoryRateLimitStore(),
        audit=InMemoryAuditSink(),
        secrets=secrets,
    )
    dispatcher.handle_batch(make_records("bench-target", BATCH_SIZE))  # warm: connections, scrypt
    return dispatcher, breakers, queue


class Mode(NamedTuple):
    encrypted: bool
    concurrency: int
    serial_budget_ms: float | None = None  # None: the dispatcher's default; 0: all threads from the start


class Run(NamedTuple):
    mode: Mode
    dispatcher: Any
    breakers: Any
    queue: Any


def run_scenarios(url: str, *, latency: float, modes: list[Mode], batches: int) -> list[dict[str, Any]]:
    """Each mode gets its own dispatcher; their batches alternate, so drift in a shared, busy machine
    affects every mode alike."""
    runs = [
        Run(
            mode,
            *make_dispatcher(
                url,
                encrypted=mode.encrypted,
                concurrency=mode.concurrency,
                serial_budget_ms=mode.serial_budget_ms,
            ),
        )
        for mode in modes
    ]
    totals = [{"wall": 0.0, "cpu": 0.0, "failures": 0, "batches": 0, "log_bytes": 0} for _ in runs]
    for run in runs:
        # Not measured: a warm container's state (open connections, first-use caches); a cold start's
        # cost is the init's, not the deliveries'.
        for _ in range(WARMUP_BATCHES):
            run.dispatcher.handle_batch(make_records("bench-target", BATCH_SIZE))
    reads_before = [run.breakers.reads for run in runs]
    writes_before = [run.breakers.writes for run in runs]
    try:
        for round_number in range(batches):
            for index, run in enumerate(runs):
                if run.mode.concurrency == 1 and latency and round_number % 5:
                    continue  # the sequential baseline is slow: a fifth of the batches suffices
                records = make_records("bench-target", BATCH_SIZE)
                logged = log_bytes()
                wall0, cpu0 = time.perf_counter(), time.process_time()
                failures = len(run.dispatcher.handle_batch(records)["batchItemFailures"])
                totals[index]["wall"] += time.perf_counter() - wall0
                totals[index]["cpu"] += time.process_time() - cpu0
                totals[index]["log_bytes"] += log_bytes() - logged
                totals[index]["failures"] += failures
                totals[index]["batches"] += 1
    finally:
        for run in runs:
            run.dispatcher.close()
    results = []
    for index, (mode, _, breakers, queue) in enumerate(runs):
        done = int(totals[index]["batches"])
        deliveries = done * BATCH_SIZE
        results.append(
            {
                "latency_ms": int(latency * 1000),
                "encryption": mode.encrypted,
                "concurrency": mode.concurrency,
                "threads_from_the_start": mode.serial_budget_ms == 0,
                "deliveries": deliveries,
                "failures": totals[index]["failures"],
                "deliveries_per_second": round(deliveries / totals[index]["wall"], 1),
                "cpu_ms_per_delivery": round(totals[index]["cpu"] * 1000 / deliveries, 3),
                "log_bytes_per_delivery": round(totals[index]["log_bytes"] / deliveries, 1),
                "breaker_reads_per_batch": (breakers.reads - reads_before[index]) / done,
                "breaker_writes_per_batch": (breakers.writes - writes_before[index]) / done,
                "sqs_calls_per_batch": sqs_calls(queue) / (done + 1),
                "ideal_deliveries_per_second": round(mode.concurrency / latency, 1) if latency else None,
            }
        )
    return results


def sqs_calls(queue: Any) -> int:
    """ChangeMessageVisibility and SendMessage calls the dispatcher asked for (relay.testing's recorder)."""
    return len(queue.retries) + len(queue.deferrals) + len(queue.dead_letters)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[Any]:
    """The relay logs and prints EMF to stdout (as in Lambda, where CloudWatch Logs ingests and bills
    it): send it to a scratch file, whose size ``log_bytes()`` reads, and keep stdout for our JSON."""
    saved = os.dup(1)
    scratch = tempfile.TemporaryFile()
    sys.stdout.flush()
    os.dup2(scratch.fileno(), 1)
    try:
        yield os.fdopen(os.dup(saved), "w")
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        scratch.close()
        os.close(saved)


def log_bytes() -> int:
    """Bytes written to stdout so far (inside ``quiet_stdout``): log lines and EMF records."""
    sys.stdout.flush()
    return os.fstat(1).st_size


def main(quick: bool) -> dict[str, Any]:
    scale = 0.3 if quick else 1.0
    load_before = list(os.getloadavg())  # 2 shared cores: say how busy the machine was
    # Enough batches per scenario for a few seconds of work each.
    batches_for = {0.0: int(60 * scale) or 1, 0.05: int(30 * scale) or 1, 0.2: int(15 * scale) or 1}
    scenarios: list[dict[str, Any]] = []
    sequential: list[dict[str, Any]] = []
    all_threads: list[dict[str, Any]] = []
    for latency, batches in batches_for.items():
        with receiver_process(latency) as url:
            results = run_scenarios(
                url,
                latency=latency,
                # The last mode is the pool as before issue 11's runners: all threads from the start.
                modes=[
                    Mode(False, CONCURRENCY),
                    Mode(True, CONCURRENCY),
                    Mode(False, 1),
                    Mode(False, CONCURRENCY, serial_budget_ms=0),
                ],
                batches=batches,
            )
        scenarios.extend(
            r for r in results if r["concurrency"] == CONCURRENCY and not r["threads_from_the_start"]
        )
        sequential.extend(r for r in results if r["concurrency"] == 1)
        all_threads.extend(r for r in results if r["threads_from_the_start"])

    def pick(latency_ms: int, encrypted: bool) -> dict[str, Any]:
        return next(s for s in scenarios if s["latency_ms"] == latency_ms and s["encryption"] is encrypted)

    at_200 = pick(200, False)
    at_0 = pick(0, False)
    slowdowns = {
        f"{ms}ms": round(
            1 - pick(ms, True)["deliveries_per_second"] / pick(ms, False)["deliveries_per_second"], 3
        )
        for ms in (0, 50, 200)
    }
    return {
        "what": "one dispatcher instance in process; real HTTP to a loopback receiver in a child process",
        "aws": "in-memory stand-ins (InMemoryBreakerStore with conditional semantics, dict targets/secrets, "
        "list queue ops, InMemoryAuditSink); not moto",
        "load_average_before_after": [load_before, list(os.getloadavg())],
        "batch_size": BATCH_SIZE,
        "warmup_batches_per_mode": WARMUP_BATCHES,
        "delivery_concurrency": CONCURRENCY,
        "scenarios": scenarios,
        "sequential_baseline": sequential,
        "all_threads_from_the_start_baseline": all_threads,
        "target_cpu_at_most_0_6_ms_per_delivery_at_0ms": {
            "cpu_ms_per_delivery": at_0["cpu_ms_per_delivery"],
            "all_threads_from_the_start": next(r for r in all_threads if r["latency_ms"] == 0)[
                "cpu_ms_per_delivery"
            ],
            "deliveries_per_second": at_0["deliveries_per_second"],
            "holds": at_0["cpu_ms_per_delivery"] <= 0.6 and at_0["deliveries_per_second"] > 1000,
        },
        "speedup_vs_sequential": {
            f"{s['latency_ms']}ms": round(
                pick(s["latency_ms"], False)["deliveries_per_second"] / s["deliveries_per_second"], 1
            )
            for s in sequential
        },
        "target_200ms_within_90pct_of_ideal": {
            "ideal": at_200["ideal_deliveries_per_second"],
            "measured": at_200["deliveries_per_second"],
            "ratio": round(at_200["deliveries_per_second"] / at_200["ideal_deliveries_per_second"], 3),
            "holds": at_200["deliveries_per_second"] >= 0.9 * at_200["ideal_deliveries_per_second"],
        },
        "encryption_slowdown": slowdowns,
        "target_encryption_at_most_10pct_slower": {"holds": all(v <= 0.10 for v in slowdowns.values())},
        "dynamodb_calls_per_batch_closed_breaker": {
            "breaker_get_item": at_200["breaker_reads_per_batch"],
            "breaker_update_item": at_200["breaker_writes_per_batch"],
            "targets_query": 0,
            "note": "targets are cached per container (TARGET_CACHE_TTL_SECONDS): no Query per batch",
        },
    }


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-receiver":
        serve_receiver(float(sys.argv[2]))
        sys.exit(0)
    with quiet_stdout() as out:
        figures = main(quick="--quick" in sys.argv)
        out.write(json.dumps(figures) + "\n")
        out.flush()
