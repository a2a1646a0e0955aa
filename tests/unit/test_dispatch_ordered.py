"""The dispatcher's ordered path (relay.logic.dispatch.fifo) against in-memory fakes of its ports.

Records of the FIFO queue carry their message group (one conversation of one target). What is observed
is what SQS and the targets would see: the requests in the order they were sent, the holds asked of
the ordered queue (visibility changes, never re-sends), the ordered DLQ, ``batchItemFailures`` and the
audit lines.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from support.emf import dimension_sets, emf_blobs, in_lambda
from support.waiting import wait_until

from relay.logic.dispatch import Dispatcher
from relay.models.breaker import BreakerState, DeliveryLane, LaneState, Phase, target_key
from relay.models.delivery import DeliveryTask, DlqReason
from relay.models.http import HttpResult
from relay.models.rate_limit import RateLimit, rate_key
from relay.models.targets import OnExhausted, Ordering, RetryMatrix, Target
from relay.settings import Settings
from relay.testing.fakes import (
    InMemoryAttemptCounter,
    InMemoryAuditSink,
    InMemoryBreakerStore,
    InMemoryClaimCheckStore,
    InMemoryEventArchive,
    InMemoryRateLimitStore,
    InMemorySecrets,
    InMemoryTargets,
    ManualClock,
    RecordingOrderedQueueOps,
    RecordingQueueOps,
    ScriptedHttp,
)

INTEGRATION = "int-1"
NOW = datetime(2026, 3, 25, 13, 20, 5, tzinfo=UTC).timestamp()


def ordered_target(target_id: str = "crm", *, attempts: int = 3, **fields: Any) -> Target:
    return Target(
        integration_id=INTEGRATION,
        target_id=target_id,
        name=target_id,
        url=f"https://{target_id}.example.com/hook",
        retry_matrix=RetryMatrix(attempts=attempts, base_interval_ms=1_000, max_interval_ms=8_000),
        ordering=Ordering.CONVERSATION,
        **fields,
    )


def fifo_record(
    group: str, seq: int, *, target_id: str = "crm", receive_count: int = 1, sent_at: float = NOW
) -> dict[str, Any]:
    """A record of the ordered queue: message ``seq`` of conversation ``group``, as Lambda hands it over
    (first sent at ``sent_at``, epoch seconds)."""
    task = DeliveryTask(
        delivery_id=uuid.uuid4(),
        integration_id=INTEGRATION,
        target_id=target_id,
        event_id=f"{group}-{seq}",
        received_at=datetime.now(UTC),
        event_json=json.dumps({"id": f"{group}-{seq}", "seq": seq}),
        conversation_id=f"conversation-{group}",
    )
    message_id = f"m-{group}-{seq}"
    return {
        "messageId": message_id,
        "receiptHandle": f"receipt-{message_id}",
        "body": task.model_dump_json(by_alias=True, exclude_none=True),
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "MessageGroupId": group,
            "SentTimestamp": str(round(sent_at * 1000)),
        },
        "messageAttributes": {},
    }


def event_id(body: bytes) -> str:
    return str(json.loads(body)["sourceEvent"]["id"])


Answer = dict[str, int]  # event id -> status (200 for any other)


@dataclass
class OrderedRelay:
    """An ordered dispatcher on in-memory ports, and the ports, for a test to drive and observe."""

    targets: InMemoryTargets
    answers: Answer = field(default_factory=dict)
    queue: RecordingQueueOps = field(default_factory=RecordingQueueOps)
    ordered: RecordingOrderedQueueOps = field(default_factory=RecordingOrderedQueueOps)
    attempts: InMemoryAttemptCounter = field(default_factory=InMemoryAttemptCounter)
    breakers: InMemoryBreakerStore = field(default_factory=InMemoryBreakerStore)
    rate_limits: InMemoryRateLimitStore = field(default_factory=InMemoryRateLimitStore)
    audit: InMemoryAuditSink = field(default_factory=InMemoryAuditSink)
    archive: InMemoryEventArchive = field(default_factory=InMemoryEventArchive)
    clock: ManualClock = field(default_factory=lambda: ManualClock(NOW))
    with_ordered_path: bool = True
    environment: dict[str, str] = field(default_factory=dict)  # the dispatcher's settings
    # Called with each request's event id before it is answered (on the dispatcher's thread).
    on_request: Callable[[str], None] = lambda event: None
    answer_headers: dict[str, str] = field(default_factory=dict)  # on every answer
    http: ScriptedHttp = field(init=False)
    dispatcher: Dispatcher = field(init=False)

    def __post_init__(self) -> None:
        self.http = ScriptedHttp(self._answer)
        self.dispatcher = Dispatcher(
            settings=Settings.model_validate(self.environment),
            targets=self.targets,
            http=self.http,
            queue=self.queue,
            breakers=self.breakers,
            rate_limits=self.rate_limits,
            audit=self.audit,
            secrets=InMemorySecrets(),
            claim_checks=InMemoryClaimCheckStore(),
            clock=self.clock,
            rng=random.Random(7),
            sleep=self.clock.sleep,
            ordered_queue=self.ordered if self.with_ordered_path else None,
            attempts=self.attempts if self.with_ordered_path else None,
            archive=self.archive,
        )

    def _answer(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        self.on_request(event_id(body))
        return HttpResult(self.answers.get(event_id(body), 200), 5.0, headers=self.answer_headers)

    def batch(self, *records: dict[str, Any], remaining_ms: int | None = None) -> list[str]:
        response = self.dispatcher.handle_batch(
            list(records),
            invocation_id="inv-1",
            remaining_ms=None if remaining_ms is None else (lambda: remaining_ms),
        )
        return [item["itemIdentifier"] for item in response["batchItemFailures"]]

    def sent(self) -> list[str]:
        """Event ids in the order the requests went out."""
        return [event_id(body) for _, _, _, body in self.http.requests]

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for body in self.audit.objects.values() for line in body.splitlines()]

    def nothing_resent(self) -> bool:
        return self.queue.deferrals == [] and self.queue.retries == [] and self.queue.dead_letters == []

    def open_breaker(self, *, until: float) -> None:
        """The crm target's breaker stored open (half-open once ``until`` has passed)."""
        self.breakers.save(
            target_key(INTEGRATION, "crm"),
            BreakerState(phase=Phase.OPEN, consecutive_failures=5, trips=1, until=until, version=1),
            expected_version=0,
        )


