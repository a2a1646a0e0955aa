"""Secret values in Secrets Manager: reads through powertools Parameters with a per-container cache,
and the writes config sync makes. The shape and the names are relay.models.secrets.

Every failure is a relay error: a missing secret is ``SecretNotFound``, one not in the relay's shape
``UnusableSecret`` (both ConfigurationErrors), Secrets Manager being unreachable is
``DependencyUnavailable``. Neither message carries a value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from relay.adapters.aws_errors import AWS_ERRORS
from relay.errors import DependencyUnavailable, SecretNotFound, UnusableSecret
from relay.models.secrets import RotatingSecret

# A value not in the relay's shape stays in the cache like any other read, so its errors cost no
# Secrets Manager call each; but it is read again this often, so that a value fixed by hand is taken
# within seconds, not after the cache's TTL (5 minutes of refused webhooks).
UNUSABLE_RECHECK_SECONDS = 10.0


class SecretsManagerSecrets:
    """``secretsmanager`` is a boto3 client; reads are cached for ``cache_ttl_seconds``
    (SECRET_CACHE_TTL_SECONDS). The object is the dispatcher's and the intake's secret reader."""

    def __init__(
        self,
        secretsmanager: Any,
        *,
        cache_ttl_seconds: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = secretsmanager
        self._ttl = cache_ttl_seconds
        self._provider: Any = None
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self._unusable_since: dict[str, float] = {}  # name -> when a value not in the shape was read

    def __call__(self, name: str) -> RotatingSecret:
        return self.get(name)

    def get(self, name: str, *, force_fetch: bool = False) -> RotatingSecret:
        """The secret called ``name``, from the cache unless ``force_fetch``."""
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        unusable_since = self._unusable_since.get(name)
        if unusable_since is not None and self._monotonic() - unusable_since >= UNUSABLE_RECHECK_SECONDS:
            force_fetch = True
        try:
            raw = self._cached_provider().get(name, max_age=self._ttl, force_fetch=force_fetch)
        except GetParameterError as exc:
            if "ResourceNotFoundException" in str(exc):
                raise SecretNotFound(f"secret {name} does not exist") from None
            raise DependencyUnavailable(f"Secrets Manager unavailable reading {name}") from None
        try:
            secret = RotatingSecret.from_json(str(raw))
        except (ValueError, KeyError, TypeError, ValidationError):
            if force_fetch or unusable_since is None:
                self._unusable_since[name] = self._monotonic()
            raise UnusableSecret(f"secret {name} is not in the relay's JSON shape") from None
        self._unusable_since.pop(name, None)
        return secret

    def distrust(self, name: str) -> None:
        """A value read under ``name`` parsed but proved unusable where it was used: read it again once
        UNUSABLE_RECHECK_SECONDS have passed, as a value not in the shape is (one read per interval
        while it stays unusable)."""
        self._unusable_since.setdefault(name, self._monotonic())

    def refresh(self, name: str) -> RotatingSecret:
        """The secret read afresh (the intake re-reads a signature secret that may have rotated)."""
        return self.get(name, force_fetch=True)

    def put(self, name: str, secret: RotatingSecret) -> None:
        """Create ``name`` or store a new version of it."""
        try:
            try:
                self._client.put_secret_value(SecretId=name, SecretString=secret.to_json())
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                    raise
                self._client.create_secret(Name=name, SecretString=secret.to_json())
        except AWS_ERRORS as exc:
            raise DependencyUnavailable(
                f"Secrets Manager unavailable writing {name} ({type(exc).__name__})"
            ) from None

    def _cached_provider(self) -> Any:
        with self._lock:
            if self._provider is None:
                # Imported here: the parameters utility is only needed by callers that read secrets.
                from aws_lambda_powertools.utilities.parameters import SecretsProvider

                self._provider = SecretsProvider(boto3_client=self._client)
            return self._provider
