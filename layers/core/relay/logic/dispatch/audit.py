"""The audit trail of a batch: one line per attempt (and per record handled without one), written
as one JSON Lines object per target. Never a header, never a secret: the secrets a target was sent are
scrubbed from a response body it echoed (as they are, base64, JSON-escaped, percent-encoded), and an
encrypting target's response body is not kept at all. Never the event either: an answer that holds it
is not kept, and its text goes to the event archive, one object per invocation under its own prefix
(relay.models.archive), written here too.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from relay.errors import DependencyUnavailable
from relay.logic.dispatch.batch import DELIVERED as DELIVERED  # re-exported: one of the outcomes below
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.records import Item, SqsRecord
from relay.logic.envelope import TargetSecrets
from relay.models.archive import records_of
from relay.models.breaker import Phase
from relay.models.delivery import DeliveryTask
from relay.models.targets import CREDENTIAL_LIKE_LENGTH, Target, query_parts
from relay.models.timestamps import iso_utc
from relay.observability import logger
from relay.ports import AuditSink, EventArchive

# Audit outcomes (DELIVERED lives with Batch, which logs every line but a delivery's).
RETRY_SCHEDULED = "retry-scheduled"
DEAD_LETTERED = "dead-lettered"
DEFERRED = "deferred"
LEFT_FOR_REDELIVERY = "left-for-redelivery"  # a settle step failed: SQS shows it again
ROUTED = "routed-to-slow-lane"  # handed to the slow lane's queue, unattempted (standard records only)
# The ordered path only: shown again later with its conversation, never re-sent.
HELD = "held"  # not attempted now (behind an earlier record, breaker open, out of time)
BLOCKED = "blocked"  # exhausted or refused, and its target blocks the conversation behind it

# The errorCode of a record whose delivery step raised: a bug, not an outcome (SQS shows it again).
INTERNAL_ERROR = "internal-error"
REDACTED = "[redacted]"
ECHOED_EVENT = "[not kept: the answer holds the event]"
ECHOED_SECRET = "[not kept: the answer holds a secret]"


def base_line(
    record: SqsRecord, task: DeliveryTask | None, batch: Batch, started: datetime, finished: datetime
) -> dict[str, Any]:
    """The fields every audit line has."""
    return {
        "invocationId": batch.invocation_id,
        "messageId": record.message_id,
        "deliveryId": str(task.delivery_id) if task else None,
        "eventId": task.event_id if task else None,
        "conversationId": task.conversation_id if task else None,
        "integrationId": task.integration_id if task else None,
        "targetId": task.target_id if task else None,
        "receivedAt": iso_utc(task.received_at) if task else None,  # when the intake accepted the event
        "startedAt": iso_utc(started),
        "finishedAt": iso_utc(finished),
    }


def item_line(
    item: Item, batch: Batch, started: datetime, finished: datetime, *, error: str | None
) -> dict[str, Any]:
    """The line of a record that reached its target's lane (attempted or deferred)."""
    outcome = item.outcome
    return {
        **base_line(item.record, item.task, batch, started, finished),
        "urlHost": urlsplit(item.target.url).hostname,
        "attempt": item.attempt,
        "probe": item.probe,
        "status": outcome.status if outcome else None,
        "latencyMs": None,
        "outcome": None,
        "errorCode": outcome.error_code if outcome else None,
        "error": error,
        "breakerState": Phase.HALF_OPEN.value if item.probe else item.breaker_phase,
    }


