"""One delivery attempt: load the event, read the target's secrets (and an oauth2 target's token), build
the request, send it and classify the answer. Returns what happened as a value; deciding what to do
about it is settling's job (relay.logic.dispatch.settle).

An oauth2 target that answers 401 gets the same request once more with a fresh token, in the same
attempt. Everything on the target's side (the token request, the delivery, that one retry) fits in
one request's budget, connect + read timeout: the time the engine plans each attempt with. A request
that starts with less than ``CUT_SHORT_SHARE`` of that budget left and times out was cut by the relay,
not by the endpoint: retried, and not counted against the endpoint (``Outcome.cut_short``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from pydantic import SecretStr

from relay.errors import (
    ClaimCheckMissing,
    ConfigurationError,
    DependencyUnavailable,
    TokenUnavailable,
    UnreadableEvent,
)
from relay.logic import crypto
from relay.logic.dispatch.kept_answers import response_for_audit, target_secret_values
from relay.logic.dispatch.records import Item, Unattempted
from relay.logic.envelope import TargetSecrets, build_request, with_access_token
from relay.logic.outcomes import Outcome, Verdict, classify
from relay.models.delivery import DlqReason, check_event_json
from relay.models.http import (
    CONNECT_TIMEOUT,
    DEADLINE_EXCEEDED,
    READ_TIMEOUT,
    HttpResult,
    OutboundRequest,
    parse_retry_after,
)
from relay.models.targets import SecurityType, Target
from relay.ports import AccessTokens, ClaimCheckReader, HttpClient, SecretReader, TargetSecretReader
from relay.settings import Settings

# Error codes of attempts that sent nothing, or could not finish, for reasons not the endpoint's own.
CONFIGURATION = "configuration"
DEPENDENCY_UNAVAILABLE = "dependency-unavailable"
OAUTH_TOKEN_FAILED = "oauth-token-failed"
# A request that starts with less than this share of the attempt's budget left has had its time cut by
# what came before it in the attempt; if it then times out, that is not the endpoint's failure.
CUT_SHORT_SHARE = 0.9
_TIME_OUTS = frozenset({CONNECT_TIMEOUT, READ_TIMEOUT, DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to. ``result`` is None when no answer counts (a secret, a dependency or
    the token endpoint failed first, or no fresh token came after a 401): ``outcome`` is then
    retryable and ``error`` says why."""

    outcome: Outcome
    started: datetime
    finished: datetime
    error: str | None
    result: HttpResult | None = None
    encrypted: bool = False
    # The response body as the audit keeps it (kept_answers.response_for_audit); None for an encrypting
    # target (it might echo the plaintext).
    response_body: str | None = None


# A request starts only with its connect + read timeouts and a margin to settle the record left in the
# invocation (the engine's out-of-time rule): this much at least, and room for one try of an AWS call
# (settle_margin_seconds).
SETTLE_MARGIN_SECONDS = 3.0
# What an invocation keeps after its last AWS call, to flush its metrics and answer.
ANSWER_SECONDS = 0.5
# What an invocation may have spent before its first request starts (reading the batch, its targets
# and breakers): a request's timeouts are cut so that it fits in a fresh invocation with this to spare.
START_ALLOWANCE_SECONDS = 2.0


def settle_margin_seconds(settings: Settings) -> float:
    """What a request must leave of the invocation after its own timeouts. An AWS call's try starts only
    if its worst case (connect + read timeout) ends before the invocation must answer (the engine sets
    that deadline), so settling after the last request needs room for at least one try, else every
    audit object and dead letter of a batch that used its time would be refused."""
    one_try = settings.aws_connect_timeout_seconds + settings.aws_read_timeout_seconds
    return max(SETTLE_MARGIN_SECONDS, one_try + ANSWER_SECONDS)


def timeouts(settings: Settings, target: Target) -> tuple[float, float]:
    """(connect, read) timeouts of the target's requests: its own, else the deployment's, cut to fit in
    one dispatcher invocation. Config sync accepts up to 30 + 60 s and the template a 15 s function:
    a request that could never start would be handed back as out of time for ever."""
    connect = target.connect_timeout_seconds or settings.connect_timeout_seconds
    read = target.read_timeout_seconds or settings.read_timeout_seconds
    if settings.dispatcher_timeout_seconds is None:
        return connect, read
    fits = settings.dispatcher_timeout_seconds - settle_margin_seconds(settings) - START_ALLOWANCE_SECONDS
    if connect + read <= fits:
        return connect, read
    connect = min(connect, fits / 2)
    return connect, fits - connect


