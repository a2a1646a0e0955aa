"""What the audit keeps of a target's answer: never a secret the target was sent, never the event.

The secrets are scrubbed from a response body that echoes them, in the forms endpoints echo text in
(as it is, base64, JSON-escaped, percent-encoded, HTML-escaped); an answer that still holds one once
those are undone is not kept at all. An answer that holds the event (the whole of it, its id, or a
message's text) is not kept either: the event's text is the archive's alone (docs/dispatcher.md,
"Audit").
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from relay.logic.envelope import TargetSecrets
from relay.models.targets import CREDENTIAL_LIKE_LENGTH, Target, query_parts

REDACTED = "[redacted]"
ECHOED_EVENT = "[not kept: the answer holds the event]"
ECHOED_SECRET = "[not kept: the answer holds a secret]"


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
