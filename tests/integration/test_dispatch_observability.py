"""Metrics (EMF, names and dimensions exactly as docs/architecture.md), the S3 audit trail (one line per
attempt), the log (one record per attempt that did not deliver, one summary per batch); none of them
ever holds a secret or an encrypted event's plaintext."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_dispatch_support import (
    BEARER,
    ENCRYPTED_TARGET,
    ENCRYPTION_SECRET,
    PLAIN_TARGET,
    SIGNING_SECRET,
    audit_lines,
    seed_target,
    task_record,
)

from relay.local.aws_stack import LocalResources
from relay.local.receiver import Behaviour, Receiver
from relay.settings import get_settings
from relay.wiring import aws_client
from relay.wiring.dispatcher import build_dispatcher

pytestmark = pytest.mark.integration
ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
PLAINTEXT = "the customer's very private words"


def documented_dispatcher_metrics() -> dict[str, tuple[str, set[str]]]:
    """{metric: (unit, dimensions)} for the rows the architecture page says the dispatcher emits."""
    found: dict[str, tuple[str, set[str]]] = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[3] == "dispatcher":
            dims = set(re.findall(r"`(\w+)`", cells[2]))
            for name in re.findall(r"`(\w+)`", cells[0]):
                found[name] = (cells[1], dims)
    return found


def emf_blobs(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith('{"_aws"')]


def log_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The relay's log records with their structured extras (what powertools Logger prints as JSON)."""
    return [
        {k: v for k, v in vars(r).items() if k not in ("args", "exc_info")} | {"message": r.getMessage()}
        for r in caplog.records
    ]


def test_metric_names_units_and_dimensions_are_exactly_the_documented_ones(
    aws_stack: LocalResources, receiver: Receiver, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given one target that fails, one that succeeds, and a poison record
    documented = documented_dispatcher_metrics()
    assert {"Delivered", "DeliveryFailed", "Retried", "DeadLettered", "DeliveryLatency"} <= set(documented)
    receiver.path_behaviours["/hooks/crm"] = Behaviour(status=503)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET, attempts=2)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET)
    capfd.readouterr()

    # When a batch with a first attempt, a last attempt and a success is handled
    build_dispatcher(get_settings()).handle_batch(
        [task_record(PLAIN_TARGET), task_record(PLAIN_TARGET, receive_count=2), task_record(ENCRYPTED_TARGET)]
    )

    # Then every emitted metric is documented, with its unit and exactly its dimensions
    blobs = emf_blobs(capfd.readouterr().out)
    emitted: dict[tuple[str, str], float] = {}
    for blob in blobs:
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "GenesysRelay"
            for metric in directive["Metrics"]:
                unit, dims = documented[metric["Name"]]
                assert metric["Unit"] == unit
                assert [set(d) for d in directive["Dimensions"]] == [dims]
                emitted[(metric["Name"], blob["target"])] = sum(blob[metric["Name"]])
    assert emitted[("Delivered", ENCRYPTED_TARGET)] == 1
    assert emitted[("DeliveryFailed", PLAIN_TARGET)] == 2
    assert emitted[("Retried", PLAIN_TARGET)] == 1
    assert emitted[("DeadLettered", PLAIN_TARGET)] == 1
    assert ("DeliveryLatency", PLAIN_TARGET) in emitted and ("DeliveryLatency", ENCRYPTED_TARGET) in emitted


def test_audit_objects_are_partitioned_by_date_and_target_with_one_line_per_attempt(
    aws_stack: LocalResources, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET, encrypted=True)
    records = [task_record(PLAIN_TARGET), task_record(PLAIN_TARGET), task_record(ENCRYPTED_TARGET)]
    build_dispatcher(get_settings()).handle_batch(records, invocation_id="inv-123")

    lines = audit_lines(aws_stack)
    assert len(lines) == 3
    keys = {line["_key"] for line in lines}
    assert len(keys) == 2
    for key in keys:
        assert re.fullmatch(r"audit/date=\d{4}-\d{2}-\d{2}/target=[0-9a-f-]{36}/inv-123\.jsonl", key)
    for line in lines:
        assert line["_key"].split("/")[2] == f"target={line['targetId']}"
        for field in (
            "deliveryId",
            "eventId",
            "integrationId",
            "targetId",
            "urlHost",
            "attempt",
            "status",
            "latencyMs",
            "outcome",
            "errorCode",
            "breakerState",
            "receivedAt",
            "startedAt",
            "finishedAt",
        ):
            assert field in line, field
        assert (line["urlHost"], line["attempt"], line["status"], line["outcome"]) == (
            "127.0.0.1",
            1,
            200,
            "delivered",
        )
        assert line["breakerState"] == "closed"
    # and the log does not repeat the deliveries line by line: one summary for the batch
    records_logged = log_records(caplog)
    assert [r for r in records_logged if r["message"] == "delivery"] == []
    summaries = [r for r in records_logged if r["message"] == "batch"]
    assert [(s["invocationId"], s["outcomes"], s["reportedFailed"]) for s in summaries] == [
        ("inv-123", {PLAIN_TARGET: {"delivered": 2}, ENCRYPTED_TARGET: {"delivered": 1}}, 0)
    ]


