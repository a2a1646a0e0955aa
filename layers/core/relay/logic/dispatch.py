"""The dispatcher: deliver one SQS batch of DeliveryTasks concurrently and report partial failures."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from pydantic import ValidationError

from relay.adapters.http import HttpSender
from relay.adapters.secrets import RotatingSecret, get_secret
from relay.adapters.target_store import TargetStore
from relay.errors import ConfigurationError, DependencyUnavailable
from relay.logic import crypto
from relay.logic.envelope import TargetSecrets, build_request
from relay.logic.url_policy import check_address
from relay.models.delivery import DeliveryTask
from relay.models.targets import Target
from relay.observability import logger
from relay.settings import Settings, get_settings

SecretReader = Callable[[str], RotatingSecret]


@dataclass(frozen=True)
class SqsRecord:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    message_attributes: Mapping[str, Any]

    @classmethod
    def from_event(cls, record: Mapping[str, Any]) -> SqsRecord:
        attributes = record.get("attributes") or {}
        return cls(
            message_id=str(record["messageId"]),
            receipt_handle=str(record.get("receiptHandle", "")),
            body=str(record.get("body", "")),
            receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
            message_attributes=record.get("messageAttributes") or {},
        )


class Dispatcher:
    def __init__(
        self,
        *,
        settings: Settings,
        targets: TargetStore,
        http: HttpSender,
        secrets: SecretReader = get_secret,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._targets = targets
        self._http = http
        self._secrets = secrets
        self._now = now
        self._keys = crypto.KeyCache()
        self._pool = ThreadPoolExecutor(
            max_workers=settings.delivery_concurrency, thread_name_prefix="deliver"
        )
        self._lock = threading.Lock()

    def handle_batch(self, records: list[Mapping[str, Any]]) -> dict[str, list[dict[str, str]]]:
        parsed = [SqsRecord.from_event(r) for r in records]
        results = list(self._pool.map(self._deliver_one, parsed))
        return {
            "batchItemFailures": [
                {"itemIdentifier": r.message_id} for r, ok in zip(parsed, results, strict=True) if not ok
            ]
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()

    def _target_secrets(self, target: Target) -> TargetSecrets:
        def read(name: str | None) -> RotatingSecret | None:
            return self._secrets(name) if name else None

        return TargetSecrets(
            signing=read(target.signing_secret_name),
            auth=read(target.security.secret_name),
            encryption=read(target.encryption_key_name),
        )

    def _deliver_one(self, record: SqsRecord) -> bool:
        try:
            task = DeliveryTask.model_validate_json(record.body)
        except ValidationError:
            logger.warning("unparseable delivery task", extra={"messageId": record.message_id})
            return False
        try:
            target = self._targets.get_target(task.integration_id, task.target_id)
            if target is None or not target.enabled or task.event is None:
                return False
            request = build_request(
                task, task.event, target, self._target_secrets(target), key_cache=self._keys, now=self._now()
            )
        except (ConfigurationError, DependencyUnavailable) as exc:
            logger.warning(
                "delivery not attempted", extra={"deliveryId": str(task.delivery_id), "error": str(exc)}
            )
            return False
        result = self._http.send(
            request.method,
            request.url,
            body=request.body,
            headers=request.headers,
            connect_timeout=target.connect_timeout_seconds or self._settings.connect_timeout_seconds,
            read_timeout=target.read_timeout_seconds or self._settings.read_timeout_seconds,
        )
        ok = result.status is not None and 200 <= result.status < 300
        logger.info(
            "delivery attempt",
            extra={
                "deliveryId": str(task.delivery_id),
                "status": result.status,
                "errorCode": result.error_code,
            },
        )
        return ok


_container: tuple[Settings, Dispatcher] | None = None
_container_lock = threading.Lock()


def container_dispatcher() -> Dispatcher:
    """The dispatcher of this container: session, pools and caches built once and reused by every batch.

    Rebuilt when the settings object changes (``get_settings.cache_clear()`` after the environment
    changed, as the tests and the local stack do), so it never points at stale tables or queues.
    """
    global _container
    settings = get_settings()
    with _container_lock:
        if _container is None or _container[0] is not settings:
            if _container is not None:
                _container[1].close()
            _container = (settings, _build(settings))
        return _container[1]


def _build(settings: Settings) -> Dispatcher:
    return Dispatcher(
        settings=settings,
        targets=TargetStore(
            settings.need("targets_table"), cache_ttl_seconds=settings.target_cache_ttl_seconds
        ),
        http=HttpSender(
            pool_size=settings.delivery_concurrency,
            body_limit_bytes=settings.response_body_limit_bytes,
            address_check=partial(check_address, allow_loopback=settings.allow_loopback_targets),
        ),
    )
