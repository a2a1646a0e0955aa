"""Invariants of template.yaml that cfn-lint and `sam validate --lint` do not check.

cfn-lint does not look inside most AWS::Serverless::* properties (a bogus runtime or
MaximumConcurrency: 1 passes), and nothing checks the arithmetic between parameters. Each invariant
is checked for the template's defaults and for every environment in samconfig.toml, resolved the way
CloudFormation would (relay.local.template, the same reader the local stack uses).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from relay.local.template import Template, load_template
from relay.models.secrets import SecretKind
from relay.models.targets import RetryMatrix
from relay.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# A mutated copy can be pointed at to watch these tests fail (docs/operations-template.md, "Tests").
TEMPLATE = Path(os.environ.get("RELAY_TEMPLATE_UNDER_TEST", ROOT / "template.yaml"))
SAMCONFIG = TEMPLATE.parent / "samconfig.toml"
FOURTEEN_DAYS = 14 * 24 * 3600
FUNCTIONS = (
    "IntakeFunction",
    "DispatcherFunction",
    "SlowDispatcherFunction",
    "ConfigSyncFunction",
    "OrderedDispatcherFunction",
    "FirstHopDispatcherFunction",
)
# Each dispatcher (the fast lane, its first hop, the slow lane, the ordered lane) and the queue it consumes.
DISPATCHERS = {
    "DispatcherFunction": "DeliveryQueue",
    "SlowDispatcherFunction": "SlowDeliveryQueue",
    "OrderedDispatcherFunction": "OrderedDeliveryQueue",
    "FirstHopDispatcherFunction": "FirstHopQueue",
}
# Each consumed queue and the dead-letter queue it redrives to (a FIFO queue needs a FIFO one).
DEAD_LETTER_QUEUES = {
    "DeliveryQueue": "DeadLetterQueue",
    "SlowDeliveryQueue": "DeadLetterQueue",
    "OrderedDeliveryQueue": "OrderedDeadLetterQueue",
    "FirstHopQueue": "FirstHopDeadLetterQueue",
}


def samconfig_overrides() -> dict[str, dict[str, str]]:
    """{environment: {parameter: value}} from every deploy section of samconfig.toml."""
    config = tomllib.loads(SAMCONFIG.read_text())
    environments: dict[str, dict[str, str]] = {}
    for env, commands in config.items():
        if not isinstance(commands, dict) or "deploy" not in commands:
            continue
        overrides = commands["deploy"]["parameters"].get("parameter_overrides", "")
        if isinstance(overrides, list):  # SAM CLI accepts a list of "Key=Value" too
            overrides = " ".join(shlex.quote(item) for item in overrides)
        environments[env] = dict(item.split("=", 1) for item in shlex.split(overrides))
    return environments


def with_parameters(parameters: dict[str, str] | None = None) -> Template:
    """The template resolved with ``parameters`` over its defaults (parsed once: the YAML is large)."""
    return Template(BASE.document, BASE.path, parameters)


BASE = load_template(TEMPLATE)
ENVIRONMENTS = samconfig_overrides()
# "template-defaults" plus every samconfig environment: each must satisfy every invariant.
CASES = {"template-defaults": {}, **ENVIRONMENTS}


@pytest.fixture(params=sorted(CASES), ids=str)
def template(request: pytest.FixtureRequest) -> Template:
    parameters = CASES[request.param]
    declared = BASE.document["Parameters"]
    unknown = set(parameters) - set(declared)
    assert not unknown, f"samconfig [{request.param}] overrides parameters the template lacks: {unknown}"
    return with_parameters(parameters)


@pytest.fixture(scope="module")
def raw() -> Template:
    return with_parameters()


def resolved(template: Template, logical_id: str) -> dict[str, Any]:
    props: dict[str, Any] = template.resolve(template.properties(logical_id))
    return props


def sqs_event(template: Template, dispatcher: str = "DispatcherFunction") -> dict[str, Any]:
    events = resolved(template, dispatcher)["Events"]
    (sqs,) = [e["Properties"] for e in events.values() if e["Type"] == "SQS"]
    return dict(sqs)


def largest_planned_attempts() -> int:
    fixtures = json.loads((ROOT / "events" / "fixtures" / "local.json").read_text())
    attempts = [
        target["retryMatrix"]["attempts"]
        for integration in fixtures["integrations"]
        for target in integration["targets"]
        if "retryMatrix" in target
    ]
    return max([RetryMatrix().attempts, *attempts])


# --- SQS consumer invariants (AWS's documentation for SQS event sources) ---------------------------------


def test_every_environment_is_checked() -> None:
    # The parametrised tests below run once per samconfig environment: make sure they found them.
    assert {"default", "dev", "prod"} <= set(ENVIRONMENTS)


@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_samconfig_values_satisfy_the_parameter_constraints(environment: str) -> None:
    # CloudFormation would refuse them at deploy time; catch it here instead.
    declared = BASE.document["Parameters"]
    for name, value in ENVIRONMENTS[environment].items():
        spec = declared[name]
        where = f"[{environment}] {name}={value!r}"
        if "AllowedValues" in spec:
            assert value in [str(v) for v in spec["AllowedValues"]], where
        if spec["Type"] == "Number":
            number = float(value)
            assert number >= float(spec.get("MinValue", number)), where
            assert number <= float(spec.get("MaxValue", number)), where
        if "AllowedPattern" in spec:
            assert re.fullmatch(spec["AllowedPattern"], value), where


def longest_batching_window(raw: Template) -> int:
    """The longest batching window any dispatcher's event source may be given: a record's visibility
    runs from its receive, which comes up to that long before the invocation."""
    windows = ("DispatcherBatchingWindowSeconds", "SlowDispatcherBatchingWindowSeconds")
    return max(int(raw.document["Parameters"][name]["MaxValue"]) for name in windows)


@pytest.mark.parametrize(("dispatcher", "queue"), DISPATCHERS.items())
def test_queue_visibility_is_at_least_six_times_the_dispatcher_timeout_plus_the_longest_window(
    raw: Template, template: Template, dispatcher: str, queue: str
) -> None:
    timeout = int(resolved(template, dispatcher)["Timeout"])
    visibility = int(resolved(template, queue)["VisibilityTimeout"])
    wanted = 6 * timeout + longest_batching_window(raw)
    assert visibility >= wanted, f"visibility {visibility}s < 6 x timeout {timeout}s + the longest window"


@pytest.mark.parametrize("queue", DISPATCHERS.values())
def test_every_allowed_dispatcher_timeout_has_a_visibility_of_six_times_it_and_the_window(
    raw: Template, queue: str
) -> None:
    # The mapping is the template's arithmetic: a missing or wrong row would deploy a short visibility.
    allowed = raw.document["Parameters"]["DispatcherTimeoutSeconds"]["AllowedValues"]
    for timeout in allowed:
        visibility = with_parameters({"DispatcherTimeoutSeconds": str(timeout)})
        wanted = 6 * int(timeout) + longest_batching_window(raw)
        assert int(resolved(visibility, queue)["VisibilityTimeout"]) >= wanted


@pytest.mark.parametrize(("dispatcher", "queue"), DISPATCHERS.items())
def test_queue_visibility_is_derived_from_the_timeout_parameter(
    raw: Template, dispatcher: str, queue: str
) -> None:
    # One source of truth: the visibility must follow the timeout parameter, not be a literal.
    visibility = raw.properties(queue)["VisibilityTimeout"]
    assert isinstance(visibility, dict), "VisibilityTimeout must be derived, not a number"
    assert "DispatcherTimeoutSeconds" in json.dumps(visibility)
    assert raw.properties(dispatcher)["Timeout"] == {"Ref": "DispatcherTimeoutSeconds"}


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_reserved_concurrency_is_at_least_the_event_source_maximum(
    template: Template, dispatcher: str
) -> None:
    function = template.function(dispatcher)
    maximum = int(sqs_event(template, dispatcher)["ScalingConfig"]["MaximumConcurrency"])
    assert function.reserved_concurrency is not None, "ReservedConcurrentExecutions must be set"
    assert 2 <= maximum <= 1000
    assert function.reserved_concurrency >= maximum


def test_the_fleet_is_bounded_by_every_lanes_maximum_concurrency(template: Template, raw: Template) -> None:
    # Each lane reserves exactly what its event source may use, from one parameter each (CloudFormation
    # has no arithmetic), so the fleet never holds more dispatchers than the lanes' maxima together.
    reserved = sum(template.function(d).reserved_concurrency or 0 for d in DISPATCHERS)
    maxima = sum(int(sqs_event(template, d)["ScalingConfig"]["MaximumConcurrency"]) for d in DISPATCHERS)
    assert reserved == maxima
    for dispatcher, parameter in (
        ("DispatcherFunction", "DispatcherMaximumConcurrency"),
        ("SlowDispatcherFunction", "SlowDispatcherMaximumConcurrency"),
        ("OrderedDispatcherFunction", "OrderedDispatcherMaximumConcurrency"),
        ("FirstHopDispatcherFunction", "FirstHopDispatcherMaximumConcurrency"),
    ):
        props = raw.properties(dispatcher)
        scaling = [e["Properties"]["ScalingConfig"] for e in props["Events"].values() if e["Type"] == "SQS"]
        assert props["ReservedConcurrentExecutions"] == {"Ref": parameter}, dispatcher
        assert scaling == [{"MaximumConcurrency": {"Ref": parameter}}], dispatcher


def test_the_block_hold_is_a_parameter_the_ordered_dispatchers_settings_and_sqs_both_accept(
    raw: Template,
) -> None:
    # The hold is a visibility change: SQS takes at most 12 hours, and the setting refuses what it cannot
    # hold, so every value the parameter allows must pass both, and the default must reach the function
    declared = raw.document["Parameters"]["OrderedBlockHoldSeconds"]
    environment = raw.properties("OrderedDispatcherFunction")["Environment"]["Variables"]
    assert environment["ORDERED_BLOCK_HOLD_SECONDS"] == {"Ref": "OrderedBlockHoldSeconds"}
    for seconds in (declared["MinValue"], declared["Default"], declared["MaxValue"]):
        held = with_parameters({"OrderedBlockHoldSeconds": str(seconds)})
        value = held.function("OrderedDispatcherFunction").environment["ORDERED_BLOCK_HOLD_SECONDS"]
        settings = Settings.model_validate({"ORDERED_BLOCK_HOLD_SECONDS": value})
        assert settings.ordered_block_hold_seconds == int(seconds) <= 43_200


@pytest.mark.parametrize(("dispatcher", "queue"), DISPATCHERS.items())
def test_max_receive_count_is_above_the_planned_attempts(
    template: Template, dispatcher: str, queue: str
) -> None:
    redrive = resolved(template, queue)["RedrivePolicy"]
    max_receive = int(redrive["maxReceiveCount"])
    assert max_receive >= 5  # AWS guidance: room for throttles and retries
    assert max_receive > largest_planned_attempts()
    # The dispatcher keeps its planned attempts below the backstop of the queue it consumes.
    variables = resolved(template, dispatcher)["Environment"]["Variables"]
    assert int(variables["MAX_RECEIVE_COUNT"]) == max_receive


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_large_batches_have_a_batching_window(template: Template, dispatcher: str) -> None:
    # SQS refuses BatchSize > 10 without a window (the template's Rules assert the same).
    event = sqs_event(template, dispatcher)
    if int(event["BatchSize"]) > 10:
        assert int(event["MaximumBatchingWindowInSeconds"]) >= 1


def test_records_are_delivered_without_a_batching_window_by_default(raw: Template) -> None:
    # Live chat passes through the relay: a customer must not wait for a batch to fill.
    assert raw.document["Parameters"]["DispatcherBatchingWindowSeconds"]["Default"] == 0
    assert int(sqs_event(raw, "DispatcherFunction")["MaximumBatchingWindowInSeconds"]) == 0
    # The slow lane's targets take seconds per request: its batches may fill for a second.
    assert int(sqs_event(raw, "SlowDispatcherFunction")["MaximumBatchingWindowInSeconds"]) == 1


@pytest.mark.parametrize("window", ["DispatcherBatchingWindowSeconds", "SlowDispatcherBatchingWindowSeconds"])
def test_a_batch_size_above_ten_still_needs_a_window_in_both_lanes(window: str) -> None:
    # CloudFormation refuses BatchSize > 10 without a window: the template's Rules say so first.
    big = {"DispatcherBatchSize": "50", "DispatcherBatchingWindowSeconds": "1"}
    assert failed_rules(with_parameters(big)) == []
    assert failed_rules(with_parameters({**big, window: "0"})) == ["LargeBatchesNeedABatchingWindow"]


def test_the_slow_lane_runs_the_fast_lanes_code_and_settings_on_its_own_queue(raw: Template) -> None:
    from relay.models.breaker import DeliveryLane
    from relay.settings import Settings

    fast, slow = raw.function("DispatcherFunction"), raw.function("SlowDispatcherFunction")
    assert (slow.code_dir, slow.handler_module, slow.handler_function, slow.timeout_seconds) == (
        fast.code_dir,
        fast.handler_module,
        fast.handler_function,
        fast.timeout_seconds,
    )
    fast_settings, slow_settings = (
        Settings.model_validate(fast.environment),
        Settings.model_validate(slow.environment),
    )
    assert (
        fast_settings.dispatch_lane is DeliveryLane.FAST and slow_settings.dispatch_lane is DeliveryLane.SLOW
    )
    # The fast lane routes to the queue the slow lane consumes; each retries and defers on its own.
    assert fast_settings.delivery_queue_url == raw.ref("DeliveryQueue")
    assert (
        fast_settings.slow_delivery_queue_url
        == slow_settings.delivery_queue_url
        == raw.ref("SlowDeliveryQueue")
    )
    own = {"DISPATCH_LANE", "DELIVERY_QUEUE_URL", "SLOW_DELIVERY_QUEUE_URL"}
    shared = {k: v for k, v in fast.environment.items() if k not in own}
    assert shared == {k: v for k, v in slow.environment.items() if k not in own}, (
        "the lanes' settings drifted"
    )


def test_one_delivery_fits_in_the_dispatcher_timeout(raw: Template) -> None:
    from relay.settings import Settings

    settings = Settings.model_validate({})
    single_delivery = settings.connect_timeout_seconds + settings.read_timeout_seconds
    for timeout in raw.document["Parameters"]["DispatcherTimeoutSeconds"]["AllowedValues"]:
        assert int(timeout) > single_delivery


def test_one_process_keeps_a_dispatcher_for_every_dispatcher_function(raw: Template) -> None:
    from relay.wiring.dispatcher import DISPATCHER_FUNCTIONS

    # The local stack runs them in one process; a cache with less room closes one another's pools.
    consumers = [
        logical_id
        for logical_id in raw.resources_of_type("AWS::Serverless::Function")
        if any(event["Type"] == "SQS" for event in raw.function(logical_id).events.values())
    ]
    assert sorted(consumers) == sorted(DISPATCHERS)
    assert DISPATCHER_FUNCTIONS >= len(consumers)


@pytest.mark.parametrize(("dispatcher", "queue"), DISPATCHERS.items())
def test_dispatcher_reports_partial_batch_failures_from_its_queue(
    raw: Template, dispatcher: str, queue: str
) -> None:
    event = sqs_event(raw, dispatcher)
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    (source,) = [e for e in raw.properties(dispatcher)["Events"].values() if e["Type"] == "SQS"]
    assert source["Properties"]["Queue"] == {"Fn::GetAtt": [queue, "Arn"]}


@pytest.mark.parametrize(("queue", "dead_letter_queue"), DEAD_LETTER_QUEUES.items())
def test_delivery_queue_redrives_to_a_dead_letter_queue_kept_fourteen_days(
    raw: Template, queue: str, dead_letter_queue: str
) -> None:
    assert set(DEAD_LETTER_QUEUES) == set(DISPATCHERS.values())
    redrive = raw.properties(queue)["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": [dead_letter_queue, "Arn"]}
    assert int(resolved(raw, queue)["MessageRetentionPeriod"]) == FOURTEEN_DAYS
    assert int(resolved(raw, dead_letter_queue)["MessageRetentionPeriod"]) == FOURTEEN_DAYS


# --- encryption, TTL, the audit bucket ------------------------------------------------------------------


def test_queues_and_tables_are_encrypted(raw: Template) -> None:
    queues = raw.resources_of_type("AWS::SQS::Queue")
    tables = raw.resources_of_type("AWS::DynamoDB::Table")
    assert set(queues) >= {"DeliveryQueue", "DeadLetterQueue"}
    assert set(tables) >= {"TargetsTable", "BreakerTable", "IdempotencyTable"}
    for logical_id in queues:
        props = resolved(raw, logical_id)
        assert props.get("SqsManagedSseEnabled") is True or props.get("KmsMasterKeyId"), logical_id
    for logical_id in tables:
        props = resolved(raw, logical_id)
        assert props["SSESpecification"]["SSEEnabled"] is True, logical_id
        assert props["BillingMode"] == "PAY_PER_REQUEST", logical_id


def test_queues_refuse_plain_http(raw: Template) -> None:
    denied = _tls_denied_resources(raw, "AWS::SQS::QueuePolicy")
    assert {"DeliveryQueue", "DeadLetterQueue"} <= denied
    assert set(raw.resources_of_type("AWS::SQS::Queue")) <= denied, "every queue is TLS-only"


@pytest.mark.parametrize(
    ("table", "attribute"), [("BreakerTable", "expiresAt"), ("IdempotencyTable", "expiration")]
)
def test_expiring_records_have_ttl(raw: Template, table: str, attribute: str) -> None:
    # Attribute names are the contract in docs/architecture.md.
    ttl = resolved(raw, table)["TimeToLiveSpecification"]
    assert ttl == {"AttributeName": attribute, "Enabled": True}


def test_audit_bucket_blocks_public_access_and_is_encrypted(raw: Template) -> None:
    props = resolved(raw, "AuditBucket")
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms", "aws:kms:dsse"}


def test_audit_bucket_refuses_plain_http(raw: Template) -> None:
    assert "AuditBucket" in _tls_denied_resources(raw, "AWS::S3::BucketPolicy", objects_too=True)


def test_audit_bucket_lifecycle_expires_both_prefixes_and_their_old_versions(raw: Template) -> None:
    props = resolved(raw, "AuditBucket")
    versioned = props.get("VersioningConfiguration", {}).get("Status") == "Enabled"
    rules = {r.get("Prefix"): r for r in props["LifecycleConfiguration"]["Rules"] if r["Status"] == "Enabled"}
    for prefix in ("audit/", "events/"):
        assert prefix in rules, f"no lifecycle rule for {prefix}"
        assert int(rules[prefix]["ExpirationInDays"]) > 0
        if versioned:  # otherwise "expired" objects live on as noncurrent versions
            assert int(rules[prefix]["NoncurrentVersionExpiration"]["NoncurrentDays"]) > 0
    # A claim check must outlive the messages that point at it: a task's time on its delivery queue and,
    # dead-lettered by the dispatcher (a new message), its fresh time in the DLQ, with room to redrive.
    for queue, dead_letters in (
        ("DeliveryQueue", "DeadLetterQueue"),
        ("SlowDeliveryQueue", "DeadLetterQueue"),
        ("OrderedDeliveryQueue", "OrderedDeadLetterQueue"),
        ("FirstHopQueue", "FirstHopDeadLetterQueue"),
    ):
        days = sum(int(resolved(raw, q)["MessageRetentionPeriod"]) / 86400 for q in (queue, dead_letters))
        assert int(rules["events/"]["ExpirationInDays"]) >= days + 7, (queue, dead_letters)


# --- functions, layers, IAM ----------------------------------------------------------------------------


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_handler_file_exists_under_its_code_uri(raw: Template, logical_id: str) -> None:
    function = raw.function(logical_id)
    handler_file = function.code_dir / (function.handler_module.replace(".", "/") + ".py")
    assert handler_file.is_file(), f"{logical_id}: {handler_file} is missing"
    assert f"def {function.handler_function}(" in handler_file.read_text()


def test_genesys_sdk_layer_is_attached_to_config_sync_only(raw: Template) -> None:
    functions = raw.resources_of_type("AWS::Serverless::Function")
    assert set(functions) == set(FUNCTIONS)
    for logical_id in functions:
        layers = raw.properties(logical_id).get("Layers", [])
        assert {"Ref": "CoreLayer"} in layers, logical_id
        has_sdk = {"Ref": "GenesysSdkLayer"} in layers
        assert has_sdk == (logical_id == "ConfigSyncFunction"), logical_id


def test_genesys_layer_adds_only_what_core_layer_lacks_at_the_locked_versions(raw: Template) -> None:
    # Both layers unpack into ConfigSyncFunction's /opt/python: a package in both would be overwritten
    # by the SDK layer's copy. layers/genesys/Makefile installs the SDK with --no-deps plus the pins in
    # sdk-only-deps.txt; every other SDK dependency must come from CoreLayer's locked closure.
    assert raw.resources["GenesysSdkLayer"]["Metadata"]["BuildMethod"] == "makefile"
    layer_dir = ROOT / "layers" / "genesys"
    assert "build-GenesysSdkLayer:" in (layer_dir / "Makefile").read_text()
    assert "$(PIP_INSTALL)" in (layer_dir / "Makefile").read_text()
    assert "--no-deps" in (ROOT / "layers" / "wheels.mk").read_text()
    lock = {p["name"]: p for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def name(requirement: str) -> str:
        return requirement.split("==")[0].split("[")[0].strip().lower().replace("_", "-")

    def closure(names: set[str]) -> set[str]:
        seen: set[str] = set()
        while names:
            current = names.pop()
            if current not in seen:
                seen.add(current)
                names |= {d["name"] for d in lock[current].get("dependencies", [])}
        return seen

    sdk_only = {
        name(line): line.split("==")[1].removesuffix("\\").strip()
        for line in (layer_dir / "sdk-only-deps.txt").read_text().splitlines()
        if line[:1].isalnum()  # a pin; its --hash continuation lines are indented
    }
    for package, version in sdk_only.items():
        assert lock[package]["version"] == version, f"{package} {version} is not uv.lock's"
    core = closure({name(r) for r in project["dependencies"]})
    for sdk in project["optional-dependencies"]["genesys"]:
        needed = closure({d["name"] for d in lock[name(sdk)].get("dependencies", [])})
        missing = needed - core - set(sdk_only)
        assert not missing, f"{sdk} needs {missing}: add them to layers/genesys/sdk-only-deps.txt"


# SAM policy templates we allow, each scoped to the one resource named in its parameter.
SCOPED_POLICY_TEMPLATES = {"SQSSendMessagePolicy", "SQSPollerPolicy", "DynamoDBCrudPolicy"}


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_iam_has_no_wildcard_actions_or_resources(raw: Template, logical_id: str) -> None:
    policies = raw.properties(logical_id).get("Policies", [])
    assert policies, f"{logical_id} has no policies: SAM would leave it with only the basic role"
    for policy in policies:
        assert isinstance(policy, dict), f"{logical_id}: managed policy {policy!r} is not least privilege"
        ((kind, body),) = policy.items()
        if kind == "Statement":
            for statement in body:
                _assert_scoped(logical_id, statement)
        else:
            assert kind in SCOPED_POLICY_TEMPLATES, f"{logical_id}: policy template {kind} is too broad"
            for value in body.values():
                assert value != "*" and isinstance(value, dict), f"{logical_id}: {kind} must name a resource"


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_dispatcher_table_access_is_only_what_it_uses(raw: Template, dispatcher: str) -> None:
    allowed = {
        "TargetsTable": {"dynamodb:Query", "dynamodb:GetItem", "dynamodb:PutItem"},
        # Breaker and lane are written with conditional UpdateItem (each its own attributes).
        "BreakerTable": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        # The ordered lane counts failed attempts (relay.adapters.attempt_counter); no other lane may.
        "OrderedAttemptsTable": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
    }
    expected = dict(allowed)
    if dispatcher != "OrderedDispatcherFunction":
        del expected["OrderedAttemptsTable"]
    granted: dict[str, set[str]] = {}
    for policy in raw.properties(dispatcher)["Policies"]:
        assert not any(kind.startswith("DynamoDB") for kind in policy), "use scoped statements"
        for statement in policy.get("Statement", []):
            if statement["Effect"] != "Allow":
                continue
            for resource in _as_list(statement["Resource"]):
                table = resource.get("Fn::GetAtt", [""])[0] if isinstance(resource, dict) else ""
                if table in allowed:
                    granted.setdefault(table, set()).update(_as_list(statement["Action"]))
    assert granted == expected


@pytest.mark.parametrize("dispatcher", [d for d in DISPATCHERS if d != "DispatcherFunction"])
def test_every_lane_may_write_the_same_objects(raw: Template, dispatcher: str) -> None:
    # The slow and the ordered lane audit and archive what they deliver as the fast lane does (each
    # honours ArchiveEnabled; relay deliveries replay reads archive/ for all): the same S3 grants.
    def s3_grants(function: str) -> set[tuple[str, str]]:
        return {
            (action, resource["Fn::Sub"])
            for policy in raw.properties(function)["Policies"]
            for statement in policy.get("Statement", [])
            if statement["Effect"] == "Allow"
            for action in _as_list(statement["Action"])
            if action.startswith("s3:")
            for resource in _as_list(statement["Resource"])
        }

    fast = s3_grants("DispatcherFunction")
    assert ("s3:PutObject", "${AuditBucket.Arn}/archive/*") in fast
    assert s3_grants(dispatcher) == fast


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_every_dispatcher_may_list_the_audit_bucket_so_an_expired_claim_check_reads_as_missing(
    raw: Template, dispatcher: str
) -> None:
    # Without s3:ListBucket, S3 answers a GetObject of a key that is gone 403 AccessDenied, not 404
    # NoSuchKey: the task would be retried as an outage instead of dead-lettered claim-check-missing.
    listed = {
        resource["Fn::Sub"]
        for policy in raw.properties(dispatcher)["Policies"]
        for statement in policy.get("Statement", [])
        if statement["Effect"] == "Allow" and "s3:ListBucket" in _as_list(statement["Action"])
        for resource in _as_list(statement["Resource"])
    }
    assert listed == {"${AuditBucket.Arn}"}


def test_the_operators_iam_table_names_every_s3_action_the_dispatchers_have(raw: Template) -> None:
    # docs/operations-template.md, "IAM", is what a security review reads: it once said the dispatchers
    # "cannot list" the audit bucket while every lane had s3:ListBucket on it (SeeMissingClaimChecks).
    granted = {
        action
        for policy in raw.properties("DispatcherFunction")["Policies"]
        for statement in policy.get("Statement", [])
        if statement["Effect"] == "Allow"
        for action in _as_list(statement["Action"])
        if action.startswith("s3:")
    }
    text = (TEMPLATE.parent / "docs" / "operations-template.md").read_text()
    section = text.split("## IAM", 1)[1].split("\n## ", 1)[0]
    rows = [row for row in section.splitlines() if row.startswith("| dispatchers (all three lanes) |")]
    documented = {action for row in rows for action in re.findall(r"`(s3:\w+)`", row)}
    assert documented == granted
    assert not any("cannot list" in row for row in rows) or "s3:ListBucket" not in granted


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_dispatcher_reads_exactly_the_secret_kinds_its_targets_name(raw: Template, dispatcher: str) -> None:
    # A Target names a signing secret, an auth secret (token, user:password, OAuth client secret), an
    # encryption key and an mTLS client certificate: each kind readable, nothing else.
    readable: set[str] = set()
    for policy in raw.properties(dispatcher)["Policies"]:
        for statement in policy.get("Statement", []):
            if "secretsmanager:GetSecretValue" in _as_list(statement["Action"]):
                for resource in _as_list(statement["Resource"]):
                    readable.update(re.findall(r"secret:relay/\$\{Stage\}/(\w+)/\*$", resource["Fn::Sub"]))
    kinds = {SecretKind.SIGNING, SecretKind.AUTH, SecretKind.ENCRYPTION, SecretKind.MTLS}
    assert readable == {kind.value for kind in kinds}


@pytest.mark.parametrize(("dispatcher", "queue"), DISPATCHERS.items())
def test_dispatcher_consumes_only_its_own_queue(raw: Template, dispatcher: str, queue: str) -> None:
    # SAM's SQS event attaches AWSLambdaSQSQueueExecutionRole (receive/delete on every queue); an
    # explicit Deny outside the lane's own queue takes that back.
    consume = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
    denies = [
        statement
        for policy in raw.properties(dispatcher)["Policies"]
        for statement in policy.get("Statement", [])
        if statement["Effect"] == "Deny"
    ]
    own_queue = {"Fn::GetAtt": [queue, "Arn"]}
    assert any(consume <= set(_as_list(s["Action"])) and s.get("NotResource") == own_queue for s in denies), (
        f"no Deny of SQS consumption outside the {queue}"
    )


def test_only_the_fast_lane_may_send_to_the_slow_lane(raw: Template) -> None:
    def sends_to(function: str) -> set[str]:
        return {
            policy["SQSSendMessagePolicy"]["QueueName"]["Fn::GetAtt"][0]
            for policy in raw.properties(function)["Policies"]
            if "SQSSendMessagePolicy" in policy
        }

    assert sends_to("DispatcherFunction") == {"DeliveryQueue", "DeadLetterQueue", "SlowDeliveryQueue"}
    # The first hop is the fast lane: it re-sends to the DeliveryQueue (a FIFO queue takes no delay).
    assert sends_to("FirstHopDispatcherFunction") == {"DeliveryQueue", "DeadLetterQueue", "SlowDeliveryQueue"}
    assert sends_to("SlowDispatcherFunction") == {"SlowDeliveryQueue", "DeadLetterQueue"}
    # An ordered record is held, never re-sent: not to the slow lane either.
    assert sends_to("OrderedDispatcherFunction") == {"OrderedDeadLetterQueue"}
    assert sends_to("IntakeFunction") == {"DeliveryQueue", "OrderedDeliveryQueue", "FirstHopQueue"}


# --- API, schedule, logs, alarms --------------------------------------------------------------------


def test_webhook_route_and_throttling(raw: Template) -> None:
    events = raw.properties("IntakeFunction")["Events"]
    routes = [
        (e["Properties"]["Method"], e["Properties"]["Path"], e["Properties"]["ApiId"])
        for e in events.values()
        if e["Type"] == "HttpApi"
    ]
    assert ("POST", "/webhooks/{integrationId}", {"Ref": "HttpApi"}) in routes
    api = raw.properties("HttpApi")
    assert api["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
    }


def test_config_sync_runs_on_a_schedule(raw: Template) -> None:
    events = raw.properties("ConfigSyncFunction")["Events"]
    schedules = [e for e in events.values() if e["Type"] in {"Schedule", "ScheduleV2"}]
    assert schedules and all(e["Properties"]["ScheduleExpression"] for e in schedules)


def test_config_sync_ends_its_run_before_the_function_times_out(raw: Template) -> None:
    # The run's deadline leaves room below Timeout for what follows the last Genesys request (one
    # item's writes, the error path), so a slow Genesys ends the run cleanly instead of being killed.
    from relay.settings import Settings

    spec = raw.function("ConfigSyncFunction")
    settings = Settings.model_validate(spec.environment)
    assert "GENESYS_SYNC_DEADLINE_SECONDS" in spec.environment
    assert settings.genesys_sync_deadline_seconds + settings.genesys_timeout_seconds <= spec.timeout_seconds


def test_every_function_and_the_api_log_to_a_group_with_retention(raw: Template) -> None:
    # Each function names its group in LoggingConfig (a group Lambda created itself would keep logs forever).
    groups = set()
    for logical_id in FUNCTIONS:
        group = raw.properties(logical_id)["LoggingConfig"]["LogGroup"]["Ref"]
        assert raw.resources[group]["Type"] == "AWS::Logs::LogGroup", logical_id
        assert raw.properties(group)["RetentionInDays"] == {"Ref": "LogRetentionDays"}, group
        # The audit trail outlives a rename of the group or the stack (retention still expires it).
        assert raw.resources[group].get("UpdateReplacePolicy") == "Retain", group
        # ...but not a group whose create was rolled back: its name would stop the next deploy.
        assert raw.resources[group].get("DeletionPolicy") == "RetainExceptOnCreate", group
        groups.add(group)
    assert len(groups) == len(FUNCTIONS), "each function logs to its own group"
    destination = raw.properties("HttpApi")["AccessLogSettings"]["DestinationArn"]
    (group_id, attribute) = destination["Fn::GetAtt"]
    assert attribute == "Arn"
    assert raw.properties(group_id)["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_alarms_notify_the_topic_only_when_one_is_given(raw: Template) -> None:
    alarms = raw.resources_of_type("AWS::CloudWatch::Alarm")
    assert len(alarms) >= 5
    for logical_id in alarms:
        props = raw.properties(logical_id)
        for key in ("AlarmActions", "OKActions"):
            assert props[key] == {
                "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
            }, f"{logical_id}.{key}"
    for has_topic, value in ((False, ""), (True, "arn:aws:sns:us-east-1:123456789012:oncall")):
        assert with_parameters({"AlarmTopicArn": value}).condition("HasAlarmTopic") is has_topic


def test_outputs_name_the_api_queues_tables_and_bucket(raw: Template) -> None:
    outputs = json.dumps(raw.document["Outputs"])
    for logical_id in (
        "HttpApi",
        "DeliveryQueue",
        "SlowDeliveryQueue",
        "DeadLetterQueue",
        "OrderedDeliveryQueue",
        "OrderedDeadLetterQueue",
        "FirstHopQueue",
        "FirstHopDeadLetterQueue",
        "TargetsTable",
        "BreakerTable",
        "IdempotencyTable",
        "AuditBucket",
    ):
        assert logical_id in outputs, f"no output for {logical_id}"


# --- runtime and architecture ------------------------------------------------------------------------
# python3.11 runs on Amazon Linux 2 (deprecated 2027-06-30); 3.13 runs on Amazon Linux 2023.
OLDEST_RUNTIME = (3, 13)


def python_version(runtime: str) -> tuple[int, int]:
    match = re.fullmatch(r"python(\d+)\.(\d+)", runtime)
    assert match, f"{runtime!r} is not a Python runtime"
    return int(match[1]), int(match[2])


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_every_function_runs_python_3_13_or_later(raw: Template, logical_id: str) -> None:
    runtime = resolved(raw, logical_id)["Runtime"]
    assert python_version(runtime) >= OLDEST_RUNTIME, f"{logical_id} runs {runtime}"


def test_every_layer_is_built_for_the_functions_runtime_and_architecture(raw: Template) -> None:
    runtimes = sorted({resolved(raw, logical_id)["Runtime"] for logical_id in FUNCTIONS})
    layers = raw.resources_of_type("AWS::Serverless::LayerVersion")
    assert set(layers) == {"CoreLayer", "GenesysSdkLayer"}
    for logical_id, layer in layers.items():
        props = raw.properties(logical_id)
        assert props["CompatibleRuntimes"] == runtimes, logical_id
        assert props["CompatibleArchitectures"] == [{"Ref": "Architecture"}], logical_id
        # sam build resolves the parameter here (make build passes --parameter-overrides Architecture=...).
        assert layer["Metadata"]["BuildArchitecture"] == {"Ref": "Architecture"}, logical_id


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_functions_run_on_the_architecture_parameter_arm64_by_default(raw: Template, logical_id: str) -> None:
    parameter = raw.document["Parameters"]["Architecture"]
    assert parameter["Default"] == "arm64" and set(parameter["AllowedValues"]) == {"arm64", "x86_64"}
    assert raw.properties(logical_id)["Architectures"] == [{"Ref": "Architecture"}]


# --- releases: versions, aliases, gradual deploys with rollback --------------------------------------
GRADUAL = re.compile(r"(Canary|Linear)\d+Percent(Every)?(\d+)Minutes?")
SHIFTED_RELEASES = (
    "IntakeFunction",
    "DispatcherFunction",
    "SlowDispatcherFunction",
    "OrderedDispatcherFunction",
    "FirstHopDispatcherFunction",
)
# The bugs each handler turns into an answer (a 500, a batch item failure) instead of a Lambda error:
# the count (relay.logic.intake.metrics, relay.logic.dispatch.metrics) that rolls back, per release.
CRASH_METRIC = {
    "IntakeFunction": "InternalErrors",
    "DispatcherFunction": "DeliveryCrashed",
    "SlowDispatcherFunction": "DeliveryCrashed",
    "OrderedDispatcherFunction": "DeliveryCrashed",
    "FirstHopDispatcherFunction": "DeliveryCrashed",
}


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_every_function_is_released_through_an_alias(raw: Template, logical_id: str) -> None:
    # SAM then points the function's event sources (API route, EventBridge rule, SQS mapping,
    # schedule) and EventInvokeConfig at the alias (tests/build/test_transformed_template.py).
    assert re.fullmatch(r"[A-Za-z0-9_-]+", str(resolved(raw, logical_id).get("AutoPublishAlias", ""))), (
        logical_id
    )


@pytest.mark.parametrize("logical_id", SHIFTED_RELEASES)
def test_releases_shift_all_at_once_in_dev_and_gradually_in_prod(template: Template, logical_id: str) -> None:
    preference = resolved(template, logical_id)["DeploymentPreference"]
    if template.parameters["Stage"] == "prod":
        assert GRADUAL.fullmatch(preference["Type"]), f"prod {logical_id}: {preference['Type']}"
    else:
        assert preference["Type"] == "AllAtOnce"
    assert preference.get("Enabled", True) in (True, "true")


@pytest.mark.parametrize("logical_id", SHIFTED_RELEASES)
def test_a_release_rolls_back_on_the_errors_of_the_version_being_deployed(
    raw: Template, logical_id: str
) -> None:
    props = raw.properties(logical_id)
    alarms = props["DeploymentPreference"]["Alarms"]
    assert alarms, f"{logical_id}: no rollback alarm"
    prod_type = resolved(with_parameters({"Stage": "prod"}), logical_id)["DeploymentPreference"]["Type"]
    bake_seconds = int(GRADUAL.fullmatch(prod_type)[3]) * 60  # type: ignore[index]
    watched = {}
    version = {"Fn::GetAtt": [logical_id, "Version.Version"]}
    for reference in alarms:
        alarm = raw.properties(reference["Ref"])
        dimensions = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        watched[(alarm["Namespace"], alarm["MetricName"])] = dimensions
        # It can fire while the canary still takes only part of the traffic, on the first bug.
        assert int(alarm["Period"]) * int(alarm["EvaluationPeriods"]) < bake_seconds
        assert (alarm["ComparisonOperator"], int(alarm["Threshold"])) == ("GreaterThanOrEqualToThreshold", 1)
        # Every trigger watches this deploy's own new version: during a canary most traffic still runs
        # the old one, whose failures (maybe the very bug this release fixes, crashing on every
        # redelivery) must never roll its fix back
        assert version in (dimensions.get("ExecutedVersion"), dimensions.get("version")), reference["Ref"]
    assert len(watched) == len(alarms), f"{logical_id}: two triggers watch one metric"
    # Its own errors ...
    assert watched.pop(("AWS/Lambda", "Errors")) == {
        "FunctionName": {"Ref": logical_id},
        "Resource": {"Fn::Sub": f"${{{logical_id}}}:{props['AutoPublishAlias']}"},
        "ExecutedVersion": version,
    }
    # ... and the bugs it answers for instead of raising, in the release's dimension set the code adds in
    # Lambda (function, version; service: the stack's name, so no other stack's crashes roll back here)
    assert watched == {
        ("GenesysRelay", CRASH_METRIC[logical_id]): {
            "service": {"Ref": "AWS::StackName"},
            "function": {"Ref": logical_id},
            "version": version,
        }
    }


# --- logging and tracing -------------------------------------------------------------------------------


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_every_function_logs_json_at_the_level_parameter(raw: Template, logical_id: str) -> None:
    config = raw.properties(logical_id)["LoggingConfig"]
    assert config["LogFormat"] == "JSON"
    assert config["ApplicationLogLevel"] == {"Ref": "LogLevel"}
    assert raw.document["Parameters"]["LogLevel"]["Default"] == "INFO"


# Lambda's application log-level filter, most detailed first; a JSON line without a valid "level" key
# counts as INFO (docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-log-level.html).
LAMBDA_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")


def lambda_keeps(line: str, application_log_level: str) -> bool:
    level = json.loads(line).get("level")
    level = level.upper() if isinstance(level, str) and level.upper() in LAMBDA_LEVELS else "INFO"
    return LAMBDA_LEVELS.index(level) >= LAMBDA_LEVELS.index(application_log_level)


def test_every_allowed_log_level_lets_the_metrics_through(capsys: pytest.CaptureFixture[str]) -> None:
    # powertools prints EMF without a "level" key, so Lambda files it as INFO: a function whose
    # application log level is WARN or ERROR would drop every custom metric, and with them the alarms
    # on them (signature mismatch, breaker store, ordered blocked, delivery crashed).
    from relay.logic.dispatch.metrics import BatchMetrics, Metric

    emitted = BatchMetrics(namespace="GenesysRelay", service="relay")
    emitted.service_count(Metric.BREAKER_STORE_UNAVAILABLE)
    emitted.count(Metric.DELIVERED, "crm")
    emitted.flush()
    lines = [line for line in capsys.readouterr().out.splitlines() if "_aws" in line]
    assert len(lines) == 2
    for log_level in BASE.document["Parameters"]["LogLevel"]["AllowedValues"]:
        template = with_parameters({"LogLevel": log_level})
        for logical_id in FUNCTIONS:
            application = resolved(template, logical_id)["LoggingConfig"]["ApplicationLogLevel"]
            assert all(lambda_keeps(line, application) for line in lines), (log_level, logical_id)


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_every_handler_puts_the_request_id_on_its_log_lines(raw: Template, logical_id: str) -> None:
    # powertools' inject_lambda_context adds function_request_id and cold_start to every line.
    function = raw.function(logical_id)
    tree = ast.parse((function.code_dir / f"{function.handler_module}.py").read_text())
    (handler,) = [
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function.handler_function
    ]
    decorators = [ast.unparse(d) for d in handler.decorator_list]
    assert any(d.startswith("logger.inject_lambda_context") for d in decorators), (
        f"{logical_id}: {decorators}"
    )


def test_tracing_is_on_only_if_the_code_emits_segments(raw: Template) -> None:
    # X-Ray Active bills every sampled invocation; without a Tracer it records only Lambda's own segments.
    sources = [*(ROOT / "functions").rglob("*.py"), *(ROOT / "layers" / "core" / "relay").rglob("*.py")]
    shipped = [s for s in sources if not {"local", "cli"} & set(s.parts)]
    emits_segments = any("Tracer(" in source.read_text() for source in shipped)
    for logical_id in FUNCTIONS:
        mode = resolved(raw, logical_id).get("Tracing", "Disabled")
        assert (mode == "Active") == emits_segments, (
            f"{logical_id}: Tracing {mode}, Tracer in code: {emits_segments}"
        )


# --- operational settings --------------------------------------------------------------------------------


def test_config_sync_runs_one_at_a_time(raw: Template) -> None:
    # A scheduled run and Lambda's retry of a failed one must not write targets concurrently.
    assert raw.function("ConfigSyncFunction").reserved_concurrency == 1


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_per_target_concurrency_is_a_parameter_the_dispatcher_accepts(
    template: Template, dispatcher: str
) -> None:
    from relay.settings import Settings

    environment = template.function(dispatcher).environment
    variables = BASE.properties(dispatcher)["Environment"]["Variables"]
    assert variables["PER_TARGET_CONCURRENCY"] == {"Ref": "PerTargetConcurrency"}
    settings = Settings.model_validate(environment)
    assert settings.per_target_concurrency == int(template.parameters["PerTargetConcurrency"])
    # The parameter's whole range is valid for the setting (a deploy could not fail at cold start).
    spec = BASE.document["Parameters"]["PerTargetConcurrency"]
    for bound in (spec["MinValue"], spec["MaxValue"]):
        Settings.model_validate({"PER_TARGET_CONCURRENCY": str(bound)})


@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_every_environment_names_its_region(environment: str) -> None:
    sections = tomllib.loads(SAMCONFIG.read_text())[environment]
    regions = {
        sections[command]["parameters"].get("region")
        for command in ("global", "deploy")
        if command in sections
    } - {None}
    assert len(regions) == 1, f"[{environment}] names no region (or several): {regions}"
    assert re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", regions.pop())


def test_every_environment_passes_the_templates_rules_prod_once_it_names_an_alarm_topic() -> None:
    for environment, parameters in ENVIRONMENTS.items():
        failed = failed_rules(with_parameters(parameters))
        if parameters.get("Stage") == "prod" and not parameters.get("AlarmTopicArn"):
            # samconfig [prod] names the parameter empty: CloudFormation refuses until it is filled in.
            assert "AlarmTopicArn" in parameters and failed == ["ProdAlarmsNotifySomeone"], failed
        else:
            assert failed == [], f"[{environment}] {failed}"


def test_prod_refuses_to_deploy_without_an_alarm_topic() -> None:
    topic = "arn:aws:sns:us-east-1:123456789012:oncall"
    assert failed_rules(with_parameters({"Stage": "prod"})) == ["ProdAlarmsNotifySomeone"]
    assert failed_rules(with_parameters({"Stage": "prod", "AlarmTopicArn": topic})) == []
    assert failed_rules(with_parameters({"Stage": "dev"})) == []


def test_a_partner_event_bus_without_its_integration_id_refuses_to_deploy() -> None:
    bus = "aws.partner/genesys.com/cloud/0000/relay"
    integration = "6685901b-6d0e-43db-95ff-d64406e9dce2"
    assert failed_rules(with_parameters({"GenesysPartnerEventBusName": bus})) == [
        "PartnerEventBusNeedsItsIntegration"
    ]
    chosen = {"GenesysPartnerEventBusName": bus, "EventBridgeIntegrationId": integration}
    assert failed_rules(with_parameters(chosen)) == []
    assert failed_rules(with_parameters({})) == []  # the default bus: no partner events reach it


def failed_rules(template: Template) -> list[str]:
    """Names of the template's Rules whose assertions fail for these parameters, as CloudFormation checks."""
    failed = []
    for name, rule in template.document.get("Rules", {}).items():
        applies = _rule_value(template, rule.get("RuleCondition", True))
        if applies and not all(_rule_value(template, a["Assert"]) for a in rule["Assertions"]):
            failed.append(name)
    return failed


