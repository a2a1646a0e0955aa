"""Genesys Cloud's ``X-Hub-Signature-256`` check.

The header is ``sha256=<digest>``: HMAC-SHA256 keyed with the integration's signature secret over the
raw request body. Genesys' own sample encodes the digest in base64, other Meta-style senders in hex; both
are accepted. Every valid secret (current and previous, during a rotation) is tried, each compared in
constant time. A header repeated with the same value (which API Gateway hands over comma-joined) is
one signature; different values are malformed. Whatever is wrong with the header, only our own
``InvalidSignature`` escapes, and it says which of three things went wrong (missing, malformed,
mismatched), never what was expected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable

from relay.errors import InvalidSignature

SIGNATURE_HEADER = "x-hub-signature-256"
_SCHEME = "sha256="
_DIGEST_BYTES = hashlib.sha256().digest_size
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

CODE_MISSING = "signature_missing"
CODE_MALFORMED = "signature_malformed"
CODE_MISMATCH = "signature_mismatch"


def decode_digest(encoded: str) -> bytes | None:
    """The 32-byte digest from its hex or base64 (standard or URL-safe, padded or not) form."""
    if len(encoded) == 2 * _DIGEST_BYTES and _HEX_DIGITS.issuperset(encoded):
        return bytes.fromhex(encoded)
    if len(encoded) not in (43, 44) or not encoded.isascii():
        return None
    padded = encoded + "=" * (-len(encoded) % 4)
    alphabet = b"-_" if ("-" in encoded or "_" in encoded) else None
    try:
        digest = base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == _DIGEST_BYTES else None


def sign(body: bytes, secret: str) -> str:
    """The header value Genesys would send for ``body`` (base64 digest, as in Genesys' sample)."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return _SCHEME + base64.b64encode(digest).decode("ascii")


def _one_value(header_value: str) -> str:
    """The header's one value. API Gateway joins a repeated header with commas: copies of one value
    count as that value, but different values are refused, never accepted because one of them matches."""
    values = {part.strip() for part in header_value.split(",")}
    if "" in values:  # a stray comma, or an empty copy of the header beside a full one
        raise InvalidSignature(
            "the X-Hub-Signature-256 header is malformed: it holds an empty value", code=CODE_MALFORMED
        )
    if len(values) != 1:
        raise InvalidSignature(
            "the X-Hub-Signature-256 header is malformed: it holds several different values",
            code=CODE_MALFORMED,
        )
    return values.pop()


def verify_signature(body: bytes, header_value: str | None, secrets: Iterable[str]) -> None:
    """Return if ``header_value`` signs ``body`` with one of ``secrets``; raise InvalidSignature otherwise."""
    if header_value is None or not header_value.strip():
        raise InvalidSignature("the X-Hub-Signature-256 header is missing", code=CODE_MISSING)
    value = _one_value(header_value)
    if value[: len(_SCHEME)].lower() != _SCHEME:
        raise InvalidSignature(
            "the X-Hub-Signature-256 header is malformed: expected 'sha256=<digest>'", code=CODE_MALFORMED
        )
    given = decode_digest(value[len(_SCHEME) :].strip())
    if given is None:
        raise InvalidSignature(
            "the X-Hub-Signature-256 header is malformed: the digest is not 32 bytes of hex or base64",
            code=CODE_MALFORMED,
        )
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
        # No early exit: the time taken does not tell which secret (if any) matched.
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise InvalidSignature(
            "the X-Hub-Signature-256 signature does not match the request body", code=CODE_MISMATCH
        )