@pytest.fixture
def relays() -> Iterator[list[OrderedRelay]]:
    made: list[OrderedRelay] = []
    yield made
    for each in made:
        each.dispatcher.close()


def ordered_relay(relays: list[OrderedRelay], *targets: Target, **fields: Any) -> OrderedRelay:
    made = OrderedRelay(InMemoryTargets(*(targets or (ordered_target(),))), **fields)
    relays.append(made)
    return made


def ids(*records: Mapping[str, Any]) -> list[str]:
    return [str(r["messageId"]) for r in records]


def handles(*records: Mapping[str, Any]) -> list[str]:
    return [str(r["receiptHandle"]) for r in records]


# --- one conversation ------------------------------------------------------------------------------------


def test_a_conversation_is_delivered_in_order_and_nothing_is_reported(relays: list[OrderedRelay]) -> None:
    r = ordered_relay(relays)
    records = [fifo_record("g", n) for n in range(5)]

    failed = r.batch(*records)

    assert failed == []
    assert r.sent() == [f"g-{n}" for n in range(5)]
    assert r.ordered.holds == [] and r.nothing_resent()


def test_a_retryable_failure_holds_it_and_everything_after_it_in_its_conversation(
    relays: list[OrderedRelay],
) -> None:
    r = ordered_relay(relays, answers={"g-1": 503})
    first, second, third = (fifo_record("g", n) for n in range(3))

    failed = r.batch(first, second, third)

    # The third is never attempted before the second is settled: it waits with it.
    assert r.sent() == ["g-0", "g-1"]
    assert failed == ids(second, third)
    ((held, delay),) = r.ordered.holds
    assert held == handles(second, third) and 0 <= delay <= 1  # attempt 1's backoff, for both
    assert r.nothing_resent()  # a visibility change, never a re-send to the back of the queue
    assert r.attempts.counts == {second["messageId"]: 1}
    outcomes = {line["eventId"]: (line["outcome"], line["errorCode"]) for line in r.audit_lines()}
    assert outcomes == {
        "g-0": ("delivered", None),
        "g-1": ("retry-scheduled", "http-503"),
        "g-2": ("held", "behind-earlier-record"),
    }


def test_conversations_run_side_by_side_and_one_held_does_not_hold_another(
    relays: list[OrderedRelay],
) -> None:
    r = ordered_relay(relays, answers={"a-0": 500})
    a0, a1, b0, b1 = fifo_record("a", 0), fifo_record("a", 1), fifo_record("b", 0), fifo_record("b", 1)

    failed = r.batch(a0, b0, a1, b1)

    assert sorted(failed) == sorted(ids(a0, a1))
    assert [e for e in r.sent() if e.startswith("b")] == ["b-0", "b-1"]
    assert "a-1" not in r.sent()


def test_attempts_are_counted_per_message_not_from_the_receive_count(relays: list[OrderedRelay]) -> None:
    # Held behind earlier records, it was received six times without an attempt; its first attempt
    # failing is attempt 1 of 3, retried, not dead-lettered as exhausted.
    r = ordered_relay(relays, answers={"g-0": 503})
    record = fifo_record("g", 0, receive_count=7)

    failed = r.batch(record)

    assert failed == ids(record)
    assert r.ordered.dead_letters == []
    assert [line["attempt"] for line in r.audit_lines()] == [1]
    assert r.attempts.counts == {record["messageId"]: 1}


def test_the_last_attempt_failing_dead_letters_it_in_its_group_and_the_conversation_moves_on(
    relays: list[OrderedRelay],
) -> None:
    r = ordered_relay(relays, answers={"g-0": 500})
    last, then = fifo_record("g", 0, receive_count=3), fifo_record("g", 1, receive_count=3)
    r.attempts.counts[last["messageId"]] = 2  # attempts 1 and 2 failed: this is 3 of 3

    failed = r.batch(last, then)

    assert failed == []
    (letter,) = r.ordered.dead_letters
    assert (letter["group_id"], letter["deduplication_id"], letter["reason"], letter["attempts"]) == (
        "g",
        last["messageId"],
        DlqReason.EXHAUSTED,
        3,
    )
    assert r.sent() == ["g-0", "g-1"]  # dead-lettered first, then the next one goes
    assert r.queue.dead_letters == []  # not the standard DLQ


