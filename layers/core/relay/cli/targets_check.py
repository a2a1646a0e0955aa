"""``relay targets check``: each target checked the way the dispatcher would reach it.

One HEAD per target within ``--timeout`` (connect, TLS and answer together): never a POST, no
redirects followed, the URL policy applied to the URL and, before the TCP handshake, to every address
connected to, through the dispatcher's own sender (relay.wiring.dispatcher.http_sender: the same
trusted CAs). The error is any answer a delivery would not count as delivered.

**mTLS.** A target with a client certificate gets it in the handshake, as its deliveries do: read
from its secret (``<prefix>/mtls/<targetId>``) by the dispatcher's secret reader
(relay.wiring.secret_store) and loaded by the sender's own TLS contexts (relay.adapters.tls). A
certificate that cannot be read or used means no request at all: the row is not reached, its error
``client certificate...`` and why (a secret that does not exist, a bundle with no key...), never the
bundle.

**OAuth2.** A target of security type oauth2 also gets its token endpoint asked for a token, as a
delivery asks (relay.adapters.oauth through relay.wiring.dispatcher.token_source, over the deliveries'
sender: the same grant and client authentication, the URL policy, the target's own timeouts, each at
most ``--timeout``), beside its HEAD, not after it. The row's ``tokenEndpoint`` says whether a usable
token came, the endpoint's status, why not (``token endpoint <host> answered 400 (invalid_client)``,
``client secret: ...``) and how long it took; no token means the row needs attention (exit 1) even if
the HEAD was answered. The HEAD itself never carries the token. The token is dropped unread, and
neither it nor the client secret is printed or logged.

**Configuration.** Every target's secrets are read and a request is built with them for a stand-in
event, as a delivery builds one (relay.logic.envelope.build_request: its signature, encryption and
Authorization header): ``configurationError`` says what a delivery would dead-let its records for as
``configuration`` (a signing secret not ``whsec_``, an encryption secret without ``keyId``, a secret
that does not exist), never a value; null when a delivery could be built.

Up to ``CHECK_CONCURRENCY`` requests run at once, each on a sender of its own (its latency includes
connect and TLS): one after another, N targets that hang would take N x ``--timeout``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from relay.cli.terminal import format_table

if TYPE_CHECKING:
    from relay.adapters.http import HttpSender
    from relay.logic.url_policy import UrlPolicy
    from relay.models.http import HttpResult
    from relay.models.targets import Target, UnreadableTarget
    from relay.ports import HttpClient, SecretReader
    from relay.settings import Settings

# How many requests (HEADs, token requests) `relay targets check` makes at once, each on a
# connection of its own.
CHECK_CONCURRENCY = 8


def check_targets(settings: Settings, targets: Iterable[Target], *, timeout: float) -> list[dict[str, Any]]:
    """Each target's row (check_target), with its token endpoint's (check_token_endpoint, None for a
    target without oauth2), all checked side by side: a target's HEAD and token request too."""
    from relay.logic.url_policy import UrlPolicy
    from relay.wiring import secret_store
    from relay.wiring.dispatcher import http_sender

    policy = UrlPolicy.from_settings(settings)
    secrets = secret_store(settings)

    def head(target: Target) -> dict[str, Any]:
        # A sender per check: each makes its own connection (its latency includes connect and TLS).
        with closing(http_sender(settings, pool_size=1, body_limit_bytes=0)) as sender:
            row = check_target(target, timeout=timeout, policy=policy, sender=sender, secrets=secrets)
        return {**row, "configurationError": check_configuration(target, secrets)}

    def token(target: Target) -> dict[str, Any]:
        with closing(http_sender(settings, pool_size=1, body_limit_bytes=0)) as sender:
            return check_token_endpoint(
                target,
                timeouts=_token_timeouts(settings, target, timeout),
                policy=policy,
                sender=sender,
                secrets=secrets,
            )

    chosen = list(targets)
    jobs: list[tuple[Callable[[Target], dict[str, Any]], Target]] = []
    for target in chosen:  # a target's token request beside its HEAD: neither waits for the other
        jobs += [(head, target), (token, target)] if _has_oauth2(target) else [(head, target)]
    done = iter(_side_by_side(lambda job: job[0](job[1]), jobs))
    return [{**next(done), "tokenEndpoint": next(done) if _has_oauth2(t) else None} for t in chosen]


def _has_oauth2(target: Target) -> bool:
    from relay.models.targets import SecurityType

    return target.security.type is SecurityType.OAUTH2