def _rule_value(template: Template, expression: Any) -> Any:
    if isinstance(expression, list):
        return [_rule_value(template, item) for item in expression]
    if not isinstance(expression, dict):
        return expression
    ((function, argument),) = expression.items()
    value = _rule_value(template, argument) if function != "Ref" else None
    match function:
        case "Ref":
            return template.ref(argument)
        case "Fn::Equals":
            return str(value[0]) == str(value[1])
        case "Fn::Not":
            return not value[0]
        case "Fn::And":
            return all(value)
        case "Fn::Or":
            return any(value)
        case "Fn::Contains":
            return str(value[1]) in [str(v) for v in value[0]]
    raise AssertionError(f"{function} is not a function CloudFormation allows in Rules")


# --- no silent loss: parked messages -----------------------------------------------------------------
PARKING_QUEUES = (
    "DeadLetterQueue",
    "IntakeFailureQueue",
    "EventBridgeDeadLetterQueue",
    "OrderedDeadLetterQueue",
    "FirstHopDeadLetterQueue",
)


@pytest.mark.parametrize("queue", PARKING_QUEUES)
def test_a_parked_message_raises_an_alarm_days_before_sqs_deletes_it(template: Template, queue: str) -> None:
    retention_days = int(resolved(template, queue)["MessageRetentionPeriod"]) / 86400
    assert retention_days == 14, queue
    thresholds = [days for days in _oldest_message_alarm_days(template, queue) if days <= retention_days - 3]
    assert thresholds, f"no alarm on {queue}'s oldest message 3 days or more before SQS deletes it"
    assert BASE.document["Parameters"]["DeadLetterAgeAlarmDays"]["Default"] == 10


