"""``relay dlq --queue first-hop`` on moto: the FirstHopDeadLetterQueue (FIFO), where SQS's redrive
backstop moves a first-hop record the dispatcher never finished with, is listed, redriven back to the
first hop and discarded like the delivery DLQ: its letters are DeliveryTasks.

Letters are put in the DLQ the way SQS moves them there: each in the message group it had on the first
hop (its delivery id), deduplicated on the original message's id (SQS replaces the deduplication id of
a message it moves to a FIFO dead-letter queue with the original message's id), the task's body and
attributes unchanged, no relay-dlq-reason (reason ``redrive-backstop``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from support.queues import drain
from test_dlq_cli import task_body

from relay.adapters.sqs import SqsQueues
from relay.cli import main
from relay.local.aws_stack import LocalResources, forget_cached_configuration, register_stack
from relay.models.delivery import ATTR_ATTEMPTS, ATTR_DEFERRALS, DeliveryTask
from relay.models.queue import GroupPlacement, OrderedTask
from relay.wiring import aws_client

pytestmark = pytest.mark.integration

DLQ_URL = "FIRST_HOP_DEAD_LETTER_QUEUE_URL"


@pytest.fixture
def stack(first_hop_stack: LocalResources, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalResources]:
    """The first-hop stack, with the operator's FIRST_HOP_DEAD_LETTER_QUEUE_URL set (no function's
    environment has it: `--stack-name` reads it from the output FirstHopDeadLetterQueueUrl)."""
    assert first_hop_stack.first_hop_queue_url.endswith(".fifo")
    assert first_hop_stack.first_hop_dead_letter_queue_url.endswith(".fifo")
    monkeypatch.setenv(DLQ_URL, first_hop_stack.first_hop_dead_letter_queue_url)
    forget_cached_configuration()
    yield first_hop_stack
    forget_cached_configuration()


def backstopped(stack: LocalResources, target_id: str, *, attempts: str | None = None) -> str:
    """A first-hop task for ``target_id`` moved to the FirstHopDeadLetterQueue by SQS's backstop (as
    SQS moves it: its group, the original message id as deduplication id); returns its delivery id.
    ``attempts``: the attempt count it carries (a deferral's re-send carries one, and a deferral)."""
    body, delivery_id = task_body("int-1", target_id)
    BODIES[delivery_id] = body
    attributes: dict[str, Any] = {}
    if attempts is not None:
        attributes[ATTR_ATTEMPTS] = {"DataType": "Number", "StringValue": attempts}
        attributes[ATTR_DEFERRALS] = {"DataType": "Number", "StringValue": "1"}
    aws_client("sqs").send_message(
        QueueUrl=stack.first_hop_dead_letter_queue_url,
        MessageBody=body,
        MessageGroupId=delivery_id,
        MessageDeduplicationId=str(uuid4()),  # the original message's id
        MessageAttributes=attributes,
    )
    return delivery_id


BODIES: dict[str, str] = {}  # each letter's body, by its delivery id (unique: a fresh uuid each)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["dlq", *argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def in_queue(queue_url: str) -> dict[str, dict[str, Any]]:
    """The queue's messages by delivery id (drained): each one's group and message attributes."""
    found = {}
    for record in drain(queue_url):
        task = DeliveryTask.model_validate_json(record["body"])
        found[str(task.delivery_id)] = {
            "group": record["attributes"].get("MessageGroupId"),
            "attributes": {k: v["stringValue"] for k, v in record["messageAttributes"].items()},
            "body": record["body"],
        }
    return found


def test_list_groups_first_hop_letters_by_reason_and_target_and_puts_every_one_back(
    stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given three letters the backstop moved, two for t-1 and one for t-2
    ids = [backstopped(stack, "t-1"), backstopped(stack, "t-1"), backstopped(stack, "t-2")]

    # When the operator lists the first hop's DLQ, as JSON and as a table
    code, out, err = run_cli(capsys, "list", "--queue", "first-hop", "--format", "json")
    table_code, table, _ = run_cli(capsys, "list", "--queue", "first-hop")

    # Then the letters are grouped by reason and target, each its own group seen (nothing waits
    # behind), the table talks of no conversation, and every letter is still there
    assert (code, table_code) == (0, 0), err
    listed = json.loads(out)
    groups = {(g["reason"], g["targetId"]): g["count"] for g in listed["groups"]}
    assert groups == {("redrive-backstop", "t-1"): 2, ("redrive-backstop", "t-2"): 1}
    assert listed["scanned"] == 3 and listed["behindShown"] == 0
    assert "redrive-backstop" in table and "conversation" not in table
    assert sorted(in_queue(stack.first_hop_dead_letter_queue_url)) == sorted(ids)


def test_redrive_sends_letters_back_to_the_first_hop_in_their_groups_with_attempts_reset(
    stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a letter without attributes and one that carries attempts and a deferral
    plain = backstopped(stack, "t-1")
    counted = backstopped(stack, "t-2", attempts="3")

    # When the operator redrives the first hop's DLQ, as the command does by default
    code, out, err = run_cli(capsys, "redrive", "--queue", "first-hop", "--format", "json")

    # Then both went back to the first hop (re-sent: moto has no move task, and a FIFO DLQ is re-sent
    # by default), each in its own group, its body unchanged, a fresh try: attempts 0, no deferrals
    assert code == 0, out + err
    summary = json.loads(out)
    assert (summary["mode"], summary["moved"], summary["fallbackReason"]) == ("resend", 2, None)
    moved = in_queue(stack.first_hop_queue_url)
    assert sorted(moved) == sorted([plain, counted])
    for delivery_id, message in moved.items():
        assert message["group"] == delivery_id
        assert message["body"] == BODIES[delivery_id]
        assert message["attributes"] == {ATTR_ATTEMPTS: "0"}
    assert in_queue(stack.first_hop_dead_letter_queue_url) == {}
    assert in_queue(stack.delivery_queue_url) == {}


def test_a_letter_redriven_moments_after_its_original_send_is_not_dropped_as_its_repeat(
    stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a task the intake sent to the first hop moments ago, deduplicated on its delivery id, and its
    # letter in the first hop's DLQ. (SQS remembers a deduplication id for 5 minutes, delivered or not;
    # moto only while the message is in the queue: the original stays there to stand for that memory.)
    body, delivery_id = task_body("int-1", "t-1")
    queues = SqsQueues(aws_client("sqs"), first_hop_queue_url=stack.first_hop_queue_url)
    as_the_intake_sends_it = [OrderedTask(body, GroupPlacement(delivery_id, delivery_id))]
    queues.send_first_hop(as_the_intake_sends_it)
    aws_client("sqs").send_message(
        QueueUrl=stack.first_hop_dead_letter_queue_url,
        MessageBody=body,
        MessageGroupId=delivery_id,
        MessageDeduplicationId=str(uuid4()),
    )
    queues.send_first_hop(as_the_intake_sends_it)  # a copy deduplicated on the delivery id: dropped
    assert depth(stack.first_hop_queue_url) == 1

    # When the operator redrives it, well within SQS's 5-minute deduplication window
    code, out, err = run_cli(capsys, "redrive", "--queue", "first-hop", "--format", "json")

    # Then its copy is on the first hop too, in the delivery's group: deduplicated on the letter's own
    # message id, it is no repeat of the original send
    assert code == 0 and json.loads(out)["moved"] == 1, out + err
    moved = drain(stack.first_hop_queue_url)
    assert [(m["attributes"]["MessageGroupId"], m["body"]) for m in moved] == [(delivery_id, body)] * 2
    assert in_queue(stack.first_hop_dead_letter_queue_url) == {}


def depth(queue_url: str) -> int:
    attributes = aws_client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def test_a_target_filter_redrives_only_that_targets_letters(
    stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = [backstopped(stack, "t-1"), backstopped(stack, "t-1")]
    chosen = backstopped(stack, "t-2")

    code, out, err = run_cli(capsys, "redrive", "--queue", "first-hop", "--target", "t-2", "--format", "json")

    assert code == 0, out + err
    summary = json.loads(out)
    assert (summary["moved"], summary["skipped"]) == (1, 2)
    assert list(in_queue(stack.first_hop_queue_url)) == [chosen]
    assert sorted(in_queue(stack.first_hop_dead_letter_queue_url)) == sorted(kept)


def test_discard_saves_each_chosen_letter_then_deletes_it(
    stack: LocalResources, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Given two letters for a retired target t-1 and one for t-2
    retired = [backstopped(stack, "t-1"), backstopped(stack, "t-1")]
    kept = backstopped(stack, "t-2")
    save = tmp_path / "first-hop.jsonl"

    # When the operator discards t-1's letters
    code, out, err = run_cli(
        capsys, "discard", "--queue", "first-hop", "--target", "t-1", "--save", str(save), "--format", "json"
    )

    # Then each is in the save file, with the group a re-send needs, and gone from the DLQ; t-2's stays
    assert code == 0, out + err
    assert json.loads(out)["discarded"] == 2
    lines = [json.loads(line) for line in save.read_text(encoding="utf-8").splitlines()]
    assert sorted(line["deliveryId"] for line in lines) == sorted(retired)
    for line in lines:
        assert (line["queue"], line["reason"], line["targetId"]) == ("first-hop", "redrive-backstop", "t-1")
        assert line["messageGroupId"] == line["deliveryId"]
        assert line["body"] == BODIES[line["deliveryId"]]
    assert list(in_queue(stack.first_hop_dead_letter_queue_url)) == [kept]


def test_without_the_first_hop_dlq_setting_the_command_names_it_and_reads_nothing(
    stack: LocalResources, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    letter = backstopped(stack, "t-1")
    monkeypatch.delenv(DLQ_URL)
    forget_cached_configuration()

    results = [
        run_cli(capsys, "list", "--queue", "first-hop"),
        run_cli(capsys, "redrive", "--queue", "first-hop"),
        run_cli(capsys, "discard", "--queue", "first-hop", "--all", "--dry-run"),
    ]

    for code, out, err in results:
        assert code == 3 and out == "", err
        assert f"ConfigurationError: setting {DLQ_URL} is required" in err
    assert list(in_queue(stack.first_hop_dead_letter_queue_url)) == [letter]


def test_stack_name_alone_names_the_first_hop_and_its_dlq(
    stack: LocalResources, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the stack registered with its outputs, and an operator's environment naming neither queue
    letter = backstopped(stack, "t-1")
    name = f"{stack.prefix}-ops"
    outputs = register_stack(stack, name)
    assert outputs["FirstHopQueueUrl"] == stack.first_hop_queue_url
    assert outputs["FirstHopDeadLetterQueueUrl"] == stack.first_hop_dead_letter_queue_url
    for variable in (DLQ_URL, "FIRST_HOP_QUEUE_URL"):
        monkeypatch.delenv(variable, raising=False)
    forget_cached_configuration()

    # When the operator redrives with --stack-name only
    code, out, err = run_cli(
        capsys, "redrive", "--queue", "first-hop", "--format", "json", "--stack-name", name
    )

    # Then the letter went back to the first hop
    assert code == 0 and json.loads(out)["moved"] == 1, out + err
    assert list(in_queue(stack.first_hop_queue_url)) == [letter]


def test_first_hop_letters_go_back_only_to_a_fifo_queue_and_the_refusal_names_no_conversation(
    stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    letter = backstopped(stack, "t-1")

    code, _, err = run_cli(
        capsys, "redrive", "--queue", "first-hop", "--queue-url", stack.delivery_queue_url, "--dry-run"
    )

    assert code == 3 and "only to a FIFO queue" in err and stack.delivery_queue_url in err
    assert "conversation" not in err
    assert list(in_queue(stack.first_hop_dead_letter_queue_url)) == [letter]
    assert in_queue(stack.delivery_queue_url) == {}