def test_a_target_that_blocks_holds_the_conversation_behind_an_exhausted_record(
    relays: list[OrderedRelay], caplog: pytest.LogCaptureFixture
) -> None:
    r = ordered_relay(relays, ordered_target(on_exhausted=OnExhausted.BLOCK), answers={"g-0": 400})
    refused, then = fifo_record("g", 0), fifo_record("g", 1)

    failed = r.batch(refused, then)

    assert failed == ids(refused, then)
    assert r.ordered.dead_letters == [] and r.sent() == ["g-0"]
    assert r.ordered.holds == [(handles(refused, then), 3_600)]  # ORDERED_BLOCK_HOLD_SECONDS
    outcomes = [(line["eventId"], line["outcome"]) for line in r.audit_lines()]
    assert outcomes == [("g-0", "blocked"), ("g-1", "held")]
    # and the warning behind the alarm names what an operator looks up: the delivery (`relay deliveries
    # show` takes its id), its event and conversation, and when it is tried again
    (warning,) = [log for log in caplog.records if log.getMessage() == "ordered conversation blocked"]
    blocked = json.loads(refused["body"])
    assert (warning.deliveryId, warning.eventId, warning.conversationId, warning.retryInSeconds) == (
        blocked["deliveryId"],
        "g-0",
        "conversation-g",
        3_600,
    )


@pytest.mark.parametrize(("age_days", "held"), [(13.0, True), (13.99, False)], ids=["in-time", "expiring"])
def test_a_blocked_record_whose_next_look_would_come_after_its_retention_is_dead_lettered_instead(
    relays: list[OrderedRelay], age_days: float, held: bool
) -> None:
    # Given a target that blocks, refusing a record SQS took age_days ago (it deletes it at 14 days)
    r = ordered_relay(relays, ordered_target(on_exhausted=OnExhausted.BLOCK), answers={"g-0": 400})
    refused = fifo_record("g", 0, sent_at=NOW - age_days * 86_400)
    then = fifo_record("g", 1)

    failed = r.batch(refused, then)

    # Then it is held for the next look while that look comes in time; past that, it is dead-lettered
    # in its conversation (explained, and kept by the FIFO DLQ) rather than deleted by SQS unseen
    if held:
        assert failed == ids(refused, then) and r.ordered.dead_letters == []
    else:
        assert [(d["reason"], d["group_id"]) for d in r.ordered.dead_letters] == [
            (DlqReason.PERMANENT_STATUS, "g")
        ]
        assert r.sent() == ["g-0", "g-1"] and failed == []


def test_a_target_that_blocks_and_answers_410_holds_the_conversation_until_it_is_enabled_again(
    relays: list[OrderedRelay],
) -> None:
    # Given a target that blocks, answering 410 Gone to a conversation's first record
    r = ordered_relay(relays, ordered_target(on_exhausted=OnExhausted.BLOCK), answers={"g-0": 410})
    gone, then = fifo_record("g", 0), fifo_record("g", 1)

    failed = r.batch(gone, then)

    # Then nothing is dead-lettered (a dispatcher whose target cache still says enabled would deliver
    # the records behind a letter, and a redrive would put it after them): the conversation waits in
    # order, looked at again every minute, and the target is disabled as for any 410
    assert failed == ids(gone, then)
    assert r.ordered.dead_letters == [] and r.sent() == ["g-0"]
    assert r.ordered.holds == [(handles(gone, then), 60)]
    assert [(line["eventId"], line["outcome"]) for line in r.audit_lines()] == [
        ("g-0", "blocked"),
        ("g-1", "held"),
    ]
    assert r.targets.get_target(INTEGRATION, "crm").enabled is False


# In Lambda (AWS_LAMBDA_FUNCTION_NAME/VERSION set) the crash names the release too; elsewhere it cannot.
@pytest.mark.parametrize("function_name", [None, "relay-prod-OrderedDispatcher-x1"], ids=["local", "lambda"])
def test_a_crashed_conversation_is_left_for_redelivery_and_counted_for_the_rollback(
    relays: list[OrderedRelay], capsys: pytest.CaptureFixture[str], function_name: str | None
) -> None:
    # Given a release with a bug on conversation g's path (the HTTP port raises on its first event)
    def bug(event: str) -> None:
        if event == "g-0":
            raise RuntimeError("bug")

    r = ordered_relay(relays, on_request=bug, environment=in_lambda(function_name))
    crashing, behind, other = fifo_record("g", 0), fifo_record("g", 1), fifo_record("h", 0)

    failed = r.batch(crashing, behind, other)

    # Then g's records come back (SQS shows them again, in order; g-1 was never sent), h is delivered,
    # and the crash is counted once, service level: the invocation returns normally (Errors stays 0)
    assert failed == ids(crashing, behind) and sorted(r.sent()) == ["g-0", "h-0"]
    emitted = emf_blobs(capsys.readouterr().out)
    crashes = [doc for doc in emitted if "DeliveryCrashed" in doc]
    assert [(doc["DeliveryCrashed"], doc.get("target")) for doc in crashes] == [([1.0], None)]
    # In Lambda per release as well: the ordered dispatcher's deploy rolls back on its own version's crashes
    release = [{"service": "relay", "function": function_name, "version": "7"}] if function_name else []
    assert dimension_sets(crashes[0]) == [{"service": "relay"}, *release]


