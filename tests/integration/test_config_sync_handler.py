"""ConfigSyncFunction's handler end to end: fake Genesys API (real SDK) -> DynamoDB + Secrets Manager (moto).

Observed at the boundary: the handler's result, the EMF metrics and logs it writes to stdout.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from relay.errors import GenesysForbidden, GenesysLoginError
from relay.local.fake_genesys import FakeGenesys
from relay.local.fixtures import Fixtures

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HANDLER = ROOT / "functions" / "config_sync" / "config_sync_handler.py"
EVENT = json.loads((ROOT / "events" / "eventbridge_schedule.json").read_text())
FIXTURES = Fixtures.load()
INTEGRATION = FIXTURES.integrations[0]
CRM = INTEGRATION.targets[0]
SECRET_VALUES = [
    INTEGRATION.signature_secret,
    *(t.security.value for t in INTEGRATION.targets if t.security.value),
    *(t.signing_secret for t in INTEGRATION.targets if t.signing_secret),
    *(t.encryption_key for t in INTEGRATION.targets if t.encryption_key),
]


@dataclass
class LambdaContext:
    function_name: str = "ConfigSyncFunction"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ConfigSyncFunction"
    aws_request_id: str = "4f1c2d3e-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_sync_handler", HANDLER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _emf_metrics(stdout: str) -> dict[str, float]:
    """Metric values from the EMF lines in stdout."""
    found: dict[str, float] = {}
    for line in stdout.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "_aws" in doc:
            for directive in doc["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    value = doc[metric["Name"]]
                    found[metric["Name"]] = sum(value) if isinstance(value, list) else value
    return found


def test_handler_syncs_and_emits_metrics_without_secrets(
    handler: ModuleType, genesys: FakeGenesys, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given one target whose config was broken in Genesys
    genesys.update_config_properties(CRM.id, method="DELETE")

    # When the scheduled event invokes the handler
    result = handler.lambda_handler(EVENT, LambdaContext())

    # Then it reports what it synced and rejected
    assert result["integrations"] == [INTEGRATION.id]
    assert result["targets"] == [INTEGRATION.targets[1].id]
    assert [r["id"] for r in result["rejected"]] == [CRM.id]
    # And the metrics say the same
    out, err = capfd.readouterr()
    assert _emf_metrics(out) == {"TargetsSynced": 2, "TargetsRejected": 1}
    # And no secret value reached the logs, the metrics or the result
    everything = out + err + json.dumps(result)
    assert genesys.client_secret not in everything
    for value in SECRET_VALUES:
        assert value not in everything


def test_handler_fails_the_run_naming_the_missing_permission(
    handler: ModuleType, genesys: FakeGenesys, capfd: pytest.CaptureFixture[str]
) -> None:
    genesys.deny(path=r"^/api/v2/conversations/")

    with pytest.raises(GenesysForbidden, match="messaging:integration:view"):
        handler.lambda_handler(EVENT, LambdaContext())

    out, err = capfd.readouterr()
    assert genesys.client_secret not in out + err


def test_handler_fails_the_run_when_the_token_answer_is_unusable(
    handler: ModuleType, genesys: FakeGenesys, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given the token endpoint answers without expires_in, on every login
    genesys.omit_expires_in(times=10)

    # Then the invocation fails (the alarm sees it) after one login, rather than rejecting every item
    with pytest.raises(GenesysLoginError, match="expires_in"):
        handler.lambda_handler(EVENT, LambdaContext())

    assert genesys.count(r"^/oauth/token$") == 1
    out, err = capfd.readouterr()
    assert genesys.client_secret not in out + err
