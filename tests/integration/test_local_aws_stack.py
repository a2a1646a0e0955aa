"""The local stack builds AWS resources from template.yaml itself, not from a second copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.handlers import LoadHandler
from support.waiting import wait_until

from relay.local.aws_stack import LocalResources
from relay.settings import Settings, get_settings
from relay.wiring import aws_client, aws_clients


def test_queues_match_the_template_including_the_redrive_policy(aws_stack: LocalResources) -> None:
    # Given the template's DeliveryQueue properties
    template = aws_stack.template
    expected = template.resolve(template.properties("DeliveryQueue"))

    # When we read the queue moto holds
    attrs = (
        aws_clients()
        .client("sqs")
        .get_queue_attributes(QueueUrl=aws_stack.delivery_queue_url, AttributeNames=["All"])["Attributes"]
    )

    # Then its visibility timeout and redrive policy are the template's
    assert int(attrs["VisibilityTimeout"]) == int(expected["VisibilityTimeout"])
    redrive = json.loads(attrs["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == int(expected["RedrivePolicy"]["maxReceiveCount"])
    dlq_arn = (
        aws_clients()
        .client("sqs")
        .get_queue_attributes(QueueUrl=aws_stack.dead_letter_queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
    )
    assert redrive["deadLetterTargetArn"] == dlq_arn


def test_tables_have_the_template_keys_and_ttl(aws_stack: LocalResources) -> None:
    ddb = aws_client("dynamodb")
    for logical_id, table in (
        ("BreakerTable", aws_stack.breaker_table),
        ("TargetsTable", aws_stack.targets_table),
    ):
        props = aws_stack.template.properties(logical_id)
        described = ddb.describe_table(TableName=table)["Table"]
        assert described["KeySchema"] == props["KeySchema"]
    ttl = ddb.describe_time_to_live(TableName=aws_stack.breaker_table)["TimeToLiveDescription"]
    assert (
        ttl["AttributeName"]
        == aws_stack.template.properties("BreakerTable")["TimeToLiveSpecification"]["AttributeName"]
    )


def test_the_audit_bucket_is_versioned_as_the_template_says(aws_stack: LocalResources) -> None:
    # Given the template's AuditBucket versioning
    template = aws_stack.template
    assert template.properties("AuditBucket")["VersioningConfiguration"]["Status"] == "Enabled"

    # When a claim check is deleted
    s3 = aws_clients().client("s3")
    key = "events/versioning-probe/claim-check.json"
    s3.put_object(Bucket=aws_stack.audit_bucket, Key=key, Body=b'{"id": "e-1"}')
    s3.delete_object(Bucket=aws_stack.audit_bucket, Key=key)

    # Then its text is still there as a noncurrent version, as docs/operations-dlq.md's recovery needs
    versions = s3.list_object_versions(Bucket=aws_stack.audit_bucket, Prefix=key)
    assert [m["Key"] for m in versions.get("DeleteMarkers", [])] == [key]
    (version,) = versions["Versions"]
    body = s3.get_object(Bucket=aws_stack.audit_bucket, Key=key, VersionId=version["VersionId"])["Body"]
    assert body.read() == b'{"id": "e-1"}'


def test_function_environment_resolves_to_the_created_resources(aws_stack: LocalResources) -> None:
    settings = get_settings()
    assert settings.stage == "local"
    assert settings.delivery_queue_url == aws_stack.delivery_queue_url
    assert settings.targets_table == aws_stack.targets_table
    assert settings.audit_bucket == aws_stack.audit_bucket
    assert settings.allow_loopback_targets is True
    assert (
        aws_clients()
        .client("s3")
        .head_bucket(Bucket=aws_stack.audit_bucket)["ResponseMetadata"]["HTTPStatusCode"]
        == 200
    )


def test_operator_tools_keep_the_default_aws_call_bounds_not_a_functions(aws_stack: LocalResources) -> None:
    # Given a template whose functions each bound their AWS calls to fit their own timeouts
    functions = [
        aws_stack.template.function(logical_id).environment
        for logical_id in aws_stack.template.resources_of_type("AWS::Serverless::Function")
    ]
    assert any("AWS_READ_TIMEOUT_SECONDS" in environment for environment in functions)

    # When the tests and operator tools read the deployment's settings
    settings = get_settings()

    # Then they have the defaults, as against AWS, where no Lambda timeout limits them
    defaults = Settings.model_validate({})
    assert settings.aws_read_timeout_seconds == defaults.aws_read_timeout_seconds
    assert settings.aws_connect_timeout_seconds == defaults.aws_connect_timeout_seconds
    assert settings.aws_max_attempts == defaults.aws_max_attempts


@pytest.mark.parametrize("function", ["intake", "dispatcher"])
def test_a_handler_a_test_loads_runs_on_its_functions_own_aws_call_bounds(
    aws_stack: LocalResources, function_handler: LoadHandler, function: str
) -> None:
    # Given the template's bounds for the function, sized to fit its timeout
    (logical_id,) = [
        logical_id
        for logical_id in aws_stack.template.resources_of_type("AWS::Serverless::Function")
        if aws_stack.template.function(logical_id).code_dir.name == function
        and aws_stack.template.function(logical_id).environment.get("DISPATCH_LANE", "fast") == "fast"
    ]
    own = aws_stack.template.function(logical_id).environment

    # When a test loads the function's handler
    function_handler(function)

    # Then the settings it runs on are the function's, not the operator tools' defaults: with those
    # (2 s to connect, 5 s to read) a single intake call's worst case leaves no room for a second one
    # inside its 8 s timeout, and a slow moto turned a valid post into a 503
    settings = get_settings()
    assert settings.aws_connect_timeout_seconds == float(own["AWS_CONNECT_TIMEOUT_SECONDS"])
    assert settings.aws_read_timeout_seconds == float(own["AWS_READ_TIMEOUT_SECONDS"])
    assert settings.aws_max_attempts == int(own["AWS_MAX_ATTEMPTS"])


def test_the_moto_server_dies_with_its_parent_even_on_sigkill(tmp_path: Path) -> None:
    # Given a process that started a moto server and reported its pid
    script = tmp_path / "parent.py"
    script.write_text(
        "import time\n"
        "from relay.local.aws_stack import MotoServer\n"
        "server = MotoServer()\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(120)\n"  # not a wait: alive until killed
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    moto_pid = int(parent.stdout.readline())

    # When the parent is killed outright (no chance to clean up)
    parent.kill()
    parent.wait()

    # Then the moto server goes too
    wait_until(lambda: not _alive(moto_pid), timeout=10, what="the moto server gone with its parent")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child stays a zombie until reaped; its parent (init) reaps it. Zombies count as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