def _oldest_message_alarm_days(template: Template, queue: str) -> list[float]:
    """Thresholds, in days, of the alarms on the queue's ApproximateAgeOfOldestMessage."""
    days = []
    for logical_id in template.resources_of_type("AWS::CloudWatch::Alarm"):
        props = template.resolve(template.properties(logical_id))
        queries = {q["Id"]: q for q in props.get("Metrics", [])}
        for query_id, query in queries.items():
            metric = query.get("MetricStat", {}).get("Metric", {})
            dimensions = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            if metric.get("MetricName") != "ApproximateAgeOfOldestMessage":
                continue
            if dimensions != {"QueueName": template.get_att(queue, "QueueName")}:
                continue
            (returned,) = [q for q in queries.values() if q.get("ReturnData", True)]
            assert returned.get("Expression") == f"{query_id} / 86400", logical_id
            days.append(float(props["Threshold"]))
    return days


# --- helpers -----------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _assert_scoped(logical_id: str, statement: dict[str, Any]) -> None:
    if statement["Effect"] == "Deny":  # a Deny only takes permissions away
        return
    assert "NotAction" not in statement and "NotResource" not in statement, f"{logical_id}: {statement}"
    for action in _as_list(statement["Action"]):
        assert action != "*" and not action.endswith(":*"), f"{logical_id}: wildcard action {action}"
    for resource in _as_list(statement["Resource"]):
        assert resource != "*", f"{logical_id}: wildcard resource in {statement}"
        if isinstance(resource, str):
            assert not resource.endswith(":*"), f"{logical_id}: {resource}"


