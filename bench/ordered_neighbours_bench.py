"""``make bench`` (ordered neighbours): a slow ordered conversation must not hold up the conversations
that share its batches (docs/dispatcher.md, "Ordering").

One integration, two ordered targets: "brisk" answers at once, "sluggish" after ``--slow-seconds`` (3).
Every event goes to both, so each batch of the FIFO queue mixes both targets' conversations. With the
ordered lane's poller paused, ``--conversations`` (10) conversations of ``--messages`` (5) events each are
queued (round-robin, each event after the last one's 202); then the poller resumes and the clock starts.
Reported per target: when its last event arrived, and each event's wait from the resume to its arrival
(p50, max; the sluggish target's include its own answer time). The ordered lane runs in worker
processes (one container per concurrent invocation, as in AWS), with the template's concurrency settings.

Three stacks, side by side in one run: the relay as it is (settled conversations released once a batch
has run ``ORDERED_RELEASE_AFTER_MS``, 500), the baseline with the release turned off (a batch's records
are deleted only when it ends, as before), and the relay with both targets answering at once (what the
brisk target gets when no neighbour is slow: ``brisk_share_of_unslowed`` compares its last arrival with
that). The brisk target's figures are the point; the sluggish one's must not change (it is paced by its
receiver: one round trip per event).

    .venv/bin/python bench/ordered_neighbours_bench.py [--conversations N] [--messages N] [--slow-seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from relay.local.demo import fresh_event, load_samples
from relay.local.receiver import Behaviour, Receiver
from relay.local.stack import LocalStack
from relay.logic.signature import sign

INTEGRATION = "6685901b-6d0e-43db-95ff-d64406e9dce2"
SECRET = "bench-ordered-neighbours-signature-secret"
BRISK = "0c0ffee0-aaaa-4bbb-8ccc-000000000021"
SLUGGISH = "0c0ffee0-aaaa-4bbb-8ccc-000000000022"
RELEASE_OFF_MS = "900000"  # the setting's maximum: no batch runs that long
SETTLE_SECONDS = 300.0


def fixtures(workdir: Path) -> Path:
    def target(target_id: str, name: str) -> dict[str, str]:
        return {
            "id": target_id,
            "name": name,
            "url": f"http://127.0.0.1:0/hooks/{name}",
            "ordering": "conversation",
        }

    doc = {
        "integrations": [
            {
                "id": INTEGRATION,
                "name": "Ordered neighbours bench",
                "signatureSecret": SECRET,
                "targets": [target(BRISK, "brisk"), target(SLUGGISH, "sluggish")],
            }
        ]
    }
    path = workdir / f"fixtures-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(doc))
    return path


def post(stack: LocalStack, session: requests.Session, conversation: str, seq: int) -> str:
    event = fresh_event(load_samples()[0], INTEGRATION)
    event["conversationId"] = conversation
    event["text"] = f"{conversation} message {seq}"
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, SECRET)}
    answer = session.post(stack.webhook_url(INTEGRATION), data=body, headers=headers, timeout=30)
    if answer.status_code != 202:
        raise RuntimeError(f"intake answered {answer.status_code}: {answer.text}")
    return str(event["id"])


def arrivals(receiver: Receiver) -> dict[str, float]:
    """Event id -> when the receiver accepted it first."""
    first: dict[str, float] = {}
    for delivery in receiver.deliveries:
        first.setdefault(str((delivery.event or {}).get("id")), delivery.received_at)
    return first


def figures(receiver: Receiver, sent: dict[str, list[str]], resumed: float) -> dict[str, Any]:
    arrived = arrivals(receiver)
    waits = [arrived[e] - resumed for events in sent.values() for e in events if e in arrived]
    in_order = all(
        sorted(events, key=lambda e: arrived.get(e, float("inf"))) == events for events in sent.values()
    )
    total = sum(len(events) for events in sent.values())
    return {
        "delivered": len(waits),
        "lost": total - len(waits),
        "in_order": in_order,
        "last_arrival_s": round(max(waits), 2) if waits else None,
        "wait_p50_s": round(statistics.median(waits), 2) if waits else None,
        "wait_max_s": round(max(waits), 2) if waits else None,
    }


def scenario(
    workdir: Path, log: Any, release_after_ms: str, slow_seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    environment = {"ORDERED_RELEASE_AFTER_MS": release_after_ms}
    with (
        LocalStack(
            fixtures(workdir), environment=environment, dispatcher_workers=True, function_output=log
        ) as stack,
        requests.Session() as session,
    ):
        assert stack.ordered_poller is not None
        brisk, sluggish = stack.receivers[BRISK].receiver, stack.receivers[SLUGGISH].receiver
        sluggish.behaviour = Behaviour(latency_seconds=slow_seconds)
        stack.ordered_poller.pause()
        conversations = [f"c{n:03d}-{uuid.uuid4().hex[:6]}" for n in range(args.conversations)]
        sent: dict[str, list[str]] = {c: [] for c in conversations}
        for seq in range(args.messages):
            for conversation in conversations:
                sent[conversation].append(post(stack, session, conversation, seq))
        resumed = time.time()
        stack.ordered_poller.resume()
        settled = stack.wait_settled(SETTLE_SECONDS)
        return {
            "release_after_ms": int(release_after_ms),
            "sluggish_answer_s": slow_seconds,
            "settled": settled,
            "brisk": figures(brisk, sent, resumed),
            "sluggish": figures(sluggish, sent, resumed),
        }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--slow-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="relay-ordered-neighbours-") as tmp:
        workdir = Path(tmp)
        with (workdir / "functions.log").open("a") as log:
            baseline = scenario(workdir, log, RELEASE_OFF_MS, args.slow_seconds, args)
            relay = scenario(workdir, log, "500", args.slow_seconds, args)
            unslowed = scenario(workdir, log, "500", 0.0, args)
    beside, alone = relay["brisk"]["last_arrival_s"], unslowed["brisk"]["last_arrival_s"]
    return {
        "conversations": args.conversations,
        "messages_per_conversation": args.messages,
        "sluggish_answer_s": args.slow_seconds,
        "baseline_release_off": baseline,
        "relay": relay,
        "relay_no_slow_neighbour": unslowed,
        # How much of the ordered lane's pace the brisk target keeps beside a slow ordered target: its
        # invocations are shared (docs/dispatcher.md, "Ordering", "What the release does not do").
        "brisk_share_of_unslowed": round(alone / beside, 3) if beside and alone else None,
        "machine_load_average": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    from json_line import run_and_print  # bench/, beside this script

    run_and_print("ordered-neighbours-bench", main)
