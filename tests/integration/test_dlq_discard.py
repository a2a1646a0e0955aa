"""``relay dlq discard`` against a real moto server: letters a redrive cannot help are deleted, each one
saved to the --save file (fsynced) first; never a letter without its copy, never a body printed.

The DLQs are filled the way the dispatcher fills them (DeliveryTask bodies with the relay-dlq-*
attributes, a poison body that is no task); the audit bucket is moto's.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from support.queues import drain
from support.waiting import wait_until
from test_dlq_cli import CUSTOMER_TEXT, Seeded, task_body

from relay.adapters.letter_file import LetterFile
from relay.adapters.sqs import SqsQueues
from relay.cli import main
from relay.local.aws_stack import LocalResources, forget_cached_configuration
from relay.logic.dlq.discard import DiscardOptions, discard
from relay.models.delivery import (
    ATTR_ATTEMPTS,
    ATTR_DLQ_REASON,
    ATTR_INTEGRATION_ID,
    ATTR_LAST_STATUS,
    ATTR_TARGET_ID,
    DeadLetterNote,
    DlqReason,
)
from relay.models.queue import GroupPlacement
from relay.settings import get_settings
from relay.wiring import aws_client, sqs_queues

pytestmark = pytest.mark.integration


def attributes(reason: str, target_id: str) -> dict[str, Any]:
    return {
        ATTR_ATTEMPTS: {"DataType": "Number", "StringValue": "3"},
        ATTR_DLQ_REASON: {"DataType": "String", "StringValue": reason},
        ATTR_LAST_STATUS: {"DataType": "Number", "StringValue": "410"},
        ATTR_TARGET_ID: {"DataType": "String", "StringValue": target_id},
        ATTR_INTEGRATION_ID: {"DataType": "String", "StringValue": "int-1"},
    }


def put(queue_url: str, body: str, message_attributes: Mapping[str, Any] | None = None) -> None:
    kwargs: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": body}
    if message_attributes:
        kwargs["MessageAttributes"] = message_attributes
    aws_client("sqs").send_message(**kwargs)


def ordered_queues(aws_stack: LocalResources) -> SqsQueues:
    """The stack's ordered queue and its DLQ, to put letters in the ordered DLQ as the dispatcher does."""
    return SqsQueues(
        aws_client("sqs"),
        ordered_queue_url=aws_stack.ordered_queue_url,
        ordered_dead_letter_queue_url=aws_stack.ordered_dead_letter_queue_url,
    )


POISON_BODIES = (
    json.dumps({"deliveryId": "not-a-uuid", "event": {"text": CUSTOMER_TEXT}}),
    f"not json at all: {CUSTOMER_TEXT} \u00e9\u2603",
)


def seed(dlq_url: str) -> list[Seeded]:
    """3 exhausted for target-a, 2 target-gone for target-b, 2 poison (bodies that are no task)."""
    seeded = []
    for reason, target, count in (("exhausted", "target-a", 3), ("target-gone", "target-b", 2)):
        for _ in range(count):
            body, delivery_id = task_body("int-1", target)
            put(dlq_url, body, attributes(reason, target))
            seeded.append(Seeded(body, delivery_id, reason, "int-1", target))
    for body in POISON_BODIES:
        put(dlq_url, body, {ATTR_DLQ_REASON: {"DataType": "String", "StringValue": "poison"}})
        seeded.append(Seeded(body, None, "poison", "unparseable", "unparseable"))
    return seeded


@pytest.fixture
def seeded(aws_stack: LocalResources) -> list[Seeded]:
    return seed(aws_stack.dead_letter_queue_url)