def _tls_denied_resources(raw: Template, policy_type: str, objects_too: bool = False) -> set[str]:
    """Logical ids of the resources a policy of ``policy_type`` denies unless aws:SecureTransport."""
    denied: set[str] = set()
    for logical_id in raw.resources_of_type(policy_type):
        document = raw.properties(logical_id)["PolicyDocument"]
        for statement in document["Statement"]:
            insecure = statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
            if statement["Effect"] != "Deny" or statement.get("Principal") != "*" or str(insecure) != "False":
                continue
            text = json.dumps(statement["Resource"])
            for target in raw.resources:
                whole = f'["{target}", "Arn"]' in text
                objects = f"${{{target}.Arn}}/*" in text
                if whole and (objects or not objects_too):
                    denied.add(target)
    return denied


@pytest.mark.parametrize("ports", ["443", "443,8443"])
def test_allowed_target_ports_reach_both_functions_that_apply_the_url_policy(ports: str) -> None:
    from relay.settings import Settings

    spec = BASE.document["Parameters"]["AllowedTargetPorts"]
    assert re.fullmatch(spec["AllowedPattern"], ports) and re.fullmatch(
        spec["AllowedPattern"], spec["Default"]
    )
    template = with_parameters({"AllowedTargetPorts": ports})
    for logical_id in (*DISPATCHERS, "ConfigSyncFunction"):
        value = resolved(template, logical_id)["Environment"]["Variables"]["ALLOWED_TARGET_PORTS"]
        settings = Settings.model_validate({"ALLOWED_TARGET_PORTS": value})
        assert settings.allowed_target_ports == [int(port) for port in ports.split(",")], logical_id


