"""``relay dlq list`` / ``relay dlq redrive`` against a real moto server (which lacks the move task).

The DLQ is filled the way the dispatcher fills it: DeliveryTask bodies with the relay-dlq-* attributes
for messages it dead-letters itself, and bare bodies for messages the redrive policy moved (backstop).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from uuid import uuid4

import pytest
from botocore.config import Config
from support.aws_proxy import answer, answer_json, forward
from support.queues import drain
from support.waiting import wait_until

from relay.adapters.sqs import SqsQueues
from relay.cli import main
from relay.errors import MoveTaskUnavailable
from relay.local.aws_stack import LocalResources, forget_cached_configuration, local_client
from relay.local.loopback import LoopbackServer
from relay.logic.dlq import RedriveFilter, RedriveOptions, redrive
from relay.models.delivery import (
    ATTR_ATTEMPTS,
    ATTR_DEFERRALS,
    ATTR_DLQ_REASON,
    ATTR_INTEGRATION_ID,
    ATTR_LAST_ERROR,
    ATTR_LAST_STATUS,
    ATTR_TARGET_ID,
    DeadLetterNote,
    DeliveryTask,
    DlqReason,
)
from relay.settings import get_settings
from relay.wiring import aws_client, sqs_queues

CUSTOMER_TEXT = "customer says: my card number is 4111"  # must never be printed


@dataclass(frozen=True)
class Seeded:
    body: str
    delivery_id: str | None
    reason: str
    integration_id: str
    target_id: str


def task_body(integration_id: str, target_id: str) -> tuple[str, str]:
    task = DeliveryTask(
        delivery_id=uuid4(),
        integration_id=integration_id,
        target_id=target_id,
        event_id=str(uuid4()),
        received_at=datetime.now(UTC),
        event={"channel": {"id": "c1"}, "text": CUSTOMER_TEXT},
    )
    return task.model_dump_json(by_alias=True), str(task.delivery_id)


def dead_letter_attributes(reason: str, integration_id: str, target_id: str, status: str) -> dict[str, Any]:
    """What the dispatcher sets when it dead-letters a message itself."""
    return {
        ATTR_ATTEMPTS: {"DataType": "Number", "StringValue": "3"},
        ATTR_DEFERRALS: {"DataType": "Number", "StringValue": "1"},
        ATTR_DLQ_REASON: {"DataType": "String", "StringValue": reason},
        ATTR_LAST_STATUS: {"DataType": "Number", "StringValue": status},
        ATTR_LAST_ERROR: {"DataType": "String", "StringValue": f"http-{status}"},
        ATTR_TARGET_ID: {"DataType": "String", "StringValue": target_id},
        ATTR_INTEGRATION_ID: {"DataType": "String", "StringValue": integration_id},
    }


def put(queue_url: str, body: str, attributes: Mapping[str, Any] | None = None) -> None:
    kwargs: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": body}
    if attributes:
        kwargs["MessageAttributes"] = attributes
    aws_client("sqs").send_message(**kwargs)


def seed_dlq(dlq_url: str) -> list[Seeded]:
    """8 messages: 3 exhausted + 2 backstop for int-1/target-a, 2 permanent-status (400) for
    int-1/target-b, 1 poison with a body that is no DeliveryTask."""
    seeded = []
    for reason, target, status, count in (
        ("exhausted", "target-a", "503", 3),
        ("permanent-status", "target-b", "400", 2),
    ):
        for _ in range(count):
            body, delivery_id = task_body("int-1", target)
            put(dlq_url, body, dead_letter_attributes(reason, "int-1", target, status))
            seeded.append(Seeded(body, delivery_id, reason, "int-1", target))
    for _ in range(2):  # the redrive policy moved these: the intake's bare message, no attributes
        body, delivery_id = task_body("int-1", "target-a")
        put(dlq_url, body)
        seeded.append(Seeded(body, delivery_id, "redrive-backstop", "int-1", "target-a"))
    poison = json.dumps({"deliveryId": "not-a-uuid", "event": {"text": CUSTOMER_TEXT}})
    put(dlq_url, poison, {ATTR_DLQ_REASON: {"DataType": "String", "StringValue": "poison"}})
    seeded.append(Seeded(poison, None, "poison", "unparseable", "unparseable"))
    return seeded


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["dlq", *argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def seeded(aws_stack: LocalResources) -> Iterator[list[Seeded]]:
    yield seed_dlq(aws_stack.dead_letter_queue_url)


def test_list_groups_by_reason_and_target_and_puts_every_message_back(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    # When
    code, out, err = run_cli(capsys, "list", "--format", "json")

    # Then: one group per (reason, integration, target) with its count and a sample id from that group
    assert code == 0
    report = json.loads(out)
    groups = {(g["reason"], g["integrationId"], g["targetId"]): g for g in report["groups"]}
    assert {key: g["count"] for key, g in groups.items()} == {
        ("exhausted", "int-1", "target-a"): 3,
        ("permanent-status", "int-1", "target-b"): 2,
        ("redrive-backstop", "int-1", "target-a"): 2,
        ("poison", "unparseable", "unparseable"): 1,
    }
    assert report["scanned"] == 8
    for key, group in groups.items():
        ids = {s.delivery_id for s in seeded if (s.reason, s.integration_id, s.target_id) == key}
        assert group["sampleDeliveryId"] in ids
        assert group["oldestAgeSeconds"] is not None and group["oldestAgeSeconds"] >= 0
    assert groups[("permanent-status", "int-1", "target-b")]["lastStatuses"] == ["400"]
    assert groups[("permanent-status", "int-1", "target-b")]["lastErrors"] == ["http-400"]
    assert groups[("redrive-backstop", "int-1", "target-a")]["lastErrors"] == []
    # ids only: no event text, no raw body
    assert CUSTOMER_TEXT not in out + err and "card number" not in out + err
    # and nothing was removed: all 8 are visible again at once (released, not left to time out)
    assert len(drain(aws_stack.dead_letter_queue_url)) == 8


def test_list_prints_a_readable_table(seeded: list[Seeded], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["REASON", "INTEGRATION", "TARGET", "COUNT"]
    exhausted = next(line for line in lines if line.startswith("exhausted"))
    assert exhausted.split()[:4] == ["exhausted", "int-1", "target-a", "3"]
    assert "8 messages scanned" in out
    assert CUSTOMER_TEXT not in out


def test_list_says_why_an_exhausted_delivery_failed_when_it_got_no_status(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a delivery the dispatcher dead-lettered because its target's token endpoint kept failing
    # (no HTTP status from the target), and one whose record was dead-lettered without an attempt (its
    # relay-last-error is a sentence, not a code)
    queues = sqs_queues(get_settings())
    body, _ = task_body("int-1", "crm-hook")
    note = DeadLetterNote(
        DlqReason.EXHAUSTED, 5, integration_id="int-1", target_id="crm-hook", last_error="oauth-token-failed"
    )
    queues.dead_letter(body, {}, note)
    body, _ = task_body("int-1", "gone-hook")
    why = "target answered 410 Gone earlier in this batch"
    note = DeadLetterNote(
        DlqReason.TARGET_GONE, 0, integration_id="int-1", target_id="gone-hook", last_error=why
    )
    queues.dead_letter(body, {}, note)

    # When an operator lists the DLQ, as JSON and as a table
    code, out, _ = run_cli(capsys, "list", "--format", "json")
    assert code == 0
    groups = {g["targetId"]: g for g in json.loads(out)["groups"]}
    code, table, _ = run_cli(capsys, "list")
    assert code == 0

    # Then the token endpoint's failure is named where no status is, and the sentence is not shown
    assert (groups["crm-hook"]["lastStatuses"], groups["crm-hook"]["lastErrors"]) == (
        [],
        ["oauth-token-failed"],
    )
    assert groups["gone-hook"]["lastErrors"] == []
    header, *rows = table.splitlines()
    row = next(line for line in rows if line.startswith("exhausted"))
    assert header.index("LAST STATUS") < header.index("LAST ERROR")
    assert row[header.index("LAST STATUS") :].split()[:2] == ["-", "oauth-token-failed"]
    assert why not in table


def test_redrive_all_falls_back_to_resend_and_moves_every_body_unchanged(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    # When: no filter, so the move task is tried first; moto answers 500 NotImplementedError
    code, out, err = run_cli(capsys, "redrive", "--format", "json")

    # Then (the fallback told on stderr as a notice, and in the JSON; stdout is the JSON alone)
    assert code == 0, out + err
    result = json.loads(out)
    assert result["mode"] == "resend"
    assert "StartMessageMoveTask is not available" in result["fallbackReason"]
    assert "relay dlq redrive: note: StartMessageMoveTask is not available" in err
    assert result["moved"] == 8 and result["sendFailed"] == 0 and result["notDeleted"] == 0
    moved = drain(aws_stack.delivery_queue_url)
    assert sorted(m["body"] for m in moved) == sorted(s.body for s in seeded)  # byte for byte
    for message in moved:  # a fresh try: attempts reset, dead-letter notes dropped
        attributes = message["messageAttributes"]
        assert attributes[ATTR_ATTEMPTS]["stringValue"] == "0"
        assert not {name for name in attributes if name.startswith("relay-dlq-")}
        assert ATTR_LAST_ERROR not in attributes and ATTR_DEFERRALS not in attributes
    assert drain(aws_stack.dead_letter_queue_url) == []
    assert CUSTOMER_TEXT not in out + err


def test_filtered_redrive_moves_only_the_matching_messages(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    # When
    code, out, _ = run_cli(
        capsys, "redrive", "--target", "target-a", "--reason", "exhausted", "--format", "json"
    )

    # Then: the 3 exhausted target-a messages moved; the 5 others stay in the DLQ
    assert code == 0
    assert json.loads(out)["moved"] == 3
    expected = {s.body for s in seeded if s.target_id == "target-a" and s.reason == "exhausted"}
    assert {m["body"] for m in drain(aws_stack.delivery_queue_url)} == expected
    assert {m["body"] for m in drain(aws_stack.dead_letter_queue_url)} == {s.body for s in seeded} - expected


def test_redrive_by_integration_and_backstop_reason(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run_cli(capsys, "redrive", "--integration", "int-1", "--reason", "redrive-backstop")

    assert code == 0
    expected = {s.body for s in seeded if s.reason == "redrive-backstop"}
    assert {m["body"] for m in drain(aws_stack.delivery_queue_url)} == expected
    assert len(drain(aws_stack.dead_letter_queue_url)) == 6


def test_max_bounds_how_many_move(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "redrive", "--max", "3", "--format", "json")

    assert code == 0
    assert json.loads(out)["moved"] == 3
    assert len(drain(aws_stack.delivery_queue_url)) == 3
    assert len(drain(aws_stack.dead_letter_queue_url)) == 5


# Anyone with SendMessage on the DLQ writes its attributes: a line break, an escape sequence, a bidi
# override must not fake a row, drive the terminal or reorder what the operator reads.
FORGED_TARGET = "t\x1b[31mRED\x1b[0m\nFAKE-LINE 99 1s"
FORGED_REASON = "exhausted\x1b[2J\u202e"


@pytest.mark.parametrize("argv", [("list",), ("redrive", "--dry-run")], ids=["list", "redrive"])
def test_tables_show_control_characters_from_message_attributes_escaped(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    # Given a letter whose target id and reason hold control characters
    body, _ = task_body("int-1", "target-a")
    put(
        aws_stack.dead_letter_queue_url,
        body,
        dead_letter_attributes(FORGED_REASON, "int-1", FORGED_TARGET, "503"),
    )

    # When the table is printed
    code, out, _ = run_cli(capsys, *argv)

    # Then each shows escaped, within its own row
    assert code == 0, out
    assert "\x1b" not in out and "\u202e" not in out
    assert not any(line.startswith("FAKE-LINE") for line in out.splitlines())
    row = next(line for line in out.splitlines() if "FAKE-LINE" in line)
    assert "t\\x1b[31mRED\\x1b[0m\\nFAKE-LINE" in row and row.startswith("exhausted\\x1b[2J\\u202e")


def test_dry_run_shows_what_would_move_and_moves_nothing(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    # When
    code, out, _ = run_cli(capsys, "redrive", "--dry-run", "--target", "target-b", "--format", "json")

    # Then
    assert code == 0
    result = json.loads(out)
    assert result["mode"] == "dry-run" and result["matched"] == 2 and result["moved"] == 0
    assert [(g["reason"], g["targetId"], g["count"]) for g in result["groups"]] == [
        ("permanent-status", "target-b", 2)
    ]
    assert drain(aws_stack.delivery_queue_url) == []
    assert sorted(m["body"] for m in drain(aws_stack.dead_letter_queue_url)) == sorted(s.body for s in seeded)


def test_dry_run_without_filters_prints_what_would_move(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "redrive", "--dry-run")

    assert code == 0
    assert "would move 8 of 8 scanned" in out
    assert drain(aws_stack.delivery_queue_url) == []
    assert len(drain(aws_stack.dead_letter_queue_url)) == 8


def test_a_rate_the_fallback_cannot_keep_is_named_not_ignored(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    # When an operator caps the move task's rate where SQS has no move task (moto, the local stack)
    code, out, err = run_cli(capsys, "redrive", "--rate", "5", "--format", "json")

    # Then the notice says the re-send it falls back to is not paced
    assert code == 0, out + err
    assert "--rate paces only the move task" in json.loads(out)["fallbackReason"]
    assert "--rate paces only the move task" in err


class SqsRefusingSends:
    """A loopback endpoint in front of moto that answers every SendMessageBatch with an error (as SQS
    does to a request it refuses) and forwards every other call."""

    def __init__(self, upstream: str) -> None:
        endpoint = self
        self.refused = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.headers.get("X-Amz-Target") != "AmazonSQS.SendMessageBatch":
                    answer(self, forward(self, upstream, timeout=30))
                    return
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.refused += 1
                refusal = {"__type": "com.amazonaws.sqs#InvalidParameterValue", "message": "refused"}
                answer_json(self, 400, refusal)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = LoopbackServer(Handler, name="sqs-refusing-sends")
        self.url = f"http://127.0.0.1:{self._server.start()}"

    def __enter__(self) -> SqsRefusingSends:
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


def test_a_failed_send_deletes_nothing_from_the_dlq(
    aws_stack: LocalResources,
    seeded: list[Seeded],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given: SQS refusing the copies sent to the delivery queue
    with SqsRefusingSends(aws_stack.endpoint_url) as sqs:
        monkeypatch.setenv("AWS_ENDPOINT_URL", sqs.url)
        forget_cached_configuration()

        # When (re-sending: the move task would send nothing itself)
        code, out, _ = run_cli(capsys, "redrive", "--method", "resend", "--format", "json")
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_stack.endpoint_url)
    forget_cached_configuration()

    # Then: the run says it failed, and every message is still in the DLQ (visible again at once)
    assert code == 1 and sqs.refused >= 1
    result = json.loads(out)
    assert result["moved"] == 0 and result["sendFailed"] > 0
    assert "nothing unsent was deleted" in result["error"]
    assert sorted(m["body"] for m in drain(aws_stack.dead_letter_queue_url)) == sorted(s.body for s in seeded)
    assert drain(aws_stack.delivery_queue_url) == []


def test_a_scan_never_waits_longer_than_its_client_would_read(aws_stack: LocalResources) -> None:
    # Given an SQS client that gives up reading after 2 s and does not retry, and an empty DLQ
    config = Config(read_timeout=2, retries={"total_max_attempts": 1})
    client = local_client("sqs", aws_stack.endpoint_url, config)
    queues = SqsQueues(client, dead_letter_queue_url=aws_stack.dead_letter_queue_url)

    # When a scan asks for a 5 s long poll
    received = queues.receive(aws_stack.dead_letter_queue_url, visibility_seconds=30, wait_seconds=5)

    # Then it waits only as long as the client reads, and gets the empty answer (not a read timeout,
    # which an operator would see as "SQS unavailable")
    assert received == []


def test_messages_that_arrive_after_the_run_started_are_left_for_the_next_run(
    aws_stack: LocalResources, seeded: list[Seeded]
) -> None:
    # Given: a run that started before these messages reached the DLQ (a clock an hour back)
    an_hour_ago = datetime.now(UTC).timestamp() - 3_600

    # When
    result = redrive(
        sqs_queues(get_settings()),
        aws_stack.dead_letter_queue_url,
        aws_stack.delivery_queue_url,
        RedriveOptions(method="resend"),
        now=lambda: an_hour_ago,
    )

    # Then: a target that fails at once cannot bounce between the queues within one run
    assert result.moved == 0 and result.arrived_during_run == 8
    assert len(drain(aws_stack.dead_letter_queue_url)) == 8
    # and the run says they are still there, so `relay dlq redrive` exits 1, not 0
    assert result.completed and result.attention is not None
    assert result.to_json()["ok"] is False and result.to_json()["attention"] == result.attention
    assert result.attention.startswith("8 messages arrived in the DLQ during the run and are still there")


def test_move_task_method_says_when_sqs_lacks_it(aws_stack: LocalResources, seeded: list[Seeded]) -> None:
    with pytest.raises(MoveTaskUnavailable, match="not available"):
        redrive(
            sqs_queues(get_settings()),
            aws_stack.dead_letter_queue_url,
            aws_stack.delivery_queue_url,
            RedriveOptions(method="move-task"),
        )
    assert len(drain(aws_stack.dead_letter_queue_url)) == 8


def test_a_filter_value_no_letter_carries_needs_attention_and_moves_nothing(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    # When an operator filters on a target by its name (or mistypes its id) with another that matches
    code, out, err = run_cli(
        capsys, "redrive", "--dry-run", "--target", "crm-hook", "--target", "target-a", "--format", "json"
    )

    # Then the run goes on for what matches, and the command says which value matched no letter (exit 1)
    assert code == 1, err
    result = json.loads(out)
    assert result["matched"] == 5 and result["unmatchedFilters"] == ["--target crm-hook"]
    assert result["ok"] is False and result["attention"].startswith(
        "no letter in the DLQ has --target crm-hook"
    )
    assert "no letter in the DLQ has --target crm-hook" in err
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded)


def test_a_filtered_redrive_of_an_empty_dlq_is_done_not_a_filter_that_matched_nothing(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # When an operator runs the redrive that emptied the DLQ a second time
    code, out, err = run_cli(capsys, "redrive", "--target", "target-a", "--format", "json")

    # Then there was nothing to move, and nothing suggests a mistyped id
    assert code == 0, err
    result = json.loads(out)
    assert (result["scanned"], result["moved"], result["unmatchedFilters"]) == (0, 0, [])
    assert result["ok"] is True and "no letter" not in err


def test_a_redrive_stopped_before_it_read_the_dlq_does_not_say_no_letter_matches_its_filter(
    aws_stack: LocalResources, seeded: list[Seeded]
) -> None:
    # When a filtered redrive is stopped (the operator's Ctrl-C) before its first receive
    result = redrive(
        sqs_queues(get_settings()),
        aws_stack.dead_letter_queue_url,
        aws_stack.delivery_queue_url,
        RedriveOptions(method="resend", filter=RedriveFilter(targets=frozenset({"target-a"}))),
        stop=lambda: True,
    )

    # Then nothing moved, and the summary does not claim the DLQ lacks target-a's letters: it never
    # read them (a script reading the JSON would drop a redrive that was only interrupted)
    assert result.moved == 0 and result.unmatched_filters == []
    assert result.attention is None or "no letter" not in result.attention
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded)


@pytest.mark.parametrize("narrowing", [["--dry-run"], ["--max", "1"], ["--target", "target-a"]])
def test_move_task_method_with_a_dry_run_bound_or_filter_is_a_usage_error_and_moves_nothing(
    aws_stack: LocalResources,
    seeded: list[Seeded],
    capsys: pytest.CaptureFixture[str],
    narrowing: list[str],
) -> None:
    # When an operator asks for the move task and narrows the run (which the move task cannot do)
    code, out, err = run_cli(capsys, "redrive", "--method", "move-task", *narrowing)

    # Then the command line is refused before anything is moved: every letter is still in the DLQ
    assert code == 2, err
    assert out == ""
    assert "--method move-task moves every message of the queue" in err
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded)


def test_ctrl_c_stops_a_redrive_after_its_batch_in_hand_leaving_nothing_hidden_or_doubled(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a DLQ of 300 dead letters
    bodies = _dead_letters(aws_stack, 300)

    # When the operator presses Ctrl-C once some have moved (a receive, a re-send or a delete in flight)
    def press_ctrl_c_mid_run() -> None:
        wait_until(lambda: _depth(aws_stack.delivery_queue_url) >= 20, what="a redrive under way", timeout=60)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c_mid_run)
    presser.start()
    code, out, err = run_cli(capsys, "redrive", "--method", "resend", "--format", "json")
    presser.join()

    # Then the run stopped early (130) after finishing its batch, said so, and printed what it did
    assert code == 130, out + err
    assert "stopping after the batch in hand" in err and "stopped after the batch in hand" in err
    summary = json.loads(out)
    assert summary["ok"] is False and summary["interrupted"] is True  # not "all done" to a script
    moved = summary["moved"]
    # and every message is in exactly one queue, visible now: none hidden for the visibility timeout,
    # none left behind in the DLQ after its copy was sent
    assert_each_in_one_queue(aws_stack, bodies, moved=moved)


def test_sigterm_stops_a_redrive_like_ctrl_c_leaving_nothing_hidden_or_doubled(
    aws_stack: LocalResources,
) -> None:
    # Given a DLQ of 300 dead letters
    bodies = _dead_letters(aws_stack, 300)

    # When a redrive run as its own process (the environment names the queues) gets SIGTERM mid-run,
    # as from `kill`, `timeout` or a supervisor
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "dlq", "redrive", "--method", "resend", "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _depth(aws_stack.delivery_queue_url) >= 20, what="a redrive under way", timeout=60)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()

    # Then it stopped as after a first Ctrl-C: its batch in hand finished, what it did printed, 130
    assert process.returncode == 130, out + err
    assert "stopped after the batch in hand" in err and "Traceback" not in err
    summary = json.loads(out)
    assert summary["ok"] is False and summary["interrupted"] is True
    moved = summary["moved"]
    # and every message is in exactly one queue, visible now: none hidden for the visibility timeout,
    # none left behind in the DLQ after its copy was sent
    assert_each_in_one_queue(aws_stack, bodies, moved=moved)


def _dead_letters(aws_stack: LocalResources, count: int) -> set[str]:
    """``count`` task bodies put in the DLQ; the bodies."""
    bodies = {task_body("i-1", "t-1")[0] for _ in range(count)}
    for chunk in [sorted(bodies)[n : n + 10] for n in range(0, count, 10)]:
        aws_client("sqs").send_message_batch(
            QueueUrl=aws_stack.dead_letter_queue_url,
            Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)],
        )
    return bodies


def assert_each_in_one_queue(aws_stack: LocalResources, bodies: set[str], *, moved: int) -> None:
    """An interrupted redrive moved ``moved`` of ``bodies`` (some, not all) and left the rest in the
    DLQ, every one visible: drained from one queue or the other, none twice."""
    delivered = [m["body"] for m in drain(aws_stack.delivery_queue_url)]
    left = [m["body"] for m in drain(aws_stack.dead_letter_queue_url)]
    assert len(delivered) == moved and 0 < moved < len(bodies)
    assert sorted(delivered + left) == sorted(bodies)


def _depth(queue_url: str) -> int:
    attributes = aws_client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])
