"""The operator side's adapters (Athena, CloudFormation, STS, the audit bucket's reader) and argument
types, with the AWS client faked at the boundary: a stand-in answering as botocore would; no sockets."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from test_adapter_errors import QUOTED, FailingClient

from relay.adapters.archive import S3EventArchive
from relay.adapters.athena import AthenaQueries, sql_literal
from relay.adapters.audit import S3AuditReader
from relay.adapters.cloudformation import stack_outputs
from relay.adapters.identity import caller_identity
from relay.cli.arguments import duration, positive_seconds
from relay.errors import DependencyUnavailable, UnknownStack
from relay.logic.deliveries.timeline import from_table_row
from relay.models.delivery import S3Ref


class ScriptedAthena:
    """Athena as boto3 answers: the query's states in turn, then its result pages."""

    def __init__(self, states: list[dict[str, Any]], pages: list[dict[str, Any]] | None = None) -> None:
        self.states = states
        self.pages = pages or []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, operation: str) -> Callable[..., Any]:
        def call(**kwargs: Any) -> Any:
            self.calls.append((operation, kwargs))
            if operation == "get_named_query":
                return {"NamedQuery": {"QueryString": "SELECT ?", "Database": "relay_audit"}}
            if operation == "start_query_execution":
                return {"QueryExecutionId": "q-1"}
            if operation == "get_query_execution":
                return {"QueryExecution": {"Status": self.states.pop(0)}}
            if operation == "get_query_results":
                return self.pages.pop(0)
            return {}

        return call


def page(rows: list[list[str | None]], next_token: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "ResultSet": {
            "Rows": [{"Data": [{} if v is None else {"VarCharValue": v} for v in row]} for row in rows],
            "ResultSetMetadata": {"ColumnInfo": [{"Name": "eventid"}, {"Name": "status"}]},
        }
    }
    if next_token:
        answer["NextToken"] = next_token
    return answer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def queries(athena: ScriptedAthena, clock: Clock) -> AthenaQueries:
    return AthenaQueries(athena, poll_seconds=1.0, sleep=clock.sleep, clock=clock)


def test_a_named_query_runs_with_quoted_parameters_and_its_rows_come_back_without_the_header() -> None:
    athena = ScriptedAthena(
        [{"State": "QUEUED"}, {"State": "RUNNING"}, {"State": "SUCCEEDED"}],
        [page([["eventid", "status"], ["e-1", "200"]], next_token="t"), page([["e-1", None]])],
    )

    rows = queries(athena, Clock()).run_named("nq-1", "wg", ["2026-03-25", "it's"], timeout_seconds=60)

    assert rows == [{"eventid": "e-1", "status": "200"}, {"eventid": "e-1", "status": None}]
    started = dict(athena.calls)["start_query_execution"]
    assert started["WorkGroup"] == "wg"
    assert started["QueryExecutionContext"] == {"Database": "relay_audit"}
    assert started["ExecutionParameters"] == ["'2026-03-25'", "'it''s'"]


def test_a_failed_query_says_why() -> None:
    athena = ScriptedAthena([{"State": "FAILED", "StateChangeReason": "TABLE_NOT_FOUND: audit"}])
    with pytest.raises(DependencyUnavailable, match="Athena query q-1 failed: TABLE_NOT_FOUND: audit"):
        queries(athena, Clock()).run_named("nq-1", "wg", [], timeout_seconds=60)


def test_a_query_past_its_timeout_is_stopped_not_waited_for() -> None:
    athena = ScriptedAthena([{"State": "RUNNING"}] * 100)
    clock = Clock()

    with pytest.raises(DependencyUnavailable, match="did not finish within 5 s"):
        queries(athena, clock).run_named("nq-1", "wg", [], timeout_seconds=5)

    assert athena.calls[-1] == ("stop_query_execution", {"QueryExecutionId": "q-1"})
    assert clock.now == 5


def test_athena_failures_become_dependency_unavailable_without_quoting_aws() -> None:
    with pytest.raises(DependencyUnavailable) as raised:
        queries(FailingClient(), Clock()).run_named("nq-1", "wg", [], timeout_seconds=5)  # type: ignore[arg-type]
    assert QUOTED not in str(raised.value) and "InternalServerError" in str(raised.value)


def test_sql_literals_double_their_quotes() -> None:
    assert sql_literal("a'b''c") == "'a''b''''c'"