@pytest.mark.parametrize("seconds", ["15", "900"])
def test_every_dispatcher_knows_its_own_timeout_so_that_requests_are_cut_to_fit(seconds: str) -> None:
    from relay.settings import Settings

    template = with_parameters({"DispatcherTimeoutSeconds": seconds})
    for logical_id in DISPATCHERS:
        function = resolved(template, logical_id)
        value = function["Environment"]["Variables"]["DISPATCHER_TIMEOUT_SECONDS"]
        assert str(value) == str(function["Timeout"]) == seconds, logical_id
        assert Settings.model_validate(
            {"DISPATCHER_TIMEOUT_SECONDS": value}
        ).dispatcher_timeout_seconds == float(seconds)


@pytest.mark.parametrize(
    ("ports", "valid"),
    [
        ("1", True),
        ("443", True),
        ("9999", True),
        ("10000", True),
        ("65535", True),
        ("443,8443,65535", True),
        ("0", False),
        ("65536", False),
        ("99999", False),
        ("443,0", False),
        ("443,99999", False),
        ("", False),
    ],
)
def test_allowed_target_ports_pattern_accepts_exactly_what_settings_accept(ports: str, valid: bool) -> None:
    # A value the stack accepts but settings refuse would stop all three dispatchers and config sync.
    from relay.errors import ConfigurationError
    from relay.settings import load_settings

    pattern = BASE.document["Parameters"]["AllowedTargetPorts"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, ports)) is valid
    try:
        load_settings({"ALLOWED_TARGET_PORTS": ports})
    except ConfigurationError:
        assert not valid
    else:
        assert valid


