"""A rate limit holds across racing dispatchers (issue 14, point 2): 8 dispatchers, each its own warm
container (relay.local.fleet), share one limited target on moto, and a loopback receiver logs when
each request arrives."""

from __future__ import annotations

import json

import pytest
from support.queues import drain
from support.waiting import wait_until
from test_dispatch_support import PLAIN_TARGET, seed_target, task_record

from relay.local.aws_stack import LocalResources
from relay.local.fleet import DispatcherFleet
from relay.local.receiver import Receiver
from relay.models.rate_limit import RateLimit
from relay.settings import get_settings
from relay.wiring import aws_client, target_store

pytestmark = pytest.mark.integration

LIMIT = 10.0
BURST = 5
RECORDS = 60
DISPATCHERS = 8
LIMITED_TARGET = "5d2c1b0a-9e8f-4a7b-8c6d-5e4f3a2b1c0d"
# A request reaches the receiver a little after its tokens were taken (the attempt's preparation, the
# pool, the loopback); on a busy 2-core machine that lag varies between dispatchers, which moves
# arrivals from one window to the next. Measured under make test's own load: up to 0.27-0.31 s (excess
# 2.71 and 3.09 requests); with admission switched off the excess is about 42, far beyond this.
ARRIVAL_JITTER_SECONDS = 0.5


def worst_window_excess(arrivals: list[float], limit: float, burst: int) -> float:
    """Over every window from one arrival to a later one: the most requests beyond limit x window + burst."""
    times = sorted(arrivals)
    return max(
        (j - i + 1) - (limit * (times[j] - times[i]) + burst)
        for i in range(len(times))
        for j in range(i, len(times))
    )


def queue_tasks(resources: LocalResources, target_id: str, count: int) -> None:
    bodies = [task_record(target_id)["body"] for _ in range(count)]
    for first in range(0, count, 10):
        aws_client("sqs").send_message_batch(
            QueueUrl=resources.delivery_queue_url,
            Entries=[
                {"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[first : first + 10])
            ],
        )


def test_racing_dispatchers_keep_a_target_within_its_limit(
    aws_stack: LocalResources, receiver: Receiver
) -> None:
    # Given an unlimited target, and a second one limited to 10 requests per second (5 at once) that
    # uses the same secrets
    warm = seed_target(aws_stack, f"{receiver.url}/hooks/warm")
    limited = warm.model_copy(
        update={
            "target_id": LIMITED_TARGET,
            "url": f"{receiver.url}/hooks/limited",
            "rate_limit": RateLimit(per_second=LIMIT, burst=BURST),
        }
    )
    target_store(get_settings()).put_target(limited)

    with DispatcherFleet(aws_stack, DISPATCHERS) as fleet:
        # And 8 dispatchers warmed up on the first (their containers started, secrets cached)
        queue_tasks(aws_stack, PLAIN_TARGET, 80)
        wait_until(lambda: len(receiver.unique_delivery_ids) >= 80, what="the warm-up delivered", timeout=60)
        receiver.clear()

        # When 60 records of the limited target are queued, and the dispatchers race for them
        queue_tasks(aws_stack, LIMITED_TARGET, RECORDS)
        wait_until(
            lambda: len(receiver.unique_delivery_ids) >= RECORDS, what="every record delivered", timeout=120
        )
    assert fleet.poller is not None and fleet.poller.stats().failed_invocations == 0

    # Then each was sent exactly once and nothing was dead-lettered (held records used no attempt)
    assert len(receiver.requests) == RECORDS
    assert drain(aws_stack.dead_letter_queue_url) == []
    # And no window of any length got more than limit x window + burst (give or take the arrival lag)
    arrivals = sorted(r.received_at for r in receiver.requests)
    excess = worst_window_excess(arrivals, LIMIT, BURST)
    print(json.dumps({"racing_dispatchers": DISPATCHERS, "worst_window_excess_requests": round(excess, 2)}))
    assert excess <= LIMIT * ARRIVAL_JITTER_SECONDS
    # And the limit did hold them back: 60 records at 10/s after a burst of 5 take over 5 s
    assert arrivals[-1] - arrivals[0] >= (RECORDS - BURST) / LIMIT - ARRIVAL_JITTER_SECONDS
