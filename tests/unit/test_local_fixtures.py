"""The fixtures file names the integration Genesys EventBridge events fan out to in the local stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from support.secure_peers import Pki, key_body

from relay.local.fixtures import DEFAULT_FIXTURES, Fixtures
from relay.local.receiver import Receiver
from relay.local.stack import DemoReceiver, receivers_by_name, with_port


def fixtures_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DEFAULT_FIXTURES.read_text())
    second = {**doc["integrations"][0], "id": "0c3f6a1e-2b4d-4e5f-8a9b-1c2d3e4f5a6b", "targets": []}
    doc["integrations"].append(second)
    return doc


def test_by_default_the_first_integration_gets_eventbridge_events() -> None:
    doc = fixtures_doc()
    assert Fixtures.model_validate(doc).eventbridge_integration == doc["integrations"][0]["id"]


def test_eventbridge_integration_id_chooses_another() -> None:
    doc = fixtures_doc()
    doc["eventBridgeIntegrationId"] = doc["integrations"][1]["id"]
    fixtures = Fixtures.model_validate(doc)
    assert fixtures.eventbridge_integration == doc["integrations"][1]["id"]
    assert fixtures.to_json()["eventBridgeIntegrationId"] == doc["integrations"][1]["id"]


def test_an_eventbridge_integration_id_that_is_not_listed_is_refused() -> None:
    doc = fixtures_doc()
    doc["eventBridgeIntegrationId"] = "not-an-integration"
    with pytest.raises(ValidationError, match="eventBridgeIntegrationId"):
        Fixtures.model_validate(doc)


def test_the_file_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    # Given a UTF-8 file with text beyond ASCII, read by a process whose locale is not UTF-8 (POSIX, with
    # Python's coercion to UTF-8 turned off: the locale's encoding is ASCII)
    doc = fixtures_doc()
    doc["integrations"][0]["name"] = "Acm\u00e9 \u2013 \u00fcber"
    doc["integrations"][0]["signatureSecret"] = "s\u00e9cret-\u00e9t\u00e9-0001-long"
    path = tmp_path / "fixtures.json"
    path.write_bytes(json.dumps(doc, ensure_ascii=False).encode("utf-8"))
    read = (
        "import json, sys; from relay.local.fixtures import Fixtures; "
        "i = Fixtures.load(sys.argv[1]).integrations[0]; print(json.dumps([i.name, i.signature_secret]))"
    )
    environment = {
        **os.environ,
        "LC_ALL": "POSIX",
        "PYTHONCOERCECLOCALE": "0",
        "PYTHONUTF8": "0",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    done = subprocess.run(
        [sys.executable, "-c", read, str(path)], env=environment, capture_output=True, text=True, check=False
    )

    # Then it holds what was written, not a refusal as ASCII (nor, in a Latin-1 locale, other characters)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        doc["integrations"][0]["name"],
        doc["integrations"][0]["signatureSecret"],
    ]


def test_a_byte_order_mark_a_windows_editor_wrote_is_no_content(tmp_path: Path) -> None:
    path = tmp_path / "fixtures.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(fixtures_doc()).encode())
    assert Fixtures.load(path) == Fixtures.model_validate(fixtures_doc())


def test_a_file_that_is_not_utf8_is_refused_as_such(tmp_path: Path) -> None:
    path = tmp_path / "fixtures.json"
    path.write_bytes(json.dumps(fixtures_doc()).replace("Acme", "Acm\u00e9").encode("latin-1"))
    with pytest.raises(ValueError, match=r"^not UTF-8 text \(byte \d+ is not UTF-8\)$"):
        Fixtures.load(path)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("name", "", "integration has no name"),
        ("name", "   ", "integration has no name"),
        ("signatureSecret", "*" * 20, "all '*' is how Genesys redacts a secret"),
    ],
)
def test_an_integration_config_sync_would_refuse_is_refused_when_the_file_is_read(
    field: str, value: str, reason: str
) -> None:
    # Found by the stack's config-sync run, each such mistake cost a whole start (about 17 s)
    doc = fixtures_doc()
    doc["integrations"][1][field] = value
    with pytest.raises(ValidationError) as caught:
        Fixtures.model_validate(doc)
    place, message = _only_error(caught)
    assert place == f"integrations.1.{field}"
    assert reason in message
    assert "****" not in message


@pytest.mark.parametrize(
    ("place", "change"),
    [
        ("security.value", {"security": {"type": "bearer", "value": "*" * 8}}),
        ("encryptionKey", {"encryptionKey": "*" * 20}),
    ],
)
def test_a_target_secret_written_as_genesys_redacts_one_is_refused_when_the_file_is_read(
    place: str, change: dict[str, Any]
) -> None:
    # config sync would take it for a redacted value and refuse the target, once the stack had started
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][0].update(change)
    with pytest.raises(ValidationError) as caught:
        Fixtures.model_validate(doc)
    where, message = _only_error(caught)
    assert where == f"integrations.0.targets.0.{place}"
    assert "all '*' is how Genesys redacts a secret" in message


def test_a_file_without_integrations_is_refused_naming_the_list() -> None:
    # With none, serve would start a stack answering every webhook 404 and failing every EventBridge event
    with pytest.raises(ValidationError) as caught:
        Fixtures.model_validate({"integrations": []})
    place, message = _only_error(caught)
    assert (place, message) == ("integrations", "List should have at least 1 item after validation, not 0")


@pytest.mark.parametrize(
    "integration_id", ["-abc", "_int", "a" * 129, "a b", "a/b", "int\u00e9gration", " int-1"]
)
def test_an_integration_id_no_webhook_url_can_name_is_refused_at_its_place(integration_id: str) -> None:
    # Given an integration id outside what the intake takes as {integrationId} (it answers 404 to it):
    # config sync takes any id, so serve would start and list a webhook URL no event can ever reach
    doc = fixtures_doc()
    doc["integrations"][1]["id"] = integration_id

    # Then the file is refused, naming the field and why, not the id
    with pytest.raises(ValidationError) as caught:
        Fixtures.model_validate(doc)
    place, message = _only_error(caught)
    assert place == "integrations.1.id"
    assert "not an integration id a webhook URL can name" in message


@pytest.mark.parametrize("integration_id", ["0c3f6a1e-2b4d-4e5f-8a9b-1c2d3e4f5a6b", "a.b_c:d-E9", "a" * 128])
def test_an_integration_id_a_webhook_url_can_name_is_accepted(integration_id: str) -> None:
    doc = fixtures_doc()
    doc["integrations"][1]["id"] = integration_id
    assert Fixtures.model_validate(doc).integrations[1].id == integration_id


def test_a_fixture_targets_filters_and_rate_limit_are_served_as_genesys_config_properties() -> None:
    from relay.local.fake_genesys import webhook_docs
    from relay.models.webhook_config import webhook_config_from_genesys

    # Given a fixture target with event filters and a rate limit
    doc = fixtures_doc()
    target = doc["integrations"][0]["targets"][0]
    target["filters"] = {"types": ["Text"], "originatingEntities": ["Human"]}
    target["rateLimit"] = {"perSecond": 20, "burst": 40}
    fixture = Fixtures.model_validate(doc).integrations[0].targets[0]

    # When the fake Genesys API serves it as a webhook integration
    integration, config, _ = webhook_docs(doc["integrations"][0]["id"], fixture)

    # Then its config properties carry them, and config sync reads them back unchanged
    assert config["properties"]["filters"] == {"types": ["Text"], "originatingEntities": ["Human"]}
    assert config["properties"]["rateLimit"] == {"perSecond": 20.0, "burst": 40}
    read = webhook_config_from_genesys(integration, config, {"security": "token", "signingSecret": None})
    assert read.filters == fixture.filters and read.rate_limit == fixture.rate_limit


def test_an_unknown_filter_value_in_the_fixtures_file_is_refused() -> None:
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][0]["filters"] = {"types": ["Txt"]}
    with pytest.raises(ValidationError, match="unknown message type 'Txt'"):
        Fixtures.model_validate(doc)


def test_a_retry_matrix_a_config_could_not_set_is_refused_in_the_fixtures_file_too() -> None:
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][1]["retryMatrix"] = {"multiplier": 1e200}
    with pytest.raises(ValidationError, match=r"targets\.1\.retryMatrix\n.*multiplier must be at most 100"):
        Fixtures.model_validate(doc)


def _twice_in_one_integration(doc: dict[str, Any]) -> None:
    targets = doc["integrations"][0]["targets"]
    targets[1]["id"] = targets[0]["id"]


def _under_two_integrations(doc: dict[str, Any]) -> None:
    doc["integrations"][1]["targets"] = [{**doc["integrations"][0]["targets"][0], "name": "copy"}]


def _two_integrations_with_one_id(doc: dict[str, Any]) -> None:
    doc["integrations"][1]["id"] = doc["integrations"][0]["id"]


@pytest.mark.parametrize(
    ("repeat", "message"),
    [
        (
            _twice_in_one_integration,
            "target id {target} is used twice, at integrations.0.targets.0 and integrations.0.targets.1",
        ),
        (
            _under_two_integrations,
            "target id {target} is used twice, at integrations.0.targets.0 and integrations.1.targets.0",
        ),
        (
            _two_integrations_with_one_id,
            "integration id {integration} is used twice, at integrations.0 and integrations.1",
        ),
    ],
    ids=["target twice in one integration", "target under two integrations", "integration twice"],
)
def test_a_repeated_id_is_refused_naming_it_and_both_places(
    repeat: Callable[[dict[str, Any]], None], message: str
) -> None:
    # Given a fixtures file in which an id comes twice (the fake Genesys API would serve only the last)
    doc = fixtures_doc()
    named = {
        "integration": doc["integrations"][0]["id"],
        "target": doc["integrations"][0]["targets"][0]["id"],
    }
    repeat(doc)

    # Then loading it fails, naming the id and where it is
    with pytest.raises(ValidationError) as caught:
        Fixtures.model_validate(doc)
    assert [error["msg"] for error in caught.value.errors()] == [f"Value error, {message.format(**named)}"]


def test_keys_no_field_has_are_named_with_the_field_they_may_mean() -> None:
    # Given a file with a misspelt target field, a misspelt security field and a note of its own
    doc = fixtures_doc()
    target = doc["integrations"][0]["targets"][0]
    target["retryMatrx"] = target.pop("retryMatrix")
    target["security"]["vaule"] = target["security"].pop("value")
    doc["comment"] = "local demo"

    # Then it loads (the keys are ignored) and each is named by place, misspellings with the field
    assert Fixtures.model_validate(doc).unknown_keys() == [
        "comment",
        "integrations.0.targets.0.retryMatrx (did you mean retryMatrix?)",
        "integrations.0.targets.0.security.vaule (did you mean value?)",
    ]


def test_misspelt_keys_inside_the_retry_matrix_and_the_oauth2_client_are_named_too() -> None:
    # Given a retry matrix and an OAuth client each with a misspelt key (the default would pass silently)
    doc = fixtures_doc()
    target = doc["integrations"][0]["targets"][0]
    target["retryMatrix"] = {"atempts": 5}
    target["security"] = {
        "type": "oauth2",
        "value": "client-secret",
        "oauth2": {"tokenUrl": "http://127.0.0.1:9/token", "clientId": "relay", "scopes": "events.write"},
    }

    assert Fixtures.model_validate(doc).unknown_keys() == [
        "integrations.0.targets.0.security.oauth2.scopes (did you mean scope?)",
        "integrations.0.targets.0.retryMatrix.atempts (did you mean attempts?)",
    ]


def test_the_default_fixtures_file_has_no_unknown_keys() -> None:
    assert Fixtures.load().unknown_keys() == []


def test_per_target_timeouts_are_fields_served_as_config_properties() -> None:
    from relay.local.fake_genesys import webhook_docs

    doc = fixtures_doc()
    doc["integrations"][0]["targets"][0].update(connectTimeoutSeconds=2, readTimeoutSeconds=4.5)
    fixtures = Fixtures.model_validate(doc)

    assert fixtures.unknown_keys() == []
    _, config, _ = webhook_docs(doc["integrations"][0]["id"], fixtures.integrations[0].targets[0])
    assert (config["properties"]["connectTimeoutSeconds"], config["properties"]["readTimeoutSeconds"]) == (
        2,
        4.5,
    )


def test_a_demo_receivers_port_replaces_only_the_port_so_credentials_in_the_url_still_reach_config_sync() -> (
    None
):
    # Config sync refuses credentials in a URL; dropping them on the way would hide that mistake
    assert (
        with_port("http://user:pw@127.0.0.1:0/hooks/x?a=1", 43210)
        == "http://user:pw@127.0.0.1:43210/hooks/x?a=1"
    )
    assert with_port("http://127.0.0.1:0/hooks/x", 43210) == "http://127.0.0.1:43210/hooks/x"


def test_the_ready_line_shows_a_receivers_url_with_the_token_in_its_query_masked() -> None:
    # Given a demo receiver whose target URL carries a token in its query, as a fixtures file may
    url = "http://127.0.0.1:43210/hooks/x?token=FIXTURE-TOKEN-0123&v=2"
    receiver = DemoReceiver("i-1", "t-1", "crm", url, Receiver())

    # Then the ready line names it with the token masked (it carries no secrets)
    assert receivers_by_name([receiver]) == {"crm": "http://127.0.0.1:43210/hooks/x?token=****&v=2"}


@pytest.mark.parametrize("field", ["connectTimeoutSeconds", "readTimeoutSeconds"])
def test_a_timeout_of_true_in_the_fixtures_file_is_refused_not_read_as_one_second(field: str) -> None:
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][0][field] = True
    with pytest.raises(ValidationError, match="must be a number, not true or false"):
        Fixtures.model_validate(doc)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]:0/hooks/v6",
        "http://127.0.0.2:0/hooks/x",
        "https://127.0.0.1:0/hooks/x",
        "http://localhost:0/hooks/x",
        "http://crm.example.com:0/hooks/x",
    ],
)
def test_port_0_anywhere_but_the_demo_receivers_form_is_refused(url: str) -> None:
    # Nothing listens on port 0: only http://127.0.0.1:0/<path> means "start a demo receiver"; any other
    # URL with port 0 would start a stack whose deliveries can never arrive
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][0]["url"] = url
    with pytest.raises(
        ValidationError, match="port 0 asks for a demo receiver, which only http://127.0.0.1:0"
    ):
        Fixtures.model_validate(doc)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://[::1:8080/hooks/x", "not a URL that can be read: Invalid IPv6 URL"),
        (
            "http://[crm]:8080/hooks/x",
            "not a URL that can be read: 'crm' does not appear to be an IPv4 or IPv6",
        ),
        ("http://127.0.0.1:65536/hooks/x", "the URL's port is not a number from 0 to 65535"),
        ("http://127.0.0.1:http/hooks/x", "the URL's port is not a number from 0 to 65535"),
    ],
)
def test_a_url_that_does_not_split_is_named_as_such_not_as_a_bad_port(url: str, reason: str) -> None:
    # An unclosed bracket was refused as "the URL's port is not a number", sending the reader to the port
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][0]["url"] = url
    with pytest.raises(ValidationError) as caught:
        Fixtures.model_validate(doc)
    place, message = _only_error(caught)
    assert place == "integrations.0.targets.0.url"
    assert reason in message


@pytest.mark.parametrize("field", ["url", "tokenUrl"])
def test_a_url_that_does_not_split_is_refused_without_quoting_its_password(field: str) -> None:
    # urlsplit's NFKC check quotes the whole netloc, a password before the host included
    url = "https://user:pass-SECRET\u2100word@example.com/hook"
    doc = fixtures_doc()
    target = doc["integrations"][0]["targets"][0]
    if field == "url":
        target["url"] = url
    else:
        target["security"] = {
            "type": "oauth2",
            "value": "client-secret-01",
            "oauth2": {"tokenUrl": url, "clientId": "c"},
        }
    with pytest.raises(ValidationError) as caught:
        Fixtures.model_validate(doc)
    _, message = _only_error(caught)
    assert "not a URL that can be read" in message and "SECRET" not in message


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:0/hooks/x", "HTTP://127.0.0.1:00", "http://127.0.0.1:0/h?a=1"]
)
def test_the_demo_receivers_form_of_port_0_is_accepted(url: str) -> None:
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][0]["url"] = url
    assert Fixtures.model_validate(doc).integrations[0].targets[0].url == url


def _load(doc: dict[str, Any], directory: Path) -> Fixtures:
    path = directory / "fixtures.json"
    path.write_text(json.dumps(doc))
    return Fixtures.load(path)


def _only_error(caught: pytest.ExceptionInfo[ValidationError]) -> tuple[str, str]:
    """(place, message) of the one error, as ``relay local serve`` shows it (never the value)."""
    [error] = caught.value.errors(include_input=False)
    return ".".join(str(part) for part in error["loc"]), error["msg"]


@pytest.mark.parametrize(
    "token_url", ["http://127.0.0.1:0/token", "https://127.0.0.1:0/token", "https://idp.example.com:0/t"]
)
def test_a_token_url_on_port_0_is_refused_when_the_file_is_read(token_url: str, tmp_path: Path) -> None:
    # Given an oauth2 target whose token endpoint is on port 0 (the stack starts no token endpoint, so
    # serve would start and every delivery fail oauth-token-failed)
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][1]["security"] = {
        "type": "oauth2",
        "value": "client-secret",
        "oauth2": {"tokenUrl": token_url, "clientId": "relay"},
    }

    # Then reading the file fails, naming the field
    with pytest.raises(ValidationError) as caught:
        _load(doc, tmp_path)
    place, message = _only_error(caught)
    assert place == "integrations.0.targets.1.security.oauth2.tokenUrl"
    assert "port 0: nothing listens there" in message


def test_a_token_url_with_a_port_of_its_own_is_accepted(tmp_path: Path) -> None:
    doc = fixtures_doc()
    oauth2 = {"tokenUrl": "http://127.0.0.1:8089/token", "clientId": "relay"}
    doc["integrations"][0]["targets"][1]["security"] = {"type": "oauth2", "value": "s", "oauth2": oauth2}
    security = _load(doc, tmp_path).integrations[0].targets[1].security
    assert security.oauth2 is not None and security.oauth2.token_url == oauth2["tokenUrl"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


def _certificate_of(bundle: str) -> str:
    return bundle.split("-----BEGIN PRIVATE KEY-----")[0]


def _key_of(bundle: str) -> str:
    return bundle[bundle.index("-----BEGIN PRIVATE KEY-----") :]


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda pki: pki.client_bundle(valid_days=-1), "the client certificate expired at "),
        (lambda pki: pki.client_bundle(starts_in_days=1), "the client certificate is not valid before "),
        (
            lambda pki: _certificate_of(pki.client_bundle()) + _key_of(pki.client_bundle()),
            "no certificate in the PEM bundle matches its private key",
        ),
        (
            lambda pki: (
                _certificate_of(pki.client_bundle()) + "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n"
                "-----END PRIVATE KEY-----\n"
            ),
            "the PEM bundle holds a certificate or key that does not parse",
        ),
    ],
    ids=["expired", "not-valid-yet", "key-of-another-certificate", "unparsable"],
)
def test_an_unusable_client_certificate_is_refused_at_its_place_in_the_file_without_quoting_it(
    pki: Pki, build: Callable[[Pki], str], reason: str, tmp_path: Path
) -> None:
    # Given a target whose clientCertificate config sync would refuse (naming its own field,
    # security.clientCertificate, which the fixtures file does not have)
    bundle = build(pki)
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][1]["clientCertificate"] = bundle

    # Then reading the file fails, naming the fixtures field and the reason, and never the bundle
    with pytest.raises(ValidationError) as caught:
        _load(doc, tmp_path)
    place, message = _only_error(caught)
    assert place == "integrations.0.targets.1.clientCertificate"
    assert message.startswith(f"Value error, {reason}")
    assert "-----BEGIN" not in message and key_body(bundle) not in str(caught.value)


def test_a_usable_client_certificate_is_accepted(pki: Pki, tmp_path: Path) -> None:
    bundle = pki.client_bundle()
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][1].update(clientCertificate=bundle, url="https://127.0.0.1:8443/hooks")
    assert _load(doc, tmp_path).integrations[0].targets[1].client_certificate == bundle


def test_a_client_certificate_on_a_plain_http_target_is_refused(pki: Pki, tmp_path: Path) -> None:
    # Given a target on http:// with a client certificate, which no TLS handshake would ever present
    doc = fixtures_doc()
    doc["integrations"][0]["targets"][1].update(
        clientCertificate=pki.client_bundle(), url="http://127.0.0.1:8080/hooks"
    )

    # Then the file is refused at that target, saying why, rather than started with mTLS that never happens
    with pytest.raises(ValidationError) as caught:
        _load(doc, tmp_path)
    place, message = _only_error(caught)
    assert place == "integrations.0.targets.1"
    assert "clientCertificate needs an https:// url" in message


def test_the_ready_line_masks_a_password_in_a_receivers_url() -> None:
    # Given a demo receiver whose target URL carries credentials before its host
    url = "http://user:FIXTURE-PASSWORD-0123@127.0.0.1:43210/hooks/x?v=2"
    receiver = DemoReceiver("i-1", "t-1", "crm", url, Receiver())

    # Then the ready line names it with the password masked, the user and the rest kept
    assert receivers_by_name([receiver]) == {"crm": "http://user:****@127.0.0.1:43210/hooks/x?v=2"}