# --- the ordered lane (docs/dispatcher.md, "Ordering") --------------------------------------------------
ORDERED = "OrderedDispatcherFunction"


def ordered_event(template: Template) -> dict[str, Any]:
    events = resolved(template, ORDERED)["Events"]
    (sqs,) = [e["Properties"] for e in events.values() if e["Type"] == "SQS"]
    return dict(sqs)


def high_throughput_fifo_queue(template: Template, queue: str, dead_letter_queue: str) -> dict[str, Any]:
    """``queue``'s resolved properties, once it and ``dead_letter_queue`` are checked to be high-throughput
    FIFO queues (deduplication and throughput per message group) kept 14 days, the first redriving to
    the second (a FIFO queue needs a FIFO dead-letter queue)."""
    props = resolved(template, queue)
    for checked in (props, resolved(template, dead_letter_queue)):
        assert checked["FifoQueue"] is True
        assert (checked["DeduplicationScope"], checked["FifoThroughputLimit"]) == (
            "messageGroup",
            "perMessageGroupId",
        )
        assert checked["ContentBasedDeduplication"] is False  # deduplicated on the ids the relay sets
        assert int(checked["MessageRetentionPeriod"]) == FOURTEEN_DAYS
    assert template.properties(queue)["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": [dead_letter_queue, "Arn"]
    }
    return props


