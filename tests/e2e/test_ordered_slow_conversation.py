"""A slow ordered conversation does not hold up the conversations that share its batch (docs/dispatcher.md,
"Ordering"): through the whole local stack, with the FIFO queue's own rule that no later message of a
conversation is handed out while an earlier one is in flight."""

from __future__ import annotations

import importlib.util
import threading
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import requests
from support.waiting import wait_until

from relay.local.receiver import Behaviour, Receiver
from relay.local.stack import LocalStack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONVERSATIONS = [f"conversation-{n}" for n in range(4)]
PER_CONVERSATION = 3
# A held request is not cut off (and retried) while the test runs: without the early release, the
# brisk target's conversations in the sluggish one's batch would wait for it far past WAIT.
ENVIRONMENT = {"READ_TIMEOUT_SECONDS": "45"}  # below the function timeout (60 s), above WAIT
WAIT = 30.0  # bound on each wait: generous, not a performance claim


def load_bench() -> ModuleType:
    """bench/ordered_neighbours_bench.py, whose stack this test runs scaled (bench/ is not a package)."""
    path = ROOT / "bench" / "ordered_neighbours_bench.py"
    spec = importlib.util.spec_from_file_location("relay_bench_ordered_neighbours", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def arrivals(receiver: Receiver) -> list[str]:
    """Event ids in the order the receiver accepted them."""
    return [str((d.event or {}).get("id")) for d in receiver.deliveries]


def test_a_stuck_conversation_does_not_hold_the_others_of_its_batch(tmp_path: Path) -> None:
    # Worker processes: one container per concurrent invocation, as in AWS (in this process, the ordered
    # lane's invocations would take turns in its one container).
    with (
        LocalStack(bench.fixtures(tmp_path), environment=ENVIRONMENT, dispatcher_workers=True) as stack,
        requests.Session() as session,
    ):
        brisk, sluggish = stack.receivers[bench.BRISK].receiver, stack.receivers[bench.SLUGGISH].receiver
        gate = threading.Event()
        sluggish.behaviour = Behaviour(gate=gate, hang_seconds=120)
        assert stack.ordered_poller is not None

        # Given conversations queued while the ordered lane is paused, so that its first batch holds
        # records of both targets, and a target that answers none of them until told
        stack.ordered_poller.pause()
        sent: dict[str, list[str]] = {c: [] for c in CONVERSATIONS}
        for seq in range(PER_CONVERSATION):
            for conversation in CONVERSATIONS:
                sent[conversation].append(bench.post(stack, session, conversation, seq))
        stack.ordered_poller.resume()
        wait_until(lambda: sluggish.held, what="the sluggish target holding a request", timeout=WAIT)

        # Then the brisk target gets every conversation's events, each conversation in order, while the
        # sluggish target still holds the first ones (SQS hands out a conversation's next message only
        # once its batch has deleted the one before)
        everything = {e for events in sent.values() for e in events}
        wait_until(
            lambda: everything <= set(arrivals(brisk)), what="every event at the brisk target", timeout=WAIT
        )
        assert sluggish.held > 0 and sluggish.deliveries == []
        for events in sent.values():
            assert [e for e in arrivals(brisk) if e in events] == events

        # And once the sluggish target answers, it gets every event too, in order, each once
        gate.set()
        wait_until(
            lambda: everything <= set(arrivals(sluggish)),
            what="every event at the sluggish target",
            timeout=WAIT,
        )
        for events in sent.values():
            assert [e for e in arrivals(sluggish) if e in events] == events
        assert set(Counter(r.webhook_id for r in sluggish.requests).values()) == {1}
        assert stack.resources is not None
        letters = stack.sqs.receive_message(QueueUrl=stack.resources.ordered_dead_letter_queue_url)
        assert letters.get("Messages", []) == []