class _Budget:
    """The time an attempt may spend on its target's side, from the moment it starts to: one
    request's connect + read timeout, shared by a token request, the delivery and a retry."""

    def __init__(self, connect: float, read: float, clock: Callable[[], float]) -> None:
        self.connect, self.read = connect, read
        self._clock = clock
        self._ends = clock() + connect + read

    def left(self) -> float:
        return self._ends - self._clock()

    @property
    def total(self) -> float:
        return self.connect + self.read

    def cut(self, left: float) -> bool:
        """A request given ``left`` seconds has had its time cut by what the attempt did before it."""
        return left < self.total * CUT_SHORT_SHARE


class Attempter:
    def __init__(
        self,
        *,
        settings: Settings,
        http: HttpClient,
        secrets: TargetSecretReader,
        claim_checks: ClaimCheckReader,
        now: Callable[[], datetime],
        tokens: AccessTokens | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http = http
        self._secrets = secrets
        self._claim_checks = claim_checks
        self._now = now
        self._tokens = tokens
        self._monotonic = monotonic
        self._keys = crypto.KeyCache()

    def run(self, item: Item) -> Attempt | Unattempted:
        """Attempt ``item``'s delivery; Unattempted (poison, claim-check-missing) when its event cannot
        be sent."""
        started = self._now()
        target = item.target
        try:
            event_json = self._event_json(item)
            secrets = self._target_secrets(target)
            budget = _Budget(*timeouts(self._settings, target), self._monotonic)
            token = (
                self._token(target, secrets, budget) if target.security.type is SecurityType.OAUTH2 else None
            )
            request = build_request(
                item.task, event_json, target, secrets, key_cache=self._keys, now=started, access_token=token
            )
            result, tokens, given = self._send(target, request, secrets, token, budget)
            outcome, error = None, result.error
        except ClaimCheckMissing as exc:  # the event text is gone: no retry can bring it back
            return Unattempted(item.record, item.task, DlqReason.CLAIM_CHECK_MISSING, str(exc))
        except UnreadableEvent:
            return Unattempted(item.record, item.task, DlqReason.POISON, "event unreadable")
        except _NoFreshToken as exc:
            # The endpoint answered 401 and no fresh token came: its answer goes on record (status,
            # latency, body), but it is not the verdict: the attempt is retried once a token can be had.
            result, tokens = exc.answer, [exc.token]
            outcome, error = self._token_failed(exc), str(exc)
        except TokenUnavailable as exc:  # not the endpoint's fault, and nothing was sent: try again later
            return Attempt(self._token_failed(exc), started, self._now(), str(exc))
        except (ConfigurationError, DependencyUnavailable) as exc:
            # Not the endpoint's fault, and no answer counts (never sent in clear): try again later.
            if isinstance(exc, ConfigurationError):
                self._distrust_secrets(target)
            return Attempt(Outcome(Verdict.RETRYABLE, None, _code(exc)), started, self._now(), str(exc))
        finished = self._now()
        body = None
        if not request.encrypted:
            sent = [*target_secret_values(secrets, target), *(token.get_secret_value() for token in tokens)]
            body = response_for_audit(
                result.body,
                event_json=event_json,
                event_id=item.task.event_id,
                secrets=sent,
                truncated=result.body_truncated,
            )
        if outcome is None:
            outcome = classify(result, now=finished)
            if outcome.error_code in _TIME_OUTS and budget.cut(given):
                outcome = replace(outcome, cut_short=True)
                error = f"{error}; cut short: {given:.2f} s of the attempt's {budget.total:.2f} s were left"
        return Attempt(
            outcome,
            started,
            finished,
            error,
            result,
            encrypted=request.encrypted,
            response_body=body,
        )

    def _token_failed(self, exc: TokenUnavailable) -> Outcome:
        """Retried, no sooner than the token endpoint's Retry-After asked (a floor, as a target's is)."""
        wait = parse_retry_after(exc.retry_after, now=self._now())
        return Outcome(Verdict.RETRYABLE, None, OAUTH_TOKEN_FAILED, retry_after_seconds=wait)

    def _event_json(self, item: Item) -> str:
        task = item.task
        event_json = task.inline_event_json()
        if event_json is None and task.event_ref is not None:
            event_json = self._claim_checks.load(task.event_ref)
        if event_json is None:
            raise UnreadableEvent("task has neither eventJson nor eventRef")
        # Sent as it is, never re-encoded: it must be what the intake let in, a JSON object.
        check_event_json(event_json)
        return event_json

    def _distrust_secrets(self, target: Target) -> None:
        """A configuration error may come from any of the target's secret values (a key without keyId, a
        signing secret not whsec_, a bundle OpenSSL refuses): have each read again soon, so that the one
        an operator fixes is taken within seconds and a redrive does not dead-letter its records again."""
        for name in filter(None, _secret_names(target).values()):
            self._secrets.distrust(name)

    def _target_secrets(self, target: Target) -> TargetSecrets:
        return target_secrets(target, self._secrets)

    def _token(
        self, target: Target, secrets: TargetSecrets, budget: _Budget, *, refused: SecretStr | None = None
    ) -> SecretStr:
        if self._tokens is None:
            raise ConfigurationError(
                f"target {target.target_id} uses oauth2 auth but no token source is wired"
            )
        if secrets.auth is None:
            raise ConfigurationError(f"target {target.target_id} uses oauth2 auth but has no client secret")
        return self._tokens.token(
            target,
            secrets.auth.current,
            connect_timeout=budget.connect,
            read_timeout=budget.read,
            total_timeout=budget.left(),
            refused=refused,
        )

    def _send(
        self,
        target: Target,
        request: OutboundRequest,
        secrets: TargetSecrets,
        token: SecretStr | None,
        budget: _Budget,
    ) -> tuple[HttpResult, list[SecretStr], float]:
        """The answer, the tokens sent, and the seconds the answering request was given. A 401 to an
        OAuth token: once more with a fresh one (TokenUnavailable if there is none; a second 401 is
        the answer)."""
        result, given = self._post(request, secrets, budget)
        if token is None or (result.status, result.error_code) != (401, None):
            return result, [token] if token else [], given
        try:
            fresh = self._token(target, secrets, budget, refused=token)
        except TokenUnavailable as exc:
            raise _NoFreshToken(exc, result, token) from None
        again, given = self._post(with_access_token(request, fresh), secrets, budget)
        return again, [token, fresh], given

    def _post(
        self, request: OutboundRequest, secrets: TargetSecrets, budget: _Budget
    ) -> tuple[HttpResult, float]:
        left = budget.left()
        certificate = secrets.client_certificate
        return self._http.send(
            request.method,
            request.url,
            body=request.body,
            headers=request.headers,
            connect_timeout=min(budget.connect, left),
            read_timeout=min(budget.read, left),
            total_timeout=left,
            client_certificate=certificate.current if certificate else None,
        ), left


class _NoFreshToken(TokenUnavailable):
    """A 401 to the token sent, and no fresh token to send again: the 401 is the answer on record."""

    def __init__(self, cause: TokenUnavailable, answer: HttpResult, token: SecretStr) -> None:
        super().__init__(str(cause), retry_after=cause.retry_after)
        self.answer = answer
        self.token = token


def target_secrets(target: Target, read: SecretReader, *, unread: Iterable[str] = ()) -> TargetSecrets:
    """Each of the target's secrets as its deliveries read them (None for a kind it has none of, and
    for the kinds in ``unread``: TargetSecrets' field names)."""
    skipped = set(unread)
    names = {kind: name for kind, name in _secret_names(target).items() if kind not in skipped}
    return TargetSecrets(**{kind: read(name) if name else None for kind, name in names.items()})


def _secret_names(target: Target) -> dict[str, str | None]:
    """The Secrets Manager name of each of the target's secrets, by its TargetSecrets field."""
    return {
        "signing": target.signing_secret_name,
        "auth": target.security.secret_name,
        "encryption": target.encryption_key_name,
        "client_certificate": target.security.client_certificate_name,
    }


def _code(exc: Exception) -> str:
    return CONFIGURATION if isinstance(exc, ConfigurationError) else DEPENDENCY_UNAVAILABLE