def test_the_ordered_queue_is_a_high_throughput_fifo_queue_redriving_to_a_fifo_dlq(
    template: Template,
) -> None:
    queue = high_throughput_fifo_queue(template, "OrderedDeliveryQueue", "OrderedDeadLetterQueue")
    # A held record is received again without an attempt: the backstop sits far above any retry matrix.
    assert int(queue["RedrivePolicy"]["maxReceiveCount"]) >= 100 > largest_planned_attempts()
    timeout = int(resolved(template, ORDERED)["Timeout"])
    assert int(queue["VisibilityTimeout"]) >= 6 * timeout


def test_the_ordered_dispatcher_consumes_the_ordered_queue_within_its_reserved_concurrency(
    template: Template,
) -> None:
    event = ordered_event(template)
    assert template.properties(ORDERED)["Events"]["OrderedDeliveries"]["Properties"]["Queue"] == {
        "Fn::GetAtt": ["OrderedDeliveryQueue", "Arn"]
    }
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= int(event["BatchSize"]) <= 10 and "MaximumBatchingWindowInSeconds" not in event  # FIFO limits
    maximum = int(event["ScalingConfig"]["MaximumConcurrency"])
    assert template.function(ORDERED).reserved_concurrency == maximum >= 2


def test_the_ordered_dispatcher_is_the_dispatcher_code_on_the_ordered_lane_only(raw: Template) -> None:
    from relay.settings import Settings

    ordered = raw.function(ORDERED)
    handler = (ordered.code_dir / f"{ordered.handler_module}.py").read_text()
    assert "container_dispatcher().handle_batch(" in handler  # the dispatcher's engine, wired the same way
    settings = Settings.model_validate(ordered.environment)
    assert (
        settings.ordered_queue_url
        and settings.ordered_dead_letter_queue_url
        and settings.ordered_attempts_table
    )
    # It never sends to a delivery queue: an ordered record is held, not re-sent (nor routed to the
    # slow lane: that is for standard records only).
    assert settings.delivery_queue_url is None and settings.dead_letter_queue_url is None
    assert settings.slow_delivery_queue_url is None
    sends = [
        p["SQSSendMessagePolicy"]["QueueName"]
        for p in raw.properties(ORDERED)["Policies"]
        if "SQSSendMessagePolicy" in p
    ]
    assert sends == [{"Fn::GetAtt": ["OrderedDeadLetterQueue", "QueueName"]}]
    denies = [
        statement
        for policy in raw.properties(ORDERED)["Policies"]
        for statement in policy.get("Statement", [])
        if statement["Effect"] == "Deny"
    ]
    assert any(s.get("NotResource") == {"Fn::GetAtt": ["OrderedDeliveryQueue", "Arn"]} for s in denies)


