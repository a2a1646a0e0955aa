"""AWS clients, made once per container and shared by every caller.

boto3 honours ``AWS_ENDPOINT_URL``, which is how the local stack points every client at moto's server;
nothing here knows about that. Tests that change the endpoint call ``reset_clients()``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

from relay.settings import get_settings

# Short timeouts and a bounded standard retry: a Lambda must answer (or fail) well inside its own
# timeout, and the intake well inside Genesys' 10 s.
_CLIENT_CONFIG = Config(
    connect_timeout=2,
    read_timeout=5,
    retries={"max_attempts": 3, "mode": "standard"},
    max_pool_connections=50,
)


@cache
def client(service: str) -> Any:
    """The shared boto3 client for ``service`` (e.g. "sqs", "dynamodb")."""
    return boto3.session.Session().client(service, region_name=get_settings().region, config=_CLIENT_CONFIG)


def reset_clients() -> None:
    """Forget every cached client (after the endpoint or region changed)."""
    client.cache_clear()
