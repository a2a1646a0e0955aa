"""``make bench`` (latency): what the relay adds to a live-chat message, and what the batching window
trades for it (issue 11, point 3).

The local stack with the demo's fixtures (one integration, two targets) and the template's settings:
``first_hop``, the default (first attempts on the FIFO first hop, which takes no batching window), then
the DeliveryQueue as the first attempts' queue (``IntakeDeduplication=table``) with the dispatcher's
batching window as the variable: 0 and 1 s (the default before issue 11); the dispatchers in worker
processes, MaximumConcurrency of them, warm before the clock (as under steady traffic: each started,
invoked once, and past 30 warm-up events; ``relay local demo`` runs the fast lane in process and
counts its cold start).
Signed sample events go through the intake at 10 per second (``--rate``), ``--events`` of them per
window. Per delivery (relay.local.latency):

    relay_added   the intake's 202 back at the sender -> the request's first byte at the receiver
    queue         202 -> the event source received the task (SQS, here moto, and the long poll;
                  negative when the dispatcher had it before the sender had its 202)
    dispatch      received -> first byte (invoke, breaker read, envelope, connect, send)
    intake        POST -> 202 at the sender (includes the local API adapter)
    relay_own     POST -> first byte, less the queue's wait after the 202: intake + dispatch, their
                  overlap counted once (the relay's own code, without the queue between its halves)

and the dispatcher's invocations: how many, records per invocation, and their summed duration, with
what that costs in Lambda terms per million deliveries (arm64, 512 MB; list prices in
../shared/reference: $0.20 per million requests, $0.0000133334 per GB-second). Locally an
invocation's duration includes moto's latency and shared cores: the invocation counts carry over to
AWS, the durations are an upper bound.

    .venv/bin/python bench/latency_bench.py [--events N] [--rate R] [--windows 0 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from relay.local.demo import run_demo
from relay.local.stack import LocalStack

LAMBDA_REQUEST_USD = 0.20 / 1_000_000
LAMBDA_ARM64_GB_SECOND_USD = 0.0000133334
MEMORY_GB = 0.5
TARGETS = {"relay_added_p50_ms": 150.0, "relay_added_p99_ms": 1000.0}
# Enough events that every one of the MaximumConcurrency containers has delivered to both targets.
WARM_UP_EVENTS = 30


def measure(window: int | None, events: int, rate: float, log_dir: Path) -> dict[str, Any]:
    """One variant: ``window`` None is the first hop; a number, the DeliveryQueue with that window."""
    name = "first-hop" if window is None else f"window-{window}"
    with (log_dir / f"functions-{name}.log").open("w", encoding="utf-8") as log:
        parameters = (
            {"IntakeDeduplication": "queue"}
            if window is None
            else {"IntakeDeduplication": "table", "DispatcherBatchingWindowSeconds": str(window)}
        )
        with LocalStack(parameters=parameters, dispatcher_workers=True, function_output=log) as stack:
            stack.warm_up_dispatchers(slow_lane=True)
            # Each container's first deliveries load its targets and secrets (and derive the
            # encrypting target's key): warm-up events, not measured, as steady traffic has had.
            run_demo(stack, WARM_UP_EVENTS, rate=rate, timeout_seconds=300)
            report = run_demo(stack, events, rate=rate, timeout_seconds=300)
            assert stack.poller is not None
            stats = stack.poller.stats()
    invocations = max(stats.invocations, 1)
    per_million = 1_000_000 / max(stats.records, 1)
    gb_seconds = stats.invocation_ms / 1000 * MEMORY_GB
    return {
        "ok": report.ok,
        "events": report.sent,
        "deliveries": report.deliveries,
        "lost": report.lost,
        "end_to_end_ms": {"p50": report.p50_ms, "p99": report.p99_ms},
        **report.latency,
        "invocations": stats.invocations,
        "records_per_invocation": round(stats.records / invocations, 2),
        "invocation_ms_mean": round(stats.invocation_ms / invocations, 1),
        "lambda_usd_per_million_deliveries": {
            "requests": round(stats.invocations * per_million * LAMBDA_REQUEST_USD, 3),
            "duration_upper_bound": round(gb_seconds * per_million * LAMBDA_ARM64_GB_SECOND_USD, 3),
        },
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="relay-added latency in the local stack")
    parser.add_argument("--events", type=int, default=300, help="events per window (each to two targets)")
    parser.add_argument("--rate", type=float, default=10.0, help="events per second")
    parser.add_argument(
        "--windows", type=int, nargs="*", default=[0, 1], help="DeliveryQueue batching windows (s)"
    )
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="relay-latency-bench-"))
    started = time.time()
    results: dict[str, Any] = {"first_hop": measure(None, args.events, args.rate, log_dir)}
    results.update(
        {f"window_{window}s": measure(window, args.events, args.rate, log_dir) for window in args.windows}
    )
    default = results["first_hop"]
    if default is not None:
        results["targets"] = {
            **TARGETS,
            "holds": (default["relay_added_ms"]["p50"] or 0) <= TARGETS["relay_added_p50_ms"]
            and (default["relay_added_ms"]["p99"] or 0) <= TARGETS["relay_added_p99_ms"],
        }
    results["settings"] = {
        "rate_per_second": args.rate,
        "events_per_window": args.events,
        "fixtures": "events/fixtures/local.json (one integration, two targets)",
        "function_logs": str(log_dir),
    }
    results["bench_run_seconds"] = round(time.time() - started, 1)
    results["machine_load_average"] = [round(x, 2) for x in os.getloadavg()]
    return results


if __name__ == "__main__":
    from json_line import run_and_print  # bench/, beside this script

    run_and_print("latency-bench", main)