def _side_by_side[T, R](job: Callable[[T], R], items: list[T]) -> list[R]:
    with ThreadPoolExecutor(max_workers=CHECK_CONCURRENCY, thread_name_prefix="targets-check") as pool:
        try:
            return list(pool.map(job, items))
        except BaseException:  # Ctrl-C: the checks not started yet are not started
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def check_target(
    target: Target, *, timeout: float, policy: UrlPolicy, sender: HttpClient, secrets: SecretReader
) -> dict[str, Any]:
    """One HEAD to the target's URL, all of it (connect, TLS, answer) within ``timeout`` seconds:
    status, latency and error. Never a POST; redirects not followed; ``policy`` applied to the URL
    (``sender``, the deliveries' own, applies it again before connecting, to every address); the
    target's client certificate, if it has one, presented (read through ``secrets``)."""
    from relay.errors import ConfigurationError, DependencyUnavailable, UnsafeUrl
    from relay.models.targets import masked_url

    result = _check_row(target.integration_id, target.target_id, masked_url(target.url))
    try:
        url = policy.check_url(target.url)
    except UnsafeUrl as exc:
        return _not_reached(result, f"URL refused: {exc}")
    certificate = None
    if name := target.security.client_certificate_name:
        try:  # the messages name the secret and why, never its value
            certificate = secrets(name).current
        except (ConfigurationError, DependencyUnavailable) as exc:
            return _not_reached(result, f"client certificate: {exc}")
    try:
        answer = sender.send(
            "HEAD",
            url,
            body=b"",
            headers={},
            connect_timeout=timeout,
            read_timeout=timeout,
            total_timeout=timeout,
            client_certificate=certificate,
        )
    except ConfigurationError as exc:  # "client certificate unusable: <why>": nothing was sent
        return _not_reached(result, str(exc))
    return {
        **result,
        # Any complete HTTP answer means the endpoint is there (a 405 to HEAD is common for POST-only
        # receivers); one cut off or past the deadline does not, and has no status to show (a status
        # line that came before the rest never did would read as a healthy target to a script).
        "reachable": answer.status is not None and answer.error_code is None,
        "status": answer.status if answer.error_code is None else None,
        "latencyMs": round(answer.elapsed_ms, 1),
        "error": _check_error(answer),
    }


def check_configuration(target: Target, secrets: SecretReader) -> str | None:
    """Why a delivery to ``target`` could not be built with its secrets as they are (the error a
    delivery would record as ``configuration``), or None: the secrets read and a request built for a
    stand-in event. The client certificate and an oauth2 client secret are left to the checks that use
    them (the HEAD, the token request), which name their errors; oauth2 gets a stand-in token."""
    import uuid

    from pydantic import SecretStr

    from relay.errors import ConfigurationError, DependencyUnavailable
    from relay.logic import crypto
    from relay.logic.dispatch.attempt import target_secrets
    from relay.logic.envelope import build_request
    from relay.models.delivery import DeliveryTask

    now = datetime.now(UTC)
    stand_in = DeliveryTask(
        delivery_id=uuid.uuid4(),
        integration_id=target.integration_id,
        target_id=target.target_id,
        event_id="relay-targets-check",
        received_at=now,
        event_json="{}",
    )
    oauth2 = _has_oauth2(target)
    checked_elsewhere = ("client_certificate", "auth") if oauth2 else ("client_certificate",)
    try:
        build_request(
            stand_in,
            "{}",
            target,
            target_secrets(target, secrets, unread=checked_elsewhere),
            key_cache=crypto.KeyCache(),
            now=now,
            access_token=SecretStr("stand-in") if oauth2 else None,
        )
    except (ConfigurationError, DependencyUnavailable) as exc:  # the messages never quote a value
        return str(exc)
    return None