@pytest.mark.parametrize(
    ("on_exhausted", "dead_lettered"), [(OnExhausted.BLOCK, False), (OnExhausted.DEAD_LETTER, True)]
)
def test_a_disabled_target_that_blocks_holds_its_conversations_and_one_that_does_not_dead_letters_them(
    relays: list[OrderedRelay],
    on_exhausted: OnExhausted,
    dead_lettered: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an ordered target disabled (relay targets disable, or a 410 in another container)
    r = ordered_relay(relays, ordered_target(on_exhausted=on_exhausted, enabled=False))
    first, then = fifo_record("g", 0), fifo_record("g", 1)

    failed = r.batch(first, then)

    # Then nothing is sent; a target that blocks keeps its conversation in order for when it is
    # enabled again, the others are dead-lettered as target-disabled
    assert r.sent() == []
    if dead_lettered:
        assert failed == [] and r.ordered.holds == []
        assert [d["reason"] for d in r.ordered.dead_letters] == [DlqReason.TARGET_DISABLED] * 2
    else:
        assert failed == ids(first, then) and r.ordered.dead_letters == []
        assert r.ordered.holds == [(handles(first, then), 60)]
        # counted by the OrderedGroupBlocked alarm: the ordered queue does not keep them for ever
        emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
        assert sum(sum(doc.get("OrderedGroupBlocked", [])) for doc in emitted) == 1
        assert [(line["eventId"], line["outcome"], line["errorCode"]) for line in r.audit_lines()] == [
            ("g-0", "held", "target-disabled"),
            ("g-1", "held", "target-disabled"),
        ]


FOURTEEN_DAYS = 14 * 86_400


@pytest.mark.parametrize("max_receive_count", [100, 1000])
def test_a_conversation_waiting_on_a_disabled_target_outlasts_the_queues_retention_not_its_backstop(
    relays: list[OrderedRelay], max_receive_count: int
) -> None:
    # Given an ordered target that blocks, disabled for good, and the ordered queue's redrive backstop
    # (OrderedMaxReceiveCount): every look at the held conversation is one more receive
    r = ordered_relay(
        relays,
        ordered_target(on_exhausted=OnExhausted.BLOCK, enabled=False),
        environment={"MAX_RECEIVE_COUNT": str(max_receive_count)},
    )

    # When it is received as often as the backstop allows, each time after the hold asked for
    holds = []
    for receive in range(1, max_receive_count + 1):
        r.batch(fifo_record("g", 0, receive_count=receive, sent_at=NOW))
        (_, seconds) = r.ordered.holds[-1]
        holds.append(seconds)
        r.clock.now += seconds

    # Then SQS would move it to the DLQ (the next receive) only in the last hour of its 14 days: it
    # waits in order for its target, and is moved (FIFO: kept 14 more days there) rather than expired
    assert FOURTEEN_DAYS - 3_600 <= r.clock.now - NOW < FOURTEEN_DAYS
    assert r.ordered.dead_letters == []
    assert max(holds) <= 43_200
    if max_receive_count == 1000:  # the first hours still look every minute (a quick enable resumes it)
        assert holds[:600] == [60] * 600


def test_an_open_breaker_holds_every_conversation_of_its_target_without_a_re_send(
    relays: list[OrderedRelay],
) -> None:
    r = ordered_relay(relays)
    r.open_breaker(until=NOW + 20)
    a0, a1, b0 = fifo_record("a", 0), fifo_record("a", 1), fifo_record("b", 0)

    failed = r.batch(a0, a1, b0)

    assert r.sent() == [] and r.nothing_resent()
    assert sorted(failed) == sorted(ids(a0, a1, b0))
    held = {tuple(h): delay for h, delay in r.ordered.holds}
    assert set(held) == {tuple(handles(a0, a1)), tuple(handles(b0))}
    assert all(20 <= delay <= 22 for delay in held.values())  # until it may half-open, + jitter


def test_a_rate_limit_holds_the_conversation_from_the_first_record_without_a_token(
    relays: list[OrderedRelay],
) -> None:
    # One request a second: the limit lets a few go (one at once, one paced), the rest of each
    # conversation is held with its group, never deferred (a re-send would put it at the back).
    r = ordered_relay(relays, ordered_target(rate_limit=RateLimit(per_second=1, burst=1)))
    conversation_a = [fifo_record("a", n) for n in range(4)]
    conversation_b = [fifo_record("b", n) for n in range(2)]

    failed = r.batch(*conversation_a, *conversation_b)

    assert r.nothing_resent()
    sent = r.sent()
    assert 1 <= len(sent) < 6
    for records in (conversation_a, conversation_b):
        went = [rec for rec in records if json.loads(rec["body"])["eventId"] in sent]
        assert went == records[: len(went)]  # each conversation went from its start, in order
        assert set(ids(*records[len(went) :])) <= set(failed)
    held = {handle for handles_, _ in r.ordered.holds for handle in handles_}
    assert {f"receipt-{message_id}" for message_id in failed} == held
    rate_held = [line for line in r.audit_lines() if line.get("errorCode") == "rate-limited"]
    assert rate_held and all(line["outcome"] == "held" and line["retryInSeconds"] >= 1 for line in rate_held)


def assert_held_for_quiet(r: OrderedRelay, event: str, *, at_least_seconds: float) -> None:
    """``event``'s record was held with its conversation for a target's quiet (rate-limited), to come
    back no sooner than ``at_least_seconds``."""
    (held,) = [line for line in r.audit_lines() if line.get("eventId") == event]
    assert (held["outcome"], held["errorCode"]) == ("held", "rate-limited")
    assert held["retryInSeconds"] >= at_least_seconds


def test_a_retry_after_holds_the_targets_other_conversations_of_the_batch_without_a_request(
    relays: list[OrderedRelay],
) -> None:
    # Given a target that answers conversation a's first record 429 asking for 30 s of quiet, and a
    # dispatcher taking one conversation at a time (a, then b)
    r = ordered_relay(
        relays,
        answers={"a-0": 429},
        answer_headers={"retry-after": "30"},
        environment={"DELIVERY_CONCURRENCY": "1"},
    )

    # When a batch brings conversations a and b
    failed = r.batch(fifo_record("a", 0), fifo_record("a", 1), fifo_record("b", 0))

    # Then b is not sent within the quiet either: held with its group, with no request and no re-send
    assert r.sent() == ["a-0"] and r.nothing_resent()
    assert set(failed) == {"m-a-0", "m-a-1", "m-b-0"}
    assert_held_for_quiet(r, "b-0", at_least_seconds=30)


def test_a_paced_record_keeps_the_quiet_another_dispatcher_was_asked_for_while_it_waited(
    relays: list[OrderedRelay],
) -> None:
    # Given a target limited to 2 requests a second, one at once: a conversation's second record is
    # paced half a second on; while the first is under way, another dispatcher gets a Retry-After of
    # 5 s and stores its floor
    r = ordered_relay(relays, ordered_target(rate_limit=RateLimit(per_second=2, burst=1)))
    r.on_request = lambda event: r.rate_limits.raise_floor(
        rate_key(INTEGRATION, "crm"), floor_until=r.clock() + 5
    )

    failed = r.batch(fifo_record("a", 0), fifo_record("a", 1))

    # Then the paced one, once its time came, is not sent inside that quiet: held with its group
    assert r.sent() == ["a-0"] and failed == ["m-a-1"] and r.nothing_resent()
    assert_held_for_quiet(r, "a-1", at_least_seconds=4)


def test_a_conversation_under_way_keeps_the_quiet_another_dispatcher_was_asked_for(
    relays: list[OrderedRelay],
) -> None:
    # Given an unlimited ordered target answering each request in 0.6 s; while a conversation's first
    # record is under way, another dispatcher gets a Retry-After of 5 s and marks it on the breaker item
    r = ordered_relay(relays)

    def answer(event: str) -> None:
        r.clock.now += 0.6
        if event == "a-0":
            r.breakers.mark_retry_after(target_key(INTEGRATION, "crm"), r.clock() + 5)

    r.on_request = answer

    failed = r.batch(*(fifo_record("a", n) for n in range(3)))

    # Then the conversation's next record does not start inside that quiet: held with the rest
    assert r.sent() == ["a-0"] and failed == ["m-a-1", "m-a-2"] and r.nothing_resent()
    assert_held_for_quiet(r, "a-1", at_least_seconds=4)


def test_a_hold_asks_sqs_for_no_more_than_12_hours_from_the_receive(relays: list[OrderedRelay]) -> None:
    # Given a target whose rate limit holds everything for a day (a Retry-After floor)
    r = ordered_relay(relays, ordered_target(rate_limit=RateLimit(per_second=1, burst=1)))
    r.rate_limits.raise_floor(rate_key(INTEGRATION, "crm"), floor_until=r.clock() + 86_400)
    conversation = [fifo_record("a", 0), fifo_record("a", 1)]

    failed = r.batch(*conversation)

    # Then the conversation is held as long as SQS accepts: 12 h from the receive, which came before the
    # invocation by up to the event source's batching window (a longer change is refused, and the
    # records would come back after the queue's own visibility timeout instead)
    assert failed == ids(*conversation) and r.sent() == []
    ((_, seconds),) = r.ordered.holds
    assert seconds == 43_200 - 300


def test_the_probe_goes_first_and_a_failed_probe_holds_the_targets_other_conversations(
    relays: list[OrderedRelay],
) -> None:
    r = ordered_relay(relays, answers={"a-0": 503})
    r.open_breaker(until=NOW - 1)
    a0, b0 = fifo_record("a", 0), fifo_record("b", 0)

    failed = r.batch(a0, b0)

    assert r.sent() == ["a-0"]  # the probe only
    assert sorted(failed) == sorted(ids(a0, b0))
    assert r.breakers.load(target_key(INTEGRATION, "crm")).phase is Phase.OPEN


def test_a_healthy_probe_lets_the_other_conversations_go(relays: list[OrderedRelay]) -> None:
    r = ordered_relay(relays)
    r.open_breaker(until=NOW - 1)
    a0, a1, b0 = fifo_record("a", 0), fifo_record("a", 1), fifo_record("b", 0)

    failed = r.batch(b0, a0, a1)

    assert failed == []
    assert r.sent()[0] == "b-0"  # the lane's first record is the probe, and it went first
    assert sorted(r.sent()) == ["a-0", "a-1", "b-0"]


def test_a_probe_holds_back_only_its_own_targets_conversations_not_another_targets(
    relays: list[OrderedRelay],
) -> None:
    # Given a batch with a half-open probe of one target (answering slowly) and a conversation of another
    r = ordered_relay(relays, ordered_target("crm"), ordered_target("erp"))
    r.open_breaker(until=NOW - 1)  # crm's
    other_went_first: list[object] = []

    def probe_answers_late(event: str) -> None:
        if event == "a-0":  # the probe answers once the other target's record went (or after 5 s)
            try:
                other_went_first.append(wait_until(lambda: "x-0" in r.sent(), what="erp's record", timeout=5))
            except AssertionError:
                other_went_first.append(False)

    r.on_request = probe_answers_late
    probe, behind, other = fifo_record("a", 0), fifo_record("a", 1), fifo_record("x", 0, target_id="erp")

    # When the batch runs
    failed = r.batch(probe, behind, other)

    # Then the other target's conversation did not wait for the probe (nor for its conversation)
    assert failed == [] and other_went_first == [True]
    assert r.sent().index("a-0") < r.sent().index("a-1")


def test_an_ordered_failure_reaches_the_breaker_with_its_send_time(relays: list[OrderedRelay]) -> None:
    # Given a conversation whose first record the endpoint fails, answering 2 s after it is asked
    r = ordered_relay(relays, answers={"a-0": 500})

    def answers_late(event: str) -> None:
        r.clock.now += 2

    r.on_request = answers_late

    r.batch(fifo_record("a", 0))

    # Then the breaker folded the failure at the time it was sent, not answered
    assert r.breakers.load(target_key(INTEGRATION, "crm")).failure_run == (NOW,)


def test_a_targets_failure_reaches_its_breaker_while_another_targets_conversation_still_runs(
    relays: list[OrderedRelay],
) -> None:
    # Given a batch with a failing conversation of crm and one of erp that answers only once crm's
    # failure is in crm's breaker (or after 5 s)
    r = ordered_relay(relays, ordered_target("crm"), ordered_target("erp"), answers={"a-0": 500})
    crm = target_key(INTEGRATION, "crm")
    folded_while_erp_ran: list[object] = []

    def crm_failures() -> int:
        return r.breakers.load(crm).consecutive_failures

    def erp_answers_late(event: str) -> None:
        if event == "x-0":
            try:
                folded_while_erp_ran.append(wait_until(crm_failures, what="crm's fold", timeout=5))
            except AssertionError:
                folded_while_erp_ran.append(0)

    r.on_request = erp_answers_late

    # When the batch runs
    r.batch(fifo_record("a", 0), fifo_record("x", 0, target_id="erp"))

    # Then crm's failure was folded while erp's conversation ran, and only then
    assert folded_while_erp_ran == [1]
    assert r.breakers.load(crm).consecutive_failures == 1


def test_out_of_time_holds_the_conversation_at_once_instead_of_re_sending_it(
    relays: list[OrderedRelay],
) -> None:
    r = ordered_relay(relays)
    a0, a1 = fifo_record("a", 0), fifo_record("a", 1)

    failed = r.batch(a0, a1, remaining_ms=1_000)

    assert failed == ids(a0, a1) and r.sent() == []
    assert r.ordered.holds == [(handles(a0, a1), 0)] and r.nothing_resent()


def test_when_the_dlq_is_unreachable_nothing_after_the_record_is_attempted_or_let_go(
    relays: list[OrderedRelay],
) -> None:
    r = ordered_relay(relays, answers={"g-0": 400})
    r.ordered.unavailable.add("dead_letter_in_order")
    refused, then = fifo_record("g", 0), fifo_record("g", 1)

    failed = r.batch(refused, then)

    assert failed == ids(refused, then) and r.sent() == ["g-0"]


def test_a_record_whose_target_is_unknown_is_dead_lettered_in_order_and_the_group_goes_on(
    relays: list[OrderedRelay],
) -> None:
    r = ordered_relay(relays)
    lost, then = fifo_record("g", 0, target_id="nobody"), fifo_record("g", 1)

    failed = r.batch(lost, then)

    assert failed == []
    assert [(d["group_id"], d["reason"]) for d in r.ordered.dead_letters] == [("g", DlqReason.UNKNOWN_TARGET)]
    assert r.sent() == ["g-1"]


def test_a_record_dead_lettered_without_an_attempt_says_the_attempts_made_not_its_receives(
    relays: list[OrderedRelay],
) -> None:
    # Given a record received for the fifth time (held four times, never attempted: the attempts
    # table has no failure for it), whose target is unknown
    r = ordered_relay(relays)
    lost = fifo_record("g", 0, target_id="nobody", receive_count=5)

    r.batch(lost)

    # Then its letter says 0 attempts, as the ordered lane counts them
    assert [(d["reason"], d["attempts"]) for d in r.ordered.dead_letters] == [(DlqReason.UNKNOWN_TARGET, 0)]


def test_the_targets_table_down_holds_the_conversation_from_the_record_it_could_not_resolve(
    relays: list[OrderedRelay],
) -> None:
    r = ordered_relay(relays)
    r.targets.unavailable = True
    a0, a1 = fifo_record("a", 0), fifo_record("a", 1)

    assert r.batch(a0, a1) == ids(a0, a1)
    assert r.sent() == [] and r.ordered.holds == [] and r.nothing_resent()


def test_a_record_whose_target_record_is_unreadable_holds_its_conversation_until_it_is_fixed(
    relays: list[OrderedRelay],
) -> None:
    # Given a conversation of a target whose record this release cannot read, and another target's
    r = ordered_relay(relays, ordered_target(), ordered_target("erp"))
    r.targets.unreadable[(INTEGRATION, "crm")] = "method: Input should be 'POST' or 'PUT'"
    a0, a1, b0 = fifo_record("a", 0), fifo_record("a", 1), fifo_record("b", 0, target_id="erp")

    # When the batch runs
    failed = r.batch(a0, a1, b0)

    # Then nothing goes to it, and its conversation is held together (not dropped, not dead-lettered),
    # saying why; the other target's conversation is delivered
    assert failed == ids(a0, a1) and r.sent() == ["b-0"]
    assert r.ordered.holds == [(handles(a0, a1), 60)] and r.ordered.dead_letters == []
    first, second = (line for line in r.audit_lines() if line["targetId"] == "crm")
    assert (first["outcome"], first["errorCode"]) == ("held", "configuration")
    assert first["error"] == "target record unreadable: method: Input should be 'POST' or 'PUT'"
    assert (second["errorCode"], second["error"]) == ("configuration", None)

    # When the record is fixed, the conversation goes on in order
    del r.targets.unreadable[(INTEGRATION, "crm")]
    assert r.batch(a0, a1) == [] and r.sent() == ["b-0", "a-0", "a-1"]


def test_ordered_records_reaching_a_dispatcher_without_the_ordered_path_are_left_on_their_queue(
    relays: list[OrderedRelay],
) -> None:
    r = ordered_relay(relays, with_ordered_path=False)
    a0 = fifo_record("a", 0)

    assert r.batch(a0) == ids(a0)
    assert r.sent() == [] and r.nothing_resent()


def routing_relay_with_a_slow_target(relays: list[OrderedRelay]) -> OrderedRelay:
    """A dispatcher that routes slow targets (the fast lane, with a slow queue) and whose ordered
    target's lane reads slow: what it does with ordered records must not change."""
    routing = {"DISPATCH_LANE": "fast", "SLOW_DELIVERY_QUEUE_URL": "https://sqs.example.com/slow"}
    r = ordered_relay(relays, environment=routing)
    slow = LaneState(DeliveryLane.SLOW, 1, NOW - 5)
    assert r.breakers.save_lane(target_key(INTEGRATION, "crm"), slow, expected_version=0)
    return r


def test_an_ordered_record_of_a_slow_target_is_delivered_in_its_conversation_not_routed(
    relays: list[OrderedRelay],
) -> None:
    r = routing_relay_with_a_slow_target(relays)
    a0, a1 = fifo_record("a", 0), fifo_record("a", 1)

    assert r.batch(a0, a1) == []

    assert r.sent() == ["a-0", "a-1"]
    assert r.queue.slow_lane == [] and r.nothing_resent()


def test_a_slow_ordered_target_whose_breaker_is_open_holds_its_conversation(
    relays: list[OrderedRelay],
) -> None:
    # The slow lane's routing reads the lane instead of claiming the breaker: were it applied to an
    # ordered record, the open breaker would be skipped and the record sent.
    r = routing_relay_with_a_slow_target(relays)
    r.open_breaker(until=NOW + 20)
    a0, a1 = fifo_record("a", 0), fifo_record("a", 1)

    assert sorted(r.batch(a0, a1)) == sorted(ids(a0, a1))

    assert r.sent() == [] and r.queue.slow_lane == [] and r.nothing_resent()
    assert [tuple(h) for h, _ in r.ordered.holds] == [tuple(handles(a0, a1))]
    assert {line["errorCode"] for line in r.audit_lines()} == {"breaker-open"}


def test_ordered_deliveries_and_dead_letters_are_archived_for_replay(relays: list[OrderedRelay]) -> None:
    # Given an ordered target whose receiver refuses one conversation's event for good (a permanent 4xx)
    ordered = ordered_relay(relays, ordered_target(attempts=1))
    ordered.answers["b-1"] = 400

    # When a batch holds two conversations' events
    ordered.batch(fifo_record("a", 1), fifo_record("a", 2), fifo_record("b", 1))

    # Then the event archive holds each event the batch attempted, delivered or dead-lettered, with
    # the ordered target's delivery id: what `relay deliveries replay` sends from
    archived = {r.event_id: r for r in ordered.archive.records(["2026-03-25"], containing="")}
    assert sorted(archived) == ["a-1", "a-2", "b-1"]
    assert all([d.target_id for d in r.deliveries] == ["crm"] for r in archived.values())
    assert json.loads(archived["a-2"].event_json or "") == {"id": "a-2", "seq": 2}


# --- a slow conversation and the rest of its batch ---------------------------------------------------


def all_deleted(r: OrderedRelay) -> list[str]:
    return [handle for call in r.ordered.deleted for handle in call]


def audit_objects_by_message(r: OrderedRelay) -> dict[str, list[str]]:
    """Message id -> the audit objects holding a line about it."""
    found: dict[str, list[str]] = {}
    for key, body in r.audit.objects.items():
        for line in body.splitlines():
            found.setdefault(json.loads(line)["messageId"], []).append(key)
    return found


def test_a_slow_conversation_does_not_keep_the_settled_ones_of_its_batch_from_the_queue(
    relays: list[OrderedRelay],
) -> None:
    # Given a batch in which one conversation's receiver is still answering when the others are done
    r = ordered_relay(relays, environment={"ORDERED_RELEASE_AFTER_MS": "0"})
    slow, fast0, fast1, other = (
        fifo_record("s", 0),
        fifo_record("f", 0),
        fifo_record("f", 1),
        fifo_record("o", 0),
    )
    released_while_slow_ran: list[object] = []

    def answer_slow_last(event: str) -> None:
        if event == "s-0":  # answers only once the other two conversations were released (or 10 s)
            wanted = set(handles(fast0, fast1, other))
            try:
                released_while_slow_ran.append(
                    wait_until(lambda: wanted <= set(all_deleted(r)), what="release", timeout=10)
                )
            except AssertionError:
                pass

    r.on_request = answer_slow_last

    # When the batch runs
    failed = r.batch(slow, fast0, fast1, other)

    # Then the settled conversations' records were deleted while the slow one was still running, so SQS
    # could hand out their next messages; the slow one's record was left to the event source
    assert failed == []
    assert released_while_slow_ran == [True]
    assert sorted(all_deleted(r)) == sorted(handles(fast0, fast1, other))
    # and their audit lines and archived events were written before the delete, each exactly once
    placed = audit_objects_by_message(r)
    assert sorted(placed) == sorted(ids(slow, fast0, fast1, other))
    assert all(len(keys) == 1 for keys in placed.values())
    assert "-early-" in placed[fast0["messageId"]][0] and "-early-" not in placed[slow["messageId"]][0]
    archived = [rec.event_id for rec in r.archive.records(["2026-03-25"], containing="")]
    assert sorted(archived) == ["f-0", "f-1", "o-0", "s-0"]


def test_a_batch_that_ends_in_time_deletes_nothing_itself(relays: list[OrderedRelay]) -> None:
    r = ordered_relay(relays, environment={"ORDERED_RELEASE_AFTER_MS": "60000"})

    failed = r.batch(fifo_record("a", 0), fifo_record("b", 0), fifo_record("b", 1))

    assert failed == [] and r.ordered.deleted == []  # the event source deletes them, at no extra call
    assert len(r.audit.objects) == 1 and len(r.archive.objects) == 1


def test_a_held_conversation_is_never_released(relays: list[OrderedRelay]) -> None:
    # Given a batch in which one conversation is held (a 503), a second settles after the hold and a
    # third is still running when the second is released: the release looks at the held conversation
    # while the batch runs
    r = ordered_relay(relays, answers={"h-0": 503}, environment={"ORDERED_RELEASE_AFTER_MS": "0"})
    held0, held1, settled, slow = (
        fifo_record("h", 0),
        fifo_record("h", 1),
        fifo_record("f", 0),
        fifo_record("s", 0),
    )

    def answer(event: str) -> None:
        if event == "f-0":
            wait_until(lambda: r.ordered.holds, what="the hold", timeout=10)
        elif event == "s-0":
            wait_until(lambda: set(handles(settled)) <= set(all_deleted(r)), what="f released", timeout=10)

    r.on_request = answer

    failed = r.batch(slow, held0, held1, settled)

    # Then the held conversation stays on the queue, in order, and nothing of it was deleted (the slow
    # one may be released early too, if the held conversation's run is still finishing when it ends)
    assert sorted(failed) == sorted(ids(held0, held1))
    deleted = all_deleted(r)
    assert set(handles(settled)) <= set(deleted) <= set(handles(settled, slow))
    assert set(handles(held0, held1)).isdisjoint(deleted)


def test_sqs_refusing_the_early_delete_loses_nothing(relays: list[OrderedRelay]) -> None:
    r = ordered_relay(relays, environment={"ORDERED_RELEASE_AFTER_MS": "0"})
    r.ordered.unavailable.add("delete")
    slow, fast = fifo_record("s", 0), fifo_record("f", 0)
    r.on_request = lambda event: (
        wait_until(lambda: r.audit.objects, what="the early audit", timeout=10) if event == "s-0" else None
    )

    failed = r.batch(slow, fast)

    # The event source deletes both when the batch returns; each is audited once
    assert failed == []
    assert all(len(keys) == 1 for keys in audit_objects_by_message(r).values())
    assert sorted(audit_objects_by_message(r)) == sorted(ids(slow, fast))
