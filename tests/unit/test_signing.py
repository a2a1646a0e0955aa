"""Standard Webhooks v1 signatures: what the relay signs verifies with the `standardwebhooks` package."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.errors import ConfigurationError, InvalidSignature
from relay.logic import webhook_signing
from relay.receiver_sdk import InvalidDelivery, verify_signature

CURRENT = "whsec_" + base64.b64encode(b"current-signing-key-0123456789").decode()
PREVIOUS = "whsec_" + base64.b64encode(b"previous-signing-key-987654321").decode()
BODY = b'{"deliveryId":"d-1","formatVersion":"2.1"}'


def _headers(secrets: list[str], *, ts: int | None = None) -> dict[str, str]:
    timestamp = ts if ts is not None else int(datetime.now(UTC).timestamp())
    return {
        "webhook-id": "d-1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_signing.sign("d-1", timestamp, BODY, secrets),
    }


def test_standardwebhooks_verifies_what_the_relay_signs() -> None:
    headers = _headers([CURRENT])
    assert Webhook(CURRENT).verify(BODY, headers) is not None


def test_while_rotating_receivers_with_either_secret_verify() -> None:
    # Given a signature header made with the current and the previous secret
    headers = _headers([CURRENT, PREVIOUS])

    # Then it carries two v1 entries, and a receiver holding only one of the secrets accepts it
    assert [part[:3] for part in headers["webhook-signature"].split()] == ["v1,", "v1,"]
    Webhook(CURRENT).verify(BODY, headers)
    Webhook(PREVIOUS).verify(BODY, headers)


def test_a_tampered_body_fails_standardwebhooks_verification() -> None:
    headers = _headers([CURRENT])
    with pytest.raises(WebhookVerificationError):
        Webhook(CURRENT).verify(BODY + b" ", headers)


def test_our_verify_accepts_good_and_refuses_stale_or_forged() -> None:
    now = datetime.now(UTC).timestamp()
    assert webhook_signing.verify(_headers([CURRENT]), BODY, [PREVIOUS, CURRENT], now=now) == "d-1"
    with pytest.raises(InvalidSignature):
        webhook_signing.verify(_headers([CURRENT], ts=int(now) - 600), BODY, [CURRENT], now=now)
    with pytest.raises(InvalidSignature):
        webhook_signing.verify(_headers([PREVIOUS]), BODY, [CURRENT], now=now)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": "d-1", "webhook-timestamp": "soon", "webhook-signature": "v1,abc"},
        {"webhook-id": "d-1", "webhook-timestamp": "1", "webhook-signature": "v1,!!!notbase64"},
        {"Webhook-Id": "d-1", "Webhook-Timestamp": "0", "Webhook-Signature": "garbage"},
    ],
)
def test_malformed_headers_end_as_our_own_error_only(headers: dict[str, str]) -> None:
    with pytest.raises(InvalidDelivery):
        verify_signature(headers, BODY, [CURRENT], now=0)


def test_an_unsigned_delivery_is_refused_as_missing_only_its_signature() -> None:
    # A target without a signing secret sends webhook-id and webhook-timestamp, no signature
    unsigned = {k: v for k, v in _headers([CURRENT]).items() if k != "webhook-signature"}
    with pytest.raises(InvalidDelivery, match=r"^missing webhook-signature \(a target without a signing"):
        verify_signature(unsigned, BODY, [])
    with pytest.raises(InvalidDelivery, match="^missing webhook-id, webhook-timestamp, webhook-signature"):
        verify_signature({}, BODY, [CURRENT])


def test_headers_are_matched_case_insensitively() -> None:
    headers = {k.title(): v for k, v in _headers([CURRENT]).items()}
    assert verify_signature(headers, BODY, CURRENT) == "d-1"


def test_a_secret_that_is_not_base64_is_a_configuration_error_without_its_value() -> None:
    with pytest.raises(ConfigurationError) as caught:
        webhook_signing.sign("d-1", 1, BODY, ["whsec_not base64 at all!"])
    assert "not base64 at all" not in str(caught.value)


def test_a_receiver_whose_secrets_are_all_malformed_is_told_so_not_that_the_signature_differs() -> None:
    # Given a genuine delivery, and a receiver holding only a secret that is not whsec_ + base64
    headers = _headers([CURRENT])
    malformed = "whsec_pasted wrong!"

    # Then the refusal names the receiver's secret as the problem, never its value
    with pytest.raises(InvalidDelivery) as caught:
        verify_signature(headers, BODY, [malformed])
    assert "no signing secret given is whsec_ + base64" in str(caught.value)
    assert "pasted wrong" not in str(caught.value)
    # ... while one good secret beside it still verifies, and a wrong good one is a plain mismatch
    assert verify_signature(headers, BODY, [malformed, CURRENT]) == "d-1"
    with pytest.raises(InvalidDelivery, match="no matching v1 signature"):
        verify_signature(headers, BODY, [malformed, PREVIOUS])


@pytest.mark.parametrize(
    "shape",
    [
        lambda h: {k: [v] for k, v in h.items()},  # multi-value headers (API Gateway's multiValueHeaders)
        lambda h: {**h, "webhook-signature": h["webhook-signature"].split()},
        lambda h: {**h, "webhook-timestamp": int(h["webhook-timestamp"])},
    ],
    ids=["lists", "signature-list", "timestamp-int"],
)
def test_headers_that_are_not_one_string_each_end_as_our_own_error_naming_the_header(
    shape: Callable[[dict[str, str]], dict[str, object]],
) -> None:
    # Given a genuine delivery's headers as a framework may hand them over: not one string per name
    headers = shape(_headers([CURRENT]))

    # Then the refusal is the SDK's own error, naming what to pass, not a TypeError from inside it
    with pytest.raises(InvalidDelivery, match="is not a string .*: pass one string per header"):
        verify_signature(headers, BODY, [CURRENT])  # type: ignore[arg-type]


@pytest.mark.parametrize("secrets", [CURRENT.encode(), [CURRENT.encode()]], ids=["bytes", "list-of-bytes"])
def test_secrets_given_as_bytes_are_a_receiver_setting_said_as_such(secrets: object) -> None:
    with pytest.raises(InvalidDelivery, match="no signing secret given is whsec_ \\+ base64"):
        verify_signature(_headers([CURRENT]), BODY, secrets)  # type: ignore[arg-type]


def test_a_body_handed_over_as_text_verifies_as_the_bytes_the_relay_sent() -> None:
    # Given a receiver whose framework gives the body as str (a Lambda function URL's event["body"])
    headers = _headers([CURRENT])

    # Then it verifies as the UTF-8 bytes it was, and a changed text still does not
    assert verify_signature(headers, BODY.decode(), [CURRENT]) == "d-1"
    with pytest.raises(InvalidDelivery, match="no matching v1 signature"):
        verify_signature(headers, BODY.decode() + " ", [CURRENT])


@pytest.mark.parametrize("written", [" {ts}", "+{ts}", "0{ts}", "{ts_underscored}", "{ts_arabic_indic}"])
def test_a_timestamp_not_written_as_plain_digits_is_refused(written: str) -> None:
    # Given a genuine delivery whose webhook-timestamp is rewritten in a form int() would still read
    headers = _headers([CURRENT])
    ts = headers["webhook-timestamp"]
    arabic_indic = ts.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    underscored = f"{ts[:4]}_{ts[4:]}"
    headers["webhook-timestamp"] = written.format(
        ts=ts, ts_underscored=underscored, ts_arabic_indic=arabic_indic
    )

    # (a leading zero is digits, but not the text that was signed)
    with pytest.raises(InvalidDelivery, match="webhook-timestamp is not an integer|no matching v1 signature"):
        verify_signature(headers, BODY, [CURRENT])


def test_headers_given_as_pairs_are_refused_as_such_and_an_http_message_is_read() -> None:
    from email.message import Message

    headers = _headers([CURRENT])
    with pytest.raises(InvalidDelivery, match="headers must be a mapping of name to value, not list"):
        verify_signature(list(headers.items()), BODY, [CURRENT])  # type: ignore[arg-type]
    message = Message()
    for name, value in headers.items():
        message[name] = value
    assert verify_signature(message, BODY, [CURRENT]) == "d-1"  # type: ignore[arg-type]


@pytest.mark.parametrize("digits", [400, 5000], ids=["past-a-float", "past-int-max-str-digits"])
@pytest.mark.parametrize(
    "tolerance", [webhook_signing.DEFAULT_TOLERANCE_SECONDS, None], ids=["live", "after-the-fact"]
)
def test_a_timestamp_of_very_many_digits_is_refused_not_a_crash(digits: int, tolerance: int | None) -> None:
    # Given a request whose webhook-timestamp is plain ASCII digits, but hundreds or thousands of them
    # (anyone can send it: the timestamp is read before any signature is checked)
    headers = _headers([CURRENT])
    headers["webhook-timestamp"] = "9" * digits

    # Then a receiver doing as documented (`except InvalidDelivery: return 401`) refuses it, with the
    # clock of the day (a float), rather than an OverflowError or ValueError escaping as a 500
    with pytest.raises(InvalidDelivery, match="outside the tolerance|no matching v1 signature"):
        verify_signature(headers, BODY, [CURRENT], tolerance_seconds=tolerance)


def test_a_malformed_signing_secret_while_rotating_is_named_current_or_previous() -> None:
    # Given a rotation written by hand with a typo in one of the two values
    from relay.models.secrets import RotatingSecret

    typo = "whsec_pasted wrong!"
    for rotation, which in [
        (RotatingSecret(current=CURRENT, previous=typo), "previous"),
        (RotatingSecret(current=typo, previous=PREVIOUS), "current"),
    ]:
        # Then the delivery's configuration error says which value to fix, and never shows it
        with pytest.raises(
            ConfigurationError, match=f"^the {which} signing secret is not whsec_ \\+ base64$"
        ) as e:
            webhook_signing.sign("d-1", 1, BODY, rotation.values())
        assert "pasted wrong" not in str(e.value)
