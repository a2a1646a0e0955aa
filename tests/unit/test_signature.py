"""X-Hub-Signature-256: base64 or hex digests, rotation, constant-time compare, and clear refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import InvalidSignature
from relay.logic.signature import (
    CODE_MALFORMED,
    CODE_MISMATCH,
    CODE_MISSING,
    decode_digest,
    sign,
    verify_signature,
)

BODY = b'{"id":"abc","type":"Text"}'
SECRET = "local-demo-signature-secret-0001"
DIGEST = hmac.new(SECRET.encode(), BODY, hashlib.sha256).digest()


def refusal(header: str | None, secrets: list[str] | None = None) -> InvalidSignature:
    with pytest.raises(InvalidSignature) as caught:
        verify_signature(BODY, header, secrets or [SECRET])
    return caught.value


@pytest.mark.parametrize(
    "header",
    [
        "sha256=" + base64.b64encode(DIGEST).decode(),  # Genesys' own sample: base64
        "sha256=" + DIGEST.hex(),  # Meta-style senders: hex
        "sha256=" + DIGEST.hex().upper(),
        "sha256=" + base64.urlsafe_b64encode(DIGEST).decode().rstrip("="),
        "SHA256=" + base64.b64encode(DIGEST).decode(),
        "  sha256=" + DIGEST.hex() + "  ",
    ],
)
def test_a_correct_signature_in_any_accepted_encoding_passes(header: str) -> None:
    verify_signature(BODY, header, [SECRET])  # raises if refused
    assert decode_digest(header.strip()[7:].strip()) == DIGEST


def test_sign_produces_what_verify_accepts_in_genesys_base64_form() -> None:
    header = sign(BODY, SECRET)
    assert header == "sha256=" + base64.b64encode(DIGEST).decode()
    verify_signature(BODY, header, [SECRET])


def test_the_previous_secret_is_accepted_during_a_rotation() -> None:
    header = sign(BODY, "previous-secret-value-0000")
    verify_signature(BODY, header, [SECRET, "previous-secret-value-0000"])
    assert refusal(header, [SECRET]).code == CODE_MISMATCH


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_says_missing(header: str | None) -> None:
    error = refusal(header)
    assert (error.status, error.code) == (401, CODE_MISSING)


@pytest.mark.parametrize(
    "header",
    [
        "sha1=" + DIGEST.hex(),
        DIGEST.hex(),
        "sha256=",
        "sha256=zz" + DIGEST.hex()[2:],
        "sha256=" + DIGEST.hex()[:-2],
        "sha256=" + base64.b64encode(DIGEST[:-1]).decode(),
        "sha256=" + base64.b64encode(DIGEST).decode() + "AA",
        "sha256=" + "é" * 44,
    ],
)
def test_a_malformed_header_says_malformed(header: str) -> None:
    error = refusal(header)
    assert (error.status, error.code) == (401, CODE_MALFORMED)


def test_a_wrong_signature_says_mismatch_and_never_reveals_the_expected_value() -> None:
    other = hmac.new(b"some-other-secret-value", BODY, hashlib.sha256).digest()
    error = refusal("sha256=" + base64.b64encode(other).decode())
    assert (error.status, error.code) == (401, CODE_MISMATCH)
    for leaked in (DIGEST.hex(), base64.b64encode(DIGEST).decode(), SECRET):
        assert leaked not in error.message and leaked not in str(error)


def test_a_changed_body_no_longer_matches() -> None:
    header = sign(BODY, SECRET)
    with pytest.raises(InvalidSignature) as caught:
        verify_signature(BODY + b" ", header, [SECRET])
    assert caught.value.code == CODE_MISMATCH


@given(st.text(max_size=120))
def test_whatever_the_header_only_our_own_refusal_escapes(header: str) -> None:
    try:
        verify_signature(BODY, header, [SECRET])
    except InvalidSignature as error:
        assert error.code in (CODE_MISSING, CODE_MALFORMED, CODE_MISMATCH)
        assert DIGEST.hex() not in error.message


@pytest.mark.parametrize("separator", [",", ", ", " ,  "])
def test_one_value_repeated_comma_joined_is_that_value(separator: str) -> None:
    # API Gateway joins a header sent twice with a comma
    header = sign(BODY, SECRET)
    verify_signature(BODY, separator.join([header, header]), [SECRET])  # raises if refused
    verify_signature(BODY, separator.join([header] * 3), [SECRET])


@pytest.mark.parametrize(
    "values",
    [
        [sign(BODY, SECRET), sign(BODY, "some-other-secret-value")],
        [sign(BODY, "some-other-secret-value"), sign(BODY, SECRET)],
        [sign(BODY, SECRET), "sha256=" + DIGEST.hex()],  # the same digest spelled twice is still two values
    ],
)
def test_different_values_are_malformed_even_when_one_matches(values: list[str]) -> None:
    error = refusal(",".join(values))
    assert (error.status, error.code) == (401, CODE_MALFORMED)
    assert "several different values" in str(error)


@pytest.mark.parametrize(
    "header", [f"{sign(BODY, SECRET)},", f",{sign(BODY, SECRET)}", f"{sign(BODY, SECRET)}, ,"]
)
def test_a_good_value_beside_an_empty_one_is_malformed_for_the_empty_one(header: str) -> None:
    error = refusal(header)
    assert (error.status, error.code) == (401, CODE_MALFORMED)
    assert str(error).endswith("it holds an empty value")
