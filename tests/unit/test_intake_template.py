"""template.yaml gives the intake what its design relies on: routes, limits, the EventBridge path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.events import sample

from relay.adapters.idempotency import DEFAULT_LEASE_SECONDS
from relay.local.template import load_template
from relay.models.genesys import PARTNER_SOURCE_PREFIX
from relay.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template()
RESOURCES: dict[str, Any] = TEMPLATE.document["Resources"]
PARAMETERS: dict[str, Any] = TEMPLATE.document["Parameters"]
INTAKE: dict[str, Any] = RESOURCES["IntakeFunction"]["Properties"]


def test_http_api_throttling_comes_from_parameters() -> None:
    route_settings = RESOURCES["HttpApi"]["Properties"]["DefaultRouteSettings"]
    assert route_settings["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}
    assert route_settings["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    assert PARAMETERS["ApiThrottlingBurstLimit"]["Type"] == "Number"


def test_the_body_limit_is_a_bounded_parameter_that_reaches_the_intake() -> None:
    assert INTAKE["Environment"]["Variables"]["MAX_BODY_BYTES"] == {"Ref": "IntakeMaxBodyBytes"}
    limit = PARAMETERS["IntakeMaxBodyBytes"]
    # A synchronous Lambda payload is 6 MB, and base64 bodies grow by a third.
    assert int(limit["MaxValue"]) * 4 / 3 < 6_000_000
    resolved = TEMPLATE.resolve(INTAKE["Environment"])["Variables"]
    assert Settings.model_validate({"MAX_BODY_BYTES": resolved["MAX_BODY_BYTES"]}).max_body_bytes == 262_144


def test_an_eventbridge_rule_on_the_partner_bus_routes_genesys_events_to_the_intake() -> None:
    rules = [e["Properties"] for e in INTAKE["Events"].values() if e["Type"] == "EventBridgeRule"]
    assert len(rules) == 1
    rule = rules[0]
    assert rule["EventBusName"] == {"Ref": "GenesysPartnerEventBusName"}
    assert rule["Pattern"]["source"] == [{"prefix": PARTNER_SOURCE_PREFIX}]
    genesys_event = sample("eventbridge_conversation_start.json")
    assert genesys_event["source"].startswith(rule["Pattern"]["source"][0]["prefix"])
    assert rule["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["EventBridgeDeadLetterQueue", "Arn"]}}


def test_failed_eventbridge_invocations_are_retried_then_kept() -> None:
    invoke = INTAKE["EventInvokeConfig"]
    assert invoke["MaximumRetryAttempts"] >= 1
    # Type SQS makes SAM grant the function sqs:SendMessage on the Destination.
    assert invoke["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["IntakeFailureQueue", "Arn"]},
    }


def test_the_eventbridge_failure_queues_keep_events_14_days_and_the_rule_may_use_its_own() -> None:
    # Explicit queues (SAM's generated ones keep the SQS default of 4 days).
    for queue in ("IntakeFailureQueue", "EventBridgeDeadLetterQueue"):
        assert RESOURCES[queue]["Type"] == "AWS::SQS::Queue"
        assert RESOURCES[queue]["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600, queue
    # SAM grants EventBridge access only to a dead-letter queue it creates itself.
    policies = [r["Properties"] for r in RESOURCES.values() if r["Type"] == "AWS::SQS::QueuePolicy"]
    grants = [
        statement
        for policy in policies
        for statement in policy["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Allow"
        and statement.get("Principal") == {"Service": "events.amazonaws.com"}
    ]
    assert grants == [
        {
            "Sid": "RuleDeadLetters",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": {"Fn::GetAtt": ["EventBridgeDeadLetterQueue", "Arn"]},
            # the rule SAM generates from the GenesysEventBridge event (<function><event>)
            "Condition": {
                "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["IntakeFunctionGenesysEventBridge", "Arn"]}}
            },
        }
    ]


def test_the_idempotency_lease_outlives_the_intake_timeout() -> None:
    # A live attempt must never lose its claim to a repeat (that would queue twice).
    assert DEFAULT_LEASE_SECONDS > int(INTAKE["Timeout"])


def test_the_idempotency_table_has_the_layout_the_store_writes() -> None:
    table = RESOURCES["IdempotencyTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    env = INTAKE["Environment"]["Variables"]
    assert env["IDEMPOTENCY_TABLE"] == {"Ref": "IdempotencyTable"}
    assert env["DELIVERY_QUEUE_URL"] == {"Ref": "DeliveryQueue"}
    assert env["AUDIT_BUCKET"] == {"Ref": "AuditBucket"}


def test_unknown_integration_rejections_raise_an_alarm_the_operator_docs_name() -> None:
    # Genesys does not retry a 404 either: a webhook URL naming an id the relay does not hold loses
    # every event it carries.
    from relay.errors import UnknownIntegration

    alarms = [
        resource["Properties"]
        for resource in RESOURCES.values()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
        and resource["Properties"].get("MetricName") == "EventsRejected"
        and {"Name": "reason", "Value": UnknownIntegration.code} in resource["Properties"]["Dimensions"]
    ]
    assert len(alarms) == 1, f"no alarm on EventsRejected reason={UnknownIntegration.code}"
    (alarm,) = alarms
    assert alarm["Namespace"] == "GenesysRelay" and alarm["Statistic"] == "Sum"
    assert alarm["Threshold"] == {"Ref": "UnknownIntegrationAlarmThreshold"}
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert PARAMETERS["UnknownIntegrationAlarmThreshold"]["Default"] == 1
    name = TEMPLATE.resolve(alarm["AlarmName"]).removeprefix(TEMPLATE.pseudo["AWS::StackName"])
    alarms_doc = (ROOT / "docs" / "operations-template.md").read_text().split("## Alarms", 1)[1]
    assert f"`<stack>{name}`" in alarms_doc, f"docs/operations-template.md does not name <stack>{name}"


def test_signature_mismatch_rejections_raise_an_alarm_the_rotation_runbook_names() -> None:
    # Genesys does not retry a 401: a signature-secret rotation done in the wrong order loses every event.
    from relay.logic.signature import CODE_MISMATCH

    alarms = {
        logical_id: resource["Properties"]
        for logical_id, resource in RESOURCES.items()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
        and resource["Properties"].get("MetricName") == "EventsRejected"
        and {"Name": "reason", "Value": CODE_MISMATCH} in resource["Properties"]["Dimensions"]
    }
    assert len(alarms) == 1, f"no alarm on EventsRejected reason={CODE_MISMATCH}"
    ((logical_id, alarm),) = alarms.items()
    assert alarm["Namespace"] == "GenesysRelay" and alarm["Statistic"] == "Sum"
    assert alarm["Threshold"] == {"Ref": "SignatureMismatchAlarmThreshold"}
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert PARAMETERS["SignatureMismatchAlarmThreshold"]["Default"] == 1
    # The runbook an operator follows when it fires names it as the stack names it.
    name = TEMPLATE.resolve(alarm["AlarmName"]).removeprefix(TEMPLATE.pseudo["AWS::StackName"])
    runbook = (ROOT / "README.md").read_text().split("### 2. Rotate secrets", 1)[1].split("\n### ", 1)[0]
    assert f"<stack>{name}" in runbook, f"README's rotation runbook does not name <stack>{name}"
