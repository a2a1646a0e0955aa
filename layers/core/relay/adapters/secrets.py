"""Secret values in Secrets Manager, read through powertools Parameters with a per-container cache.

Every secret the relay uses has the same JSON shape, so rotation works the same way everywhere::

    {"current": "...", "previous": "..." | null, "keyId": "..." | null, "salt": "<hex>" | null}

``previous`` stays valid while a rotation is under way (signature secrets, signing secrets);
``keyId`` and ``salt`` are set for encryption keys (the salt is random per key version).
Names are ``<SECRETS_PREFIX>/<kind>/<id>``. Values are SecretStr: they never reach a log or an error.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import ValidationError

from relay.adapters.aws import client
from relay.errors import ConfigurationError, DependencyUnavailable
from relay.models.secrets import RotatingSecret, SecretKind
from relay.models.secrets import secret_name as _secret_name
from relay.settings import get_settings


def secret_name(kind: SecretKind, ident: str) -> str:
    return _secret_name(get_settings().secrets_prefix, kind, ident)


@lru_cache(maxsize=1)
def _provider():  # type: ignore[no-untyped-def]
    # Imported here: the parameters utility is only needed by callers that read secrets.
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    return SecretsProvider(boto3_client=client("secretsmanager"))


def get_secret(name: str, *, force_fetch: bool = False) -> RotatingSecret:
    """The secret called ``name``, cached for SECRET_CACHE_TTL_SECONDS."""
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    try:
        raw = _provider().get(name, max_age=get_settings().secret_cache_ttl_seconds, force_fetch=force_fetch)
    except GetParameterError as exc:
        if "ResourceNotFoundException" in str(exc):
            raise ConfigurationError(f"secret {name} does not exist") from None
        raise DependencyUnavailable(f"Secrets Manager unavailable reading {name}") from None
    try:
        return RotatingSecret.from_json(str(raw))
    except (ValueError, KeyError, TypeError, ValidationError):
        raise ConfigurationError(f"secret {name} is not in the relay's JSON shape") from None


def put_secret(name: str, secret: RotatingSecret) -> None:
    """Create ``name`` or store a new version of it."""
    sm = client("secretsmanager")
    try:
        sm.put_secret_value(SecretId=name, SecretString=secret.to_json())
    except sm.exceptions.ResourceNotFoundException:
        sm.create_secret(Name=name, SecretString=secret.to_json())


def reset_secret_cache() -> None:
    _provider.cache_clear()