def test_athena_rows_become_audit_lines_with_their_types() -> None:
    line = from_table_row(
        {"attempt": "2", "status": "503", "latencyms": "41.5", "targetid": "crm", "dlqreason": ""}
    )
    assert (line["attempt"], line["status"], line["latencyMs"], line["targetId"], line["dlqReason"]) == (
        2,
        503,
        41.5,
        "crm",
        None,
    )


# --- CloudFormation and STS -----------------------------------------------------------------------------


class Answering:
    def __init__(self, **answers: Any) -> None:
        self.answers = answers

    def __getattr__(self, operation: str) -> Callable[..., Any]:
        def call(**kwargs: Any) -> Any:
            answer = self.answers[operation]
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call


def test_a_stacks_outputs_by_key() -> None:
    cloudformation = Answering(
        describe_stacks={"Stacks": [{"Outputs": [{"OutputKey": "AuditBucketName", "OutputValue": "b"}]}]}
    )
    assert stack_outputs(cloudformation, "relay-dev") == {"AuditBucketName": "b"}


def test_a_stack_that_does_not_exist_is_unknown_and_other_failures_are_unavailable() -> None:
    missing = ClientError(
        {"Error": {"Code": "ValidationError", "Message": "Stack with id x does not exist"}}, "DescribeStacks"
    )
    with pytest.raises(UnknownStack, match="no stack x in this account and region"):
        stack_outputs(Answering(describe_stacks=missing), "x")
    with pytest.raises(DependencyUnavailable):
        stack_outputs(FailingClient(), "x")


def test_the_actor_is_the_aws_identity_and_the_os_user_or_the_os_user_alone() -> None:
    sts = Answering(get_caller_identity={"Arn": "arn:aws:sts::1:assumed-role/ops/alice"})
    assert caller_identity(sts).startswith("arn:aws:sts::1:assumed-role/ops/alice (os user ")
    assert caller_identity(Answering(get_caller_identity=NoCredentialsError())).startswith("os user ")


# --- reading the audit bucket ---------------------------------------------------------------------------


class UnlistableS3:
    """An S3 client whose listing fails as botocore's paginator would (AccessDenied, quoting the request)."""

    def get_paginator(self, operation: str) -> Any:
        return FailingClient(
            ClientError({"Error": {"Code": "AccessDenied", "Message": QUOTED}}, "ListObjectsV2")
        )


def test_reading_the_audit_or_the_archive_fails_as_dependency_unavailable() -> None:
    with pytest.raises(DependencyUnavailable, match=r"audit bucket unreadable \(AccessDenied\)"):
        S3AuditReader(UnlistableS3(), "bucket").lines(["2026-03-25"], containing="e-1")
    with pytest.raises(DependencyUnavailable, match=r"audit bucket unreadable \(AccessDenied\)") as raised:
        S3EventArchive(UnlistableS3(), "bucket").records(["2026-03-25"], containing="e-1")
    assert QUOTED not in str(raised.value)


def test_a_claim_check_that_is_gone_is_told_apart_from_s3_failing() -> None:
    gone = ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadObject")
    ref = S3Ref(bucket="b", key="events/x.json")
    assert S3EventArchive(Answering(head_object=gone), "b").claim_check_exists(ref) is False
    assert S3EventArchive(Answering(head_object={}), "b").claim_check_exists(ref) is True
    with pytest.raises(DependencyUnavailable):
        S3EventArchive(FailingClient(), "b").claim_check_exists(ref)


# --- --since ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", timedelta(minutes=90)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("3600", timedelta(hours=1)),
        ("1.5h", timedelta(minutes=90)),
        ("400d", timedelta(days=400)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert duration(text) == expected


@pytest.mark.parametrize("text", ["", "7x", "d", "-1d", "0h", "nanh", "infd", "401d", "100000d", "1e300s"])
def test_durations_that_are_not_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


@pytest.mark.parametrize("text", ["1h30m", "7 days", "h"])
def test_a_refused_duration_is_quoted_as_typed(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"not a duration: '{text}'"):
        duration(text)


# --- --timeout --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("0.3", 0.3), ("3", 3.0), ("86400", 86_400.0), ("1e3", 1000.0)]
)
def test_seconds_up_to_a_day_are_taken(text: str, expected: float) -> None:
    assert positive_seconds(text) == expected


@pytest.mark.parametrize("text", ["86400.5", "1e10", "1e308", "inf", "nan", "0", "-1", "3s"])
def test_seconds_a_wait_cannot_take_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        positive_seconds(text)
