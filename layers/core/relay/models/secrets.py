"""Secrets as the relay stores them in Secrets Manager, and their names (docs/architecture.md).

Every secret has the same JSON shape, so rotation works the same way everywhere::

    {"current": "...", "previous": "..." | null, "keyId": "..." | null, "salt": "<hex>" | null}

``previous`` stays valid while a rotation is under way (signature secrets, signing secrets);
``keyId`` and ``salt`` are set for encryption keys (the salt is random per key version).
Names are ``<SECRETS_PREFIX>/<kind>/<id>``. Values are SecretStr: they never reach a log or an error.
"""

from __future__ import annotations

import json
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, SecretStr

from relay.json_input import load_json


class SecretKind(StrEnum):
    SIGNATURE = "signature"  # Genesys X-Hub-Signature-256 secret of an integration
    SIGNING = "signing"  # Standard Webhooks whsec_ secret of a target
    AUTH = "auth"  # bearer token, "user:password" or OAuth client secret of a target
    ENCRYPTION = "encryption"  # envelope encryption key of a target
    MTLS = "mtls"  # client certificate and key (one PEM bundle) a target's TLS handshake gets
    GENESYS = "genesys"  # Genesys OAuth client {"current": client_secret, "keyId": client_id}


def secret_name(prefix: str, kind: SecretKind, ident: str) -> str:
    """The Secrets Manager name of one secret: ``<prefix>/<kind>/<id>`` (prefix: SECRETS_PREFIX)."""
    return f"{prefix}/{kind.value}/{ident}"


class RotatingSecret(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    current: SecretStr
    previous: SecretStr | None = None
    key_id: str | None = None
    salt: str | None = None

    def values(self) -> list[str]:
        """Every value that is valid now, current first."""
        found = [self.current.get_secret_value()]
        if self.previous is not None:
            found.append(self.previous.get_secret_value())
        return found

    def to_json(self) -> str:
        return json.dumps(
            {
                "current": self.current.get_secret_value(),
                "previous": self.previous.get_secret_value() if self.previous else None,
                "keyId": self.key_id,
                "salt": self.salt,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> RotatingSecret:
        data = load_json(raw)
        return cls(
            current=data["current"],
            previous=data.get("previous"),
            key_id=data.get("keyId"),
            salt=data.get("salt"),
        )
