"""Finding and replaying deliveries (relay.logic.deliveries) against in-memory ports.

The audit lines and archive records are the ones a real dispatcher writes (relay.logic.dispatch with
relay.testing's fakes), so a timeline or a replay that misreads them fails here.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_dispatch_archive import SECRET_TEXT, Archiving, task_record
from test_dispatch_engine import INTEGRATION, NOW, always, answer, make_target

from relay.errors import DependencyUnavailable, ReplayRefused
from relay.logic.deliveries.lookup import find_events
from relay.logic.deliveries.operator import switch_target
from relay.logic.deliveries.replay import plan_replay, run_replay
from relay.logic.deliveries.timeline import days_back, timeline
from relay.models.archive import archive_key
from relay.models.delivery import DeliveryTask
from relay.models.http import HttpResult
from relay.models.targets import Ordering
from relay.testing.fakes import InMemoryAuditSink, InMemoryDeliveryQueue, InMemoryTargets

DAY = "2026-03-25"
WHEN = datetime.fromtimestamp(NOW, UTC)


def ids(event_id: str, target_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event_id}/{target_id}"))


@pytest.fixture
def history() -> Iterator[Archiving]:
    """Two events of conversation conv-1 to two targets: e-1 delivered to crm at once and to erp on its
    second attempt (its first answered 503), e-2 delivered to both; e-3, of another conversation, to crm."""
    a = Archiving(first_erp_request_fails(), "crm", "erp")
    a.batch(task_record("e-1", "crm"), task_record("e-1", "erp"), invocation_id="inv-1")
    a.clock.now += 5
    a.batch(task_record("e-1", "erp", receive_count=2), invocation_id="inv-2")
    a.clock.now += 5
    a.batch(
        task_record("e-2", "crm"),
        task_record("e-2", "erp"),
        task_record("e-3", "crm", conversation_id="conv-9"),
        invocation_id="inv-3",
    )
    yield a
    a.dispatcher.close()


def first_erp_request_fails() -> Any:
    erp_requests: list[str] = []
    lock = threading.Lock()

    def answer_with(method: str, url: str, headers: Any, body: bytes) -> HttpResult:
        with lock:
            if "erp" in url:
                erp_requests.append(url)
            fail = erp_requests == [url]
        return answer(503 if fail else 200)

    return answer_with


def show(a: Archiving, ident: str) -> Any:
    return timeline(a.audit.lines([DAY], containing=ident), ident, [DAY])


def only_attempt(answer_with: Any, event_id: str) -> dict[str, Any]:
    """The one timeline line of ``event_id``, sent once to a target answering with ``answer_with``."""
    a = Archiving(answer_with)
    try:
        a.batch(task_record(event_id))
        (line,) = show(a, event_id).attempts
    finally:
        a.dispatcher.close()
    return line


# --- timeline -------------------------------------------------------------------------------------------


def test_an_events_timeline_has_every_attempt_for_every_target_in_time_order(history: Archiving) -> None:
    found = show(history, "e-1")

    assert [
        (line["targetId"], line["attempt"], line["outcome"], line["status"]) for line in found.attempts
    ] in (
        [("crm", 1, "delivered", 200), ("erp", 1, "retry-scheduled", 503), ("erp", 2, "delivered", 200)],
        [("erp", 1, "retry-scheduled", 503), ("crm", 1, "delivered", 200), ("erp", 2, "delivered", 200)],
    )
    assert [line["startedAt"] for line in found.attempts] == sorted(
        line["startedAt"] for line in found.attempts
    )
    assert all(line["breakerState"] == "closed" and line["latencyMs"] is not None for line in found.attempts)
    summaries = {s["targetId"]: s for s in found.deliveries()}
    assert summaries["erp"]["attempts"] == 2 and summaries["erp"]["lastOutcome"] == "delivered"
    assert summaries["crm"]["deliveryIds"] == [ids("e-1", "crm")]


def test_a_delivery_id_shows_that_delivery_only(history: Archiving) -> None:
    found = show(history, ids("e-1", "erp"))

    assert {(line["eventId"], line["targetId"]) for line in found.attempts} == {("e-1", "erp")}
    assert len(found.attempts) == 2


def test_a_conversation_id_shows_every_event_of_the_conversation(history: Archiving) -> None:
    found = show(history, "conv-1")

    assert {line["eventId"] for line in found.attempts} == {"e-1", "e-2"}
    assert {(s["eventId"], s["targetId"]) for s in found.deliveries()} == {
        ("e-1", "crm"),
        ("e-1", "erp"),
        ("e-2", "crm"),
        ("e-2", "erp"),
    }


def test_an_event_id_shows_its_own_event_even_when_it_is_also_another_events_conversation_id(
    history: Archiving,
) -> None:
    # Given another event whose conversation id is the text of e-2's event id
    history.batch(task_record("e-9", "crm", conversation_id="e-2"), invocation_id="inv-4")

    # Then `show e-2` is e-2's timeline alone, as `replay e-2` reads the id; and the other event's own
    # id still shows it
    assert {line["eventId"] for line in show(history, "e-2").attempts} == {"e-2"}
    assert {line["eventId"] for line in show(history, "e-9").attempts} == {"e-9"}


def test_a_timeline_shows_dead_letter_reasons_and_never_a_response_body() -> None:
    line = only_attempt(always(400), "e-9")
    assert (line["outcome"], line["dlqReason"], line["errorCode"]) == (
        "dead-lettered",
        "permanent-status",
        "http-400",
    )
    assert "responseBody" not in line


def test_a_timeline_carries_the_errors_text_which_says_what_the_code_does_not() -> None:
    # Given an attempt whose TLS handshake was refused: its code is a connection error like any other
    tls_refused = "SSLError(CERTIFICATE_VERIFY_FAILED)"
    line = only_attempt(always(None, error_code="connection-error", error=tls_refused), "e-tls")

    # Then the timeline says which: the code, and the relay's text for it
    assert (line["outcome"], line["errorCode"], line["error"]) == (
        "retry-scheduled",
        "connection-error",
        tls_refused,
    )


def test_an_unknown_id_has_an_empty_timeline(history: Archiving) -> None:
    assert not show(history, "nothing-like-it").found


@pytest.mark.parametrize(
    ("now", "since", "dates"),
    [
        (datetime(2026, 3, 25, 1, 0, tzinfo=UTC), timedelta(hours=24), ["2026-03-24", "2026-03-25"]),
        (datetime(2026, 3, 25, 1, 0, tzinfo=UTC), timedelta(minutes=30), ["2026-03-25"]),
        # A batch that started before midnight files its lines under the day before, however late
        # within its run (up to 15 minutes) they were written.
        (datetime(2026, 3, 25, 0, 10, tzinfo=UTC), timedelta(minutes=5), ["2026-03-24", "2026-03-25"]),
        (datetime(2026, 3, 25, 0, 21, tzinfo=UTC), timedelta(minutes=5), ["2026-03-25"]),
        (
            datetime(2026, 3, 2, 12, 0, tzinfo=UTC),
            timedelta(days=3),
            ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"],
        ),
    ],
)
def test_since_covers_every_utc_day_partition_it_reaches_into(
    now: datetime, since: timedelta, dates: list[str]
) -> None:
    assert days_back(now, since) == dates


# --- archive lookup ---------------------------------------------------------------------------------------


def test_an_event_archived_by_several_invocations_is_found_once_with_all_its_targets(
    history: Archiving,
) -> None:
    (event,) = find_events(history.archive.records([DAY], containing="e-1"), "e-1")

    assert (event.integration_id, event.event_id, event.conversation_id) == (INTEGRATION, "e-1", "conv-1")
    assert {t: str(d) for t, d in event.deliveries.items()} == {
        "crm": ids("e-1", "crm"),
        "erp": ids("e-1", "erp"),
    }
    assert json.loads(event.event_json or "") == {"id": "e-1", "text": SECRET_TEXT}
    assert event.named_delivery is None


def test_a_delivery_id_names_its_event_and_its_target(history: Archiving) -> None:
    ident = ids("e-2", "erp")
    (event,) = find_events(history.archive.records([DAY], containing=ident), ident)

    assert event.event_id == "e-2"
    assert event.named_delivery is not None and event.named_delivery[0] == "erp"


def test_a_conversation_id_finds_each_of_its_events(history: Archiving) -> None:
    events = find_events(history.archive.records([DAY], containing="conv-1"), "conv-1")
    assert sorted(e.event_id for e in events) == ["e-1", "e-2"]


def test_an_event_id_names_its_own_event_even_when_it_is_also_another_events_conversation_id(
    history: Archiving,
) -> None:
    # Given another event whose conversation id is the text of e-2's event id
    history.batch(task_record("e-9", "crm", conversation_id="e-2"), invocation_id="inv-4")

    # Then e-2 names e-2 alone (a replay by it is not refused as naming two events)
    (event,) = find_events(history.archive.records([DAY], containing="e-2"), "e-2")
    assert event.event_id == "e-2"


# --- replay ---------------------------------------------------------------------------------------------


def plan(history: Archiving, ident: str, **options: Any) -> Any:
    targets = options.pop("targets", None) or InMemoryTargets(make_target("crm"), make_target("erp"))
    events = find_events(history.archive.records([DAY], containing=ident), ident)
    return plan_replay(events, ident, searched=DAY, targets=targets, archive=history.archive, **options)


def test_a_replay_to_an_ordered_target_says_it_goes_outside_the_conversations_order(
    history: Archiving,
) -> None:
    ordered = make_target("crm", ordering=Ordering.CONVERSATION)

    replay = plan(history, "e-2", targets=InMemoryTargets(ordered, make_target("erp")))

    # Then the operator is told which targets it bypasses the order of (the CLI prints it)
    assert replay.out_of_order == ("crm",) and replay.to_json()["outOfOrder"] == ["crm"]
    assert plan(history, "e-2").out_of_order == ()


def test_a_replay_of_an_event_without_a_conversation_goes_outside_no_order(history: Archiving) -> None:
    # Given an event without a conversation (an EventBridge event may lack one), delivered unordered
    history.batch(task_record("e-9", "crm", conversation_id=None), invocation_id="inv-9")
    ordered = make_target("crm", ordering=Ordering.CONVERSATION)

    replay = plan(history, "e-9", targets=InMemoryTargets(ordered))

    # Then its replay is not said to bypass an order it never had
    assert replay.out_of_order == () and replay.to_json()["outOfOrder"] == []
    assert [task.target_id for task in replay.tasks] == ["crm"]


@pytest.mark.parametrize("damaged", ['{"eventId": "e-7", "invoc', '{"schemaVersion": 99, "eventId": "e-7"}'])
def test_a_replay_of_an_event_only_unreadable_archive_lines_name_says_so(
    history: Archiving, damaged: str
) -> None:
    # Given an archive object holding the event that is damaged, or from a release this one cannot read
    history.archive.objects[archive_key(DAY, "inv-damaged")] = damaged.encode() + b"\n"

    found = history.archive.records([DAY], containing="e-7")

    # Then the refusal names what was found instead of guessing at retention or archiving being off
    assert (list(found), found.unreadable) == ([], 1)
    with pytest.raises(ReplayRefused, match="1 archive line names it but is no archive record") as refused:
        plan(history, "e-7", unreadable_lines=found.unreadable)
    assert "ArchiveRetentionDays" not in str(refused.value)


def test_a_replay_goes_to_every_target_of_the_event_with_its_delivery_ids(history: Archiving) -> None:
    replay = plan(history, "e-1")

    assert [(t.target_id, str(t.delivery_id)) for t in replay.tasks] == [
        ("crm", ids("e-1", "crm")),
        ("erp", ids("e-1", "erp")),
    ]
    assert all(json.loads(t.event_json or "") == {"id": "e-1", "text": SECRET_TEXT} for t in replay.tasks)
    assert replay.replaced == {}


def test_a_replay_by_delivery_id_or_target_goes_to_that_target_only(history: Archiving) -> None:
    by_delivery = plan(history, ids("e-1", "erp"))
    by_target = plan(history, "e-1", target_id="crm")

    assert [t.target_id for t in by_delivery.tasks] == ["erp"]
    assert [(t.target_id, str(t.delivery_id)) for t in by_target.tasks] == [("crm", ids("e-1", "crm"))]


def test_new_id_gives_each_replayed_delivery_a_fresh_id_and_remembers_the_old(history: Archiving) -> None:
    fresh = uuid.UUID("00000000-0000-4000-8000-000000000001")
    replay = plan(history, "e-1", target_id="erp", new_id=True, new_uuid=lambda: fresh)

    (task,) = replay.tasks
    assert task.delivery_id == fresh
    assert str(replay.replaced["erp"]) == ids("e-1", "erp")


@pytest.mark.parametrize(
    ("ident", "options", "why"),
    [
        ("e-404", {}, "is in no archived event of 2026-03-25"),
        ("conv-1", {}, "names 2 events (e-1, e-2)"),
        (
            "e-3",
            {"target_id": "erp"},
            "had no delivery to target erp (its targets: crm); a delivery is archived once a dispatcher "
            "attempts or dead-letters it, so one still held back (breaker open, rate limit",
        ),
        (ids("e-1", "erp"), {"target_id": "crm"}, "went to target erp, not crm"),
        ("e-1", {"targets": InMemoryTargets(make_target("crm"))}, "target erp is unknown"),
        (
            "e-1",
            {"targets": InMemoryTargets(make_target("crm"), make_target("erp", enabled=False))},
            "target erp is disabled: enable it first (relay targets enable erp)",
        ),
    ],
)
def test_what_cannot_be_replayed_is_refused_saying_why(
    history: Archiving, ident: str, options: dict[str, Any], why: str
) -> None:
    with pytest.raises(ReplayRefused, match=why.replace("(", r"\(").replace(")", r"\)")):
        plan(history, ident, **options)


def test_a_whole_event_replay_refused_for_one_target_names_the_others_to_replay_with_target(
    history: Archiving,
) -> None:
    # An event with two targets, one of them disabled (after a 410, say): the replay to both is
    # refused, and the refusal says how to send it to the one that can take it
    targets = InMemoryTargets(make_target("crm"), make_target("erp", enabled=False))

    with pytest.raises(ReplayRefused) as refused:
        plan(history, "e-1", targets=targets)

    assert str(refused.value) == (
        "target erp is disabled: enable it first (relay targets enable erp), "
        "or replay to the event's other targets one at a time with --target (crm)"
    )


def test_a_delivery_id_and_another_target_are_refused_as_that_deliverys_target() -> None:
    # An event whose two deliveries went out in different batches (different archive records)
    a = Archiving(always(200), "crm", "erp")
    try:
        a.batch(task_record("e-5", "crm"), invocation_id="inv-a")
        a.clock.now += 5
        a.batch(task_record("e-5", "erp"), invocation_id="inv-b")

        # Named by crm's delivery id, with --target erp: the conflict is named, not "no delivery to erp"
        with pytest.raises(ReplayRefused, match=f"delivery {ids('e-5', 'crm')} went to target crm, not erp"):
            plan(a, ids("e-5", "crm"), target_id="erp")
        assert [t.target_id for t in plan(a, "e-5", target_id="erp").tasks] == ["erp"]
    finally:
        a.dispatcher.close()


def test_a_claim_checked_event_whose_claim_check_expired_is_refused() -> None:
    a = Archiving(always(200))
    try:
        ref = a.claim_checks.put("events/int-1/big.json", b'{"id":"big"}')
        a.batch(task_record("big", event_ref=ref))
        assert [t.event_ref for t in plan(a, "big").tasks] == [ref]  # still there: replayed by reference
        a.archive.expired.add(ref)
        with pytest.raises(
            ReplayRefused, match="claim check .* is gone: .* ExpireClaimChecks lifecycle rule"
        ):
            plan(a, "big")
    finally:
        a.dispatcher.close()


def test_running_a_replay_queues_the_tasks_and_audits_who_did_it(history: Archiving) -> None:
    replay = plan(history, "e-1", target_id="erp")
    queue, audit, later = InMemoryDeliveryQueue(), history.audit, WHEN + timedelta(minutes=1)

    audited = run_replay(
        replay, queue=queue, audit=audit, actor="arn:aws:iam::1:user/ops", now=later, operation_id="op1"
    )

    (body,) = queue.bodies
    assert body.isascii()
    task = DeliveryTask.model_validate_json(body)
    assert (task.target_id, str(task.delivery_id), task.conversation_id) == (
        "erp",
        ids("e-1", "erp"),
        "conv-1",
    )
    assert json.loads(task.event_json or "") == {"id": "e-1", "text": SECRET_TEXT}
    key = f"audit/date={DAY}/target=erp/operator-op1.jsonl"
    (record,) = audited.records
    assert audited.unwritten == [] and json.loads(audit.objects[key]) == record
    assert (record["outcome"], record["actor"], record["eventId"], record["deliveryId"]) == (
        "replayed",
        "arn:aws:iam::1:user/ops",
        "e-1",
        ids("e-1", "erp"),
    )
    assert SECRET_TEXT not in audit.objects[key].decode()
    # ... and the replay shows in the event's timeline, after its attempts
    assert show(history, "e-1").attempts[-1]["outcome"] == "replayed"


def test_the_old_delivery_id_shows_the_replay_that_replaced_it(history: Archiving) -> None:
    # Given a delivery replayed under a fresh id (--new-id)
    old = ids("e-1", "erp")
    replay = plan(history, "e-1", target_id="erp", new_id=True)
    later = WHEN + timedelta(minutes=1)
    run_replay(replay, queue=InMemoryDeliveryQueue(), audit=history.audit, actor="ops", now=later)
    (new,) = [task.delivery_id for task in replay.tasks]

    # When an operator looks the old delivery id up
    found = show(history, old)

    # Then its attempts are followed by the replay, which names the new id to follow
    last = found.attempts[-1]
    assert (last["outcome"], last["replayOf"], last["deliveryId"]) == ("replayed", old, str(new))
    assert {line["deliveryId"] for line in found.attempts[:-1]} == {old}


def test_a_replay_under_a_new_id_is_summarised_as_its_own_delivery(history: Archiving) -> None:
    # Given erp's delivery of e-1 (two attempts) replayed under a fresh id, and the replay delivered
    old = ids("e-1", "erp")
    replay = plan(history, "e-1", target_id="erp", new_id=True)
    queue = InMemoryDeliveryQueue()
    run_replay(replay, queue=queue, audit=history.audit, actor="ops", now=WHEN + timedelta(minutes=1))
    history.clock.sleep(120)  # not a wait: moves the manual clock past the replay
    (body,) = queue.bodies
    history.batch({**task_record("e-1", "erp"), "body": body}, invocation_id="inv-replay")

    # When the event is looked up
    erp = [s for s in show(history, "e-1").deliveries() if s["targetId"] == "erp"]

    # Then the replay's attempt is not counted as a third attempt of the original
    (new,) = [task.delivery_id for task in replay.tasks]
    assert [(s["deliveryIds"], s["attempts"], s["lastOutcome"], s["replayOf"]) for s in erp] == [
        ([old], 2, "delivered", None),
        ([str(new)], 1, "delivered", old),
    ]


def test_a_replay_under_the_same_id_counts_its_attempts_afresh(history: Archiving) -> None:
    from relay.cli.deliveries_cmd import format_timeline

    # Given erp's delivery of e-1 (two attempts) replayed under the same id, and the replay delivered
    replay = plan(history, "e-1", target_id="erp")
    queue = InMemoryDeliveryQueue()
    run_replay(replay, queue=queue, audit=history.audit, actor="ops", now=WHEN + timedelta(minutes=1))
    history.clock.sleep(120)  # not a wait: moves the manual clock past the replay
    (body,) = queue.bodies
    history.batch({**task_record("e-1", "erp"), "body": body}, invocation_id="inv-replay")

    # When the event is looked up
    found = show(history, "e-1")
    (erp,) = [s for s in found.deliveries() if s["targetId"] == "erp"]

    # Then the summary counts the replay's attempt as its first, as the dispatcher did (fresh counters),
    # and says how many there were in all
    summary = (erp["attempts"], erp["attemptsInAll"], erp["replays"], erp["lastOutcome"])
    assert summary == (1, 3, 1, "delivered")
    assert (
        f"event e-1 to erp: delivered after 1 attempt since its last replay (3 in all); "
        f"deliveryId {ids('e-1', 'erp')}"
    ) in format_timeline(found).splitlines()


def test_two_replays_delivered_side_by_side_are_one_attempt_since_the_last_replay(history: Archiving) -> None:
    # Given erp's delivery of e-1 (two attempts) replayed twice under the same id, both replays queued
    # before either is delivered (two operators, or a command run twice)
    queue = InMemoryDeliveryQueue()
    for minute in (1, 2):
        replay = plan(history, "e-1", target_id="erp")
        run_replay(
            replay, queue=queue, audit=history.audit, actor="ops", now=WHEN + timedelta(minutes=minute)
        )
    history.clock.sleep(180)  # not a wait: moves the manual clock past both replays
    for n, body in enumerate(queue.bodies):
        history.batch({**task_record("e-1", "erp"), "body": body}, invocation_id=f"inv-replay-{n}")

    # When the event is looked up
    (erp,) = [s for s in show(history, "e-1").deliveries() if s["targetId"] == "erp"]

    # Then each replay's copy was the dispatcher's attempt 1: the last one took 1 attempt, not 2
    assert (erp["attempts"], erp["attemptsInAll"], erp["replays"], erp["lastOutcome"]) == (
        1,
        4,
        2,
        "delivered",
    )


def test_a_redriven_delivery_counts_its_attempts_afresh_as_the_dispatcher_does() -> None:
    from relay.cli.deliveries_cmd import format_timeline

    # Given erp answering 503, then 400 (dead-lettered at its second attempt), then 200 to the copy a
    # DLQ redrive sent back with fresh counters (a redrive writes no audit line of its own)
    answers = iter((503, 400, 200))
    a = Archiving(lambda method, url, headers, body: answer(next(answers)), "erp")
    try:
        a.batch(task_record("e-1", "erp"), invocation_id="inv-1")
        a.clock.now += 5
        a.batch(task_record("e-1", "erp", receive_count=2), invocation_id="inv-2")
        a.clock.now += 600
        a.batch(task_record("e-1", "erp"), invocation_id="inv-redriven")
        found = show(a, "e-1")
    finally:
        a.dispatcher.close()

    # Then the table's ATTEMPT column and the summary agree: 1 attempt since the dead letter, 3 in all
    assert [(line["attempt"], line["outcome"]) for line in found.attempts] == [
        (1, "retry-scheduled"),
        (2, "dead-lettered"),
        (1, "delivered"),
    ]
    (erp,) = found.deliveries()
    assert (erp["attempts"], erp["attemptsInAll"], erp["redrives"], erp["restartedBy"]) == (
        1,
        3,
        1,
        "redrive",
    )
    assert (
        f"event e-1 to erp: delivered after 1 attempt since it was dead-lettered (3 in all); "
        f"deliveryId {ids('e-1', 'erp')}"
    ) in format_timeline(found).splitlines()


def test_a_replayed_task_is_delivered_with_the_same_webhook_id_and_text(history: Archiving) -> None:
    replay = plan(history, "e-1", target_id="crm")
    queue = InMemoryDeliveryQueue()
    run_replay(replay, queue=queue, audit=InMemoryAuditSink(), actor="me", now=WHEN)
    (original,) = [
        h for _, url, h, _ in history.http.requests if "crm" in url and h["webhook-id"] == ids("e-1", "crm")
    ]

    again = Archiving(always(200))
    try:
        again.batch({**task_record("unused"), "body": queue.bodies[0]})
        ((_, _, headers, body),) = again.http.requests
    finally:
        again.dispatcher.close()
    assert headers["webhook-id"] == original["webhook-id"] == ids("e-1", "crm")
    assert json.dumps({"id": "e-1", "text": SECRET_TEXT}).encode() in body


def test_an_audit_record_that_cannot_be_written_is_reported_after_the_replay_is_queued(
    history: Archiving,
) -> None:
    replay = plan(history, "e-1")
    queue, audit = InMemoryDeliveryQueue(), InMemoryAuditSink()
    audit.unavailable = True

    audited = run_replay(replay, queue=queue, audit=audit, actor="me", now=WHEN)

    assert len(queue.bodies) == 2 and audited.unwritten == ["crm", "erp"]
    assert [r["outcome"] for r in audited.records] == ["replayed", "replayed"]


def test_nothing_is_audited_when_the_replay_cannot_be_queued(history: Archiving) -> None:
    class DownQueue:
        def send(self, bodies: Any) -> None:
            raise DependencyUnavailable("delivery queue unavailable (test)")

    audit = InMemoryAuditSink()
    with pytest.raises(DependencyUnavailable):
        run_replay(plan(history, "e-1"), queue=DownQueue(), audit=audit, actor="me", now=WHEN)
    assert not any("operator-" in key for key in audit.objects)


# --- targets enable / disable -------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_switching_a_target_changes_it_and_audits_the_change(enabled: bool) -> None:
    targets, audit = InMemoryTargets(make_target("erp", enabled=not enabled)), InMemoryAuditSink()

    audited = switch_target(
        targets, audit, make_target("erp"), enabled=enabled, actor="os-user:ops", now=WHEN, operation_id="op2"
    )
    (record,) = audited.records

    assert targets.targets[(INTEGRATION, "erp")].enabled is enabled
    assert json.loads(audit.objects[f"audit/date={DAY}/target=erp/operator-op2.jsonl"]) == record
    assert (record["outcome"], record["actor"]) == (
        "target-enabled" if enabled else "target-disabled",
        "os-user:ops",
    )


# --- the table `relay deliveries show` prints ----------------------------------------------------------


def test_the_table_names_the_event_only_when_it_shows_several(history: Archiving) -> None:
    from relay.cli.deliveries_cmd import format_timeline

    one = format_timeline(show(history, "e-1")).splitlines()
    several = format_timeline(show(history, "conv-1")).splitlines()

    assert one[0].split() == [
        "TIME",
        "TARGET",
        "ATTEMPT",
        "OUTCOME",
        "STATUS",
        "LATENCY_MS",
        "ERROR",
        "DLQ_REASON",
        "BREAKER",
        "NOTE",
        "ERROR_DETAIL",
    ]
    assert several[0].split()[:3] == ["TIME", "EVENT", "TARGET"]
    assert "retry-scheduled" in one[1] + one[2] and "retry in " in one[1] + one[2]
    assert f"event e-1 to erp: delivered after 2 attempts; deliveryId {ids('e-1', 'erp')}" in one


def _audit_line(**fields: Any) -> dict[str, Any]:
    """One audit line of event e-1 to target erp; ``fields`` say what happened."""
    return {
        "startedAt": "2026-12-02T10:00:00.000Z",
        "eventId": "e-1",
        "deliveryId": "d-1",
        "integrationId": INTEGRATION,
        "targetId": "erp",
        "attempt": 1,
        **fields,
    }


@pytest.mark.parametrize(("seconds", "note"), [(0, "retry at once"), (3, "retry in 3 s")])
def test_the_note_says_when_a_retry_comes(seconds: int, note: str) -> None:
    from relay.cli.deliveries_cmd import format_timeline

    line = _audit_line(outcome="retry-scheduled", status=503, retryInSeconds=seconds)
    header, row, *_ = format_timeline(timeline([line], "e-1", ["2026-12-02"])).splitlines()
    assert row[header.index("NOTE") : header.index("ERROR_DETAIL")].strip() == note


@pytest.mark.parametrize(
    ("outcome", "note"),
    [
        ("blocked", "blocked in its conversation, in no DLQ; retry in 3600 s"),
        ("left-for-redelivery", "left in its queue, in no DLQ"),
        ("dead-lettered", "-"),
    ],
)
def test_the_note_says_a_record_with_a_dlq_reason_is_in_no_dlq_unless_dead_lettered(
    outcome: str, note: str
) -> None:
    from relay.cli.deliveries_cmd import format_timeline

    line = _audit_line(
        outcome=outcome,
        status=400,
        dlqReason="permanent-status",
        retryInSeconds=3600 if outcome == "blocked" else None,
    )
    header, row, *_ = format_timeline(timeline([line], "e-1", ["2026-12-02"])).splitlines()
    assert row[header.index("DLQ_REASON") : header.index("BREAKER")].strip() == "permanent-status"
    assert row[header.index("NOTE") : header.index("ERROR_DETAIL")].strip() == note


def test_the_table_shows_the_errors_text_last_with_control_characters_escaped() -> None:
    from relay.cli.deliveries_cmd import format_timeline

    a = Archiving(
        always(None, error_code="connection-error", error="SSLError(CERTIFICATE_VERIFY_FAILED)\x1b[2J")
    )
    try:
        a.batch(task_record("e-tls"))
        header, row, *_ = format_timeline(show(a, "e-tls")).splitlines()
    finally:
        a.dispatcher.close()

    assert header.split()[-2:] == ["NOTE", "ERROR_DETAIL"]
    assert row[header.index("ERROR_DETAIL") :] == "SSLError(CERTIFICATE_VERIFY_FAILED)\\x1b[2J"
    assert "connection-error" in row[: header.index("DLQ_REASON")]
