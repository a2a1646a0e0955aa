"""Config sync end to end: the real Genesys SDK against the fake Genesys API over HTTP, into moto.

The fake is seeded from the default fixtures file; DynamoDB and Secrets Manager are moto's server.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from support.events import api_gateway_event, eventbridge_event
from support.handlers import LoadHandler
from support.lambda_context import lambda_context
from support.queues import drain
from support.waiting import wait_until
from test_dispatch_support import ManualClock, get_secret, put_secret, secret_name

from relay.adapters.genesys import GenesysClient
from relay.adapters.target_store import TargetStore
from relay.cli import main
from relay.errors import GenesysDeadlineExceeded, GenesysLoginError, GenesysRateLimited, GenesysTimeout
from relay.local.aws_stack import forget_cached_configuration
from relay.local.fake_genesys import FakeGenesys, Fault
from relay.local.fixtures import Fixtures, FixtureTarget
from relay.logic.config_sync.report import Moved
from relay.logic.crypto import KeyCache
from relay.logic.envelope import TargetSecrets, build_request
from relay.models.delivery import DeliveryTask
from relay.models.secrets import RotatingSecret, SecretKind
from relay.models.targets import SecurityType
from relay.settings import get_settings
from relay.wiring import aws_client, target_store
from relay.wiring.config_sync import run_config_sync

pytestmark = pytest.mark.integration

FIXTURES = Fixtures.load()
INTEGRATION = FIXTURES.integrations[0]
CRM, ARCHIVE = INTEGRATION.targets
TOKEN_PATH = r"^/oauth/token$"
SECRET_VALUES = [
    INTEGRATION.signature_secret,
    *(t.security.value for t in INTEGRATION.targets if t.security.value),
    *(t.signing_secret for t in INTEGRATION.targets if t.signing_secret),
    *(t.encryption_key for t in INTEGRATION.targets if t.encryption_key),
]


def _store() -> TargetStore:
    return target_store(get_settings(), cache_ttl_seconds=0)


def test_sync_stores_validated_targets_and_secret_values_apart(genesys: FakeGenesys) -> None:
    # When the sync runs against the fake Genesys API
    report = run_config_sync(get_settings())

    # Then the integration and both targets are stored, versioned and timestamped
    assert report.rejected == []
    entry = _store().get(INTEGRATION.id)
    assert entry is not None
    assert entry.integration.name == INTEGRATION.name
    assert entry.integration.signature_secret_name == secret_name(SecretKind.SIGNATURE, INTEGRATION.id)
    assert [t.target_id for t in entry.targets] == sorted([CRM.id, ARCHIVE.id])
    crm = entry.target(CRM.id)
    assert crm is not None
    assert (crm.url, crm.method, crm.headers) == (CRM.url, "POST", {"X-Team": "crm"})
    assert crm.security.type is SecurityType.BEARER
    assert crm.version == 1 and crm.synced_at == report.synced_at
    assert crm.retry_matrix.base_interval_ms == 200
    archive = entry.target(ARCHIVE.id)
    assert archive is not None and archive.encryption_key_name == secret_name(
        SecretKind.ENCRYPTION, ARCHIVE.id
    )

    # And the secret values live in Secrets Manager under the names the records give
    assert get_secret(entry.integration.signature_secret_name).values() == [INTEGRATION.signature_secret]
    assert crm.security.secret_name is not None
    assert get_secret(crm.security.secret_name).values() == [CRM.security.value]
    assert archive.signing_secret_name is not None
    assert get_secret(archive.signing_secret_name).values() == [ARCHIVE.signing_secret]
    key = get_secret(archive.encryption_key_name or "")
    assert key.current.get_secret_value() == ARCHIVE.encryption_key
    assert key.salt is not None and len(bytes.fromhex(key.salt)) == 16
    assert key.key_id

    # And no secret value is anywhere in DynamoDB
    items = aws_client("dynamodb").scan(TableName=get_settings().need("targets_table"))["Items"]
    raw = json.dumps(items)
    assert len(items) == 3
    for value in SECRET_VALUES:
        assert value not in raw


def test_unchanged_config_keeps_versions_and_secrets(genesys: FakeGenesys) -> None:
    # Given a first sync
    run_config_sync(get_settings())
    key_before = get_secret(secret_name(SecretKind.ENCRYPTION, ARCHIVE.id), force_fetch=True)

    # When nothing changed in Genesys and the sync runs again
    report = run_config_sync(get_settings())

    # Then versions stay, syncedAt moves, no secret gets a new version, the salt is kept
    assert report.changed == [] and report.secrets_written == 0
    crm = _store().get_target(INTEGRATION.id, CRM.id)
    assert crm is not None and crm.version == 1 and crm.synced_at == report.synced_at
    key_after = get_secret(secret_name(SecretKind.ENCRYPTION, ARCHIVE.id), force_fetch=True)
    assert (key_after.salt, key_after.key_id) == (key_before.salt, key_before.key_id)


def test_changed_encryption_key_gets_a_new_salt_and_key_id(genesys: FakeGenesys) -> None:
    # Given a first sync
    run_config_sync(get_settings())
    before = get_secret(secret_name(SecretKind.ENCRYPTION, ARCHIVE.id), force_fetch=True)

    # When the key is changed in Genesys and the sync runs again
    genesys.set_credential(ARCHIVE.id, "encryptionKey", "a-brand-new-encryption-key-0002")
    report = run_config_sync(get_settings())

    # Then the secret holds the new key with a fresh salt and key id
    after = get_secret(secret_name(SecretKind.ENCRYPTION, ARCHIVE.id), force_fetch=True)
    assert after.current.get_secret_value() == "a-brand-new-encryption-key-0002"
    assert after.salt != before.salt and after.key_id != before.key_id
    assert after.salt is not None and len(bytes.fromhex(after.salt)) == 16
    assert ARCHIVE.id in report.changed


def test_a_changed_encryption_key_keeps_the_old_one_so_relay_decrypt_opens_earlier_envelopes(
    genesys: FakeGenesys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an envelope a receiver got under the key of a first sync
    run_config_sync(get_settings())
    name = secret_name(SecretKind.ENCRYPTION, ARCHIVE.id)
    envelope = tmp_path / "envelope.json"
    envelope.write_bytes(
        _sealed_event_body('{"id": "before the change"}', get_secret(name, force_fetch=True))
    )

    # When the key is changed in Genesys and the sync runs again
    genesys.set_credential(ARCHIVE.id, "encryptionKey", "a-brand-new-encryption-key-0002")
    run_config_sync(get_settings())

    # Then the secret keeps the old key as previous, and `relay decrypt --secret` still opens the envelope
    after = get_secret(name, force_fetch=True)
    assert after.values() == ["a-brand-new-encryption-key-0002", ARCHIVE.encryption_key]
    capsys.readouterr()
    assert main(["decrypt", str(envelope), "--secret", name]) == 0
    assert capsys.readouterr().out == '{"id": "before the change"}'


def _sealed_event_body(event_json: str, secret: RotatingSecret) -> bytes:
    """The body the dispatcher sends ARCHIVE for ``event_json``, sealed with ``secret``."""
    target = _store().get_target(INTEGRATION.id, ARCHIVE.id)
    assert target is not None
    task = DeliveryTask(
        delivery_id=uuid.uuid4(),
        integration_id=INTEGRATION.id,
        target_id=ARCHIVE.id,
        event_id="e-1",
        received_at=datetime.now(UTC),
        event_json=event_json,
    )
    assert target.security.secret_name is not None
    secrets_ = TargetSecrets(encryption=secret, auth=get_secret(target.security.secret_name))
    return build_request(task, event_json, target, secrets_, key_cache=KeyCache(), now=datetime.now(UTC)).body


def test_changed_config_bumps_the_target_version(genesys: FakeGenesys) -> None:
    # Given a first sync
    run_config_sync(get_settings())

    # When an admin changes the target's headers in Genesys
    genesys.update_config_properties(CRM.id, headers={"X-Team": "crm-2"})
    run_config_sync(get_settings())

    # Then the stored target carries the change under the next version
    crm = _store().get_target(INTEGRATION.id, CRM.id)
    assert crm is not None and crm.headers == {"X-Team": "crm-2"} and crm.version == 2


def test_filters_and_rate_limit_are_stored_with_the_target(genesys: FakeGenesys) -> None:
    # Given a target whose Genesys config carries event filters and a rate limit (any case)
    genesys.update_config_properties(
        CRM.id,
        filters={"types": ["text", "Event"], "eventTypes": ["Typing"], "detailTypes": ["v2.*.customer.*"]},
        rateLimit={"perSecond": 2.5, "burst": 4},
    )

    # When the sync runs
    report = run_config_sync(get_settings())

    # Then the stored target has them, in Genesys' spelling; the other target filters nothing
    assert report.rejected == []
    crm = _store().get_target(INTEGRATION.id, CRM.id)
    assert crm is not None
    assert crm.filters.describe() == "types=Text,Event eventTypes=Typing detailTypes=v2.*.customer.*"
    assert crm.rate_limit is not None and (crm.rate_limit.per_second, crm.rate_limit.capacity) == (2.5, 4)
    archive = _store().get_target(INTEGRATION.id, ARCHIVE.id)
    assert archive is not None and not archive.filters.filters_anything and archive.rate_limit is None


# --- rejections: the last good config stays in force ----------------------------------------------


def _rejected_ids(report_rejected: list[dict[str, str]]) -> list[str]:
    return [r["id"] for r in report_rejected]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"method": "GET"}, "method"),
        ({"url": "ftp://files.example.com/drop"}, "only https"),
        ({"url": "https://169.254.169.254/latest/meta-data"}, "link-local"),
        ({"url": "https://10.1.2.3/hook"}, "private"),
        ({"url": "https://192.0.2.10/hook"}, "documentation"),
        ({"url": "https://93.184.216.34:22/hook"}, "port 22 is not allowed"),
        ({"url": "https://93.184.216.34:6379/hook"}, "port 6379 is not allowed"),
        ({"url": "https://hooks..example.com/hook"}, "not a valid host name"),
        ({"url": "https://" + "a" * 64 + ".example.com/hook"}, "not a valid host name"),
        ({"headers": {"Authorization": "Bearer sneaky"}}, "is the relay's to set"),
        ({"securityType": "basic"}, "user:password"),
        (
            {"openMessagingIntegrationId": "not-a-configured-integration"},
            "GENESYS_OPEN_MESSAGING_INTEGRATION_IDS",
        ),
        ({"filters": {"types": ["Txt"]}}, "unknown message type 'Txt'"),
        ({"filters": {"directions": []}}, "leave the filter out"),
        ({"filters": {"eventType": ["Typing"]}}, "filters.eventType"),
        ({"rateLimit": {"perSecond": 0}}, "rateLimit.perSecond"),
        ({"rateLimit": {"perSecond": 5, "burst": 0}}, "rateLimit.burst"),
        ({"retryMatrix": {"multiplier": 1e200}}, "retryMatrix: Value error, multiplier must be at most 100"),
        (
            {"retryMatrix": {"baseIntervalMs": 5000, "maxIntervalMs": 200}},
            "must not be larger than maxIntervalMs",
        ),
    ],
)
def test_invalid_config_is_rejected_and_the_stored_target_stays(
    genesys: FakeGenesys, change: dict[str, object], reason: str
) -> None:
    # Given a good first sync
    run_config_sync(get_settings())
    before = _store().get_target(INTEGRATION.id, CRM.id)

    # When an admin breaks the target's config in Genesys and the sync runs again
    genesys.update_config_properties(CRM.id, **change)
    report = run_config_sync(get_settings())

    # Then the target is reported with a reason, and the stored record is the last good one
    assert [(r.id, r.kind) for r in report.rejected] == [(CRM.id, "target")]
    assert reason in report.rejected[0].reason
    assert _store().get_target(INTEGRATION.id, CRM.id) == before
    # And the other target synced as usual
    assert ARCHIVE.id in report.targets
    # And the rejection reason never carries a secret value
    for value in SECRET_VALUES:
        assert value not in report.rejected[0].reason


def test_the_stored_url_is_the_normalised_one_the_dispatcher_connects_to(genesys: FakeGenesys) -> None:
    # Given a target URL with an upper-case, non-ASCII host and ideographic full stops
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["93.184.216.34"]

    genesys.update_config_properties(CRM.id, url="https://FA\u00df\u3002example\u3002com/hook")

    # When the sync runs
    report = run_config_sync(get_settings(), resolve=resolve)

    # Then the name checked is the IDNA 2008 A-label, and that is the URL stored for the dispatcher
    assert CRM.id in report.targets
    assert asked == [("xn--fa-hia.example.com", 443)]
    stored = _store().get_target(INTEGRATION.id, CRM.id)
    assert stored is not None and stored.url == "https://xn--fa-hia.example.com/hook"


def test_disabled_config_is_rejected_and_the_last_good_config_stays(genesys: FakeGenesys) -> None:
    run_config_sync(get_settings())
    genesys.set_intended_state(CRM.id, "DISABLED")

    report = run_config_sync(get_settings())

    assert [r.id for r in report.rejected] == [CRM.id] and "disabled" in report.rejected[0].reason
    crm = _store().get_target(INTEGRATION.id, CRM.id)
    assert crm is not None and crm.enabled and crm.version == 1


def test_a_config_never_seen_valid_is_not_stored(genesys: FakeGenesys) -> None:
    genesys.update_config_properties(CRM.id, url="http://crm.example.com/hook")

    report = run_config_sync(get_settings())

    assert [r.id for r in report.rejected] == [CRM.id]
    assert _store().get_target(INTEGRATION.id, CRM.id) is None


def test_loopback_targets_need_the_local_setting(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_ALLOW_LOOPBACK_TARGETS", "false")
    forget_cached_configuration()

    report = run_config_sync(get_settings())

    assert sorted(r.id for r in report.rejected) == sorted([CRM.id, ARCHIVE.id])
    assert all("only https" in r.reason for r in report.rejected)
    entry = _store().get(INTEGRATION.id)
    assert entry is not None and entry.targets == ()


def test_missing_integration_is_rejected_and_others_sync(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = "0b0b0b0b-0000-4000-8000-000000000000"
    monkeypatch.setenv("GENESYS_WEBHOOK_INTEGRATION_IDS", f"{CRM.id},{missing}")
    forget_cached_configuration()

    report = run_config_sync(get_settings())

    assert report.targets == [CRM.id]
    assert [(r.id, "404" in r.reason) for r in report.rejected] == [(missing, True)]


def test_an_id_listed_twice_is_synced_once_without_a_false_conflict(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given settings that list an integration and a target twice
    monkeypatch.setenv("GENESYS_OPEN_MESSAGING_INTEGRATION_IDS", f"{INTEGRATION.id},{INTEGRATION.id}")
    monkeypatch.setenv("GENESYS_WEBHOOK_INTEGRATION_IDS", f"{CRM.id},{ARCHIVE.id},{CRM.id}")
    forget_cached_configuration()

    # When the sync runs, first and after a change in Genesys
    first = run_config_sync(get_settings())
    genesys.update_config_properties(CRM.id, headers={"X-Team": "crm-2"})
    second = run_config_sync(get_settings())

    # Then each is read and stored once, and nothing is reported as changed by another writer
    for report in (first, second):
        assert (report.integrations, report.targets) == ([INTEGRATION.id], [CRM.id, ARCHIVE.id])
        assert report.conflicts == [] and report.rejected == []
    crm = _store().get_target(INTEGRATION.id, CRM.id)
    assert crm is not None and crm.headers == {"X-Team": "crm-2"} and crm.version == 2


def test_malformed_answer_for_one_target_keeps_its_last_good_config(genesys: FakeGenesys) -> None:
    run_config_sync(get_settings())
    before = _store().get_target(INTEGRATION.id, CRM.id)
    genesys.malform(path=rf"/api/v2/integrations/{CRM.id}/config/current$")

    report = run_config_sync(get_settings())

    assert [r.id for r in report.rejected] == [CRM.id]
    assert _store().get_target(INTEGRATION.id, CRM.id) == before


def _serve_targets_first(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch, *extra: FixtureTarget
) -> None:
    """Genesys also serves ``extra`` webhook integrations, which the sync reads before the good ones."""
    integration = INTEGRATION.model_copy(update={"targets": [*extra, *INTEGRATION.targets]})
    genesys.load(Fixtures(integrations=[integration]))
    ids = [t.id for t in extra] + [CRM.id, ARCHIVE.id]
    monkeypatch.setenv("GENESYS_WEBHOOK_INTEGRATION_IDS", ",".join(ids))
    forget_cached_configuration()


def test_an_unexpected_error_in_one_item_rejects_it_and_the_run_goes_on(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a target read first whose host trips the resolver with an error nobody expected
    odd = FixtureTarget(id="0c0c0c0c-0000-4000-8000-000000000001", name="odd", url="https://odd.example.com/")
    _serve_targets_first(genesys, monkeypatch, odd)

    def resolve(host: str, port: int) -> list[str]:
        raise UnicodeError(f"label empty or too long in {host}")

    # When the sync runs
    report = run_config_sync(get_settings(), resolve=resolve)

    # Then that target is rejected with a reason naming the error, and the good ones after it synced
    assert [(r.id, r.reason) for r in report.rejected] == [
        (odd.id, "unexpected UnicodeError while reading or checking its config")
    ]
    assert report.targets == [CRM.id, ARCHIVE.id]
    entry = _store().get(INTEGRATION.id)
    assert entry is not None and sorted(t.target_id for t in entry.targets) == sorted([CRM.id, ARCHIVE.id])


def test_a_config_too_large_to_store_is_rejected_and_the_run_goes_on(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a target read first whose custom headers (450 KB) would not fit in a TargetsTable item
    headers = {f"X-Part-{n}": "v" * 10_000 for n in range(45)}
    big = FixtureTarget(
        id="0c0c0c0c-0000-4000-8000-000000000002", name="big", url="https://big.example.com/", headers=headers
    )
    _serve_targets_first(genesys, monkeypatch, big)

    # When the sync runs
    report = run_config_sync(get_settings(), resolve=lambda host, port: ["93.184.216.34"])

    # Then that target is rejected with the limit as its reason, and the good ones after it synced
    assert [(r.id, r.reason) for r in report.rejected] == [
        (
            big.id,
            "invalid config: headers: Value error, headers take 450395 bytes in all (names and values); "
            "at most 16384",
        )
    ]
    assert report.targets == [CRM.id, ARCHIVE.id]


@pytest.mark.parametrize(
    ("break_integration", "reason"),
    [
        (lambda fake: fake.set_open_integration_status(INTEGRATION.id, "Inactive"), "disabled"),
        (lambda fake: fake.add_fault(Fault("status", status=404, path="/open/")), "404"),
    ],
    ids=["inactive", "missing"],
)
def test_targets_of_a_rejected_integration_are_rejected_and_keep_their_last_good_config(
    genesys: FakeGenesys, break_integration: Any, reason: str
) -> None:
    # Given a good first sync
    run_config_sync(get_settings())
    before = _store().get(INTEGRATION.id)

    # When the integration is deactivated (or gone) in Genesys and a target's config is edited meanwhile
    break_integration(genesys)
    genesys.update_config_properties(CRM.id, headers={"X-Team": "crm-2"})
    report = run_config_sync(get_settings())

    # Then the integration is rejected, and so is every target under it, naming the integration
    assert [(r.kind, r.id) for r in report.rejected] == [
        ("integration", INTEGRATION.id),
        ("target", CRM.id),
        ("target", ARCHIVE.id),
    ]
    assert reason in report.rejected[0].reason
    assert all(INTEGRATION.id in r.reason and "rejected" in r.reason for r in report.rejected[1:])
    assert report.integrations == [] and report.targets == []
    # And the table holds the last good records, untouched (the edit did not get through)
    assert _store().get(INTEGRATION.id) == before


def test_a_target_of_a_rejected_integration_is_not_stored_for_the_first_time(genesys: FakeGenesys) -> None:
    genesys.set_open_integration_status(INTEGRATION.id, "Inactive")

    report = run_config_sync(get_settings())

    assert sorted(r.id for r in report.rejected) == sorted([INTEGRATION.id, CRM.id, ARCHIVE.id])
    assert _store().get(INTEGRATION.id) is None


def test_the_eventbridge_integration_gets_its_own_record_and_its_targets_receive_its_events(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch, function_handler: LoadHandler
) -> None:
    # Given the EventBridge path's integration, which is not an Open Messaging integration (Genesys has
    # none to read for it), and a target that receives its events
    eventbridge_id = "0e0e0e0e-0000-4000-8000-000000000000"
    monkeypatch.setenv("EVENTBRIDGE_INTEGRATION_ID", eventbridge_id)
    forget_cached_configuration()
    genesys.update_config_properties(CRM.id, openMessagingIntegrationId=eventbridge_id)

    # When config sync runs (no record provisioned by hand)
    report = run_config_sync(get_settings())

    # Then the integration's record is written (with no signature secret) and the target stored under it
    assert report.rejected == [] and CRM.id in report.targets and eventbridge_id in report.integrations
    entry = _store().get(eventbridge_id)
    assert entry is not None and entry.integration.signature_secret_name is None
    assert entry.target(CRM.id) is not None

    # And a Genesys EventBridge event fans out to that target, while a webhook naming it is refused
    # (through the handler, as Lambda calls it: its metrics are flushed, not left for the next test)
    intake = function_handler("intake")
    assert intake(eventbridge_event(), lambda_context("intake"))["status"] == "accepted"
    queued = drain(get_settings().need("delivery_queue_url"))
    assert [json.loads(record["body"])["targetId"] for record in queued] == [CRM.id]
    webhook = api_gateway_event(integration_id=eventbridge_id)
    assert intake(webhook, lambda_context("intake"))["statusCode"] == 404


def _synced_then_crm_moved(genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch) -> str:
    """A first sync, then the CRM target's config pointed at the EventBridge integration (its id)."""
    eventbridge_id = "0e0e0e0e-0000-4000-8000-000000000000"
    monkeypatch.setenv("EVENTBRIDGE_INTEGRATION_ID", eventbridge_id)
    forget_cached_configuration()
    run_config_sync(get_settings())
    genesys.update_config_properties(CRM.id, openMessagingIntegrationId=eventbridge_id)
    return eventbridge_id


