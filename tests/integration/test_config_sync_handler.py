"""ConfigSyncFunction's handler end to end: fake Genesys API (real SDK) -> DynamoDB + Secrets Manager (moto).

Observed at the boundary: the handler's result, the EMF metrics and logs it writes to stdout.
"""

from __future__ import annotations

import json

import pytest
from support.events import sample
from support.handlers import Handler, load_handler
from support.lambda_context import lambda_context

from relay.errors import GenesysForbidden, GenesysLoginError
from relay.local.fake_genesys import FakeGenesys
from relay.local.fixtures import Fixtures

pytestmark = pytest.mark.integration

EVENT = sample("eventbridge_schedule.json")
FIXTURES = Fixtures.load()
INTEGRATION = FIXTURES.integrations[0]
CRM = INTEGRATION.targets[0]
SECRET_VALUES = [
    INTEGRATION.signature_secret,
    *(t.security.value for t in INTEGRATION.targets if t.security.value),
    *(t.signing_secret for t in INTEGRATION.targets if t.signing_secret),
    *(t.encryption_key for t in INTEGRATION.targets if t.encryption_key),
]


@pytest.fixture(scope="module")
def handler() -> Handler:
    return load_handler("config_sync")


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
    handler: Handler, genesys: FakeGenesys, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given one target whose config was broken in Genesys
    genesys.update_config_properties(CRM.id, method="DELETE")

    # When the scheduled event invokes the handler
    result = handler(EVENT, lambda_context("config_sync"))

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
    handler: Handler, genesys: FakeGenesys, capfd: pytest.CaptureFixture[str]
) -> None:
    genesys.deny(path=r"^/api/v2/conversations/")

    with pytest.raises(GenesysForbidden, match="messaging:integration:view"):
        handler(EVENT, lambda_context("config_sync"))

    out, err = capfd.readouterr()
    assert genesys.client_secret not in out + err


def test_handler_fails_the_run_when_the_token_answer_is_unusable(
    handler: Handler, genesys: FakeGenesys, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given the token endpoint answers without expires_in, on every login
    genesys.omit_expires_in(times=10)

    # Then the invocation fails (the alarm sees it) after one login, rather than rejecting every item
    with pytest.raises(GenesysLoginError, match="expires_in"):
        handler(EVENT, lambda_context("config_sync"))

    assert genesys.count(r"^/oauth/token$") == 1
    out, err = capfd.readouterr()
    assert genesys.client_secret not in out + err
