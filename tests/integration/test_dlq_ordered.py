"""`relay dlq redrive --queue ordered` on moto: an ordered DLQ's letters go back to the ordered queue in
their conversation's order, and never past a letter that stays behind."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relay.adapters.sqs import SqsQueues
from relay.cli import main
from relay.local.aws_stack import LocalResources
from relay.logic.dlq import RedriveFilter, RedriveOptions, redrive
from relay.models.delivery import DeadLetterNote, DeliveryTask, DlqReason
from relay.models.queue import GroupPlacement
from relay.wiring import aws_client

pytestmark = pytest.mark.integration


def task(event_id: str, accepted: datetime | None = None) -> DeliveryTask:
    """A task for event ``event_id``, which the intake accepted at ``accepted`` (now if not given)."""
    return DeliveryTask(
        delivery_id=uuid.uuid4(),
        integration_id="i-1",
        target_id="t-1",
        event_id=event_id,
        received_at=accepted or datetime.now(UTC),
        event_json="{}",
    )


def letter(
    queues: SqsQueues, group: str, seq: int, reason: DlqReason, *, accepted: datetime | None = None
) -> None:
    """Dead-letters event ``{group}-{seq}`` in its conversation, accepted by the intake at ``accepted``
    (now if not given)."""
    queues.dead_letter_in_order(
        GroupPlacement(group, f"m-{group}-{seq}"),
        task(f"{group}-{seq}", accepted).model_dump_json(by_alias=True, exclude_none=True),
        {},
        DeadLetterNote(reason, 3, integration_id="i-1", target_id="t-1"),
    )


def drain(queue_url: str) -> list[tuple[str, str]]:
    """(group, event id) of every message, in the order SQS hands them out, deleting each (group "" in
    a standard queue)."""
    sqs, found = aws_client("sqs"), []
    while True:
        messages: list[dict[str, Any]] = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            return found
        for message in messages:
            event_id = DeliveryTask.model_validate_json(message["Body"]).event_id
            found.append((message["Attributes"].get("MessageGroupId", ""), event_id))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def test_redrive_keeps_each_conversations_order_and_stops_at_a_letter_left_behind(
    aws_stack: LocalResources,
) -> None:
    queues = SqsQueues(
        aws_client("sqs"),
        ordered_queue_url=aws_stack.ordered_queue_url,
        ordered_dead_letter_queue_url=aws_stack.ordered_dead_letter_queue_url,
    )
    for seq, reason in enumerate([DlqReason.EXHAUSTED, DlqReason.PERMANENT_STATUS, DlqReason.EXHAUSTED]):
        letter(queues, "a", seq, reason)
    for seq in range(3):
        letter(queues, "b", seq, DlqReason.EXHAUSTED)

    # Only the exhausted ones: a-1 stays behind, so a-2 must not overtake it.
    result = redrive(
        queues,
        aws_stack.ordered_dead_letter_queue_url,
        aws_stack.ordered_queue_url,
        RedriveOptions(filter=RedriveFilter.of(reasons=["exhausted"]), wait_seconds=0),
    )

    assert result.completed and result.moved == 4
    moved = drain(aws_stack.ordered_queue_url)
    assert [event for group, event in moved if group == "a"] == ["a-0"]
    assert [event for group, event in moved if group == "b"] == ["b-0", "b-1", "b-2"]
    assert sorted(drain(aws_stack.ordered_dead_letter_queue_url)) == [("a", "a-1"), ("a", "a-2")]


def test_a_letter_that_failed_again_behind_later_ones_goes_back_ahead_of_them(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given conversation a's second and fifth events dead-lettered, then the second redriven alone
    # (--max 1) and dead-lettered again: the FIFO DLQ now holds a-5 ahead of a-2
    queues = SqsQueues(
        aws_client("sqs"), ordered_dead_letter_queue_url=aws_stack.ordered_dead_letter_queue_url
    )
    first = datetime.now(UTC)
    letter(queues, "a", 5, DlqReason.PERMANENT_STATUS, accepted=first + timedelta(seconds=3))
    letter(queues, "a", 2, DlqReason.PERMANENT_STATUS, accepted=first)
    letter(queues, "b", 0, DlqReason.EXHAUSTED, accepted=first + timedelta(seconds=1))

    # When the operator redrives the ordered DLQ, as the command does by default
    code = main(["dlq", "redrive", "--queue", "ordered", "--format", "json", "--no-progress"])
    summary = json.loads(capsys.readouterr().out)

    # Then the conversation goes back in the order its events were accepted, re-sent (SQS's move task
    # would keep the DLQ's order), and the ordered DLQ is empty
    assert code == 0 and summary["moved"] == 3 and summary["mode"] == "resend", summary
    assert summary["fallbackReason"] is None
    moved = drain(aws_stack.ordered_queue_url)
    assert [event for group, event in moved if group == "a"] == ["a-2", "a-5"]
    assert drain(aws_stack.ordered_dead_letter_queue_url) == []


@pytest.mark.parametrize("dry_run", [False, True])
def test_redriving_into_a_queue_of_the_other_kind_is_refused_before_anything_moves(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    # Given a letter in each DLQ
    queues = SqsQueues(
        aws_client("sqs"), ordered_dead_letter_queue_url=aws_stack.ordered_dead_letter_queue_url
    )
    letter(queues, "a", 0, DlqReason.EXHAUSTED)
    aws_client("sqs").send_message(
        QueueUrl=aws_stack.dead_letter_queue_url, MessageBody=task("s-0").model_dump_json(by_alias=True)
    )
    flags = ["--dry-run"] if dry_run else []

    # When the ordered letters are sent to the standard queue, and the standard ones to the FIFO queue
    to_standard = main(
        ["dlq", "redrive", "--queue", "ordered", "--queue-url", aws_stack.delivery_queue_url, *flags]
    )
    into_standard = capsys.readouterr()
    to_fifo = main(["dlq", "redrive", "--queue-url", aws_stack.ordered_queue_url, *flags])
    into_fifo = capsys.readouterr()

    # Then both could not run (a standard queue would strand an ordered task, which no dispatcher there
    # delivers), say why, and nothing moved
    assert (to_standard, to_fifo) == (3, 3)
    assert "only to a FIFO queue" in into_standard.err and aws_stack.delivery_queue_url in into_standard.err
    assert "only to a standard queue" in into_fifo.err and aws_stack.ordered_queue_url in into_fifo.err
    assert [event for _, event in drain(aws_stack.ordered_dead_letter_queue_url)] == ["a-0"]
    assert len(drain(aws_stack.dead_letter_queue_url)) == 1
    assert drain(aws_stack.ordered_queue_url) == []
    assert drain(aws_stack.delivery_queue_url) == []


def test_a_repeated_redrive_of_a_letter_not_yet_deleted_does_not_queue_it_twice(
    aws_stack: LocalResources,
) -> None:
    queues = SqsQueues(
        aws_client("sqs"), ordered_dead_letter_queue_url=aws_stack.ordered_dead_letter_queue_url
    )
    letter(queues, "a", 0, DlqReason.EXHAUSTED)
    (received,) = queues.receive(
        aws_stack.ordered_dead_letter_queue_url, visibility_seconds=0, wait_seconds=0
    )
    from relay.models.queue import OutgoingMessage

    copy = OutgoingMessage("0", received.body, placement=GroupPlacement("a", received.message_id))
    # A run that sent the copy and died before deleting the letter, then a second run: one copy queued.
    assert queues.send_batch(aws_stack.ordered_queue_url, [copy]) == {"0"}
    result = redrive(
        queues,
        aws_stack.ordered_dead_letter_queue_url,
        aws_stack.ordered_queue_url,
        RedriveOptions(wait_seconds=0),
    )
    assert result.completed and result.moved == 1
    assert drain(aws_stack.ordered_queue_url) == [("a", "a-0")]


def test_listing_an_ordered_dlq_says_how_many_letters_wait_behind_those_it_could_see(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two conversations with eight letters each in the ordered DLQ (FIFO: once a receive has
    # handed out some of a conversation's letters, SQS shows no more of it until those have gone)
    queues = SqsQueues(
        aws_client("sqs"),
        ordered_queue_url=aws_stack.ordered_queue_url,
        ordered_dead_letter_queue_url=aws_stack.ordered_dead_letter_queue_url,
    )
    for group in ("a", "b"):
        for seq in range(8):
            letter(queues, group, seq, DlqReason.EXHAUSTED)

    # When an operator lists it, and dry-runs a redrive
    assert main(["dlq", "list", "--queue", "ordered", "--format", "json", "--no-progress"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert main(["dlq", "list", "--queue", "ordered", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert main(["dlq", "redrive", "--queue", "ordered", "--dry-run", "--no-progress"]) == 0
    dry_run = capsys.readouterr().out

    # Then both say how many letters wait behind those they could see (the redrive moves those too,
    # in order)
    behind = listed["behindShown"]
    assert listed["approximateDepth"] == 16 and listed["scanned"] < 16
    assert behind == 16 - listed["scanned"]
    assert f"about {behind} more wait behind them in their conversations" in table
    assert f"about {behind} more wait behind them in their conversations" in dry_run
    assert len(drain(aws_stack.ordered_dead_letter_queue_url)) == 16  # nothing moved or lost


def test_listing_an_ordered_dlq_names_the_last_error_of_its_letters(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an ordered letter dead-lettered because its target's token endpoint kept failing (no status)
    queues = SqsQueues(
        aws_client("sqs"), ordered_dead_letter_queue_url=aws_stack.ordered_dead_letter_queue_url
    )
    note = DeadLetterNote(
        DlqReason.EXHAUSTED, 3, integration_id="i-1", target_id="t-1", last_error="oauth-token-failed"
    )
    body = task("a-0").model_dump_json(by_alias=True)
    queues.dead_letter_in_order(GroupPlacement("a", "m-a-0"), body, {}, note)

    # When an operator lists the ordered DLQ, as JSON and as a table
    assert main(["dlq", "list", "--queue", "ordered", "--format", "json", "--no-progress"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert main(["dlq", "list", "--queue", "ordered", "--no-progress"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]

    # Then both say what failed, where the status says nothing
    assert (group["lastStatuses"], group["lastErrors"]) == ([], ["oauth-token-failed"])
    assert row[header.index("LAST STATUS") :].split()[:2] == ["-", "oauth-token-failed"]
    assert len(drain(aws_stack.ordered_dead_letter_queue_url)) == 1  # put back, not moved
