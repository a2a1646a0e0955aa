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

Up to ``CHECK_CONCURRENCY`` checks run at once, each on a sender of its own (its latency includes
connect and TLS): one after another, N targets that hang would take N x ``--timeout``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from relay.cli.terminal import format_table

if TYPE_CHECKING:
    from relay.logic.url_policy import UrlPolicy
    from relay.models.http import HttpResult
    from relay.models.targets import Target, UnreadableTarget
    from relay.ports import HttpClient, SecretReader
    from relay.settings import Settings

# How many targets `relay targets check` checks at once (each holds one connection of its own).
CHECK_CONCURRENCY = 8


def check_targets(settings: Settings, targets: Iterable[Target], *, timeout: float) -> list[dict[str, Any]]:
    """Each target's row (relay.cli.targets_check.check_target), checked side by side."""
    from relay.logic.url_policy import UrlPolicy
    from relay.wiring import secret_store
    from relay.wiring.dispatcher import http_sender

    policy = UrlPolicy.from_settings(settings)
    secrets = secret_store(settings)

    def check(target: Target) -> dict[str, Any]:
        # A sender per target: each check makes its own connection (its latency includes connect and TLS).
        with closing(http_sender(settings, pool_size=1, body_limit_bytes=0)) as sender:
            return check_target(target, timeout=timeout, policy=policy, sender=sender, secrets=secrets)

    return _side_by_side(check, list(targets))


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


def _check_row(integration_id: str, target_id: str, url: str | None) -> dict[str, Any]:
    return {"integrationId": integration_id, "targetId": target_id, "url": url, "method": "HEAD"}


def _not_reached(row: dict[str, Any], error: str) -> dict[str, Any]:
    """A check's row for a target no request was sent to, saying why."""
    return {**row, "reachable": False, "status": None, "latencyMs": None, "error": error}


def unreadable_result(bad: UnreadableTarget) -> dict[str, Any]:
    """The row of a target record this release cannot read (its URL is not read either)."""
    return _not_reached(_check_row(bad.integration_id, bad.target_id, None), bad.why)


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
    """Some target is unreachable or refused (exit 1)."""
    return not all(r["reachable"] for r in results)


def print_results(results: list[dict[str, Any]], out: IO[str], *, as_json: bool) -> None:
    """One JSON object per line, or a table."""
    if as_json:
        for result in results:
            print(json.dumps(result), file=out)
        return
    rows = [("INTEGRATION", "TARGET", "URL", "REACHABLE", "STATUS", "LATENCY_MS", "ERROR")]
    for r in results:
        rows.append(
            (
                r["integrationId"],
                r["targetId"],
                r["url"] or "-",
                "yes" if r["reachable"] else "no",
                str(r["status"] or "-"),
                str(r["latencyMs"] if r["latencyMs"] is not None else "-"),
                r["error"] or "-",
            )
        )
    print(format_table(rows), file=out)
