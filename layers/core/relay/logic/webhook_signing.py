"""Standard Webhooks signatures (https://www.standardwebhooks.com), scheme ``v1``.

``webhook-signature`` is a space-separated list of ``v1,<base64 HMAC-SHA256 of "{id}.{ts}.{body}">``,
one entry per valid secret, so a receiver holding either the current or the previous secret verifies
while a secret rotates. Secrets are ``whsec_`` + base64 of the key bytes.

Pure stdlib (plus relay.errors): receivers may use ``verify`` too (see relay.receiver_sdk).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping

from relay.errors import ConfigurationError, InvalidSignature

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


def secret_key(secret: str) -> bytes:
    """The HMAC key bytes of a ``whsec_`` secret (the prefix is optional, as in standardwebhooks)."""
    if not isinstance(secret, str):  # bytes read from a file, say: a receiver's setting, said as such
        raise ConfigurationError("signing secret is not a string")
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("signing secret is not whsec_ + base64") from None


def _signature(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """Over the timestamp as the header carries it: the text is what Standard Webhooks signs."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign(msg_id: str, timestamp: int, body: bytes, secrets: Iterable[str]) -> str:
    """The ``webhook-signature`` header value: one ``v1`` entry per secret, current first."""
    entries = []
    for position, secret in enumerate(secrets):
        try:
            key = secret_key(secret)
        except ConfigurationError:
            # Which value: an operator who has just written {"current": NEW, "previous": OLD} needs to
            # know which one to fix (never the value itself).
            which = ("current", "previous")[position] if position < 2 else f"number {position + 1}"
            raise ConfigurationError(f"the {which} signing secret is not whsec_ + base64") from None
        entries.append(f"v1,{_signature(key, msg_id, timestamp, body)}")
    if not entries:
        raise ConfigurationError("no signing secret to sign with")
    return " ".join(entries)


# More digits than any Unix time in seconds a clock will show (10^18 s is beyond any year a float's
# ``now`` holds to the second): such a timestamp is outside every window.
_MAX_TIMESTAMP_DIGITS = 18


def _within(raw_ts: str, now: float, tolerance_seconds: int) -> bool:
    """Whether the ASCII-digit timestamp ``raw_ts`` is at most ``tolerance_seconds`` from ``now``.
    Digits come from the request: int() refuses more than 4,300 of them (ValueError) and a float minus
    an int past a float's range overflows (OverflowError), so a long one is simply out of the window."""
    digits = raw_ts.lstrip("0") or "0"
    return len(digits) <= _MAX_TIMESTAMP_DIGITS and abs(now - int(digits)) <= tolerance_seconds


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Iterable[str],
    *,
    now: float,
    tolerance_seconds: int | None = DEFAULT_TOLERANCE_SECONDS,
) -> str:
    """Check a request's Standard Webhooks headers; return its ``webhook-id``.

    Headers are matched case-insensitively. Any secret may match any ``v1`` entry. Every malformed
    input ends as ``InvalidSignature``; nothing else escapes. ``tolerance_seconds=None`` skips the
    timestamp's window (a check after the fact, never a live one).
    """
    if not hasattr(headers, "items"):  # a list of (name, value) pairs, say (an HTTPMessage is fine)
        raise InvalidSignature(f"headers must be a mapping of name to value, not {type(headers).__name__}")
    lowered = {str(k).lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    raw_ts = lowered.get("webhook-timestamp", "")
    raw_sig = lowered.get("webhook-signature", "")
    # A framework's multi-value headers (a list per name) would otherwise escape as a TypeError.
    named = (("webhook-id", msg_id), ("webhook-timestamp", raw_ts), ("webhook-signature", raw_sig))
    for name, value in named:
        if not isinstance(value, str):
            kind = type(value).__name__
            raise InvalidSignature(f"{name} is not a string ({kind}): pass one string per header")
    missing = [name for name, value in (("webhook-id", msg_id), ("webhook-timestamp", raw_ts)) if not value]
    if not raw_sig:
        missing.append("webhook-signature (a target without a signing secret sends none)")
    if missing:
        raise InvalidSignature(f"missing {', '.join(missing)}")
    # Digits only, as the relay writes it: int() would also take " 12", "+12", "1_2" or other scripts'
    # digits, which the signature (over the number) would not tell from the header as sent.
    if not (raw_ts.isascii() and raw_ts.isdigit()):
        raise InvalidSignature("webhook-timestamp is not an integer")
    if tolerance_seconds is not None and not _within(raw_ts, now, tolerance_seconds):
        raise InvalidSignature("webhook-timestamp outside the tolerance")
    offered = [part[3:] for part in raw_sig.split() if part.startswith("v1,")]
    usable = 0
    for secret in secrets:
        try:
            expected = _signature(secret_key(secret), msg_id, raw_ts, body)
        except ConfigurationError:
            continue
        usable += 1
        if any(hmac.compare_digest(expected.encode(), sig.encode()) for sig in offered):
            return msg_id
    if not usable:  # the receiver's own setting, not the request, is wrong: say so
        raise InvalidSignature(
            "no signing secret given is whsec_ + base64: nothing to check the signature with"
        )
    raise InvalidSignature("no matching v1 signature")
