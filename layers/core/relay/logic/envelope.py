"""Build what goes on the wire for one delivery attempt: the 2.1 envelope, its body and its headers.

The event arrives as its JSON text and is never parsed or re-encoded here: a plain target gets it
spliced into ``sourceEvent``, an encrypted target gets exactly its UTF-8 bytes as the plaintext.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from datetime import datetime

from pydantic import SecretStr

from relay import __version__
from relay.errors import ConfigurationError
from relay.logic import crypto, webhook_signing
from relay.models.delivery import DeliveryTask
from relay.models.envelope import FORMAT_VERSION, DeliveryEnvelope, EncryptionDirective
from relay.models.http import OutboundRequest
from relay.models.secrets import RotatingSecret
from relay.models.targets import SecurityType, Target
from relay.models.timestamps import iso_utc
from relay.models.webhook_config import is_custom_header, is_header_value

USER_AGENT = f"genesys-relay/{__version__} (+formatVersion {FORMAT_VERSION})"


@dataclass(frozen=True)
class TargetSecrets:
    """The secrets a target's deliveries use (each None when the target has none of that kind)."""

    signing: RotatingSecret | None = None
    auth: RotatingSecret | None = None  # bearer token, "user:password", or the OAuth client secret
    encryption: RotatingSecret | None = None
    client_certificate: RotatingSecret | None = None  # mTLS: certificate, chain and key (PEM)


def encryption_key_for(
    secret: RotatingSecret, cache: crypto.KeyCache, *, target_id: str
) -> crypto.EncryptionKey:
    """The derived key of the target's current encryption key version; fails loudly without keyId/salt."""
    what = f"encryption secret of target {target_id}"
    if not secret.key_id:
        raise ConfigurationError(f"{what} has no keyId")
    salt = crypto.parse_salt(secret.salt, what=what)
    return cache.key_for(secret.current.get_secret_value(), key_id=secret.key_id, salt=salt)


def build_envelope(
    task: DeliveryTask,
    event_json: str,
    target: Target,
    *,
    now: datetime,
    key: crypto.EncryptionKey | None,
) -> DeliveryEnvelope:
    directive: EncryptionDirective | None = None
    if key is not None:
        sealed = crypto.seal(event_json.encode(), key.key, associated_data=str(task.delivery_id).encode())
        directive = EncryptionDirective(
            encrypted_payload=sealed.ciphertext.hex(),
            iv=sealed.iv.hex(),
            auth_tag=sealed.tag.hex(),
            salt=key.salt.hex(),
            key_id=key.key_id,
        )
    return DeliveryEnvelope(
        delivery_id=task.delivery_id,
        timestamp=iso_utc(now),
        retry_matrix=target.retry_matrix,
        encryption_directive=directive,
        source_event_json="{}" if directive else event_json,
    )


def _authorization(target: Target, auth: RotatingSecret | None, access_token: SecretStr | None) -> str | None:
    if target.security.type is SecurityType.NONE:
        return None
    if target.security.type is SecurityType.OAUTH2:
        if access_token is None:
            raise ConfigurationError(f"target {target.target_id} uses oauth2 auth but no token was fetched")
        return bearer(access_token)
    if auth is None:
        raise ConfigurationError(
            f"target {target.target_id} uses {target.security.type} auth but has no secret"
        )
    value = auth.current.get_secret_value()
    if target.security.type is SecurityType.BEARER:
        if not is_header_value(value):
            # Config sync refuses such a token, but one provisioned by hand ("token\n") would fail on
            # the wire and be dead-lettered permanent-status, as if the target had refused it.
            raise ConfigurationError(
                f"the bearer token of target {target.target_id} holds a line break or another character "
                "an Authorization header cannot carry"
            )
        return f"Bearer {value}"
    return "Basic " + base64.b64encode(value.encode()).decode()


def bearer(token: SecretStr) -> str:
    return f"Bearer {token.get_secret_value()}"


def with_access_token(request: OutboundRequest, token: SecretStr) -> OutboundRequest:
    """The same request with a fresh OAuth token (an oauth2 target answered 401 to the last one)."""
    return replace(request, headers={**request.headers, "Authorization": bearer(token)})


def _custom_headers(target: Target) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in target.headers.items():
        # Config sync refuses the others; a record stored before it did never sends them (nor injects).
        if is_custom_header(name, value):
            kept[name] = value
    return kept


def build_headers(
    envelope: DeliveryEnvelope,
    body: bytes,
    target: Target,
    secrets: TargetSecrets,
    *,
    now: datetime,
    access_token: SecretStr | None = None,
) -> dict[str, str]:
    msg_id = str(envelope.delivery_id)
    timestamp = int(now.timestamp())
    headers = _custom_headers(target)
    headers.update(
        {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Delivery-Id": msg_id,
            "X-Format-Version": envelope.format_version,
            # The seed's header: the Genesys webhook integration that configures the target (its id).
            "X-Integration-Id": target.target_id,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
    )
    if secrets.signing is not None:
        headers["webhook-signature"] = webhook_signing.sign(msg_id, timestamp, body, secrets.signing.values())
    authorization = _authorization(target, secrets.auth, access_token)
    if authorization is not None:
        headers["Authorization"] = authorization
    return headers


def build_request(
    task: DeliveryTask,
    event_json: str,
    target: Target,
    secrets: TargetSecrets,
    *,
    key_cache: crypto.KeyCache,
    now: datetime,
    access_token: SecretStr | None = None,
) -> OutboundRequest:
    """Everything one attempt sends, around ``event_json`` (the event's JSON text, checked by the caller).
    ``access_token``: an oauth2 target's, fetched by the caller. Raises ConfigurationError rather than
    ever sending in clear a target that wants encryption."""
    key = None
    if target.encryption_key_name is not None:
        if secrets.encryption is None:
            raise ConfigurationError(f"target {target.target_id} wants encryption but has no key")
        key = encryption_key_for(secrets.encryption, key_cache, target_id=target.target_id)
    envelope = build_envelope(task, event_json, target, now=now, key=key)
    body = envelope.to_json_bytes()
    headers = build_headers(envelope, body, target, secrets, now=now, access_token=access_token)
    return OutboundRequest(target.method, target.url, body, headers, encrypted=key is not None)
