"""One delivery attempt: load the event, read the target's secrets, build the request, send it and
classify the answer. Returns what happened as a value; deciding what to do about it is settling's job
(relay.logic.dispatch.settle)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from relay.errors import ConfigurationError, DependencyUnavailable, UnreadableEvent
from relay.logic import crypto
from relay.logic.dispatch.audit import scrub
from relay.logic.dispatch.records import Item, Unattempted
from relay.logic.envelope import TargetSecrets, build_request
from relay.logic.outcomes import Outcome, Verdict, classify
from relay.models.delivery import DlqReason, check_event_json
from relay.models.http import HttpResult, OutboundRequest
from relay.models.secrets import RotatingSecret
from relay.models.targets import Target
from relay.ports import ClaimCheckReader, HttpClient, SecretReader
from relay.settings import Settings


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to. ``result`` is None when nothing was sent (a secret or a dependency
    failed first): ``outcome`` is then retryable and ``error`` says why."""

    outcome: Outcome
    started: datetime
    finished: datetime
    error: str | None
    result: HttpResult | None = None
    encrypted: bool = False
    # The response body for the audit, secrets scrubbed; None for an encrypting target (it might echo
    # the plaintext).
    response_body: str | None = None


def timeouts(settings: Settings, target: Target) -> tuple[float, float]:
    """(connect, read) timeouts of the target's requests: its own, else the deployment's."""
    return (
        target.connect_timeout_seconds or settings.connect_timeout_seconds,
        target.read_timeout_seconds or settings.read_timeout_seconds,
    )


class Attempter:
    def __init__(
        self,
        *,
        settings: Settings,
        http: HttpClient,
        secrets: SecretReader,
        claim_checks: ClaimCheckReader,
        now: Callable[[], datetime],
    ) -> None:
        self._settings = settings
        self._http = http
        self._secrets = secrets
        self._claim_checks = claim_checks
        self._now = now
        self._keys = crypto.KeyCache()

    def run(self, item: Item) -> Attempt | Unattempted:
        """Attempt ``item``'s delivery; Unattempted (poison) when its event cannot be sent."""
        started = self._now()
        try:
            secrets, request = self._prepare(item, started)
        except UnreadableEvent:
            return Unattempted(item.record, item.task, DlqReason.POISON, "event unreadable")
        except (ConfigurationError, DependencyUnavailable) as exc:
            # Not the endpoint's fault, and nothing was sent (never in clear): try again later.
            code = "configuration" if isinstance(exc, ConfigurationError) else "dependency-unavailable"
            return Attempt(Outcome(Verdict.RETRYABLE, None, code), started, self._now(), str(exc))
        connect, read = timeouts(self._settings, item.target)
        result = self._http.send(
            request.method,
            request.url,
            body=request.body,
            headers=request.headers,
            connect_timeout=connect,
            read_timeout=read,
        )
        finished = self._now()
        body = None if request.encrypted else scrub(result.body.decode("utf-8", "replace"), secrets)
        return Attempt(
            classify(result, now=finished),
            started,
            finished,
            result.error,
            result,
            encrypted=request.encrypted,
            response_body=body,
        )

    def _prepare(self, item: Item, now: datetime) -> tuple[TargetSecrets, OutboundRequest]:
        task = item.task
        event_json = task.inline_event_json()
        if event_json is None and task.event_ref is not None:
            event_json = self._claim_checks.load(task.event_ref)
        if event_json is None:
            raise UnreadableEvent("task has neither eventJson nor eventRef")
        # Sent as it is, never re-encoded: it must be what the intake let in, a JSON object.
        check_event_json(event_json)
        secrets = self._target_secrets(item.target)
        return secrets, build_request(task, event_json, item.target, secrets, key_cache=self._keys, now=now)

    def _target_secrets(self, target: Target) -> TargetSecrets:
        def read(name: str | None) -> RotatingSecret | None:
            return self._secrets(name) if name else None

        return TargetSecrets(
            signing=read(target.signing_secret_name),
            auth=read(target.security.secret_name),
            encryption=read(target.encryption_key_name),
        )
