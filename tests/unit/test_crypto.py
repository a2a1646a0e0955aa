"""Envelope encryption: AES-256-GCM, scrypt-derived keys cached per key version, deliveryId as AAD."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.cli import main
from relay.errors import ConfigurationError
from relay.logic import crypto
from relay.logic.envelope import TargetSecrets, build_request, encryption_key_for
from relay.models.delivery import DeliveryTask
from relay.models.secrets import RotatingSecret
from relay.models.targets import Target
from relay.receiver_sdk import (
    InvalidDelivery,
    decrypt_event,
    decrypt_event_bytes,
    open_delivery,
    source_event_bytes,
)

NOW = datetime(2026, 11, 28, 17, 30, tzinfo=UTC)
TARGET = Target(
    integration_id="i-1",
    target_id="t-1",
    name="archive",
    url="https://example.com/hook",
    encryption_key_name="relay/local/encryption/t-1",
)
SECRET = RotatingSecret(current="enc-secret-v2", previous="enc-secret-v1", key_id="k2", salt="0f" * 16)
DEEP = "[" * 100_000 + "]" * 100_000  # nested deeper than Python's json parser goes
# One cache for the module: scrypt is deliberately slow, and the cache is what is under test anyway.
KEYS = crypto.KeyCache()


def _task(event_json: str, delivery_id: uuid.UUID | None = None) -> DeliveryTask:
    return DeliveryTask(
        delivery_id=delivery_id or uuid.uuid4(),
        integration_id="i-1",
        target_id="t-1",
        event_id="e-1",
        received_at=NOW,
        event_json=event_json,
    )


def _sealed_envelope(event: dict[str, Any], secret: RotatingSecret = SECRET) -> dict[str, Any]:
    return _sealed_text(json.dumps(event), secret)


def _sealed_text(text: str, secret: RotatingSecret = SECRET) -> dict[str, Any]:
    """An envelope whose encrypted payload is ``text``, byte for byte."""
    request = build_request(
        _task(text), text, TARGET, TargetSecrets(encryption=secret), key_cache=KEYS, now=NOW
    )
    envelope: dict[str, Any] = json.loads(request.body)
    return envelope


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_any_event_round_trips_through_the_receiver_sdk(event: dict[str, Any]) -> None:
    envelope = _sealed_envelope(event)
    assert decrypt_event(envelope, "enc-secret-v2") == event


def test_the_key_is_scrypt_with_the_documented_parameters() -> None:
    # Given the envelope's own salt and the secret, derived independently with hashlib
    import hashlib

    envelope = _sealed_envelope({"a": 1})
    salt = bytes.fromhex(envelope["encryptionDirective"]["salt"])
    key = hashlib.scrypt(b"enc-secret-v2", salt=salt, n=16384, r=8, p=1, dklen=32)
    directive = envelope["encryptionDirective"]

    # Then AES-256-GCM with that key and the deliveryId as associated data opens it
    sealed = crypto.Sealed(
        bytes.fromhex(directive["iv"]),
        bytes.fromhex(directive["encryptedPayload"]),
        bytes.fromhex(directive["authTag"]),
    )
    plaintext = crypto.unseal(sealed, key, associated_data=envelope["deliveryId"].encode())
    assert plaintext == b'{"a": 1}'  # the event's text byte for byte, not a re-encoding of it


def test_the_ciphertext_is_bound_to_its_delivery_id() -> None:
    envelope = _sealed_envelope({"a": 1})
    envelope["deliveryId"] = str(uuid.uuid4())  # moved into another envelope
    with pytest.raises(InvalidDelivery):
        decrypt_event(envelope, "enc-secret-v2")


def test_tampering_and_wrong_keys_are_refused() -> None:
    envelope = _sealed_envelope({"a": 1})
    key_id = envelope["encryptionDirective"]["keyId"]
    # a wrong key is told which key version sealed the envelope (a key id, never key material)
    with pytest.raises(InvalidDelivery, match=f"sealed with keyId '{key_id}'"):
        decrypt_event(envelope, "some-other-secret")
    payload = envelope["encryptionDirective"]["encryptedPayload"]
    envelope["encryptionDirective"]["encryptedPayload"] = ("1" if payload[0] != "1" else "2") + payload[1:]
    with pytest.raises(InvalidDelivery):
        decrypt_event(envelope, "enc-secret-v2")


@pytest.mark.parametrize("field", ["iv", "authTag"])
def test_an_iv_or_tag_of_the_wrong_length_is_malformed_not_a_wrong_key(field: str) -> None:
    envelope = _sealed_envelope({"a": 1})
    envelope["encryptionDirective"][field] = envelope["encryptionDirective"][field][:-2]  # a byte short
    with pytest.raises(InvalidDelivery, match="^malformed encryptionDirective: iv must be 12 bytes"):
        decrypt_event(envelope, "enc-secret-v2")


def test_a_receiver_holding_old_and_new_keys_reads_both_versions() -> None:
    old = _sealed_envelope({"v": 1}, RotatingSecret(current="enc-secret-v1", key_id="k1", salt="aa" * 16))
    new = _sealed_envelope({"v": 2})
    assert decrypt_event(old, ["enc-secret-v2", "enc-secret-v1"]) == {"v": 1}
    assert decrypt_event(new, ["enc-secret-v2", "enc-secret-v1"]) == {"v": 2}


def test_each_message_gets_a_fresh_iv_but_the_key_is_derived_once_per_version() -> None:
    # Given a fresh cache
    cache = crypto.KeyCache()
    event = '{"a": 1}'

    # When fifty messages are sealed with one key version
    ivs = set()
    for _ in range(50):
        request = build_request(
            _task(event), event, TARGET, TargetSecrets(encryption=SECRET), key_cache=cache, now=NOW
        )
        ivs.add(json.loads(request.body)["encryptionDirective"]["iv"])

    # Then scrypt ran once, and no IV repeated
    assert cache.derivations == 1
    assert len(ivs) == 50


def test_a_new_key_version_with_the_same_key_id_but_new_secret_is_not_served_stale() -> None:
    cache = crypto.KeyCache()
    first = encryption_key_for(SECRET, cache, target_id="t-1")
    rotated = SECRET.model_copy(update={"current": SECRET.previous})
    second = encryption_key_for(rotated, cache, target_id="t-1")
    assert first.key != second.key and cache.derivations == 2


def test_the_salt_comes_from_the_key_version_not_a_constant() -> None:
    a = _sealed_envelope({"a": 1}, RotatingSecret(current="s", key_id="k1", salt="01" * 16))
    b = _sealed_envelope({"a": 1}, RotatingSecret(current="s", key_id="k2", salt="02" * 16))
    assert a["encryptionDirective"]["salt"] != b["encryptionDirective"]["salt"]
    assert len(crypto.new_salt()) == 16 and crypto.new_salt() != crypto.new_salt()


@pytest.mark.parametrize("salt", [None, "", "zz" * 16, "ab" * 4])
def test_a_missing_or_bad_salt_is_a_clear_configuration_error(salt: str | None) -> None:
    with pytest.raises(ConfigurationError, match="salt"):
        encryption_key_for(
            RotatingSecret(current="s", key_id="k1", salt=salt), crypto.KeyCache(), target_id="t-1"
        )


def test_key_material_never_shows_in_a_repr() -> None:
    key = encryption_key_for(SECRET, KEYS, target_id="t-1")
    assert "enc-secret" not in repr(key) and key.key.hex() not in repr(key)


def test_open_delivery_parses_and_decrypts_without_signature_check_when_asked() -> None:
    envelope = _sealed_envelope({"hello": "world"})
    delivery = open_delivery(
        {}, json.dumps(envelope).encode(), signing_secrets=None, encryption_secrets="enc-secret-v2"
    )
    assert delivery.event == {"hello": "world"} and delivery.encrypted and delivery.key_id == "k2"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        DEEP.encode(),
        b"[]",
        b'{"formatVersion": "2.0"}',
        b'{"sourceEvent": {"id": "e-1"}, "formatVersion": "2.1"}',
        b'{"deliveryId": "d-1", "sourceEvent": "e-1", "formatVersion": "2.1"}',
    ],
    ids=["text", "deep", "list", "v2.0", "no-delivery-id", "source-event-not-an-object"],
)
def test_a_body_that_is_no_envelope_is_an_invalid_delivery(body: bytes) -> None:
    with pytest.raises(InvalidDelivery):
        open_delivery({}, body, signing_secrets=None)


@pytest.mark.parametrize("payload", ["not json", DEEP], ids=["text", "deep"])
def test_a_decrypted_payload_that_is_not_json_is_an_invalid_delivery(payload: str) -> None:
    envelope = _sealed_text(payload)
    with pytest.raises(InvalidDelivery, match="^decrypted payload is not JSON$"):
        open_delivery(
            {}, json.dumps(envelope).encode(), signing_secrets=None, encryption_secrets="enc-secret-v2"
        )


def test_relay_decrypt_prints_the_event_and_refuses_a_wrong_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an encrypted envelope in a file, and the key in an environment variable
    envelope = tmp_path / "envelope.json"
    envelope.write_text(json.dumps(_sealed_envelope({"text": "hi there"})))
    monkeypatch.setenv("ARCHIVE_KEY", "enc-secret-v2")
    monkeypatch.setenv("WRONG_KEY", "nope")

    # When `relay decrypt` runs with the right key, then with a wrong one
    assert main(["decrypt", str(envelope), "--key-env", "ARCHIVE_KEY"]) == 0
    printed = capsys.readouterr().out
    assert main(["decrypt", str(envelope), "--key-env", "WRONG_KEY"]) == 1

    # Then the first printed the event, and the second said why without the key
    assert json.loads(printed) == {"text": "hi there"}
    err = capsys.readouterr().err
    assert "cannot open the envelope" in err and "nope" not in err


def test_relay_decrypt_prints_exactly_the_bytes_genesys_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # Given an encrypted event whose text parsing and writing again would change (numbers, layout)
    sent = '{"id": "e-1",\n  "n": 1E+2, "d": 0.1000000000000000055511151231257827, "text": "café"}'
    envelope = tmp_path / "envelope.json"
    envelope.write_text(json.dumps(_sealed_text(sent)))
    monkeypatch.setenv("ARCHIVE_KEY", "enc-secret-v2")

    # When `relay decrypt` opens it
    assert main(["decrypt", str(envelope), "--key-env", "ARCHIVE_KEY"]) == 0

    # Then stdout holds those bytes and nothing else (docs/receivers.md)
    assert capsysbinary.readouterr().out == sent.encode()


PLAIN_TARGET = TARGET.model_copy(update={"encryption_key_name": None})
# Parsed and written again, this text would change: numbers, escapes and layout.
AS_SENT = '{"id": "e-1",\n  "n": 1E+2, "d": 0.1000000000000000055511151231257827, "t": "caf\\u00e9 \\/"}'


def _plain_body(text: str) -> bytes:
    return build_request(_task(text), text, PLAIN_TARGET, TargetSecrets(), key_cache=KEYS, now=NOW).body


def test_relay_decrypt_prints_a_plain_envelopes_event_exactly_as_genesys_sent_it_without_a_key(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # Given a plain envelope as a receiver got it (nothing to decrypt)
    envelope = tmp_path / "envelope.json"
    envelope.write_bytes(_plain_body(AS_SENT))

    # When `relay decrypt` opens it, with no key
    assert main(["decrypt", str(envelope)]) == 0

    # Then stdout holds the event's own bytes, not a parsed and re-written copy
    assert capsysbinary.readouterr().out == AS_SENT.encode()
    assert source_event_bytes(_plain_body(AS_SENT)) == AS_SENT.encode()


def test_relay_decrypt_says_when_a_reformatted_plain_envelope_no_longer_holds_the_events_own_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a plain envelope re-formatted since (pretty-printed from a log, say)
    reformatted = json.dumps(json.loads(_plain_body(AS_SENT)), indent=2)
    envelope = tmp_path / "envelope.json"
    envelope.write_text(reformatted)

    # When `relay decrypt` opens it, then it prints the parsed event and says it is not the original text
    assert main(["decrypt", str(envelope)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(AS_SENT)
    assert "not laid out as the relay writes it" in err
    with pytest.raises(InvalidDelivery, match="cannot be cut out"):
        source_event_bytes(reformatted.encode())


def test_source_event_bytes_refuses_an_encrypted_envelope() -> None:
    with pytest.raises(InvalidDelivery, match="encrypted"):
        source_event_bytes(json.dumps(_sealed_envelope({"id": "e-1"}), separators=(",", ":")).encode())


@pytest.mark.parametrize(
    ("key", "file_text"),
    [
        ("enc-secret-with-a-newline", "enc-secret-with-a-newline\n"),  # as editors save it
        ("enc-secret-windows", "enc-secret-windows\r\n"),
        ("  spaces around this key  ", "  spaces around this key  \n"),  # config sync accepts it
        ("  spaces around this key  ", "  spaces around this key  "),
        (" " * 16, " " * 16 + "\n"),  # a key of blanks alone, which config sync takes too
        ("enc-secret-from-notepad", "\ufeffenc-secret-from-notepad\r\n"),  # a byte order mark first
    ],
)
def test_relay_decrypt_reads_the_key_file_as_written_less_its_line_ending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, file_text: str
) -> None:
    # Given an envelope encrypted with a key, and a key file holding it
    envelope = tmp_path / "envelope.json"
    sealed = _sealed_envelope({"text": "hi"}, RotatingSecret(current=key, key_id="k9", salt="0e" * 16))
    envelope.write_text(json.dumps(sealed))
    key_file = tmp_path / "key.txt"
    key_file.write_bytes(file_text.encode())

    # When `relay decrypt --key-file` opens it, then it prints the event
    assert main(["decrypt", str(envelope), "--key-file", str(key_file)]) == 0
    assert json.loads(capsys.readouterr().out) == {"text": "hi"}


def test_concurrent_first_requests_for_a_key_run_scrypt_once() -> None:
    # Given a cold cache and 8 deliveries asking for the same key at the same moment
    cache = crypto.KeyCache()
    salt = bytes(16)
    start = threading.Barrier(8)
    keys: list[bytes] = []

    def ask() -> None:
        start.wait()
        keys.append(cache.key_for("a-key-secret", key_id="k1", salt=salt).key)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then one derivation served them all, and all got the same key
    assert cache.derivations == 1
    assert len(set(keys)) == 1 and len(keys) == 8


SIGNING_SECRET = "whsec_" + "c2lnbmluZy1rZXktZm9yLXRoZS10ZXJtaW5hbC0wMQ=="


def _stored_signed_delivery(tmp_path: Path, *, body_changed: bool = False) -> list[str]:
    """An encrypted delivery signed at NOW (days before the test runs), stored as a receiver keeps it:
    its body in one file, its headers in another; the arguments that check and open it."""
    text = '{"id": "e-1", "text": "hi there"}'
    request = build_request(
        _task(text),
        text,
        TARGET,
        TargetSecrets(encryption=SECRET, signing=RotatingSecret(current=SIGNING_SECRET)),
        key_cache=KEYS,
        now=NOW,
    )
    body = request.body.replace(b'"formatVersion"', b' "formatVersion"') if body_changed else request.body
    (tmp_path / "envelope.json").write_bytes(body)
    (tmp_path / "headers.json").write_text(json.dumps(dict(request.headers)))
    return [
        "decrypt",
        str(tmp_path / "envelope.json"),
        "--key-env",
        "ARCHIVE_KEY",
        "--verify-with-env",
        "WHSEC",
        "--headers",
        str(tmp_path / "headers.json"),
    ]


def test_relay_decrypt_verifies_a_stored_delivery_whatever_its_age_and_says_how_old_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a delivery signed days ago, kept with its headers, and its target's keys
    monkeypatch.setenv("ARCHIVE_KEY", "enc-secret-v2")
    monkeypatch.setenv("WHSEC", SIGNING_SECRET)
    argv = _stored_signed_delivery(tmp_path)

    # When `relay decrypt --verify-with-env` checks it
    code = main(argv)

    # Then the signature verifies (a receiver's 5-minute window is for live requests), the event prints,
    # and stderr says a receiver checking it now would refuse it
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out) == {"id": "e-1", "text": "hi there"}
    assert "the signature verifies; it was made" in captured.err and "would refuse it" in captured.err


def test_relay_decrypt_refuses_a_stored_delivery_whose_body_changed_since_it_was_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ARCHIVE_KEY", "enc-secret-v2")
    monkeypatch.setenv("WHSEC", SIGNING_SECRET)
    argv = _stored_signed_delivery(tmp_path, body_changed=True)

    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cannot open the envelope: no matching v1 signature" in captured.err


def test_an_encryption_key_given_as_bytes_is_refused_as_the_receivers_setting() -> None:
    envelope = _sealed_envelope({"v": 2})
    for keys in (b"enc-secret-v2", [b"enc-secret-v2"]):
        with pytest.raises(InvalidDelivery, match="an encryption key must be a string, not bytes"):
            decrypt_event(envelope, keys)  # type: ignore[arg-type]


def test_a_plain_body_handed_over_as_text_gives_the_events_own_bytes() -> None:
    assert source_event_bytes(_plain_body(AS_SENT).decode()) == AS_SENT.encode()


@pytest.mark.parametrize("directive", [{}, [], "", 0])
def test_an_encryption_directive_that_is_neither_an_object_nor_null_is_malformed_not_plain(
    directive: object,
) -> None:
    envelope = {**json.loads(_plain_body(AS_SENT)), "encryptionDirective": directive}
    with pytest.raises(InvalidDelivery, match="malformed encryptionDirective"):
        decrypt_event(envelope, "enc-secret-v2")


@pytest.mark.parametrize("keys", [(), [], None], ids=["default", "empty-list", "none"])
def test_an_encrypted_delivery_opened_without_a_key_says_no_key_was_given(keys: object) -> None:
    # Given an encrypted delivery, and a receiver that passes no encryption key (forgot the option, or
    # None as for a plain target, the way signing_secrets=None reads)
    body = json.dumps(_sealed_envelope({"v": 2})).encode()

    # Then it is an InvalidDelivery naming the receiver's setting, not a TypeError nor "wrong key"
    with pytest.raises(InvalidDelivery, match="no encryption key was given"):
        open_delivery({}, body, signing_secrets=None, encryption_secrets=keys)  # type: ignore[arg-type]


@pytest.mark.parametrize("body", ["\ud800", None, 12], ids=["lone-surrogate-text", "none", "int"])
def test_a_body_that_is_neither_utf8_text_nor_bytes_is_an_invalid_delivery(body: object) -> None:
    with pytest.raises(InvalidDelivery, match="body"):
        open_delivery({}, body, signing_secrets=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidDelivery, match="body"):
        source_event_bytes(body)  # type: ignore[arg-type]


def test_a_body_given_as_a_bytearray_still_opens() -> None:
    body = _plain_body(AS_SENT)
    assert open_delivery({}, bytearray(body), signing_secrets=None).event == json.loads(AS_SENT)  # type: ignore[arg-type]


@pytest.mark.parametrize("document", [[], "text", None, 5], ids=["list", "str", "null", "int"])
def test_decrypting_parsed_json_that_is_no_object_is_an_invalid_delivery(document: object) -> None:
    # Given a receiver that parses the body itself and hands it to decrypt_event (an unsigned target's
    # endpoint, say, where anyone can post a JSON list)
    for decrypt in (decrypt_event, decrypt_event_bytes):
        with pytest.raises(InvalidDelivery, match="not a relay 2.1 envelope"):
            decrypt(document, "enc-secret-v2")  # type: ignore[arg-type]
