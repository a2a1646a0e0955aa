"""What CloudFormation receives after the SAM transform: releases go through the alias, and gradually.

SAM decides where event sources point (AutoPublishAlias moves them to the alias) and what
DeploymentPreference becomes (a CodeDeploy deployment group); neither is visible in template.yaml
itself. This runs SAM's own translator (from SAM CLI's environment, .venv-sam, which `make test`
installs) on the template, as `sam deploy` would after packaging, and checks the result.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAM_PYTHON = ROOT / ".venv-sam" / "bin" / "python"
ALIAS = "live"

TRANSLATE = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicyLookups:  # the template names no managed policy by name: nothing to look up
    def load(self):
        return {}

template = yaml_parse(open(sys.argv[1]).read())
changed = set(json.loads(sys.argv[3]))  # artifacts whose content this release changed
for name, resource in template["Resources"].items():  # as `sam package` leaves them (keyed by content)
    properties = resource.get("Properties", {})
    for key in ("CodeUri", "ContentUri"):
        if isinstance(properties.get(key), str):
            properties[key] = f"s3://packaged/{name}{'-changed' if name in changed else ''}.zip"
print(json.dumps(transform(template, json.loads(sys.argv[2]), NoManagedPolicyLookups())))
"""


@cache
def transformed(stage: str, changed: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The transformed template's resources; ``changed``: the artifacts (logical ids) whose content
    differs from the baseline release, as `sam package` would upload them under a new key."""
    if not SAM_PYTHON.is_file():
        pytest.fail(f"{SAM_PYTHON} is missing: run `make .venv-sam/.synced` (make test does)")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = subprocess.run(
        [
            str(SAM_PYTHON),
            "-c",
            TRANSLATE,
            str(ROOT / "template.yaml"),
            json.dumps({"Stage": stage}),
            json.dumps(changed),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resources: dict[str, dict[str, Any]] = json.loads(done.stdout)["Resources"]
    return resources


def of_type(resources: dict[str, dict[str, Any]], resource_type: str) -> dict[str, dict[str, Any]]:
    return {lid: r["Properties"] for lid, r in resources.items() if r["Type"] == resource_type}


def alias_ref(function: str) -> dict[str, str]:
    return {"Ref": f"{function}Alias{ALIAS}"}


def test_every_function_gets_a_version_and_the_alias_serves_it() -> None:
    resources = transformed("dev")
    functions = of_type(resources, "AWS::Lambda::Function")
    aliases = of_type(resources, "AWS::Lambda::Alias")
    assert set(functions) == {
        "IntakeFunction",
        "DispatcherFunction",
        "FirstHopDispatcherFunction",
        "SlowDispatcherFunction",
        "ConfigSyncFunction",
        "OrderedDispatcherFunction",
    }
    for function in functions:
        alias = aliases[f"{function}Alias{ALIAS}"]
        assert alias["FunctionName"] == {"Ref": function} and alias["Name"] == ALIAS
        (version, attribute) = alias["FunctionVersion"]["Fn::GetAtt"]
        assert resources[version]["Type"] == "AWS::Lambda::Version" and attribute == "Version"


def published_versions(resources: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{function: the logical id of the version its alias serves}; a new id is a new version."""
    aliases = of_type(resources, "AWS::Lambda::Alias")
    return {a["FunctionName"]["Ref"]: a["FunctionVersion"]["Fn::GetAtt"][0] for a in aliases.values()}


@pytest.mark.parametrize(
    ("layer", "users"),
    [
        (
            "CoreLayer",
            {
                "IntakeFunction",
                "DispatcherFunction",
                "FirstHopDispatcherFunction",
                "SlowDispatcherFunction",
                "OrderedDispatcherFunction",
                "ConfigSyncFunction",
            },
        ),
        ("GenesysSdkLayer", {"ConfigSyncFunction"}),
    ],
)
def test_a_release_that_changes_only_a_layer_publishes_new_versions_of_its_functions(
    layer: str, users: set[str]
) -> None:
    # All relay code is in CoreLayer and the function zips are the same in every release: unless the
    # layer is part of the version's hash, such a release publishes nothing and `live` keeps old code.
    before = published_versions(transformed("prod"))
    after = published_versions(transformed("prod", (layer,)))
    assert {f for f in before if before[f] != after[f]} == users


def test_every_event_source_invokes_the_alias() -> None:
    resources = transformed("dev")
    mappings = of_type(resources, "AWS::Lambda::EventSourceMapping").values()
    assert sorted(json.dumps(m["FunctionName"]) for m in mappings) == sorted(
        json.dumps(alias_ref(f))
        for f in (
            "DispatcherFunction",
            "FirstHopDispatcherFunction",
            "SlowDispatcherFunction",
            "OrderedDispatcherFunction",
        )
    ), "each lane's queue invokes its own dispatcher's alias"
    (rule,) = of_type(resources, "AWS::Events::Rule").values()
    assert [target["Arn"] for target in rule["Targets"]] == [alias_ref("IntakeFunction")]
    permissions = of_type(resources, "AWS::Lambda::Permission")
    assert {json.dumps(p["FunctionName"]) for p in permissions.values()} == {
        json.dumps(alias_ref("IntakeFunction"))
    }, "the API route and the EventBridge rule may invoke the alias only"
    (schedule,) = of_type(resources, "AWS::Scheduler::Schedule").values()
    assert schedule["Target"]["Arn"] == alias_ref("ConfigSyncFunction")
    (invoke_config,) = of_type(resources, "AWS::Lambda::EventInvokeConfig").values()
    assert invoke_config["Qualifier"] == ALIAS


@pytest.mark.parametrize(("stage", "shift"), [("dev", "AllAtOnce"), ("prod", "Canary10Percent5Minutes")])
def test_a_release_shifts_per_stage_and_rolls_back_on_its_error_alarm(stage: str, shift: str) -> None:
    resources = transformed(stage)
    groups = of_type(resources, "AWS::CodeDeploy::DeploymentGroup")
    for function, alarm, crashes in (
        ("IntakeFunction", "IntakeErrorsAlarm", "IntakeInternalErrorsAlarm"),
        ("DispatcherFunction", "DispatcherErrorsAlarm", "DispatcherCrashedAlarm"),
        ("FirstHopDispatcherFunction", "FirstHopDispatcherErrorsAlarm", "FirstHopDispatcherCrashedAlarm"),
        ("SlowDispatcherFunction", "SlowDispatcherErrorsAlarm", "SlowDispatcherCrashedAlarm"),
        ("OrderedDispatcherFunction", "OrderedDispatcherErrorsAlarm", "OrderedDispatcherCrashedAlarm"),
    ):
        group = groups[f"{function}DeploymentGroup"]
        # The stage picks the branch (Condition IsProd) when CloudFormation resolves it.
        (condition, in_prod, otherwise) = group["DeploymentConfigName"]["Fn::If"]
        chosen = in_prod if stage == "prod" else otherwise
        assert condition == "IsProd"
        assert chosen["Fn::Sub"] == ["CodeDeployDefault.Lambda${ConfigName}", {"ConfigName": shift}]
        # Its own errors, and the bugs its handler answers for instead of raising (a 500, a batch
        # item failure), which Lambda's Errors never counts
        assert group["AlarmConfiguration"] == {
            "Enabled": True,
            "Alarms": [{"Name": {"Ref": alarm}}, {"Name": {"Ref": crashes}}],
        }
        assert "DEPLOYMENT_STOP_ON_ALARM" in group["AutoRollbackConfiguration"]["Events"]
        update = resources[f"{function}Alias{ALIAS}"]["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
        assert update["DeploymentGroupName"] == {"Ref": f"{function}DeploymentGroup"}
        # Both alarms watch the version this deploy publishes (SAM resolves Version.Version to it), the
        # crash count in the function and version the code names in Lambda: an old version's crashes
        # during the canary never roll back its fix
        version = resources[f"{function}Alias{ALIAS}"]["Properties"]["FunctionVersion"]
        errors, crashed = (
            {d["Name"]: d["Value"] for d in resources[logical_id]["Properties"]["Dimensions"]}
            for logical_id in (alarm, crashes)
        )
        assert errors["ExecutedVersion"] == version
        assert (crashed["function"], crashed["version"]) == ({"Ref": function}, version)


def test_the_schedule_name_cannot_collide_with_another_stacks() -> None:
    # Two stacks in one account and region (relay-dev next to relay-prod) must not collide on a name:
    # SAM's ScheduleV2 names its schedule after the logical id unless told not to.
    (schedule,) = of_type(transformed("dev"), "AWS::Scheduler::Schedule").values()
    assert "Name" not in schedule, "CloudFormation generates a unique name"


def test_functions_log_json_to_their_groups_and_carry_no_tracing_grant() -> None:
    resources = transformed("dev")
    for function, props in of_type(resources, "AWS::Lambda::Function").items():
        assert props["Runtime"] == "python3.13", function
        assert props["Architectures"] == [{"Ref": "Architecture"}], function
        logging = props["LoggingConfig"]
        assert logging["LogFormat"] == "JSON" and logging["ApplicationLogLevel"] == {"Ref": "LogLevel"}
        assert resources[logging["LogGroup"]["Ref"]]["Type"] == "AWS::Logs::LogGroup", function
        assert "TracingConfig" not in props, function
        role = resources[props["Role"]["Fn::GetAtt"][0]]["Properties"]
        assert not any("XRay" in arn for arn in role.get("ManagedPolicyArns", [])), function
