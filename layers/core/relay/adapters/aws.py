"""boto3 clients for one ``Settings``: its region, its endpoint (AWS_ENDPOINT_URL, how the local stack
and the tests point every client at moto's server) and, when set, its credentials.

``AwsClients`` is built by relay.wiring, once per container (per Settings object), and hands each
adapter the client it needs. Clients are made on first use: each costs tens of milliseconds, and a
container that never needs one (the intake's S3 client, used only for claim checks) never pays for it.
Every client comes from one boto3 session per process (``new_client``): a session loads the endpoint
and service models once, so a client costs a few milliseconds from it instead of fifty to a hundred
from a session of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from botocore.parsers import ResponseParserError

from relay.errors import ConfigurationError
from relay.settings import Settings


def client_config(settings: Settings) -> Config:
    """Short timeouts and a bounded standard retry (``settings``' AWS_* bounds): a function must answer,
    or fail, inside its own timeout; a call that hangs becomes DependencyUnavailable in the adapter."""
    return Config(
        connect_timeout=settings.aws_connect_timeout_seconds,
        read_timeout=settings.aws_read_timeout_seconds,
        retries={"total_max_attempts": settings.aws_max_attempts, "mode": "standard"},
        max_pool_connections=50,
    )


class OutOfTime(BotoCoreError):  # type: ignore[misc]  # botocore ships no type hints
    """An AWS call not started: its worst case (connect + read timeout) would end past the deadline
    ``calls_until`` set. Adapters map it as any BotoCoreError: the dependency is unavailable."""

    fmt = "no time left in this invocation for another AWS call"


# When the AWS calls of the invocation running on this thread must have ended (time.monotonic()).
_deadline: ContextVar[float | None] = ContextVar("aws_calls_deadline", default=None)


@contextmanager
def calls_until(deadline: float | None) -> Iterator[None]:
    """Inside, on this thread, an AWS call (each try of it) starts only if it cannot end past
    ``deadline``: a function then answers inside its own timeout, as a dependency failure, where calls
    that each fit would add up past it (the intake: a claim, a send and an answer, several tries each)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def _refuse_html(operation_model: Any, response_dict: dict[str, Any], **_event: Any) -> None:
    """botocore's before-parse hook: an HTML page answered 200 (a proxy's, a captive portal's) is not
    AWS's answer. botocore's JSON parser reads one as an empty result (a DynamoDB scan of no items, an
    empty queue) and its XML parser fails with a KeyError; raised here, it is AWS unavailable, as
    adapters map it. An error status is left to botocore: it already makes that an error."""
    body = response_dict.get("body")
    status = response_dict.get("status_code")
    if not isinstance(status, int) or status >= 300:
        return
    if operation_model.has_streaming_output or not isinstance(body, bytes):
        return  # an object's own bytes (S3 GetObject) may be anything
    if body[:512].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise ResponseParserError(f"an HTML page answered HTTP {status}, not AWS")


def _refuse_past_deadline(worst_seconds: float, **_event: Any) -> None:
    """botocore's before-send hook, called before each try of each call."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() + worst_seconds > deadline:
        raise OutOfTime()


class AwsClients:
    """One client per service for one Settings; thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._config = client_config(settings)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def client(self, service: str) -> Any:
        """The client for ``service`` (e.g. "sqs", "dynamodb"), made when first used."""
        return _OnFirstUse(self, service)

    def made(self, service: str) -> Any:
        with self._lock:
            made = self._clients.get(service)
            if made is None:
                made = self._clients[service] = self._make(service)
            return made

    def _make(self, service: str) -> Any:
        settings = self._settings
        credentials: dict[str, str] = {}
        if settings.aws_access_key_id and settings.aws_secret_access_key:
            credentials = {
                "aws_access_key_id": settings.aws_access_key_id,
                "aws_secret_access_key": settings.aws_secret_access_key.get_secret_value(),
            }
            if settings.aws_session_token:
                credentials["aws_session_token"] = settings.aws_session_token.get_secret_value()
        try:
            client = new_client(
                service,
                region_name=settings.region,
                endpoint_url=settings.aws_endpoint_url,
                config=self._config,
                **credentials,
            )
        except ValueError:
            # botocore's "Invalid endpoint": Settings checks its own, but botocore also reads
            # AWS_ENDPOINT_URL_<SERVICE> and the AWS config file. The value is not quoted (a URL can
            # carry credentials).
            raise ConfigurationError(
                f"no AWS {service} client: its endpoint is not a valid URL (AWS_ENDPOINT_URL, "
                f"AWS_ENDPOINT_URL_{service.upper()} or the AWS config file)"
            ) from None
        worst = settings.aws_connect_timeout_seconds + settings.aws_read_timeout_seconds
        client.meta.events.register("before-send", partial(_refuse_past_deadline, worst))
        client.meta.events.register("before-parse", _refuse_html)
        return client


_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def new_client(service: str, **arguments: Any) -> Any:
    """A boto3 client made from the process's session. Region, endpoint and credentials go to the
    client, never to the session, so clients for different settings can share it. A session is not
    thread-safe; clients are: making one holds the lock, using one does not."""
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(service, **arguments)


class _OnFirstUse:
    """Stands in for a boto3 client until an attribute is first read, then is that client."""

    __slots__ = ("_clients", "_service")

    def __init__(self, clients: AwsClients, service: str) -> None:
        self._clients = clients
        self._service = service

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clients.made(self._service), name)
