"""The audit trail at scale (template.yaml): Glue tables, Athena workgroup and saved queries, Logs
Insights query definitions, the archive's lifecycle and IAM, and the stack outputs the operator
commands read, checked against what the code really writes and reads.

The Glue columns are compared with the keys of audit records a real dispatcher writes (the engine on
relay.testing's fakes, through every kind of line) and of the records operator actions write: a field
renamed in the code, or a column renamed in the template, fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from test_dispatch_archive import Archiving, task_record
from test_dispatch_engine import INTEGRATION, NOW, always, make_target
from test_template import BASE, ROOT, resolved, with_parameters

from relay.adapters.audit import audit_key
from relay.cli.deliveries_cmd import TIMELINE_QUERY_OUTPUT, WORKGROUP_OUTPUT
from relay.cli.dlq_cmd import DESTINATION_OUTPUTS
from relay.cli.stack_option import OUTPUT_SETTINGS
from relay.local.aws_stack import deployment_environment
from relay.logic.deliveries.lookup import find_events
from relay.logic.deliveries.operator import switch_target
from relay.logic.deliveries.replay import plan_replay, run_replay
from relay.logic.deliveries.timeline import FIELDS, IDS
from relay.logic.dlq.discard import DiscardAudit, DiscardResult, Letter, record_discard
from relay.models.archive import ArchiveRecord, archive_key
from relay.models.breaker import BreakerState, Phase, target_key
from relay.models.delivery import S3Ref
from relay.settings import load_settings
from relay.testing.fakes import InMemoryAuditSink, InMemoryDeliveryQueue, InMemoryTargets

AUDIT_TABLES = ("AuditTable", "AuditByTargetTable")
NAMED_QUERIES = ("EventTimelineQuery", "FailuresByTargetQuery", "LatencyByTargetQuery")
# Every Logs Insights query the stack saves (over the log groups, which hold no delivered attempt).
QUERY_DEFINITIONS = tuple(BASE.resources_of_type("AWS::Logs::QueryDefinition"))


def poison_letter() -> Letter:
    """A letter whose body is no task: no delivery or event id."""
    return Letter("m-poison", "poison", "unparseable", "unparseable", None, None)


def gone_letter() -> Letter:
    return Letter("m-gone", "target-gone", INTEGRATION, "gone", "4b1f0c9e-0000-4000-8000-000000000000", "e-1")


def table(logical_id: str) -> dict[str, Any]:
    return dict(resolved(BASE, logical_id)["TableInput"])


def columns(logical_id: str) -> dict[str, str]:
    return {c["Name"]: c["Type"] for c in table(logical_id)["StorageDescriptor"]["Columns"]}


@pytest.fixture(scope="module")
def written() -> Iterator[list[dict[str, Any]]]:
    """Audit records as the code writes them: a dispatcher delivering (a response body kept), retrying,
    dead-lettering after an attempt and without one, and deferring; then a replay with a fresh id and a
    target switched off."""
    answers = {"crm": 200, "slow": 503, "bad": 400}
    a = Archiving(
        lambda method, url, headers, body: always(answers[url.split("//")[1].split(".")[0]])(
            method, url, headers, body
        ),
        "crm",
        "slow",
        "bad",
        "down",
    )
    a.breakers.save(
        target_key(INTEGRATION, "down"),
        BreakerState(phase=Phase.OPEN, consecutive_failures=5, trips=1, until=NOW + 60),
        expected_version=0,
    )
    a.batch(
        task_record("e-1", "crm"),
        task_record("e-1", "slow"),
        task_record("e-1", "bad"),
        task_record("e-1", "down"),
        task_record("e-1", "gone"),
    )
    operator = InMemoryAuditSink()
    targets = InMemoryTargets(*(make_target(t) for t in ("crm", "slow", "bad", "down")))
    events = find_events(a.archive.records(["2026-03-25"], containing="e-1"), "e-1")
    replay = plan_replay(
        events, "e-1", searched="", targets=targets, archive=a.archive, target_id="crm", new_id=True
    )
    now = datetime.fromtimestamp(NOW, UTC)
    run_replay(replay, queue=InMemoryDeliveryQueue(), audit=operator, actor="me", now=now)
    switch_target(
        targets, operator, make_target("bad"), enabled=False, actor="me", now=now, operation_id="op"
    )
    discarded = DiscardResult("delivery", "discard", letters=[poison_letter(), gone_letter()])
    record_discard(DiscardAudit(operator, "me", "op-discard", lambda: now), discarded)
    lines = [
        json.loads(line)
        for sink in (a.audit, operator)
        for body in sink.objects.values()
        for line in body.decode().splitlines()
    ]
    yield lines
    a.dispatcher.close()


def test_the_records_cover_every_kind_of_line(written: list[dict[str, Any]]) -> None:
    outcomes = {line["outcome"] for line in written}
    assert outcomes == {
        "delivered",
        "retry-scheduled",
        "dead-lettered",
        "deferred",
        "replayed",
        "target-disabled",
        "dlq-discarded",
    }


@pytest.mark.parametrize("logical_id", AUDIT_TABLES)
def test_the_audit_tables_columns_are_the_fields_of_the_records_written(
    written: list[dict[str, Any]], logical_id: str
) -> None:
    fields = {key.lower() for line in written for key in line}
    assert set(columns(logical_id)) == fields


def test_the_column_types_match_the_values_written(written: list[dict[str, Any]]) -> None:
    types = {"string": str, "int": int, "double": float, "boolean": bool}
    by_column = columns("AuditTable")
    for line in written:
        for key, value in line.items():
            if value is not None:
                expected = types[by_column[key.lower()]]
                assert isinstance(value, expected) and (expected is not int or not isinstance(value, bool)), (
                    f"{key}={value!r} is not {by_column[key.lower()]}"
                )


def test_the_archive_tables_columns_are_the_archive_records_fields() -> None:
    record = ArchiveRecord.model_validate(
        {
            "archivedAt": "2026-03-25T13:20:05Z",
            "invocationId": "i",
            "integrationId": "int",
            "eventId": "e",
            "receivedAt": "2026-03-25T13:20:05Z",
            "eventRef": S3Ref(bucket="b", key="k"),
            "deliveries": [{"targetId": "t", "deliveryId": "5b0f6a3e-9d2c-4f61-8a7e-3c1d2b4a5e60"}],
        }
    )
    written = json.loads(record.to_line())
    by_column = columns("ArchiveTable")
    assert set(by_column) == {key.lower() for key in written}
    struct = re.findall(r"(\w+):string", by_column["deliveries"])
    assert struct == [key.lower() for key in written["deliveries"][0]]
    assert re.findall(r"(\w+):string", by_column["eventref"]) == list(written["eventRef"])


@pytest.mark.parametrize(
    ("logical_id", "key", "partitions"),
    [
        ("AuditTable", audit_key("2026-03-25", "crm", "inv"), ["day"]),
        ("AuditByTargetTable", audit_key("2026-03-25", "crm", "inv"), ["day", "target"]),
        ("ArchiveTable", archive_key("2026-03-25", "inv"), ["day"]),
    ],
)
def test_partition_projection_finds_the_objects_where_the_code_writes_them(
    logical_id: str, key: str, partitions: list[str]
) -> None:
    # No crawler: every partition key is projected, and the location template, filled in with the
    # day (and target) of an object the code writes, is a prefix of that object's key.
    props = table(logical_id)
    parameters = props["Parameters"]
    assert parameters["projection.enabled"] == "true"
    assert [p["Name"] for p in props["PartitionKeys"]] == partitions
    assert parameters["projection.day.type"] == "date" and parameters["projection.day.format"] == "yyyy-MM-dd"
    if "target" in partitions:
        assert parameters["projection.target.type"] == "injected"
    bucket = BASE.ref("AuditBucket")
    location = (
        parameters["storage.location.template"].replace("${day}", "2026-03-25").replace("${target}", "crm")
    )
    assert f"s3://{bucket}/{key}".startswith(location)
    assert (
        props["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]
        == "org.openx.data.jsonserde.JsonSerDe"
    )


def test_the_projected_days_reach_as_far_back_as_the_data_is_kept() -> None:
    rules = {r.get("Prefix"): r for r in resolved(BASE, "AuditBucket")["LifecycleConfiguration"]["Rules"]}
    audit_days = int(rules["audit/"]["ExpirationInDays"])
    assert table("AuditTable")["Parameters"]["projection.day.range"] == f"NOW-{audit_days}DAYS,NOW"
    for days in (7, 30):
        template = with_parameters({"ArchiveRetentionDays": str(days)})
        archive = template.resolve(template.properties("ArchiveTable"))["TableInput"]["Parameters"]
        assert archive["projection.day.range"] == f"NOW-{days}DAYS,NOW"


# --- Athena and Logs Insights -------------------------------------------------------------------------


def test_the_workgroup_keeps_encrypted_results_in_their_own_expiring_prefix() -> None:
    config = resolved(BASE, "AuditWorkGroup")["WorkGroupConfiguration"]
    assert config["EnforceWorkGroupConfiguration"] is True
    assert config["ResultConfiguration"]["OutputLocation"] == f"s3://{BASE.ref('AuditBucket')}/athena/"
    assert config["ResultConfiguration"]["EncryptionConfiguration"]["EncryptionOption"] == "SSE_S3"
    assert int(config["BytesScannedCutoffPerQuery"]) > 0
    rules = {r.get("Prefix"): r for r in resolved(BASE, "AuditBucket")["LifecycleConfiguration"]["Rules"]}
    assert rules["athena/"]["ExpirationInDays"] == rules["archive/"]["ExpirationInDays"] == 7


@pytest.mark.parametrize("logical_id", NAMED_QUERIES)
def test_every_saved_query_reads_the_audit_table_of_its_stack_by_day(logical_id: str) -> None:
    query = BASE.properties(logical_id)
    assert query["Database"] == {"Ref": "AuditDatabase"} and query["WorkGroup"] == {"Ref": "AuditWorkGroup"}
    assert re.search(r"FROM audit\s", query["QueryString"])
    assert "WHERE day >= " in query["QueryString"]  # partition pruning: only the days asked for are read


def test_the_timeline_query_returns_what_the_timeline_shows_with_the_parameters_the_cli_passes() -> None:
    sql = BASE.properties("EventTimelineQuery")["QueryString"]
    selected = re.search(r"SELECT(.*?)FROM", sql, re.S)
    assert selected is not None
    assert [c.strip() for c in selected[1].split(",")] == [f.lower() for f in FIELDS]
    # relay deliveries show --athena passes [first day, id], in this order
    assert sql.count("?") == 2
    # ... and looks the id up in the columns the timeline looks in (relay.logic.deliveries.timeline.IDS)
    looked_in = f"? IN ({', '.join(key.lower() for key in IDS)})"
    assert sql.index("day >= ?") < sql.index(looked_in)


def test_the_failure_and_latency_queries_cover_the_last_24_hours_per_target() -> None:
    failures = BASE.properties("FailuresByTargetQuery")["QueryString"]
    latency = BASE.properties("LatencyByTargetQuery")["QueryString"]
    for sql in (failures, latency):
        assert "interval '1' day" in sql and "GROUP BY" in sql
    assert "targetid, status" in failures and "'dead-lettered'" in failures
    assert "approx_percentile(latencyms, 0.5)" in latency and "approx_percentile(latencyms, 0.99)" in latency
    assert "date_trunc('hour'" in latency


def dispatch_engine_log_groups() -> set[str]:
    """The log group of every function whose handler runs the dispatch engine (the fast, the slow and
    the ordered lane): each writes "delivery" lines, so a query that skips one misses its targets."""
    groups = set()
    for logical_id in BASE.resources_of_type("AWS::Serverless::Function"):
        function = resolved(BASE, logical_id)
        module = function["Handler"].split(".")[0]
        handler = ROOT / function["CodeUri"] / f"{module}.py"
        if "from relay.wiring.dispatcher import" in handler.read_text():
            groups.add(function["LoggingConfig"]["LogGroup"])
    return groups


def test_the_dispatch_engine_runs_in_every_lane() -> None:
    # guards dispatch_engine_log_groups: a handler that moved its import must not empty the set
    assert len(dispatch_engine_log_groups()) == 4


@pytest.mark.parametrize("logical_id", QUERY_DEFINITIONS)
def test_every_logs_insights_query_reads_every_dispatchers_log_group_by_audit_field(
    written: list[dict[str, Any]], logical_id: str
) -> None:
    query = resolved(BASE, logical_id)
    missing = dispatch_engine_log_groups() - set(query["LogGroupNames"])
    assert not missing, f"{logical_id} never reads {sorted(missing)}"
    fields = {key for line in written for key in line} | {"message", "event_id"}
    without_aliases = re.sub(r"\bas \w+", "", query["QueryString"])  # names the query gives its results
    used = set(re.findall(r"\b([a-z]+[A-Z]\w*|event_id)\b", without_aliases))
    assert used <= fields, f"{logical_id} names fields no record has: {used - fields}"
    assert 'message = "delivery"' in query["QueryString"]
    # A delivered attempt has no log line (batch.py): figures over the log's lines would be figures over
    # failures alone, so no percentile is taken there
    assert "pct(" not in query["QueryString"], logical_id


# --- the archive's lifecycle, IAM and switch ----------------------------------------------------------


def test_the_archive_expires_after_its_retention_parameter() -> None:
    for days in ("3", "30"):
        template = with_parameters({"ArchiveRetentionDays": days})
        rules = {
            r.get("Prefix"): r for r in resolved(template, "AuditBucket")["LifecycleConfiguration"]["Rules"]
        }
        assert str(rules["archive/"]["ExpirationInDays"]) == days
        assert int(rules["archive/"]["NoncurrentVersionExpiration"]["NoncurrentDays"]) >= 1


def test_the_dispatcher_may_only_put_archive_objects_and_nothing_reads_them() -> None:
    archive = {"Fn::Sub": "${AuditBucket.Arn}/archive/*"}
    grants = [
        (logical_id, statement)
        for logical_id in ("IntakeFunction", "DispatcherFunction", "ConfigSyncFunction")
        for policy in BASE.properties(logical_id)["Policies"]
        for statement in policy.get("Statement", [])
        if statement.get("Resource") == archive
    ]
    assert [(logical_id, s["Action"]) for logical_id, s in grants] == [("DispatcherFunction", "s3:PutObject")]


@pytest.mark.parametrize(("value", "enabled"), [("true", True), ("false", False)])
def test_archive_enabled_reaches_the_dispatchers_settings(value: str, enabled: bool) -> None:
    environment = with_parameters({"ArchiveEnabled": value}).function("DispatcherFunction").environment
    assert load_settings(environment).archive_enabled is enabled


# --- the outputs --stack-name reads ---------------------------------------------------------------------


def test_every_output_the_operator_commands_read_is_in_the_template() -> None:
    outputs = BASE.document["Outputs"]
    read = {*OUTPUT_SETTINGS, *DESTINATION_OUTPUTS.values(), WORKGROUP_OUTPUT, TIMELINE_QUERY_OUTPUT}
    assert read <= set(outputs), f"the CLI reads outputs the template lacks: {read - set(outputs)}"
    # and each names the resource the setting it replaces names for the functions
    functions = deployment_environment(BASE)
    for output, field in OUTPUT_SETTINGS.items():
        variable = field.upper()
        if variable in functions:
            assert BASE.resolve(outputs[output]["Value"]) == functions[variable], output