def test_a_target_moved_to_another_integration_no_longer_receives_the_old_ones_events(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch, function_handler: LoadHandler
) -> None:
    # Given both targets synced, then the CRM target pointed at the EventBridge integration in Genesys
    eventbridge_id = _synced_then_crm_moved(genesys, monkeypatch)

    # When the sync runs
    report = run_config_sync(get_settings())

    # Then its record lives under the new integration only, and the report says where it moved from
    assert report.rejected == [] and report.conflicts == []
    assert report.moved == [Moved(CRM.id, from_integration=INTEGRATION.id, to_integration=eventbridge_id)]
    old = _store().get(INTEGRATION.id)
    assert old is not None and [t.target_id for t in old.targets] == [ARCHIVE.id]
    new = _store().get(eventbridge_id)
    assert new is not None and new.target(CRM.id) is not None

    # And a webhook event of the old integration fans out to the target that stayed, not the moved one
    intake = function_handler("intake")
    assert intake(api_gateway_event(), lambda_context("intake"))["statusCode"] == 202
    queued = drain(get_settings().need("delivery_queue_url"))
    assert [json.loads(record["body"])["targetId"] for record in queued] == [ARCHIVE.id]


def test_a_moved_targets_old_record_changed_during_the_run_is_a_conflict_the_next_run_deletes(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the CRM target synced, then moved in Genesys to the EventBridge integration
    eventbridge_id = _synced_then_crm_moved(genesys, monkeypatch)

    # When an operator disables its old record while the run is reading the target's config from Genesys
    # (after the run read the old record)
    config_path = f"/api/v2/integrations/{CRM.id}/config/current"
    held = threading.Event()
    genesys.slow_down(30.0, path=re.escape(config_path), until=held)
    reports: list[Any] = []
    read_before = genesys.count(re.escape(config_path))  # by the first sync
    run = threading.Thread(target=lambda: reports.append(run_config_sync(get_settings())))
    run.start()
    wait_until(
        lambda: genesys.count(re.escape(config_path)) > read_before, what="the run reading CRM's config"
    )
    _store().set_target_enabled(INTEGRATION.id, CRM.id, False)
    held.set()
    run.join(timeout=60)

    # Then the run stores the target under its new integration but leaves the changed old record, and
    # says so; it never deletes what it did not read
    (report,) = reports
    assert [(c.kind, c.id) for c in report.conflicts] == [("target", CRM.id)] and report.moved == []
    still = _store().get_target(INTEGRATION.id, CRM.id)
    assert still is not None and still.enabled is False
    # And the next run deletes it
    again = run_config_sync(get_settings())
    assert again.moved == [Moved(CRM.id, from_integration=INTEGRATION.id, to_integration=eventbridge_id)]
    assert _store().get_target(INTEGRATION.id, CRM.id) is None


def test_deleting_a_target_record_loses_to_a_write_made_since_it_was_read(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the CRM target synced, then moved in Genesys to the EventBridge integration
    _synced_then_crm_moved(genesys, monkeypatch)

    # When another writer changes the old record after it was read (an operator disables it)
    store = _store()
    read_by_the_run = store.get_target(INTEGRATION.id, CRM.id)
    assert read_by_the_run is not None
    store.set_target_enabled(INTEGRATION.id, CRM.id, False)

    # Then deleting the copy as read loses to that write and deletes nothing
    assert store.delete(read_by_the_run) is False
    assert store.get_target(INTEGRATION.id, CRM.id) is not None
    # And deleting the copy as it is now succeeds
    current = store.get_target(INTEGRATION.id, CRM.id)
    assert current is not None and store.delete(current) is True
    assert store.get_target(INTEGRATION.id, CRM.id) is None


def test_a_second_sync_leaves_the_eventbridge_record_unchanged(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTBRIDGE_INTEGRATION_ID", "0e0e0e0e-0000-4000-8000-000000000000")
    forget_cached_configuration()
    first = run_config_sync(get_settings())
    second = run_config_sync(get_settings())
    assert "0e0e0e0e-0000-4000-8000-000000000000" in first.changed
    assert "0e0e0e0e-0000-4000-8000-000000000000" not in second.changed


def test_a_run_without_the_open_messaging_ids_never_replaces_that_integration_with_the_eventbridge_record(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch, function_handler: LoadHandler
) -> None:
    # Given the EventBridge integration is also an Open Messaging one (the local stack's default), synced
    monkeypatch.setenv("EVENTBRIDGE_INTEGRATION_ID", INTEGRATION.id)
    forget_cached_configuration()
    assert run_config_sync(get_settings()).rejected == []

    # When a run with other settings syncs (a terminal sync, the Open Messaging ids not set)
    monkeypatch.setenv("GENESYS_OPEN_MESSAGING_INTEGRATION_IDS", "")
    forget_cached_configuration()
    report = run_config_sync(get_settings())

    # Then the integration keeps its record and its signature secret: its webhooks are still taken
    assert INTEGRATION.id not in report.changed
    entry = _store().get(INTEGRATION.id)
    assert entry is not None
    assert entry.integration.name == INTEGRATION.name
    assert entry.integration.signature_secret_name == secret_name(SecretKind.SIGNATURE, INTEGRATION.id)
    intake = function_handler("intake")
    webhook = api_gateway_event(integration_id=INTEGRATION.id)
    assert intake(webhook, lambda_context("intake"))["statusCode"] == 202


def test_redacted_credentials_keep_the_value_secrets_manager_holds(genesys: FakeGenesys) -> None:
    # Given a first sync stored the bearer token
    run_config_sync(get_settings())

    # When Genesys starts answering the credential redacted
    genesys.set_credential(CRM.id, "security", "********")
    report = run_config_sync(get_settings())

    # Then the target still syncs and the stored token is unchanged
    assert CRM.id in report.targets and report.rejected == []
    token = get_secret(secret_name(SecretKind.AUTH, CRM.id), force_fetch=True)
    assert token.values() == [CRM.security.value]


def test_a_basic_credential_whose_password_comes_back_redacted_keeps_the_stored_one(
    genesys: FakeGenesys,
) -> None:
    # Given a first sync stored the Basic credentials
    run_config_sync(get_settings())

    # When Genesys answers the credential as user name and password fields, the password redacted
    genesys.set_credential_fields(ARCHIVE.id, "security", {"userName": "archive", "password": "********"})
    report = run_config_sync(get_settings())

    # Then the stored user:password is unchanged, not replaced by "archive:********"
    assert ARCHIVE.id in report.targets and report.rejected == []
    stored = get_secret(secret_name(SecretKind.AUTH, ARCHIVE.id), force_fetch=True)
    assert stored.values() == [ARCHIVE.security.value]


def test_an_encryption_key_provisioned_by_hand_without_its_version_gets_one_from_the_next_sync(
    genesys: FakeGenesys,
) -> None:
    # Given Genesys answers the key redacted, and the operator provisioned it as the README says,
    # {"current": ..., "previous": null}: no keyId or salt, which the dispatcher refuses to seal without
    genesys.set_credential(ARCHIVE.id, "encryptionKey", "********")
    name = secret_name(SecretKind.ENCRYPTION, ARCHIVE.id)
    put_secret(name, RotatingSecret(current=SecretStr(ARCHIVE.encryption_key)))

    # When the sync runs
    report = run_config_sync(get_settings())

    # Then the key is kept, with a key version added
    assert report.rejected == []
    stored = get_secret(name, force_fetch=True)
    assert stored.values() == [ARCHIVE.encryption_key]
    assert stored.key_id and stored.salt and len(bytes.fromhex(stored.salt)) == 16


def test_a_redacted_credential_whose_provisioned_secret_is_not_in_the_relays_shape_says_so(
    genesys: FakeGenesys,
) -> None:
    # Given Genesys answers the CRM target's bearer token redacted, and the operator provisioned it in
    # Secrets Manager as the bare token instead of {"current": ..., "previous": null}
    genesys.set_credential(CRM.id, "security", "********")
    name = secret_name(SecretKind.AUTH, CRM.id)
    aws_client("secretsmanager").create_secret(Name=name, SecretString=CRM.security.value)

    # When the sync runs
    report = run_config_sync(get_settings())

    # Then the target is refused saying the secret is there but not in the shape, not that there is none
    assert [r.id for r in report.rejected] == [CRM.id]
    reason = report.rejected[0].reason
    assert f"secret {name} is not in the relay's JSON shape" in reason and "holds none" not in reason
    assert CRM.security.value not in reason


@pytest.mark.parametrize("held", ["****", "*" * 20, "short-secret"])
def test_a_redacted_signature_secret_is_not_kept_when_secrets_manager_holds_stars_or_a_short_one(
    genesys: FakeGenesys, held: str
) -> None:
    # Given Genesys answers the integration's signature secret redacted, and Secrets Manager holds a
    # redaction too (stars pasted from a masked listing) or a value shorter than Genesys allows
    genesys.set_signature_secret(INTEGRATION.id, "*" * 20)
    put_secret(secret_name(SecretKind.SIGNATURE, INTEGRATION.id), RotatingSecret(current=SecretStr(held)))

    # When the sync runs
    report = run_config_sync(get_settings())

    # Then the integration is refused (its webhooks are not verified with a key anyone could guess),
    # and so are its targets; nothing is stored under it
    assert INTEGRATION.id in [r.id for r in report.rejected]
    reason = next(r.reason for r in report.rejected if r.id == INTEGRATION.id)
    assert reason.startswith("Genesys returned no signature secret and the")
    assert ("redacted" in reason or "shorter than 16 characters" in reason) and held not in reason
    assert _store().get(INTEGRATION.id) is None


def test_a_redacted_credential_is_not_kept_when_secrets_manager_holds_stars(genesys: FakeGenesys) -> None:
    # Given Genesys answers the CRM target's bearer token redacted, and Secrets Manager holds stars too
    genesys.set_credential(CRM.id, "security", "********")
    put_secret(secret_name(SecretKind.AUTH, CRM.id), RotatingSecret(current=SecretStr("****")))

    # When the sync runs
    report = run_config_sync(get_settings())

    # Then the target is refused, not stored to send "Bearer ****"
    assert [r.id for r in report.rejected] == [CRM.id]
    assert "the value Secrets Manager holds is redacted too" in report.rejected[0].reason
    assert _store().get_target(INTEGRATION.id, CRM.id) is None


@pytest.mark.parametrize("redacted", ["*" * 20, ""])
def test_a_redacted_signature_secret_keeps_the_one_secrets_manager_holds(
    genesys: FakeGenesys, redacted: str
) -> None:
    # Given a first sync stored the integration's signature secret
    run_config_sync(get_settings())

    # When Genesys answers it redacted (all `*` is long enough to pass for a secret)
    genesys.set_signature_secret(INTEGRATION.id, redacted)
    report = run_config_sync(get_settings())

    # Then the real secret stays the only one: the stars would let anyone sign a webhook
    assert report.rejected == []
    stored = get_secret(secret_name(SecretKind.SIGNATURE, INTEGRATION.id), force_fetch=True)
    assert stored.values() == [INTEGRATION.signature_secret]


@pytest.mark.parametrize("redacted", ["*" * 20, ""])
def test_a_configured_signing_secret_that_comes_back_redacted_with_none_stored_rejects_the_target(
    genesys: FakeGenesys, redacted: str
) -> None:
    # Given Genesys answers the CRM target's signing secret redacted before anything was stored
    genesys.set_credential(CRM.id, "signingSecret", redacted)

    # When the sync runs
    report = run_config_sync(get_settings())

    # Then the target is refused, not stored unsigned, and the reason names the credential
    assert [r.id for r in report.rejected] == [CRM.id]
    assert "credential signingSecret came back redacted" in report.rejected[0].reason
    assert _store().get_target(INTEGRATION.id, CRM.id) is None


def test_a_bearer_token_that_comes_back_redacted_with_none_stored_is_said_to_be_redacted(
    genesys: FakeGenesys,
) -> None:
    # Given Genesys answers the CRM target's bearer token redacted before anything was stored
    genesys.set_credential(CRM.id, "security", "********")

    # When the sync runs
    report = run_config_sync(get_settings())

    # Then the reason says what to do (provision it), not that the config lacks a token Genesys holds
    assert [r.id for r in report.rejected] == [CRM.id]
    assert "credential security came back redacted" in report.rejected[0].reason
    assert _store().get_target(INTEGRATION.id, CRM.id) is None


def test_rotated_signing_secret_keeps_the_old_one_as_previous(genesys: FakeGenesys) -> None:
    run_config_sync(get_settings())
    new_secret = "whsec_bmV3LXNpZ25pbmctc2VjcmV0LWZvci1yb3RhdGlvbg=="

    genesys.set_credential(CRM.id, "signingSecret", new_secret)
    run_config_sync(get_settings())

    signing = get_secret(secret_name(SecretKind.SIGNING, CRM.id), force_fetch=True)
    assert signing.values() == [new_secret, CRM.signing_secret]


def test_credentials_come_from_secrets_manager_when_not_in_the_environment(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the OAuth client stored the deployed way: a secret {"current": secret, "keyId": client id}
    name = f"relay/test-genesys-{secrets.token_hex(4)}"
    put_secret(name, RotatingSecret(current=SecretStr(genesys.client_secret), key_id=genesys.client_id))
    monkeypatch.delenv("GENESYS_CLIENT_ID")
    monkeypatch.delenv("GENESYS_CLIENT_SECRET")
    monkeypatch.setenv("GENESYS_CREDENTIALS_SECRET", name)
    forget_cached_configuration()

    # When the sync runs
    report = run_config_sync(get_settings())

    # Then it logged in with those credentials and synced everything
    assert report.integrations == [INTEGRATION.id] and len(report.targets) == 2
    assert genesys.count(r"^/oauth/token$") == 1


def test_a_target_the_relay_disabled_stays_disabled_until_its_config_changes(genesys: FakeGenesys) -> None:
    # Given a synced target that the dispatcher then disabled (it answered 410 Gone)
    run_config_sync(get_settings())
    _store().set_target_enabled(INTEGRATION.id, CRM.id, False)

    # When the sync runs with the same config in Genesys, the target stays disabled
    run_config_sync(get_settings())
    still = _store().get_target(INTEGRATION.id, CRM.id)
    assert still is not None and still.enabled is False

    # When an admin points it at a new URL in Genesys, the next sync enables it again
    genesys.update_config_properties(CRM.id, url="http://127.0.0.1:9/hooks/crm-v2")
    run_config_sync(get_settings())
    moved = _store().get_target(INTEGRATION.id, CRM.id)
    assert moved is not None and moved.enabled is True
    assert moved.url.endswith("/crm-v2") and moved.version == still.version + 1


# --- run-level Genesys failures, through sync_targets and the real SDK ----------------------------


def test_a_401_mid_run_logs_in_again_and_the_run_completes(genesys: FakeGenesys) -> None:
    genesys.add_fault(Fault("status", status=401, path=r"/config/current$", times=1))

    report = run_config_sync(get_settings())

    assert report.rejected == [] and len(report.targets) == 2
    assert genesys.count(r"^/oauth/token$") == 2


def test_429_past_the_bound_ends_the_run_with_a_clear_error(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENESYS_MAX_RETRY_AFTER_SECONDS", "5")
    forget_cached_configuration()
    genesys.rate_limit(retry_after=60, path=r"^/api/v2/integrations/", times=1)

    with pytest.raises(GenesysRateLimited, match="Retry-After 60 s"):
        run_config_sync(get_settings())

    # The integration read before the 429 was stored; no target was
    entry = _store().get(INTEGRATION.id)
    assert entry is not None and entry.targets == ()


@pytest.mark.parametrize(
    "spoil_login", [FakeGenesys.omit_expires_in, lambda fake, times: fake.malform(TOKEN_PATH, times)]
)
def test_an_unusable_token_answer_fails_the_run_after_one_login(
    genesys: FakeGenesys, spoil_login: Any
) -> None:
    # Given the token endpoint answers 200 without expires_in (or with a body that is not JSON)
    spoil_login(genesys, times=10)

    # When the sync runs, the run fails with a login error
    with pytest.raises(GenesysLoginError, match="token"):
        run_config_sync(get_settings())

    # After one login attempt and no read at all, and nothing was written
    assert genesys.count(TOKEN_PATH) == 1
    assert genesys.count(r"^/api/v2/") == 0
    assert _store().get(INTEGRATION.id) is None


def test_429_waits_end_the_run_at_its_deadline(genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given generous 429 bounds (10 waits of up to 10 s) but a run deadline of 30 s
    monkeypatch.setenv("GENESYS_MAX_RATE_LIMIT_RETRIES", "10")
    monkeypatch.setenv("GENESYS_SYNC_DEADLINE_SECONDS", "30")
    forget_cached_configuration()
    clock = ManualClock(1_000.0)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # time passes only while the client waits out Retry-After
        slept.append(seconds)
        clock.now += seconds

    client = GenesysClient.from_settings(get_settings(), clock=clock, sleep=sleep)
    # And Genesys keeps asking for 8 s pauses
    genesys.rate_limit(retry_after=8, path=r"^/api/v2/", times=20)

    # When the sync runs, it ends with a deadline error instead of waiting 80 s in all
    with pytest.raises(GenesysDeadlineExceeded, match="deadline") as caught:
        run_config_sync(get_settings(), genesys=client)

    # After three waits: a fourth would leave no time before the deadline
    assert slept == [8.0, 8.0, 8.0]
    assert genesys.count(r"^/api/v2/") == 4
    assert "30 s" in str(caught.value)


def test_a_slow_genesys_ends_the_run_with_a_timeout(
    genesys: FakeGenesys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENESYS_TIMEOUT_SECONDS", "0.3")
    forget_cached_configuration()
    genesys.slow_down(1.5, path=r"^/api/v2/integrations/credentials/")

    with pytest.raises(GenesysTimeout):
        run_config_sync(get_settings())