def response_for_audit(
    body: bytes, *, event_json: str, event_id: str, secrets: Iterable[str], truncated: bool = False
) -> str:
    """A response body as the audit keeps it: ECHOED_EVENT if it holds the event (the event's text goes
    to the archive only), else the text with every secret sent to the target redacted. ``truncated``:
    the body was cut at the read limit, perhaps inside an echoed secret, whose start is redacted too."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace")
    if _echoes_event(text, event_json, event_id):
        return ECHOED_EVENT
    sent = tuple(secrets)
    for form in _redacted_forms(sent):
        if form in text:
            text = text.replace(form, REDACTED)
    if truncated:
        text = _without_cut_secret(text, _redacted_forms(sent))
    if _still_holds(text, sent) or _echoes_latin1(body, sent):  # escaped some other way: not kept at all
        return ECHOED_SECRET
    return text


def target_secret_values(secrets: TargetSecrets | None, target: Target | None = None) -> list[str]:
    """What the target is sent as credentials, worth scrubbing from its answers: the auth and signing
    secrets (current and previous), a Basic password on its own, and the target's configured header
    values and URL query values (API keys and tokens live there too)."""
    kinds = (secrets.auth, secrets.signing) if secrets is not None else ()
    values = [value for secret in kinds if secret is not None for value in secret.values()]
    values += [value.split(":", 1)[1] for value in values if ":" in value]  # user:password's password
    if target is not None:
        query = urlsplit(target.url).query
        # A query value as written (a raw '+' echoed back as sent) and decoded (as a server reads it).
        queried = dict.fromkeys(form for _, _, v in query_parts(query) for form in (v, unquote_plus(v)))
        configured = [*target.headers.values(), *queried]
        values += [value for value in configured if len(value) >= CREDENTIAL_LIKE_LENGTH]
    return values


def echo_forms(value: str) -> set[str]:
    """How an endpoint may echo text it was sent: as it is, escaped as JSON writers escape a string
    (non-ASCII as \\uXXXX or not; ``/`` as ``\\/`` or not, as PHP's json_encode does),
    percent-encoded, or HTML-escaped (an error page quoting the request)."""
    escaped = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    in_html = {html.escape(value, quote=False), html.escape(value)}
    return {value, quote(value, safe=""), *escaped, *(form.replace("/", "\\/") for form in escaped), *in_html}


def secret_forms(value: str) -> set[str]:
    """A secret's echo forms, its base64 (as a Basic ``Authorization`` header carries ``user:password``),
    and both wherever they stand inside longer base64 text: a header echoed base64-encoded whole
    (``Bearer <token>``, or ``Basic <base64>``, base64 twice over). Values under 4 characters are too
    short to tell from other text."""
    if len(value) < 4:
        return set()
    encoded = base64.b64encode(value.encode())
    return echo_forms(value) | {encoded.decode(), *_base64_cores(value.encode()), *_base64_cores(encoded)}


def _base64_cores(secret: bytes) -> Iterator[str]:
    """The base64 characters that ``secret`` alone decides, for each of the three offsets (modulo 3)
    it can start at in longer text; standard and URL-safe alphabets. A character spans 6 bits, so
    the one or two at each end that share bits with the neighbouring bytes are left out."""
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + secret + bytes(2)).decode()
        first, end = -(-8 * offset // 6), 8 * (offset + len(secret)) // 6
        core = encoded[first:end]
        yield core
        yield core.translate(_URL_SAFE)


_URL_SAFE = str.maketrans("+/", "-_")


@lru_cache(maxsize=256)
def _redacted_forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Every echo form of ``secrets``, longest first (so no shorter form cuts a longer one in two);
    cached, as a target's secrets are the same from one delivery to the next."""
    return tuple(sorted({form for secret in secrets for form in secret_forms(secret)}, key=len, reverse=True))


_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\(.)")
_JSON_ESCAPED = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _json_unescaped(text: str) -> str:
    return _JSON_ESCAPE.sub(
        lambda m: chr(int(m.group(1), 16)) if m.group(1) else _JSON_ESCAPED.get(m.group(2), m.group(2)), text
    )


def _still_holds(text: str, secrets: tuple[str, ...]) -> bool:
    """Whether ``text`` still holds a secret (in one of its forms, base64 included) once JSON escapes,
    percent-encoding and HTML character references, in any mix, are undone: redaction in place catches
    only the common forms."""
    if "\\" not in text and "%" not in text and "&" not in text:
        return False  # nothing escaped: redaction saw the text as it is
    unescaped = _json_unescaped(text)
    readings = {
        unquote(unescaped),
        unquote_plus(unescaped),
        _json_unescaped(unquote(text)),
        html.unescape(text),
    }
    return any(form in reading for form in _redacted_forms(secrets) for reading in readings)


def _without_cut_secret(text: str, forms: tuple[str, ...]) -> str:
    """``text`` less a start of a secret's form it ends with (at least 4 characters, as secret_forms)."""
    for form in forms:
        for length in range(len(form) - 1, 3, -1):
            if text.endswith(form[:length]):
                return text[:-length] + REDACTED
    return text


def _echoes_latin1(body: bytes, secrets: tuple[str, ...]) -> bool:
    """Whether ``body`` holds a non-ASCII secret's bytes as the relay sent them: header values go out in
    Latin-1, which the UTF-8 reading of the answer turns into U+FFFD, so its forms no longer match."""
    for secret in secrets:
        if not secret.isascii():
            try:
                if secret.encode("latin-1") in body:
                    return True
            except UnicodeEncodeError:
                continue  # not a value HTTP can carry in a header: never sent as Latin-1
    return False


# An event id this long is not found in an answer by chance: an answer that holds it echoes the event,
# in whatever formatting the endpoint gave it.
_DISTINCT_ID = 8


def _echoes_event(text: str, event_json: str, event_id: str) -> bool:
    if len(event_id) >= _DISTINCT_ID and event_id in text:
        return True
    # Every echo form of the event is at least as long as its text.
    if len(text) >= len(event_json) and any(form in text for form in echo_forms(event_json)):
        return True
    # A receiver answering with the customer's message alone ({"got": "<text>"}) echoes the event too.
    return any(form in text for message in _message_texts(event_json) for form in echo_forms(message))


def _message_texts(event_json: str) -> list[str]:
    """The event's message texts (every ``text`` field, at any depth: Open Messaging's, or inside an
    EventBridge event's body) long enough not to be found in an answer by chance."""
    found: list[str] = []
    pending: list[Any] = [json.loads(event_json)]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            text = node.get("text")
            if isinstance(text, str) and len(text) >= _DISTINCT_ID:
                found.append(text)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def write_audit(batch: Batch, sink: AuditSink | None) -> None:
    """One object per target, then the batch's summary line in the log. An object that cannot be
    written (or no audit bucket) is logged with its lines instead, so the trail stays whole; it never
    fails the batch. Lines already written (``write_early``) are left out; the summary counts them."""
    _write_audit_objects(batch, sink, batch.invocation_id, lambda message_id: message_id not in batch.written)
    logger.info("batch", extra=summary(batch))


def write_archive(batch: Batch, archive: EventArchive | None) -> None:
    """One archive object for the invocation: the events of the records it attempted or dead-lettered.

    Every attempt, not only the first: the retry of a record whose invocation crashed (and so wrote
    no archive object) is archived too; a retry costs bytes in this one object, never a PUT. A record
    only deferred is archived when it is attempted. A failed write is logged, never fails the batch.
    """
    _write_archive_object(
        batch, archive, batch.invocation_id, lambda message_id: message_id not in batch.written
    )


def write_early(
    batch: Batch, message_ids: set[str], sink: AuditSink | None, archive: EventArchive | None
) -> None:
    """The audit lines and archived events of ``message_ids`` now, in objects of their own, before
    their records are deleted while the invocation still runs (an ordered conversation released early):
    a crash after that delete can no longer lose their trail. The invocation's own objects leave them
    out."""
    name = f"{batch.invocation_id}-early-{len(batch.written)}"  # written grows with every call
    _write_audit_objects(batch, sink, name, message_ids.__contains__)
    _write_archive_object(batch, archive, name, message_ids.__contains__)
    with batch.lock:
        batch.written |= message_ids


def _write_audit_objects(
    batch: Batch, sink: AuditSink | None, name: str, chosen: Callable[[str], bool]
) -> None:
    date = batch.started.strftime("%Y-%m-%d")
    with batch.lock:  # groups still running may be adding lines
        per_target = {
            target_id: [line for line in lines if chosen(line["messageId"])]
            for target_id, lines in batch.audit.items()
        }
    for target_id, lines in per_target.items():
        if not lines:
            continue
        try:
            if sink is None:  # no audit bucket: the log is the whole audit trail
                raise DependencyUnavailable("no audit bucket configured")
            sink.write(date, target_id, name, lines)
        except DependencyUnavailable as exc:
            logger.warning(
                "audit object not written",
                extra={"targetId": target_id, "error": str(exc), "lines": _without_bodies(lines)},
            )


def _write_archive_object(
    batch: Batch, archive: EventArchive | None, name: str, chosen: Callable[[str], bool]
) -> None:
    if archive is None:
        return
    with batch.lock:
        handled = {
            line["messageId"]
            for lines in batch.audit.values()
            for line in lines
            if line.get("outcome") not in (DEFERRED, None) and chosen(line["messageId"])
        }
        tasks = [task for message_id, task in batch.tasks.items() if message_id in handled]
    if not tasks:
        return
    records = records_of(tasks, invocation_id=batch.invocation_id, archived_at=batch.started)
    try:
        archive.write(batch.started.strftime("%Y-%m-%d"), name, records)
    except DependencyUnavailable as exc:
        logger.warning("archive object not written", extra={"events": len(records), "error": str(exc)})


def summary(batch: Batch) -> dict[str, Any]:
    """What the batch came to, per target and outcome: the log's one line about deliveries."""
    outcomes: dict[str, dict[str, int]] = {}
    for target_id, lines in batch.audit.items():
        counts = outcomes.setdefault(target_id, {})
        for line in lines:
            outcome = str(line.get("outcome"))
            counts[outcome] = counts.get(outcome, 0) + 1
    return {
        "invocationId": batch.invocation_id,
        "outcomes": outcomes,
        "reportedFailed": len(batch.failures),
    }


def _without_bodies(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k != "responseBody"} for line in lines]
