"""A target record this release cannot validate (a newer release's ``"method": "PATCH"``, a hand edit),
against moto, the intake and dispatcher handlers, a loopback receiver and the fake Genesys API: it never
takes its integration's other targets down, and its own events are retried, never lost."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from support.events import sample
from support.handlers import LoadHandler
from support.lambda_context import lambda_context
from support.queues import drain, receive
from test_dispatch_support import (
    INTEGRATION_ID,
    attr,
    audit_lines,
    put_secret,
    secret_name,
    seed_target,
    task_record,
)

from relay.cli import main
from relay.local.aws_stack import LocalResources
from relay.local.fake_genesys import FakeGenesys
from relay.local.fixtures import Fixtures
from relay.local.receiver import Receiver
from relay.models.delivery import DeliveryTask
from relay.models.secrets import RotatingSecret, SecretKind
from relay.models.targets import Target
from relay.settings import get_settings
from relay.wiring import aws_client, target_store

pytestmark = pytest.mark.integration

FIXTURES = Fixtures.load()
INTEGRATION = FIXTURES.integrations[0]
HEALTHY, UNREADABLE = (target.id for target in INTEGRATION.targets[:2])
# In the bad record's rejected field: it must never show anywhere (records may hold secrets).
SECRETISH = "PATCH-s3cr3t-4f9a"
WHY = "target record unreadable: method: Input should be 'POST' or 'PUT'"


def seed(resources: LocalResources, healthy_url: str) -> None:
    """The fixtures' first integration (its signature secret too), its first target healthy at
    ``healthy_url`` and its second written by a newer release: a method this one does not know."""
    assert INTEGRATION.id == INTEGRATION_ID  # the samples' integration: its events, its tasks
    seed_target(resources, healthy_url, target_id=HEALTHY)
    name = secret_name(SecretKind.SIGNATURE, INTEGRATION.id)
    put_secret(name, RotatingSecret(current=INTEGRATION.signature_secret))
    write_unreadable(UNREADABLE, version=4)


def write_unreadable(target_id: str, *, version: int, **fields: Any) -> None:
    """A raw item as a newer release would store it (relay.adapters.target_store's layout): its doc
    holds ``fields`` (default: a method this release does not know)."""
    doc = Target(
        integration_id=INTEGRATION.id, target_id=target_id, name="newer", url="https://example.com/hook"
    ).model_dump(mode="json", by_alias=True)
    doc.update(fields or {"method": SECRETISH}, version=version)
    aws_client("dynamodb").put_item(
        TableName=get_settings().targets_table,
        Item={
            "integrationId": {"S": INTEGRATION.id},
            "targetId": {"S": target_id},
            "doc": {"S": json.dumps(doc)},
            "version": {"N": str(version)},
            "enabled": {"BOOL": True},
        },
    )


def make_integration_record_unreadable() -> int:
    """Rewrite the integration's own record as a newer release might (a field this one requires gone);
    its item's version, which stays."""
    table = aws_client("dynamodb")
    key = {"integrationId": {"S": INTEGRATION.id}, "targetId": {"S": "#integration"}}
    item: dict[str, Any] = table.get_item(TableName=get_settings().targets_table, Key=key)["Item"]
    doc = json.loads(item["doc"]["S"])
    del doc["name"]
    table.put_item(TableName=get_settings().targets_table, Item={**item, "doc": {"S": json.dumps(doc)}})
    return int(item["version"]["N"])


def test_the_intake_queues_for_both_and_the_dispatcher_delivers_one_and_retries_the_other(
    aws_stack: LocalResources,
    receiver: Receiver,
    function_handler: LoadHandler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an integration with one healthy target and one whose record this release cannot read
    seed(aws_stack, f"{receiver.url}/hooks/ok")

    # When Genesys posts a signed event
    response = function_handler("intake")(sample("apigw_text.json"), lambda_context("intake"))

    # Then it is accepted, and a task is queued for each target, the unreadable one's too
    assert response["statusCode"] == 202, response
    records = receive(aws_stack.delivery_queue_url)
    tasks = {DeliveryTask.model_validate_json(r["body"]).target_id: r for r in records}
    assert sorted(tasks) == sorted([HEALTHY, UNREADABLE])

    # When the dispatcher gets them
    result = function_handler("dispatcher")({"Records": records}, lambda_context("dispatcher"))

    # Then the healthy target got its event, and the other task is retried: not sent, not dropped
    assert [r.path for r in receiver.deliveries] == ["/hooks/ok"]
    assert result == {"batchItemFailures": [{"itemIdentifier": tasks[UNREADABLE]["messageId"]}]}
    assert drain(aws_stack.dead_letter_queue_url) == []
    [line] = [line for line in audit_lines(aws_stack) if line["targetId"] == UNREADABLE]
    assert (line["outcome"], line["errorCode"], line["error"]) == ("retry-scheduled", "configuration", WHY)
    assert line["attempt"] == 1 and line["retryInSeconds"] >= 1
    # And the store logged the bad record at error level, naming it and why, never its values
    logged = [r for r in caplog.records if r.getMessage().startswith("target record unreadable")]
    assert logged and all(r.levelno == logging.ERROR for r in logged)
    assert getattr(logged[0], "targetId", None) == UNREADABLE
    assert SECRETISH not in caplog.text and SECRETISH not in json.dumps(audit_lines(aws_stack))


def test_its_last_attempt_is_dead_lettered_saying_why(
    aws_stack: LocalResources, receiver: Receiver, function_handler: LoadHandler
) -> None:
    # Given the unreadable target's task on its last attempt
    seed(aws_stack, f"{receiver.url}/hooks/ok")
    sent = task_record(UNREADABLE, receive_count=50)

    # When the dispatcher gets it
    result = function_handler("dispatcher")({"Records": [sent]}, lambda_context("dispatcher"))

    # Then it is dead-lettered as exhausted, the DLQ saying why; nothing was sent
    assert result == {"batchItemFailures": []}
    [letter] = drain(aws_stack.dead_letter_queue_url)
    assert attr(letter, "relay-dlq-reason") == "exhausted"
    assert attr(letter, "relay-last-error") == WHY
    assert attr(letter, "relay-target-id") == UNREADABLE
    assert receiver.deliveries == []


def test_targets_list_shows_the_unreadable_record_and_needs_attention(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the integration with one unreadable target record
    seed(aws_stack, "https://example.com/ok")

    # When the operator lists the targets, as a table and as JSON
    table_code = main(["targets", "list"])
    table = capsys.readouterr().out
    json_code = main(["targets", "list", "--format", "json"])
    [listed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    # Then both list the healthy target and a row for the unreadable one saying why, and exit 1
    assert table_code == json_code == 1
    [row] = [line for line in table.splitlines() if UNREADABLE in line]
    assert WHY in row
    assert HEALTHY in table and SECRETISH not in table
    assert [t["targetId"] for t in listed["targets"]] == [HEALTHY]
    assert listed["unreadableTargets"] == [
        {"integrationId": INTEGRATION.id, "targetId": UNREADABLE, "error": WHY, "version": 4}
    ]


def test_targets_check_of_every_target_shows_the_unreadable_record_and_needs_attention(
    aws_stack: LocalResources, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the integration with one reachable target and one unreadable target record
    seed(aws_stack, f"{receiver.url}/hooks/ok")

    # When the operator checks every target, as a table and as JSON
    table_code = main(["targets", "check"])
    table = capsys.readouterr().out
    json_code = main(["targets", "check", "--format", "json"])
    rows = {row["targetId"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}

    # Then the unreadable one is a row saying why (not left out), and the check needs attention (1)
    assert table_code == json_code == 1
    assert rows[HEALTHY]["reachable"] is True
    assert rows[UNREADABLE] | {"reachable": False, "error": WHY} == rows[UNREADABLE]
    [row] = [line for line in table.splitlines() if UNREADABLE in line]
    assert WHY in row and SECRETISH not in table


def test_breaker_status_of_every_target_shows_the_unreadable_record_and_needs_attention(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the integration with one healthy and one unreadable target record
    seed(aws_stack, "https://example.com/ok")

    # When the operator reads every breaker, and the integration's, as a table and as JSON
    table_code = main(["breaker", "status"])
    table = capsys.readouterr().out
    json_code = main(["breaker", "status", "--integration", INTEGRATION.id, "--format", "json"])
    rows = {row["targetId"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}

    # Then the unreadable one is a row saying why (not left out), and the status needs attention (1)
    assert table_code == json_code == 1
    assert rows[HEALTHY]["phase"] == "closed"
    assert rows[UNREADABLE] == {"integrationId": INTEGRATION.id, "targetId": UNREADABLE, "error": WHY}
    [row] = [line for line in table.splitlines() if UNREADABLE in line]
    assert WHY in row and HEALTHY in table and SECRETISH not in table


def test_sync_rewrites_an_unreadable_record_with_the_config_genesys_holds(
    genesys: FakeGenesys, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a synced table, then one target's record rewritten by a newer release
    assert main(["targets", "sync"]) == 0
    capsys.readouterr()
    write_unreadable(UNREADABLE, version=7)

    # When the operator syncs again
    code = main(["targets", "sync"])

    # Then the record is stored afresh from Genesys' config (the next version), the rest as before
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert sorted(report["targets"]) == sorted(t.id for t in INTEGRATION.targets)
    assert report["changed"] == [UNREADABLE] and report["conflicts"] == []
    entry = target_store(get_settings(), cache_ttl_seconds=0).get(INTEGRATION.id)
    assert entry is not None and dict(entry.unreadable) == {}
    stored = entry.target(UNREADABLE)
    assert stored is not None and stored.method == "POST" and stored.version == 8


def test_an_unreadable_integration_record_is_a_clear_retryable_failure(
    aws_stack: LocalResources, function_handler: LoadHandler, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the integration's own record written by a newer release (a field this one requires gone)
    seed(aws_stack, "https://example.com/ok")
    make_integration_record_unreadable()

    # When Genesys posts an event, and the operator lists the targets
    response = function_handler("intake")(sample("apigw_text.json"), lambda_context("intake"))
    code = main(["targets", "list"])

    # Then Genesys is asked to retry (503), and the command fails saying why (3, not a crash)
    assert response["statusCode"] == 503, response
    assert code == 3
    assert "integration record unreadable: name: Field required" in capsys.readouterr().err


def test_sync_rewrites_an_unreadable_integration_record_and_goes_on_with_its_targets(
    genesys: FakeGenesys, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a synced table, then the integration's own record rewritten by a newer release
    assert main(["targets", "sync"]) == 0
    capsys.readouterr()
    before = make_integration_record_unreadable()

    # When the operator syncs again
    code = main(["targets", "sync"])

    # Then the run does not end there: the record is stored afresh (the next version) and every
    # target is synced as before
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert INTEGRATION.id in report["changed"] and report["conflicts"] == []
    assert sorted(report["targets"]) == sorted(t.id for t in INTEGRATION.targets)
    entry = target_store(get_settings(), cache_ttl_seconds=0).get(INTEGRATION.id)
    assert entry is not None and entry.integration.name == INTEGRATION.name
    assert entry.integration.version == before + 1


def test_a_bad_value_a_validator_would_quote_is_never_shown(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a target record whose filter holds a value this release does not know (its validator's
    # message would quote it)
    seed(aws_stack, "https://example.com/ok")
    write_unreadable(UNREADABLE, version=4, filters={"types": [SECRETISH]})

    # When the operator lists the targets
    code = main(["targets", "list", "--format", "json"])

    # Then the record is unreadable, saying which field, and the value shows nowhere
    [listed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    [bad] = listed["unreadableTargets"]
    assert bad["targetId"] == UNREADABLE and bad["error"].startswith(
        "target record unreadable: filters.types"
    )
    assert SECRETISH not in json.dumps(listed) and SECRETISH not in caplog.text


@pytest.mark.parametrize("key", ["targetId", "integrationId"])
def test_a_record_whose_doc_names_another_target_is_unreadable(
    aws_stack: LocalResources, receiver: Receiver, function_handler: LoadHandler, key: str
) -> None:
    # Given a target record (a hand edit) whose doc names the healthy target, or another integration
    seed(aws_stack, f"{receiver.url}/hooks/ok")
    other = {"targetId": HEALTHY, "integrationId": "another-integration"}[key]
    write_unreadable(UNREADABLE, version=4, **{key: other})

    # When Genesys posts an event
    response = function_handler("intake")(sample("apigw_text.json"), lambda_context("intake"))

    # Then each stored record gets its own task: the healthy target once, the bad record's kept apart
    # (never read as, nor fanned out as, the target its doc names)
    assert response["statusCode"] == 202, response
    records = receive(aws_stack.delivery_queue_url)
    assert sorted(DeliveryTask.model_validate_json(r["body"]).target_id for r in records) == sorted(
        [HEALTHY, UNREADABLE]
    )
    entry = target_store(get_settings(), cache_ttl_seconds=0).get(INTEGRATION.id)
    assert entry is not None and [t.target_id for t in entry.targets] == [HEALTHY]
    assert (
        entry.unreadable[UNREADABLE].why
        == f"target record unreadable: {key}: does not match the record's key"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["targets", "check"],
        ["targets", "enable"],
        ["targets", "disable"],
        ["breaker", "status"],
        ["breaker", "reset"],
    ],
)
def test_a_command_naming_an_unreadable_target_says_so(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # Given the integration with one unreadable target record
    seed(aws_stack, "https://example.com/ok")

    # When the operator names that target
    code = main([*command, UNREADABLE])

    # Then the command fails (3) saying the record is there but unreadable, and why: not "no target"
    err = capsys.readouterr().err
    assert code == 3
    assert f"target {UNREADABLE} of integration {INTEGRATION.id}: {WHY}" in err, err
    assert SECRETISH not in err


def test_a_target_named_by_id_is_found_past_another_integrations_unreadable_record(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a healthy target of a second integration, and the first integration's own record written by
    # a newer release (before a rollback)
    seed(aws_stack, "https://example.com/ok")
    other, healthy = "22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333"
    store = target_store(get_settings(), cache_ttl_seconds=0)
    entry = store.get(INTEGRATION.id)
    assert entry is not None
    store.put_integration(entry.integration.model_copy(update={"integration_id": other}))
    store.put_target(Target(integration_id=other, target_id=healthy, name="h", url="https://example.com/h"))
    make_integration_record_unreadable()

    # When the operator disables that healthy target by its id alone (an incident: stop sending to it)
    code = main(["targets", "disable", healthy])

    # Then it is disabled: the unrelated unreadable record does not stop the command
    assert code == 0, capsys.readouterr().err
    stored = store.get(other)
    assert stored is not None and not stored.targets[0].enabled
    # and an id found nowhere else still fails on that record: the target may be one of its own
    assert main(["targets", "disable", HEALTHY]) == 3
    assert "integration record unreadable" in capsys.readouterr().err


def test_a_target_id_unreadable_under_one_integration_and_held_by_another_is_ambiguous(
    aws_stack: LocalResources, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the unreadable target's id also stored (readable) under a second integration
    seed(aws_stack, "https://example.com/ok")
    other = "22222222-2222-4222-8222-222222222222"
    store = target_store(get_settings(), cache_ttl_seconds=0)
    entry = store.get(INTEGRATION.id)
    assert entry is not None
    store.put_integration(entry.integration.model_copy(update={"integration_id": other}))
    store.put_target(
        Target(integration_id=other, target_id=UNREADABLE, name="twin", url="https://example.com/t")
    )

    # When the operator names the target without --integration, then with the unreadable one's
    code = main(["breaker", "status", UNREADABLE])
    ambiguous = capsys.readouterr().err
    chosen = main(["breaker", "status", UNREADABLE, "--integration", INTEGRATION.id])

    # Then the first is a usage error naming both integrations (not the readable one acted on), the
    # second says the record is unreadable
    assert code == 2 and other in ambiguous and INTEGRATION.id in ambiguous, ambiguous
    assert chosen == 3 and WHY in capsys.readouterr().err


@pytest.mark.parametrize("version", [None, {"S": "7"}])
def test_sync_rewrites_an_unreadable_record_whose_version_cannot_be_read(
    genesys: FakeGenesys, capsys: pytest.CaptureFixture[str], version: dict[str, str] | None
) -> None:
    # Given a synced table, then one target's record rewritten by hand: its version attribute gone or odd
    assert main(["targets", "sync"]) == 0
    capsys.readouterr()
    write_unreadable(UNREADABLE, version=7)
    table, key = (
        get_settings().targets_table,
        {"integrationId": {"S": INTEGRATION.id}, "targetId": {"S": UNREADABLE}},
    )
    item = aws_client("dynamodb").get_item(TableName=table, Key=key)["Item"]
    del item["version"]
    aws_client("dynamodb").put_item(TableName=table, Item=item | ({"version": version} if version else {}))

    # When the operator syncs again
    code = main(["targets", "sync"])

    # Then the record is stored afresh from Genesys' config (it never stays unrepairable)
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["changed"] == [UNREADABLE] and report["conflicts"] == []
    entry = target_store(get_settings(), cache_ttl_seconds=0).get(INTEGRATION.id)
    assert entry is not None and dict(entry.unreadable) == {}