@pytest.fixture
def save(tmp_path: Path) -> Path:
    return tmp_path / "discarded.jsonl"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["dlq", *argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def saved_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def left_in(queue_url: str) -> list[str]:
    return sorted(m["body"] for m in drain(queue_url))


def audit_records(resources: LocalResources) -> list[dict[str, Any]]:
    s3 = aws_client("s3")
    records = []
    for obj in s3.list_objects_v2(Bucket=resources.audit_bucket, Prefix="audit/").get("Contents", []):
        body = s3.get_object(Bucket=resources.audit_bucket, Key=obj["Key"])["Body"].read().decode()
        records += [dict(json.loads(line), key=obj["Key"]) for line in body.splitlines() if line]
    return records


def test_poison_letters_are_saved_then_discarded_and_the_others_stay(
    aws_stack: LocalResources, seeded: list[Seeded], save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # When the operator discards the poison letters
    code, out, err = run_cli(capsys, "discard", "--reason", "poison", "--save", str(save), "--format", "json")

    # Then both are gone from the DLQ, the 5 others stay
    assert code == 0, out + err
    result = json.loads(out)
    assert (result["discarded"], result["matched"], result["scanned"]) == (2, 2, 7)
    assert result["ok"] is True and result["notSaved"] == 0 and result["notDeleted"] == 0
    poison = sorted(s.body for s in seeded if s.reason == "poison")
    assert left_in(aws_stack.dead_letter_queue_url) == sorted(s.body for s in seeded if s.reason != "poison")
    # and the file has one line per discarded letter: the body exactly as received, its attributes
    lines = saved_lines(save)
    assert sorted(line["body"] for line in lines) == poison
    assert {line["messageId"] for line in lines} == {letter["messageId"] for letter in result["letters"]}
    for line in lines:
        assert line["reason"] == "poison" and line["queue"] == "delivery"
        assert line["messageAttributes"][ATTR_DLQ_REASON]["StringValue"] == "poison"
        assert datetime.fromisoformat(line["discardedAt"]) <= datetime.now(UTC)
    # created for the operator alone: bodies may hold customer messages
    assert stat.S_IMODE(save.stat().st_mode) == 0o600
    # and no body reached the terminal
    assert CUSTOMER_TEXT not in out + err and "\u2603" not in out + err


def test_a_second_run_appends_to_the_file_and_the_table_names_what_went(
    aws_stack: LocalResources, seeded: list[Seeded], save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a save file from an earlier run
    code, _, _ = run_cli(capsys, "discard", "--reason", "poison", "--save", str(save))
    assert code == 0

    # When the operator discards a retired target's letters into the same file
    code, out, err = run_cli(capsys, "discard", "--target", "target-b", "--save", str(save))

    # Then the file holds both runs' letters, the earlier ones first
    assert code == 0, out + err
    lines = saved_lines(save)
    assert [line["reason"] for line in lines] == ["poison", "poison", "target-gone", "target-gone"]
    assert {line["deliveryId"] for line in lines[2:]} == {
        s.delivery_id for s in seeded if s.target_id == "target-b"
    }
    # and the summary is redrive's table, counts only
    assert next(row for row in out.splitlines() if row.startswith("target-gone")).split()[:4] == [
        "target-gone",
        "int-1",
        "target-b",
        "2",
    ]
    assert f"discarded 2 of 5 scanned (each saved to {save} first)" in out
    assert CUSTOMER_TEXT not in out + err
    assert len(drain(aws_stack.dead_letter_queue_url)) == 3


def test_no_filter_without_all_is_a_usage_error_and_nothing_is_touched(
    aws_stack: LocalResources, seeded: list[Seeded], save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # When the operator gives no filter
    code, out, err = run_cli(capsys, "discard", "--save", str(save))

    # Then it is refused before anything is opened, read or deleted
    assert code == 2
    assert out == ""
    assert "--all" in err and "nothing was discarded" in err
    assert not save.exists()
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded)


def test_all_discards_every_letter_and_takes_no_filter(
    aws_stack: LocalResources, seeded: list[Seeded], save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "discard", "--all", "--reason", "poison", "--save", str(save))
    assert code == 2 and "--all discards the whole queue: it takes no filter" in err

    code, out, err = run_cli(capsys, "discard", "--all", "--save", str(save))

    assert code == 0, out + err
    assert sorted(line["body"] for line in saved_lines(save)) == sorted(s.body for s in seeded)
    assert drain(aws_stack.dead_letter_queue_url) == []


def test_save_is_required_for_a_real_run(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "discard", "--reason", "poison")

    assert code == 2 and out == ""
    assert "--save FILE is required" in err
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded)


def test_a_save_file_that_cannot_be_opened_discards_nothing(
    aws_stack: LocalResources, seeded: list[Seeded], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # When the --save path is a directory, or in one that does not exist
    for path in (tmp_path, tmp_path / "missing" / "discarded.jsonl"):
        code, out, err = run_cli(capsys, "discard", "--reason", "poison", "--save", str(path))

        # Then the command says so, before reading the queue
        assert code == 2, out + err
        assert f"--save {path}: cannot open it for appending" in err and "nothing was discarded" in err
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded)


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_a_save_file_that_is_no_regular_file_is_refused(
    aws_stack: LocalResources, seeded: list[Seeded], capsys: pytest.CaptureFixture[str], device: str
) -> None:
    # When the operator names a device: /dev/null would keep no copy at all
    code, out, err = run_cli(capsys, "discard", "--reason", "poison", "--save", device)

    # Then it is refused, and nothing is discarded
    assert code == 2, out + err
    assert f"--save {device}: cannot open it for appending (not a regular file" in err
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded)


def test_a_letter_whose_line_cannot_be_written_whole_is_not_deleted_and_the_part_is_cut_back(
    aws_stack: LocalResources, seeded: list[Seeded], save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a save file holding an earlier run's letters
    code, _, _ = run_cli(capsys, "discard", "--target", "target-b", "--save", str(save))
    assert code == 0
    earlier = save.read_bytes()

    # When a discard runs where the file cannot grow past a few more bytes (a full disk, a quota): the
    # process's file size limit, set before the command starts
    limit = len(earlier) + 10
    wrapper = (
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "from relay.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            wrapper,
            "dlq",
            "discard",
            "--reason",
            "poison",
            "--save",
            str(save),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Then no poison letter is deleted, the run needs attention and says why
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: could not write {save} (File too large)" in done.stdout
    assert "not saved 2 (left in the queue)" in done.stdout
    assert "not everything chosen was discarded" in done.stderr
    # and the file holds the earlier run's lines alone, whole: the part written was cut back
    assert save.read_bytes() == earlier
    assert sorted(left_in(aws_stack.dead_letter_queue_url)) == sorted(
        s.body for s in seeded if s.target_id != "target-b"
    )
    assert CUSTOMER_TEXT not in done.stdout + done.stderr


def test_a_save_file_ending_in_a_partial_line_does_not_swallow_the_next_letter(
    aws_stack: LocalResources, seeded: list[Seeded], save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a save file whose last line was never finished (a run killed while writing it, a part that
    # could not be cut back, an editor that dropped the final newline)
    save.write_bytes(b'{"messageId":"m-1","body":"whole"}\n{"messageId":"m-2","bo')
    save.chmod(0o600)

    # When the operator discards the poison letters into it
    code, out, err = run_cli(capsys, "discard", "--reason", "poison", "--save", str(save))

    # Then each discarded letter has a line of its own that parses: none is glued onto the fragment
    assert code == 0, out + err
    lines = save.read_text(encoding="utf-8").splitlines()
    assert lines[:2] == ['{"messageId":"m-1","body":"whole"}', '{"messageId":"m-2","bo']
    assert sorted(json.loads(line)["body"] for line in lines[2:]) == sorted(
        s.body for s in seeded if s.reason == "poison"
    )


def test_dry_run_lists_ids_and_counts_and_writes_and_deletes_nothing(
    aws_stack: LocalResources, seeded: list[Seeded], save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # When
    code, out, err = run_cli(capsys, "discard", "--dry-run", "--target", "target-b", "--save", str(save))
    code_json, out_json, _ = run_cli(
        capsys, "discard", "--dry-run", "--target", "target-b", "--format", "json"
    )

    # Then: which letters, why, how many; nothing written, nothing deleted, no audit
    assert (code, code_json) == (0, 0), out + err
    assert "would discard 2 of 7 scanned" in out
    for s in seeded:
        assert (str(s.delivery_id) in out) == (s.target_id == "target-b")
    result = json.loads(out_json)
    assert result["mode"] == "dry-run" and result["matched"] == 2 and result["discarded"] == 0
    assert {letter["deliveryId"] for letter in result["letters"]} == {
        s.delivery_id for s in seeded if s.target_id == "target-b"
    }
    assert not save.exists()
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded)
    assert audit_records(aws_stack) == []
    assert CUSTOMER_TEXT not in out + err + out_json


def test_discard_by_id_and_an_id_no_letter_has_needs_attention_as_in_redrive(
    aws_stack: LocalResources, seeded: list[Seeded], save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = next(s for s in seeded if s.target_id == "target-a")
    code, out, err = run_cli(
        capsys, "discard", "--id", str(one.delivery_id), "--id", "no-such-id", "--save", str(save)
    )

    # Then the letter named is gone, and the id that named nothing (a typo?) is exit 1, as in redrive
    assert code == 1, out + err
    assert "relay dlq discard: no letter in the queue has --id no-such-id" in err
    assert [line["body"] for line in saved_lines(save)] == [one.body]
    assert one.body not in left_in(aws_stack.dead_letter_queue_url)


def test_each_run_is_audited_without_bodies(
    aws_stack: LocalResources, seeded: list[Seeded], save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # When the operator discards the poison letters and a retired target's
    code, out, err = run_cli(
        capsys,
        "discard",
        "--reason",
        "poison",
        "--reason",
        "target-gone",
        "--save",
        str(save),
        "--format",
        "json",
    )
    assert code == 0, out + err

    # Then an audit record per letter, under its target: who, when, which ids, how many
    records = audit_records(aws_stack)
    discarded = {line["messageId"]: line for line in saved_lines(save)}
    assert sorted(r["messageId"] for r in records) == sorted(discarded)
    for record in records:
        line = discarded[record["messageId"]]
        assert record["outcome"] == "dlq-discarded" and record["dlqReason"] == line["reason"]
        assert record["targetId"] == line["targetId"] and f"/target={line['targetId']}/" in record["key"]
        assert record["deliveryId"] == line["deliveryId"] and record["eventId"] == line["eventId"]
        assert "os user" in record["actor"] and record["startedAt"]
        assert record["invocationId"] == records[0]["invocationId"]  # one run, one operation id
        assert CUSTOMER_TEXT not in json.dumps(record) and "body" not in record
    # and the delivery's timeline says who discarded it
    gone = next(s for s in seeded if s.reason == "target-gone")
    assert main(["deliveries", "show", str(gone.delivery_id), "--format", "json"]) == 0
    (delivery,) = json.loads(capsys.readouterr().out)["deliveries"]
    assert delivery["lastOutcome"] == "dlq-discarded"


def test_the_ordered_dlq_discards_by_reason_and_keeps_the_rest_in_order(
    aws_stack: LocalResources, save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an ordered DLQ: conversation a with a poison letter between two exhausted ones, and b
    queues = ordered_queues(aws_stack)
    bodies = {}
    for group, seq, reason in (
        ("a", 0, DlqReason.EXHAUSTED),
        ("a", 1, DlqReason.POISON),
        ("a", 2, DlqReason.EXHAUSTED),
        ("b", 0, DlqReason.POISON),
    ):
        body, _ = task_body("i-1", "t-1")
        bodies[(group, seq)] = body
        queues.dead_letter_in_order(
            GroupPlacement(group, f"m-{group}-{seq}"),
            body,
            {},
            DeadLetterNote(reason, 3, integration_id="i-1", target_id="t-1"),
        )

    # When the operator discards the poison letters of the ordered DLQ
    code, out, err = run_cli(
        capsys, "discard", "--queue", "ordered", "--reason", "poison", "--save", str(save), "--format", "json"
    )

    # Then those two are saved (with their conversation) and gone; a's others stay, in their order
    assert code == 0, out + err
    lines = saved_lines(save)
    assert sorted((line["messageGroupId"], line["body"]) for line in lines) == [
        ("a", bodies[("a", 1)]),
        ("b", bodies[("b", 0)]),
    ]
    assert all(line["queue"] == "ordered" for line in lines)
    assert [m["body"] for m in drain(aws_stack.ordered_dead_letter_queue_url)] == [
        bodies[("a", 0)],
        bodies[("a", 2)],
    ]
    assert CUSTOMER_TEXT not in out + err


def test_an_ordered_letter_not_looked_at_is_not_said_to_be_missing_from_the_queue(
    aws_stack: LocalResources, save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a conversation of 12 letters in the ordered DLQ: SQS shows its first 10 while a scan holds them
    queues = ordered_queues(aws_stack)
    delivery_ids = []
    for seq in range(12):
        body, delivery_id = task_body("i-1", "t-1")
        delivery_ids.append(delivery_id)
        queues.dead_letter_in_order(
            GroupPlacement("a", f"m-a-{seq}"), body, {}, DeadLetterNote(DlqReason.EXHAUSTED, 3, "i-1", "t-1")
        )

    # When the operator asks for the last letter by its delivery id
    code, out, err = run_cli(
        capsys, "discard", "--queue", "ordered", "--id", delivery_ids[-1], "--dry-run", "--format", "json"
    )

    # Then the run needs attention, but does not say the letter is not in the queue: it was not looked at
    assert code == 1, out + err
    result = json.loads(out)
    assert result["behindShown"] == 2
    assert "no letter in the queue has" not in result["attention"] + err
    assert f"--id {delivery_ids[-1]}" in err and "2 more wait behind" in err


@pytest.fixture
def eventbridge_dlq(aws_stack: LocalResources, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = aws_stack.template.ref("EventBridgeDeadLetterQueue")
    monkeypatch.setenv("EVENTBRIDGE_DEAD_LETTER_QUEUE_URL", url)
    forget_cached_configuration()
    yield url


def test_the_eventbridge_dlq_is_discarded_by_event_id_or_all_and_takes_no_task_filter(
    eventbridge_dlq: str, save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two events EventBridge could not hand to the intake
    events = [
        {"id": str(uuid4()), "detail-type": "x", "source": "y", "detail": {"text": CUSTOMER_TEXT}}
        for _ in range(2)
    ]
    for event in events:
        put(
            eventbridge_dlq,
            json.dumps(event),
            {"ERROR_CODE": {"DataType": "String", "StringValue": "NO_PERMISSIONS"}},
        )

    # A task filter does not apply to an event queue
    code, _, err = run_cli(
        capsys, "discard", "--queue", "eventbridge", "--target", "t-1", "--save", str(save)
    )
    assert code == 2 and "--target applies only to --queue delivery, ordered or first-hop" in err

    # When the operator discards one by its message id, then the rest with --all
    code, out, _ = run_cli(
        capsys, "discard", "--queue", "eventbridge", "--dry-run", "--all", "--format", "json"
    )
    assert code == 0
    first = json.loads(out)["letters"][0]["messageId"]
    code, out, err = run_cli(capsys, "discard", "--queue", "eventbridge", "--id", first, "--save", str(save))
    assert code == 0, out + err
    code, out, err = run_cli(capsys, "discard", "--queue", "eventbridge", "--all", "--save", str(save))
    assert code == 0, out + err

    # Then both are in the file, the queue is empty, and no body was printed
    lines = saved_lines(save)
    assert lines[0]["messageId"] == first
    assert sorted(line["body"] for line in lines) == sorted(json.dumps(e) for e in events)
    assert drain(eventbridge_dlq) == []
    assert CUSTOMER_TEXT not in out + err


def test_ctrl_c_stops_after_the_batch_in_hand_every_letter_saved_or_still_in_the_queue(
    aws_stack: LocalResources, save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a DLQ of 300 letters of a retired target
    bodies = set()
    for _ in range(30):
        chunk = [task_body("i-1", "t-gone")[0] for _ in range(10)]
        bodies.update(chunk)
        aws_client("sqs").send_message_batch(
            QueueUrl=aws_stack.dead_letter_queue_url,
            Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)],
        )

    # When the operator presses Ctrl-C once some have been discarded
    def press_ctrl_c_mid_run() -> None:
        wait_until(
            lambda: save.exists() and save.read_bytes().count(b"\n") >= 20,
            what="a discard under way",
            timeout=60,
        )
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c_mid_run)
    presser.start()
    code, out, err = run_cli(capsys, "discard", "--target", "t-gone", "--save", str(save), "--format", "json")
    presser.join()

    # Then it stopped (130) after its batch, said so, and every letter is in the file or in the DLQ
    # (visible now), never both, never neither
    assert code == 130, out + err
    assert "stopped after the batch in hand" in err
    summary = json.loads(out)
    assert summary["ok"] is False and summary["interrupted"] is True
    saved = [line["body"] for line in saved_lines(save)]
    left = [m["body"] for m in drain(aws_stack.dead_letter_queue_url)]
    assert len(saved) == summary["discarded"] and 0 < len(saved) < len(bodies)
    assert sorted(saved + left) == sorted(bodies)
    # and what it did discard is audited
    assert len(audit_records(aws_stack)) == len(saved)


def test_without_an_audit_bucket_a_real_run_does_nothing(
    aws_stack: LocalResources,
    seeded: list[Seeded],
    save: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given settings that name no audit bucket (a dry run needs none)
    monkeypatch.delenv("AUDIT_BUCKET")
    forget_cached_configuration()
    code, _, _ = run_cli(capsys, "discard", "--reason", "poison", "--dry-run")
    assert code == 0

    # When the operator discards for real
    code, out, err = run_cli(capsys, "discard", "--reason", "poison", "--save", str(save))

    # Then it could not run: no file, nothing deleted
    assert code == 3, out + err
    assert "AUDIT_BUCKET" in err
    assert not save.exists()
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded)


def test_an_audit_bucket_that_refuses_the_records_needs_attention_and_the_letters_are_in_the_file(
    aws_stack: LocalResources,
    seeded: list[Seeded],
    save: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an audit bucket that does not exist
    monkeypatch.setenv("AUDIT_BUCKET", f"{aws_stack.audit_bucket}-missing")
    forget_cached_configuration()

    # When the operator discards the poison letters
    code, out, err = run_cli(capsys, "discard", "--reason", "poison", "--save", str(save), "--format", "json")

    # Then they are discarded, saved, and the missing audit record is the operator's to look at
    assert code == 1, out + err
    result = json.loads(out)
    assert result["discarded"] == 2 and result["auditUnwritten"] is True and result["ok"] is False
    assert "audit record could not be written" in err
    assert sorted(line["body"] for line in saved_lines(save)) == sorted(
        s.body for s in seeded if s.reason == "poison"
    )
    assert CUSTOMER_TEXT not in out + err


def test_max_bounds_how_many_are_discarded_and_is_no_filter(
    aws_stack: LocalResources, seeded: list[Seeded], save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --max alone is a bound, not a filter: it does not stand for --all
    code, _, err = run_cli(capsys, "discard", "--max", "3", "--save", str(save))
    assert code == 2 and "--all" in err

    code, out, err = run_cli(
        capsys, "discard", "--all", "--max", "3", "--save", str(save), "--format", "json"
    )

    assert code == 0, out + err
    assert json.loads(out)["discarded"] == 3
    assert len(saved_lines(save)) == 3
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded) - 3


def test_letters_that_arrive_during_the_run_are_left_for_the_next_one(
    aws_stack: LocalResources, seeded: list[Seeded], tmp_path: Path
) -> None:
    # Given a run that started before every letter reached the DLQ (its clock says an hour ago)
    started = time.time() - 3600
    copies = LetterFile(str(tmp_path / "discarded.jsonl"))
    try:
        result = discard(
            sqs_queues(get_settings()),
            "delivery",
            aws_stack.dead_letter_queue_url,
            DiscardOptions(everything=True),
            copies,
            None,
            now=lambda: started,
        )
    finally:
        copies.close()

    # Then it discards none of them, not even with --all: the operator chose from what was there
    assert (result.discarded, result.arrived_during_run, result.skipped) == (0, len(seeded), 0)
    assert result.to_json()["arrivedDuringRun"] == len(seeded)
    assert result.note is not None and f"{len(seeded)} letters arrived" in result.note
    assert len(drain(aws_stack.dead_letter_queue_url)) == len(seeded)


def test_a_queue_that_cannot_be_read_could_not_run(
    aws_stack: LocalResources, save: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"{aws_stack.dead_letter_queue_url}-missing"

    code, out, err = run_cli(capsys, "discard", "--all", "--dlq-url", missing, "--save", str(save))

    assert code == 3, out + err
    assert out == "" and err.startswith("relay dlq discard: DependencyUnavailable")
    assert not save.exists() or save.read_bytes() == b""


def test_the_intake_failure_queue_is_discarded_by_event_id(
    aws_stack: LocalResources, save: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two Lambda destination records of events the intake failed on
    url = aws_stack.template.ref("IntakeFailureQueue")
    monkeypatch.setenv("INTAKE_FAILURE_QUEUE_URL", url)
    forget_cached_configuration()
    events = [
        {
            "version": "0",
            "id": str(uuid4()),
            "detail-type": "x",
            "source": "y",
            "detail": {"text": CUSTOMER_TEXT},
        }
        for _ in range(2)
    ]
    for event in events:
        record = {
            "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
            "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
            "responsePayload": {"errorType": "ConfigurationError"},
            "requestPayload": event,
        }
        put(url, json.dumps(record))

    # When the operator discards the first by its event id
    code, out, err = run_cli(
        capsys, "discard", "--queue", "intake-failures", "--id", events[0]["id"], "--save", str(save)
    )

    # Then that record alone is saved and gone, the table is the failure queues' own
    assert code == 0, out + err
    assert out.splitlines()[0].split()[:3] == ["REASON", "ERROR", "TYPE"]
    assert "RetriesExhausted/Unhandled" in out
    (line,) = saved_lines(save)
    assert json.loads(line["body"])["requestPayload"] == events[0] and line["eventId"] == events[0]["id"]
    (left,) = drain(url)
    assert json.loads(left["body"])["requestPayload"] == events[1]
    assert CUSTOMER_TEXT not in out + err
