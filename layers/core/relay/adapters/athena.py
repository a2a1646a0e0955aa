"""Running a saved Athena query (``AWS::Athena::NamedQuery`` in template.yaml) and reading its rows:
GetNamedQuery, StartQueryExecution with execution parameters, GetQueryExecution until it ends (bounded),
GetQueryResults. For ``relay deliveries show --athena``, over ranges too long to read object by object."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import ClientError

from relay.adapters.aws_errors import AWS_ERRORS
from relay.errors import DependencyUnavailable

DONE = ("SUCCEEDED", "FAILED", "CANCELLED")
Row = dict[str, str | None]


def sql_literal(value: str) -> str:
    """A string as an Athena execution parameter: a quoted SQL literal (parameters are spliced as given)."""
    return "'" + value.replace("'", "''") + "'"


class AthenaQueries:
    """``athena`` is a boto3 Athena client; ``sleep`` and ``clock`` pace the wait for a query to end."""

    def __init__(
        self,
        athena: Any,
        *,
        poll_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._athena = athena
        self._poll = poll_seconds
        self._sleep = sleep
        self._clock = clock

    def run_named(
        self, named_query_id: str, workgroup: str, parameters: Sequence[str], *, timeout_seconds: float
    ) -> list[Row]:
        """The rows (column name -> text, None for NULL) of the named query run with ``parameters``."""
        named = self._call("get_named_query", NamedQueryId=named_query_id)["NamedQuery"]
        started = self._call(
            "start_query_execution",
            QueryString=named["QueryString"],
            QueryExecutionContext={"Database": named["Database"]},
            WorkGroup=workgroup,
            ExecutionParameters=[sql_literal(p) for p in parameters],
        )
        execution_id = started["QueryExecutionId"]
        self._wait(execution_id, timeout_seconds)
        return self._rows(execution_id)

    def _wait(self, execution_id: str, timeout_seconds: float) -> None:
        deadline = self._clock() + timeout_seconds
        while True:
            status = self._call("get_query_execution", QueryExecutionId=execution_id)["QueryExecution"][
                "Status"
            ]
            if status["State"] == "SUCCEEDED":
                return
            if status["State"] in DONE:
                reason = status.get("StateChangeReason") or status["State"].lower()
                raise DependencyUnavailable(
                    f"Athena query {execution_id} {status['State'].lower()}: {reason}"
                )
            if self._clock() >= deadline:
                self._call("stop_query_execution", QueryExecutionId=execution_id)
                raise DependencyUnavailable(
                    f"Athena query {execution_id} did not finish within {timeout_seconds:g} s (stopped)"
                )
            self._sleep(self._poll)

    def _rows(self, execution_id: str) -> list[Row]:
        columns: list[str] = []
        rows: list[Row] = []
        kwargs: dict[str, Any] = {"QueryExecutionId": execution_id}
        while True:
            page = self._call("get_query_results", **kwargs)
            result = page["ResultSet"]
            if not columns:
                columns = [c["Name"] for c in result.get("ResultSetMetadata", {}).get("ColumnInfo", [])]
            for raw in result.get("Rows", []):
                values = [cell.get("VarCharValue") for cell in raw.get("Data", [])]
                if not columns:
                    columns = [str(v) for v in values]
                if values == columns and not rows:
                    continue  # a SELECT's first row repeats the column names
                rows.append(dict(zip(columns, values, strict=False)))
            if not page.get("NextToken"):
                return rows
            kwargs["NextToken"] = page["NextToken"]

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._athena, operation)(**kwargs)
        except AWS_ERRORS as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
            raise DependencyUnavailable(f"Athena unavailable ({code or type(exc).__name__})") from None
