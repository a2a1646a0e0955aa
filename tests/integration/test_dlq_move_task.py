"""The move-task path of ``relay dlq redrive``, which moto lacks: a loopback HTTP server plays SQS.

It speaks SQS's JSON protocol for the calls this path makes (GetQueueAttributes, StartMessageMoveTask,
ListMessageMoveTasks; ReceiveMessage finds an empty queue) and answers ListMessageMoveTasks from a
script, so the polling and the status shown can be checked end to end through botocore.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.config import Config
from support.aws_proxy import answer_json

from relay.adapters.sqs import SqsQueues
from relay.cli import main
from relay.local.aws_stack import LOCAL_CREDENTIALS, forget_cached_configuration
from relay.local.loopback import SHUTDOWN_POLL_SECONDS
from relay.logic.dlq import Progress, RedriveFilter, RedriveOptions, redrive

DLQ_URL = "http://sqs.local/123456789012/relay-DeadLetterQueue"
QUEUE_URL = "http://sqs.local/123456789012/relay-DeliveryQueue"


def arn(url: str) -> str:
    return "arn:aws:sqs:us-east-1:123456789012:" + url.rsplit("/", 1)[1]


def task(status: str, moved: int, to_move: int = 5, **extra: Any) -> dict[str, Any]:
    return {
        "TaskHandle": "task-1",
        "Status": status,
        "SourceArn": arn(DLQ_URL),
        "DestinationArn": arn(QUEUE_URL),
        "ApproximateNumberOfMessagesMoved": moved,
        "ApproximateNumberOfMessagesToMove": to_move,
        **extra,
    }


class FakeSqs:
    """SQS on 127.0.0.1 for the move-task calls; records every request it gets."""

    def __init__(self, statuses: list[dict[str, Any]]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                operation = self.headers["X-Amz-Target"].split(".", 1)[1]
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                fake.requests.append((operation, request))
                answer_json(self, 200, fake.answer(operation, request))

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,), daemon=True
        )

    def answer(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        if operation == "GetQueueAttributes":
            return {"Attributes": {"QueueArn": arn(request["QueueUrl"]), "ApproximateNumberOfMessages": "5"}}
        if operation == "StartMessageMoveTask":
            return {"TaskHandle": "task-1"}
        if operation == "ReceiveMessage":
            return {"Messages": []}
        if operation == "ListMessageMoveTasks":
            current = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return {"Results": [current]}
        raise AssertionError(f"the move-task path should not call {operation}")

    def operations(self) -> list[str]:
        return [operation for operation, _ in self.requests]

    def __enter__(self) -> FakeSqs:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def sqs_client(url: str) -> Any:
    return boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local").client(
        "sqs", region_name="us-east-1", endpoint_url=url, config=Config(retries={"max_attempts": 1})
    )


@pytest.fixture
def fake_sqs(request: pytest.FixtureRequest) -> Iterator[FakeSqs]:
    with FakeSqs(list(request.param)) as fake:
        yield fake


@pytest.mark.parametrize(
    "fake_sqs", [[task("RUNNING", 0), task("RUNNING", 3), task("COMPLETED", 5)]], indirect=True
)
def test_unfiltered_redrive_starts_the_move_task_and_polls_it_until_done(fake_sqs: FakeSqs) -> None:
    # Given
    seen: list[Progress] = []
    sleeps: list[float] = []

    # When
    result = redrive(
        SqsQueues(sqs_client(fake_sqs.url)),
        DLQ_URL,
        QUEUE_URL,
        RedriveOptions(max_per_second=50, poll_seconds=1.5),
        progress=seen.append,
        sleep=sleeps.append,
    )

    # Then: DLQ ARN -> delivery queue ARN, polled until COMPLETED, each status shown
    start = next(req for op, req in fake_sqs.requests if op == "StartMessageMoveTask")
    assert start == {
        "SourceArn": arn(DLQ_URL),
        "DestinationArn": arn(QUEUE_URL),
        "MaxNumberOfMessagesPerSecond": 50,
    }
    assert fake_sqs.operations().count("ListMessageMoveTasks") == 3
    assert sleeps == [1.5, 1.5]
    assert [(p.phase, p.done, p.total) for p in seen] == [
        ("move task running", 0, 5),
        ("move task running", 3, 5),
        ("move task completed", 5, 5),
    ]
    assert result.mode == "move-task" and result.completed and result.moved == 5
    assert "ReceiveMessage" not in fake_sqs.operations()  # SQS moved them; nothing received here


@pytest.mark.parametrize(
    "fake_sqs", [[task("FAILED", 2, FailureReason="AWS.SimpleQueueService.NonExistentQueue")]], indirect=True
)
def test_a_failed_move_task_is_reported_with_its_reason(
    fake_sqs: FakeSqs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given: the CLI's own settings and clients, pointed at the fake
    for name, value in LOCAL_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", fake_sqs.url)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", DLQ_URL)
    monkeypatch.setenv("DELIVERY_QUEUE_URL", QUEUE_URL)
    forget_cached_configuration()

    # When
    try:
        code = main(["dlq", "redrive", "--no-progress"])
    finally:
        forget_cached_configuration()

    # Then
    out = capsys.readouterr().out
    assert code == 1
    assert "SQS move task FAILED: 2 of 5 messages moved" in out
    assert "AWS.SimpleQueueService.NonExistentQueue" in out


@pytest.mark.parametrize("fake_sqs", [[task("COMPLETED", 5)]], indirect=True)
@pytest.mark.parametrize(
    "options",
    [
        RedriveOptions(filter=RedriveFilter.of(targets=["target-a"])),
        RedriveOptions(max_messages=10),
        RedriveOptions(dry_run=True),
        RedriveOptions(method="resend"),
    ],
    ids=["filtered", "bounded", "dry-run", "resend"],
)
def test_only_an_unfiltered_unbounded_run_starts_a_move_task(
    fake_sqs: FakeSqs, options: RedriveOptions
) -> None:
    # When: the move task would move everything, unchanged, so these runs receive and re-send instead
    result = redrive(SqsQueues(sqs_client(fake_sqs.url)), DLQ_URL, QUEUE_URL, options)

    # Then
    assert "StartMessageMoveTask" not in fake_sqs.operations()
    assert "ReceiveMessage" in fake_sqs.operations()
    assert result.mode in ("resend", "dry-run") and result.moved == 0