def check_token_endpoint(
    target: Target,
    *,
    timeouts: tuple[float, float, float],
    policy: UrlPolicy,
    sender: HttpSender,
    secrets: SecretReader,
) -> dict[str, Any]:
    """An OAuth2 target's token request, made as a delivery makes it (relay.adapters.oauth over the
    deliveries' sender: the same grant, client authentication, URL policy and answer checks) within
    ``timeouts`` (connect, read, total): whether it gave a usable token, the endpoint's status, why
    not, and how long it took. The token is dropped, never shown; errors never quote the secret."""
    from relay.errors import ConfigurationError, DependencyUnavailable, TokenUnavailable, UnsafeUrl
    from relay.models.targets import masked_url
    from relay.wiring.dispatcher import token_source

    client = target.security.oauth2
    row: dict[str, Any] = {"url": masked_url(client.token_url) if client else None}
    if client is None or not target.security.secret_name:
        return _token_row(row, None, None, "oauth2 without its client or client secret configured")
    try:
        policy.check_url(client.token_url)
    except UnsafeUrl as exc:
        return _token_row(row, None, None, f"token URL refused: {exc}")
    try:
        secret = secrets(target.security.secret_name).current
    except (ConfigurationError, DependencyUnavailable) as exc:
        return _token_row(row, None, None, f"client secret: {exc}")
    answers: list[HttpResult] = []
    tokens = token_source(sender, on_answer=answers.append)
    connect, read, total = timeouts
    started = time.monotonic()
    try:
        tokens.token(target, secret, connect_timeout=connect, read_timeout=read, total_timeout=total)
        error = None
    except (TokenUnavailable, ConfigurationError) as exc:
        error = str(exc)
    answer = answers[-1] if answers else None
    status = answer.status if answer is not None and answer.error_code is None else None
    latency = answer.elapsed_ms if answer is not None else (time.monotonic() - started) * 1000.0
    return _token_row(row, status, round(latency, 1), error)


def _token_row(
    row: dict[str, Any], status: int | None, latency_ms: float | None, error: str | None
) -> dict[str, Any]:
    return {**row, "ok": error is None, "status": status, "error": error, "latencyMs": latency_ms}


def _token_timeouts(settings: Settings, target: Target, timeout: float) -> tuple[float, float, float]:
    """A delivery's token request timeouts for the target (connect, read, and their sum in all),
    each at most ``timeout``."""
    from relay.logic.dispatch.attempt import timeouts

    connect, read = timeouts(settings, target)
    return min(connect, timeout), min(read, timeout), min(connect + read, timeout)


def _check_row(integration_id: str, target_id: str, url: str | None) -> dict[str, Any]:
    return {"integrationId": integration_id, "targetId": target_id, "url": url, "method": "HEAD"}


def _not_reached(row: dict[str, Any], error: str) -> dict[str, Any]:
    """A check's row for a target no request was sent to, saying why."""
    return {**row, "reachable": False, "status": None, "latencyMs": None, "error": error}


def unreadable_result(bad: UnreadableTarget) -> dict[str, Any]:
    """The row of a target record this release cannot read (its URL is not read either)."""
    return {
        **_not_reached(_check_row(bad.integration_id, bad.target_id, None), bad.why),
        "tokenEndpoint": None,
        "configurationError": None,
    }


def _check_error(answer: HttpResult) -> str | None:
    """Why a delivery given this answer would not count as delivered (relay.logic.outcomes decides,
    as for deliveries); None when it would."""
    from relay.logic.outcomes import Verdict, classify

    if answer.error_code is not None or answer.status is None:
        return answer.error or answer.error_code or "no answer"
    if classify(answer, now=datetime.now(UTC)).verdict is Verdict.DELIVERED:
        return None
    if 300 <= answer.status < 400:
        return f"HTTP {answer.status}: redirects are not followed"
    return f"HTTP {answer.status}"


def needs_attention(results: list[dict[str, Any]]) -> bool:
    """Some target is unreachable or refused, its token endpoint gave no token, or a delivery could not
    be built with its secrets (exit 1)."""
    return not all(
        r["reachable"] and (r["tokenEndpoint"] or {"ok": True})["ok"] and r["configurationError"] is None
        for r in results
    )


def print_results(results: list[dict[str, Any]], out: IO[str], *, as_json: bool) -> None:
    """One JSON object per line, or a table (TOKEN: ``ok``, ``failed``, ``-`` without oauth2; the
    token endpoint's error after the HEAD's)."""
    if as_json:
        for result in results:
            print(json.dumps(result), file=out)
        return
    rows = [("INTEGRATION", "TARGET", "URL", "REACHABLE", "STATUS", "LATENCY_MS", "TOKEN", "ERROR")]
    for r in results:
        endpoint = r["tokenEndpoint"]
        errors = [r["error"], endpoint and endpoint["error"], r["configurationError"]]
        rows.append(
            (
                r["integrationId"],
                r["targetId"],
                r["url"] or "-",
                "yes" if r["reachable"] else "no",
                str(r["status"] or "-"),
                str(r["latencyMs"] if r["latencyMs"] is not None else "-"),
                "-" if endpoint is None else "ok" if endpoint["ok"] else "failed",
                "; ".join(e for e in errors if e) or "-",
            )
        )
    print(format_table(rows), file=out)
