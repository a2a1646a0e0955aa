"""For receivers: check a relay delivery and get the Genesys event out of it.

Usage in a receiver's request handler (``body`` is the raw request body, bytes)::

    from relay.receiver_sdk import open_delivery, InvalidDelivery

    try:
        delivery = open_delivery(headers, body, signing_secrets=["whsec_..."],
                                 encryption_secrets=["my-encryption-key"])
    except InvalidDelivery:
        return 401
    if seen(delivery.delivery_id):      # the same deliveryId arrives again on a retry
        return 200
    handle(delivery.event)

``open_delivery`` verifies the Standard Webhooks signature (``webhook-id``, ``webhook-timestamp``
within 5 minutes, ``webhook-signature`` v1, any of the secrets you pass, so rotation works), parses
the 2.1 envelope and, when it is encrypted, decrypts ``encryptionDirective`` (AES-256-GCM, key =
scrypt(secret, salt, N=16384, r=8, p=1, 32 bytes), associated data = deliveryId). Derived keys are
cached in this process, so scrypt runs once per key version, not per message.

Depends only on the standard library and ``cryptography``; see docs/receivers.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.errors import DecryptionFailed, InvalidDelivery, InvalidSignature
from relay.json_input import load_json
from relay.logic import crypto, webhook_signing

__all__ = [
    "Delivery",
    "InvalidDelivery",
    "as_envelope",
    "decrypt_event",
    "decrypt_event_bytes",
    "open_delivery",
    "source_event_bytes",
    "verify_signature",
]

# relay.models.envelope.FORMAT_VERSION, not imported: this module needs nothing but cryptography.
_FORMAT_VERSION = "2.1"
# The relay writes ``sourceEvent`` last but one, then this: the event's text is what lies between.
_SOURCE_EVENT_OPENS = b',"sourceEvent":'
_ENVELOPE_CLOSES = f',"formatVersion":"{_FORMAT_VERSION}"}}'.encode()


_keys = crypto.KeyCache()


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    envelope: dict[str, Any]
    event: dict[str, Any]
    encrypted: bool
    key_id: str | None


def _as_list(secrets: str | Iterable[str] | None) -> list[str]:
    # One bytes value is one (wrongly typed) secret, not a run of ints: refused as such downstream.
    # None is no secret at all (as ``signing_secrets=None`` says for signatures), not a TypeError.
    if secrets is None:
        return []
    return [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)


def _as_bytes(body: bytes | str) -> bytes:
    """The request body as the relay sent it: a framework that hands it over as text (a Lambda
    function URL's or API Gateway's ``event["body"]``) decoded the relay's UTF-8, so encoding it again
    gives the same bytes (as the standardwebhooks library does). A text that UTF-8 cannot encode (a
    lone surrogate, from bytes a framework decoded with ``surrogateescape``) is not what the relay sent."""
    if isinstance(body, str):
        try:
            return body.encode()
        except UnicodeEncodeError:
            raise InvalidDelivery("body is not UTF-8 text (it holds a lone surrogate)") from None
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if not isinstance(body, bytes):
        raise InvalidDelivery(f"body must be bytes or str, not {type(body).__name__}")
    return body


def verify_signature(
    headers: Mapping[str, str],
    body: bytes | str,
    signing_secrets: str | Iterable[str],
    *,
    tolerance_seconds: int | None = webhook_signing.DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> str:
    """Verify the Standard Webhooks headers; return the ``webhook-id`` (= deliveryId).
    ``tolerance_seconds=None``: whatever the ``webhook-timestamp``'s age (a delivery checked after the
    fact, from a file or a log; a live receiver keeps the window, which refuses replays)."""
    try:
        return webhook_signing.verify(
            headers,
            _as_bytes(body),
            _as_list(signing_secrets),
            now=time.time() if now is None else now,
            tolerance_seconds=tolerance_seconds,
        )
    except InvalidSignature as exc:
        raise InvalidDelivery(str(exc)) from None


def as_envelope(document: Any) -> dict[str, Any]:
    """``document`` (parsed JSON) if it is laid out as the relay writes an envelope, whatever its
    spacing: a ``deliveryId``, a ``sourceEvent`` object and ``formatVersion`` 2.1. Anything else (a log
    line, another format) raises InvalidDelivery rather than be read as if it held an event."""
    if (
        isinstance(document, dict)
        and document.get("formatVersion") == _FORMAT_VERSION
        and isinstance(document.get("deliveryId"), str)
        and isinstance(document.get("sourceEvent"), dict)
    ):
        return document
    raise InvalidDelivery(
        f"not a relay {_FORMAT_VERSION} envelope (a JSON object with a deliveryId, a sourceEvent object "
        f'and "formatVersion": "{_FORMAT_VERSION}")'
    )


def encrypted(envelope: Mapping[str, Any]) -> bool:
    """Whether a 2.1 envelope is encrypted: its ``encryptionDirective`` is an object (the relay writes
    ``null`` for a plain one). Anything else there (``{}``, ``""``, a list) is malformed, never read as
    plain: InvalidDelivery."""
    if not isinstance(envelope, Mapping):  # parsed JSON that is a list, a string...: no envelope at all
        raise InvalidDelivery(
            f"not a relay {_FORMAT_VERSION} envelope (a JSON object), but {type(envelope).__name__}"
        )
    directive = envelope.get("encryptionDirective")
    if directive is None:
        return False
    if not isinstance(directive, dict) or not directive:
        raise InvalidDelivery("malformed encryptionDirective: an object, or null for a plain envelope")
    return True


def decrypt_event(
    envelope: Mapping[str, Any], encryption_secrets: str | Iterable[str] | None
) -> dict[str, Any]:
    """The Genesys event of a 2.1 envelope: decrypted if it is encrypted, ``sourceEvent`` otherwise."""
    if not encrypted(envelope):
        event = envelope.get("sourceEvent")
        if not isinstance(event, dict):
            raise InvalidDelivery("envelope has no sourceEvent")
        return event
    return _decrypt(envelope, encryption_secrets)[1]


def decrypt_event_bytes(envelope: Mapping[str, Any], encryption_secrets: str | Iterable[str] | None) -> bytes:
    """The event of an encrypted 2.1 envelope exactly as Genesys sent it: the decrypted plaintext's
    bytes (checked to be one JSON object), for when parsing and writing it again would change it
    (``1E+2`` becomes ``100.0``)."""
    if not encrypted(envelope):
        raise InvalidDelivery("envelope is not encrypted")
    return _decrypt(envelope, encryption_secrets)[0]


def source_event_bytes(body: bytes | str) -> bytes:
    """The ``sourceEvent`` of a plain 2.1 envelope exactly as Genesys sent it, cut from the request
    body the relay wrote (parsing and writing it again would turn ``1E+2`` into ``100.0``). Raises
    InvalidDelivery for an encrypted envelope or a body that is not laid out as the relay writes it (a
    re-formatted copy, say)."""
    body = _as_bytes(body)
    start, closes = body.find(_SOURCE_EVENT_OPENS), body.rstrip().endswith(_ENVELOPE_CLOSES)
    if start < 0 or not closes:
        raise InvalidDelivery("not an envelope as the relay writes it: sourceEvent cannot be cut out")
    text = body[start + len(_SOURCE_EVENT_OPENS) : body.rstrip().rfind(_ENVELOPE_CLOSES)]
    try:
        envelope, event = load_json(body), load_json(text)
    except ValueError:
        raise InvalidDelivery(
            "not an envelope as the relay writes it: sourceEvent cannot be cut out"
        ) from None
    if not isinstance(envelope, dict) or encrypted(envelope):
        raise InvalidDelivery("envelope is encrypted: decrypt_event_bytes gives its event")
    if event != envelope.get("sourceEvent") or not isinstance(event, dict):
        raise InvalidDelivery("not an envelope as the relay writes it: sourceEvent cannot be cut out")
    return text


def _decrypt(
    envelope: Mapping[str, Any], encryption_secrets: str | Iterable[str] | None
) -> tuple[bytes, dict[str, Any]]:
    """The plaintext of an envelope's ``encryptionDirective`` and the event it holds."""
    directive = envelope["encryptionDirective"]
    try:
        if directive.get("algorithm") != "aes-256-gcm" or directive.get("keyDerivation") != "scrypt":
            raise InvalidDelivery("unsupported encryptionDirective")
        salt = bytes.fromhex(directive["salt"])
        sealed = crypto.Sealed(
            iv=bytes.fromhex(directive["iv"]),
            ciphertext=bytes.fromhex(directive["encryptedPayload"]),
            tag=bytes.fromhex(directive["authTag"]),
        )
        aad = str(envelope["deliveryId"]).encode()
        key_id = str(directive.get("keyId", ""))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, InvalidDelivery):
            raise
        raise InvalidDelivery("malformed encryptionDirective") from None
    if not sealed.well_formed:  # no key could open it: not a matter of the keys
        raise InvalidDelivery(
            f"malformed encryptionDirective: iv must be {crypto.IV_BYTES} bytes and authTag "
            f"{crypto.TAG_BYTES} ({2 * crypto.IV_BYTES} and {2 * crypto.TAG_BYTES} hex digits)"
        )
    keys = _as_list(encryption_secrets)
    if not keys:  # the receiver's setting, not the envelope: say so rather than "wrong key"
        raise InvalidDelivery(
            f"the envelope is encrypted (keyId {key_id!r}) and no encryption key was given: "
            "pass encryption_secrets"
        )
    for secret in keys:
        if not isinstance(secret, str):  # bytes read from a file, say: the receiver's setting, said as such
            raise InvalidDelivery(f"an encryption key must be a string, not {type(secret).__name__}")
        key = _keys.key_for(secret, key_id=key_id, salt=salt)
        try:
            plaintext = crypto.unseal(sealed, key.key, associated_data=aad)
        except DecryptionFailed:
            continue
        try:
            event = load_json(plaintext)
        except ValueError:
            raise InvalidDelivery("decrypted payload is not JSON") from None
        if not isinstance(event, dict):
            raise InvalidDelivery("decrypted payload is not a JSON object")
        return plaintext, event
    # The key version is no secret, and tells an operator holding only newer keys which one is missing.
    raise InvalidDelivery(
        f"no key decrypts this envelope, sealed with keyId {key_id!r} "
        "(wrong key or key version, wrong deliveryId, or tampered)"
    )


def open_delivery(
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    signing_secrets: str | Iterable[str] | None,
    encryption_secrets: str | Iterable[str] | None = (),
    tolerance_seconds: int = webhook_signing.DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Delivery:
    """Verify (unless ``signing_secrets`` is None), parse and, if needed, decrypt one delivery."""
    body = _as_bytes(body)
    if signing_secrets is not None:
        verify_signature(headers, body, signing_secrets, tolerance_seconds=tolerance_seconds, now=now)
    try:
        document = load_json(body)
    except ValueError:  # JsonTooDeep too
        raise InvalidDelivery("body is not JSON") from None
    envelope = as_envelope(document)
    is_encrypted = encrypted(envelope)
    directive = envelope.get("encryptionDirective") or {}
    return Delivery(
        delivery_id=envelope["deliveryId"],
        envelope=envelope,
        event=decrypt_event(envelope, encryption_secrets),
        encrypted=is_encrypted,
        key_id=directive.get("keyId") if isinstance(directive, dict) else None,
    )