def test_what_the_audit_object_does_not_make_visible_is_logged(
    aws_stack: LocalResources, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a target that fails, and one that delivers
    receiver.path_behaviours["/hooks/crm"] = Behaviour(status=503)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET, attempts=2)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET)

    # When a first attempt, a last attempt and a delivery are handled
    records = [
        task_record(PLAIN_TARGET),
        task_record(PLAIN_TARGET, receive_count=2),
        task_record(ENCRYPTED_TARGET),
    ]
    build_dispatcher(get_settings()).handle_batch(records, invocation_id="inv-9")

    # Then the retry and the dead-lettering are logged one by one, the delivery only in the summary
    logged = [(r["targetId"], r["outcome"]) for r in log_records(caplog) if r["message"] == "delivery"]
    assert sorted(logged) == [(PLAIN_TARGET, "dead-lettered"), (PLAIN_TARGET, "retry-scheduled")]
    summary = next(r for r in log_records(caplog) if r["message"] == "batch")
    assert summary["outcomes"] == {
        PLAIN_TARGET: {"retry-scheduled": 1, "dead-lettered": 1},
        ENCRYPTED_TARGET: {"delivered": 1},
    }
    assert summary["reportedFailed"] == 1


def test_when_the_audit_bucket_is_unwritable_its_lines_are_logged_instead(
    aws_stack: LocalResources, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a target, and an audit bucket that refuses writes (it is gone)
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    dispatcher = build_dispatcher(get_settings())
    aws_client("s3").delete_bucket(Bucket=aws_stack.audit_bucket)  # empty: nothing was audited yet

    # When a record is delivered
    record = task_record(PLAIN_TARGET)
    dispatcher.handle_batch([record], invocation_id="inv-7")

    # Then the audit line is in the log, so the trail is whole
    warning = next(r for r in log_records(caplog) if r["message"] == "audit object not written")
    assert [(line["outcome"], line["messageId"]) for line in warning["lines"]] == [
        ("delivered", record["messageId"])
    ]


def test_no_secret_nor_encrypted_plaintext_reaches_logs_metrics_or_audit(
    aws_stack: LocalResources,
    receiver: Receiver,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given endpoints that echo the request (headers and body) back in their answer
    seed_target(aws_stack, f"{receiver.url}/hooks/crm", target_id=PLAIN_TARGET)
    seed_target(aws_stack, f"{receiver.url}/hooks/archive", target_id=ENCRYPTED_TARGET, encrypted=True)
    receiver.path_behaviours["/hooks/crm"] = Behaviour(
        response_body=f"Authorization: Bearer {BEARER}".encode()
    )
    receiver.path_behaviours["/hooks/archive"] = Behaviour(
        response_body=f"Bearer {BEARER}; {PLAINTEXT}".encode()
    )
    event = {"id": "e-1", "text": PLAINTEXT}

    # When both deliver, and a failing one retries
    build_dispatcher(get_settings()).handle_batch(
        [task_record(PLAIN_TARGET, event={"id": "e-0"}), task_record(ENCRYPTED_TARGET, event=event)]
    )
    receiver.path_behaviours["/hooks/crm"] = Behaviour(
        status=500, response_body=f"{BEARER} {SIGNING_SECRET}".encode()
    )
    build_dispatcher(get_settings()).handle_batch([task_record(PLAIN_TARGET)])

    # Then no secret value, and not the encrypted event's text, is anywhere we write
    captured = capfd.readouterr()
    audit = json.dumps(audit_lines(aws_stack))
    signing_key = SIGNING_SECRET.removeprefix("whsec_")
    basic = base64.b64encode(BEARER.encode()).decode()
    logs = json.dumps(log_records(caplog), default=str)
    assert '"message": "delivery"' in logs
    for text in (captured.out, captured.err, audit, logs):
        for secret in (BEARER, SIGNING_SECRET, signing_key, ENCRYPTION_SECRET, basic):
            assert secret not in text
        assert PLAINTEXT not in text
    assert "[redacted]" in audit  # the echoed token was scrubbed, not silently dropped
