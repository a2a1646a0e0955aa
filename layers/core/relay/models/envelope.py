"""The delivery envelope, ``formatVersion`` "2.1": what a target receives as the request body.

Field names are the seed's (camelCase on the wire). ``deliveryId`` is the task's stable id, the same on
every retry; receivers deduplicate on it (it is also the ``webhook-id`` header).

``sourceEvent`` is the event's JSON text exactly as Genesys sent it, spliced into the body rather than
re-encoded, so a receiver parses (or hashes) the very bytes Genesys signed.
"""

from __future__ import annotations

import json
from typing import Final, Literal
from uuid import UUID

from pydantic import Field

from relay.models.targets import CamelModel, RetryMatrix

FORMAT_VERSION: Final = "2.1"


class EncryptionDirective(CamelModel):
    """How ``sourceEvent`` was sealed when the target has an encryption key (hex strings throughout)."""

    algorithm: Literal["aes-256-gcm"] = "aes-256-gcm"
    key_derivation: Literal["scrypt"] = "scrypt"
    encrypted_payload: str
    iv: str = Field(description="12 random bytes, hex")
    auth_tag: str = Field(description="16-byte GCM tag, hex")
    salt: str = Field(description="scrypt salt of the key version, hex")
    key_id: str


class DeliveryEnvelope(CamelModel):
    delivery_id: UUID
    timestamp: str = Field(description="ISO 8601 UTC, millisecond precision, 'Z' suffix")
    retry_matrix: RetryMatrix
    encryption_directive: EncryptionDirective | None = None
    # The event's JSON text, spliced in as is (to_json_bytes); "{}" when encrypted: the event is then
    # only inside encryptionDirective.encryptedPayload.
    source_event_json: str = Field("{}", exclude=True)
    format_version: Literal["2.1"] = FORMAT_VERSION

    def to_json_bytes(self) -> bytes:
        """The body: every field dumped as JSON but ``sourceEvent``, whose text goes in untouched."""
        head = self.model_dump_json(by_alias=True, exclude={"format_version"})
        tail = json.dumps(self.format_version)
        return f'{head[:-1]},"sourceEvent":{self.source_event_json},"formatVersion":{tail}}}'.encode()