def test_the_intake_may_send_to_the_ordered_queue_and_knows_it(raw: Template) -> None:
    from relay.settings import Settings

    assert Settings.model_validate(raw.function("IntakeFunction").environment).ordered_queue_url
    sends = [
        p["SQSSendMessagePolicy"]["QueueName"]
        for p in raw.properties("IntakeFunction")["Policies"]
        if "SQSSendMessagePolicy" in p
    ]
    assert {"Fn::GetAtt": ["OrderedDeliveryQueue", "QueueName"]} in sends


def test_the_eventbridge_redrive_permissions_name_every_queue_the_intake_sends_to(raw: Template) -> None:
    # `relay dlq redrive --queue eventbridge|intake-failures` runs the intake in-process with the
    # operator's credentials: an ordered target's task goes to the OrderedDeliveryQueue, which the
    # operator's permission list (docs/operations-dlq.md) once left out; so is the FirstHopQueue.
    sends = {
        p["SQSSendMessagePolicy"]["QueueName"]["Fn::GetAtt"][0]
        for p in raw.properties("IntakeFunction")["Policies"]
        if "SQSSendMessagePolicy" in p
    }
    text = (TEMPLATE.parent / "docs" / "operations-dlq.md").read_text()
    section = text.split("## 4. Permissions an operator needs", 1)[1].split("\n## ", 1)[0]
    intake_part = section.split("what the intake", 1)[1]
    assert sends == {"DeliveryQueue", "OrderedDeliveryQueue", "FirstHopQueue"}
    assert all(re.search(rf"\b{queue}\b", intake_part) for queue in sends), intake_part


def test_the_attempts_table_expires_its_counters_after_the_queue_has_let_go(raw: Template) -> None:
    from relay.adapters.attempt_counter import RECORD_TTL_SECONDS

    props = resolved(raw, "OrderedAttemptsTable")
    assert props["KeySchema"] == [{"AttributeName": "messageId", "KeyType": "HASH"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert RECORD_TTL_SECONDS > int(resolved(raw, "OrderedDeliveryQueue")["MessageRetentionPeriod"])


# --- the intake's first hop (IntakeDeduplication queue; docs/intake.md, "No write at all") ---------------
FIRST_HOP = "FirstHopDispatcherFunction"


def test_the_first_hop_is_a_high_throughput_fifo_queue_redriving_to_a_fifo_dlq(template: Template) -> None:
    # SQS drops a repeat of a delivery id (its deduplication id and its group) within 5 minutes, per group.
    high_throughput_fifo_queue(template, "FirstHopQueue", "FirstHopDeadLetterQueue")
    # The DeliveryQueue's backstop: the first hop's records are retried as the DeliveryQueue's are, and
    # the dispatcher plans its attempts below it (MAX_RECEIVE_COUNT, the same parameter).
    assert (
        template.properties("FirstHopQueue")["RedrivePolicy"]["maxReceiveCount"]
        == template.properties("DeliveryQueue")["RedrivePolicy"]["maxReceiveCount"]
        == {"Ref": "MaxReceiveCount"}
    )


def test_the_first_hop_event_source_takes_what_a_fifo_event_source_takes(template: Template) -> None:
    # At most 10 records per batch and no batching window (Lambda refuses both on a FIFO queue).
    (name,) = [n for n, e in template.properties(FIRST_HOP)["Events"].items() if e["Type"] == "SQS"]
    assert name == "FirstHopDeliveries"
    event = sqs_event(template, FIRST_HOP)
    assert template.properties(FIRST_HOP)["Events"][name]["Properties"]["Queue"] == {
        "Fn::GetAtt": ["FirstHopQueue", "Arn"]
    }
    assert 1 <= int(event["BatchSize"]) <= 10
    assert "MaximumBatchingWindowInSeconds" not in event
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_the_intake_sends_to_the_first_hop_only_when_it_deduplicates_there(raw: Template) -> None:
    declared = raw.document["Parameters"]["IntakeDeduplication"]
    assert (declared["Default"], sorted(declared["AllowedValues"])) == ("queue", ["queue", "table"])
    # By default the intake sends first attempts to the FIFO first hop (and may: SQSSendMessagePolicy).
    assert raw.condition("DeduplicateOnQueue") is True
    environment = raw.function("IntakeFunction").environment
    assert environment["FIRST_HOP_QUEUE_URL"] == raw.ref("FirstHopQueue")
    # In table mode the variable is left out (AWS::NoValue, which the local reader resolves to ""), and
    # the IdempotencyTable's claim and answer stay what they are.
    table = with_parameters({"IntakeDeduplication": "table"})
    assert table.condition("DeduplicateOnQueue") is False
    assert table.properties("IntakeFunction")["Environment"]["Variables"]["FIRST_HOP_QUEUE_URL"] == {
        "Fn::If": ["DeduplicateOnQueue", {"Ref": "FirstHopQueue"}, {"Ref": "AWS::NoValue"}]
    }
    table_environment = table.function("IntakeFunction").environment
    assert not table_environment.get("FIRST_HOP_QUEUE_URL")
    assert table_environment["IDEMPOTENCY_TABLE"] == environment["IDEMPOTENCY_TABLE"]
    assert table_environment["DELIVERY_QUEUE_URL"] == environment["DELIVERY_QUEUE_URL"]


def test_the_first_hop_dispatcher_is_the_fast_lane_receiving_from_the_first_hop(raw: Template) -> None:
    fast, first_hop = raw.function("DispatcherFunction"), raw.function(FIRST_HOP)
    handler = (first_hop.code_dir / f"{first_hop.handler_module}.py").read_text()
    assert "container_dispatcher().handle_batch(" in handler  # the dispatcher's engine, wired the same way
    assert first_hop.timeout_seconds == fast.timeout_seconds
    # It receives from the FIFO first hop (retries change visibility there), re-sends deferrals to the
    # standard DeliveryQueue (a FIFO queue takes no per-message delay), and is marked as the first hop.
    assert first_hop.environment["DELIVERY_QUEUE_URL"] == raw.ref("FirstHopQueue")
    assert first_hop.environment["REQUEUE_QUEUE_URL"] == raw.ref("DeliveryQueue")
    assert first_hop.environment["FIRST_HOP"] == "true"
    assert first_hop.environment["DISPATCH_LANE"] == fast.environment["DISPATCH_LANE"] == "fast"
    # Everything else is the fast lane's: the same targets, breaker, audit, slow lane and DLQ.
    own = {"DELIVERY_QUEUE_URL", "REQUEUE_QUEUE_URL", "FIRST_HOP"}
    shared = {k: v for k, v in first_hop.environment.items() if k not in own}
    assert shared == {k: v for k, v in fast.environment.items() if k not in own}, (
        "the first hop's settings drifted from the fast lane's"
    )
    # The DispatcherFunction keeps the DeliveryQueue (retries re-sent, redrives, replays, table mode).
    assert fast.environment["DELIVERY_QUEUE_URL"] == raw.ref("DeliveryQueue")
