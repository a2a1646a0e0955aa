"""What the intake lets in: an Open Messaging message as its exact JSON text, or a Genesys EventBridge
event and the one JSON text made of it. Every refusal is a BadRequest whose message names the
problem (never a value that could be a secret)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import cache, partial
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from relay.errors import BadRequest, JsonTooDeep, NonFiniteNumber, UnreadableEvent
from relay.models.delivery import check_event_json, event_json_of, load_finite_json
from relay.models.genesys import OPEN_MESSAGE, OPEN_MESSAGE_MODELS, GenesysEventBridgeEvent

# Genesys messages nest a few levels; a limit far above that keeps every later (recursive) serializer,
# here and in the dispatcher, away from Python's recursion limit.
MAX_NESTING = 64
_TOO_DEEP = f"the body is nested deeper than {MAX_NESTING} levels"
# The member whose value chooses the Open Messaging model (OPEN_MESSAGE's discriminator).
_TAG = "type"
_TYPES = ("Text", "Event", "Receipt", "Structured")  # the tag's values, one model each
# A JSON escape of a UTF-16 surrogate: only then is the costlier lone-surrogate check needed.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# RFC 8259 section 8.1: not added by senders; refused, since stripping it would change what targets get.
_BYTE_ORDER_MARK = "\ufeff"


def parse_open_message(body: bytes) -> tuple[str, dict[str, Any]]:
    """The body as text (what the targets get, unchanged) and as the message it must be."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text") from None
    repeating: list[_Repeated] = []
    try:
        message = load_finite_json(text, object_pairs_hook=partial(_object, repeating))
    except NonFiniteNumber as refused:
        # 1e400 would reach the targets as Infinity or null: refused, like NaN and Infinity.
        raise BadRequest(f"the body is not valid JSON for the relay: {refused}") from None
    except JsonTooDeep:
        # Deeper than Python's parser follows: far beyond the limit, whether or not the rest is JSON.
        raise BadRequest(_TOO_DEEP) from None
    except json.JSONDecodeError as refused:
        # Where it broke, and the parser's fixed wording: never the body's own text.
        # Two of json's wordings end in "at" ("Unterminated string starting at"): said once.
        wording = refused.msg.removesuffix(" at")
        where = f"{wording} at line {refused.lineno}, column {refused.colno}"
        if text.startswith(_BYTE_ORDER_MARK):
            where = "it starts with a byte-order mark (U+FEFF), which JSON text sent over HTTP must not"
        raise BadRequest(f"the body is not valid JSON: {where}") from None
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if _nested_deeper_than(message, MAX_NESTING):
        raise BadRequest(_TOO_DEEP)
    if _SURROGATE_ESCAPE.search(text) and any(_lone_surrogates(s) for s in _strings(message)):
        raise BadRequest("the body contains an unpaired UTF-16 surrogate escape")
    if not isinstance(message, dict):
        raise BadRequest("the body must be a JSON object (an Open Messaging message)")
    if isinstance(message, _Repeated) and [name for name, _ in message.written].count(_TAG) > 1:
        # Which model checks the message depends on which "type" a parser keeps: named before the
        # schema, or the answer is the last one's complaint ("events: Field required" for a Text message).
        raise _repeated_member_refused(_TAG)
    try:
        validated = OPEN_MESSAGE.validate_python(message)
    except ValidationError as invalid:
        detail = describe_validation_error(invalid)
        raise BadRequest(
            f"the message does not match the Open Messaging schema: {detail}",
            code="invalid_message",
        ) from None
    # Only a body that names a member twice somewhere gets looked at again.
    if repeating and (path := _repeated_member(message, type(validated))) is not None:
        # The relay decides on the last one (identity, filters, ordering), a target's parser may keep the
        # first: the event must mean one thing to both.
        raise _repeated_member_refused(path)
    return text, message


def _repeated_member_refused(path: str) -> BadRequest:
    return BadRequest(
        f'the member "{path}" appears more than once, and JSON parsers differ on which one counts: '
        "send it once",
        code="repeated_member",
    )


def parse_eventbridge_event(event: Mapping[str, Any]) -> tuple[GenesysEventBridgeEvent, str]:
    """The validated event and its one JSON text (the runtime hands the function a dict)."""
    try:
        parsed = GenesysEventBridgeEvent.model_validate(event)
    except ValidationError as invalid:
        detail = describe_validation_error(invalid)
        raise BadRequest(f"invalid Genesys EventBridge event: {detail}") from None
    try:
        # The runtime parsed the event already: this is the one JSON text the targets will get.
        event_json = event_json_of(dict(event))
    except ValueError:
        raise BadRequest("the EventBridge event contains NaN or Infinity, which JSON cannot carry") from None
    if _lone_surrogates(event_json):
        raise BadRequest("the EventBridge event contains an unpaired UTF-16 surrogate")
    try:
        # What the dispatcher reads before it sends: an integer no 64-bit float holds passes the
        # runtime's json and json.dumps, and would be dead-lettered there as poison for every target.
        check_event_json(event_json)
    except UnreadableEvent as unreadable:
        raise BadRequest(f"the EventBridge event cannot be delivered: {unreadable}") from None
    return parsed, event_json


def describe_validation_error(error: ValidationError) -> str:
    fields = []
    for item in error.errors():
        # The discriminator's tag is not a field the sender wrote.
        loc = [str(part) for part in item["loc"] if part not in _TYPES]
        if item["type"] == "union_tag_not_found":
            # pydantic words a missing "type" as "(body): Unable to extract tag using discriminator": say
            # which member is missing, as for any other required field.
            fields.append(f"{'.'.join([*loc, _TAG])}: Field required")
            continue
        if item["type"] == "union_tag_invalid":
            # pydantic quotes the tag in Python's spelling ('None', "{'a': 1}"): the sender wrote JSON.
            written = item["input"].get(_TAG) if isinstance(item["input"], Mapping) else None
            said = f"{json.dumps(written, ensure_ascii=False)} is not one of {', '.join(_TYPES)}"
            fields.append(_shortened(f"{'.'.join([*loc, _TAG])}: {said}"))
            continue
        said = _JSON_TERMS.get(item["type"], item["msg"])
        fields.append(_shortened(f"{'.'.join(loc) or '(body)'}: {said}"))
    return "; ".join(sorted(set(fields))[:10])


# pydantic words a wrong container in Python's terms, naming the relay's own model ("Input should be
# a valid dictionary or instance of MessageEvent"): the sender wrote JSON, and knows no such class.
_JSON_TERMS = {
    "model_type": "Input should be a JSON object",
    "model_attributes_type": "Input should be a JSON object",
    "dict_type": "Input should be a JSON object",
    "list_type": "Input should be a JSON array",
}


# A message quotes what was sent (a tag, a key): an answer should name the problem, not echo 200 KB.
_MAX_FIELD_DESCRIPTION = 300


def _shortened(text: str) -> str:
    if len(text) <= _MAX_FIELD_DESCRIPTION:
        return text
    # Its start names the field and its end says what was expected: the quoted value is cut in between.
    keep = _MAX_FIELD_DESCRIPTION // 2
    return f"{text[:keep]}… ({len(text) - 2 * keep} characters left out) …{text[-keep:]}"


class _Repeated(dict[str, Any]):
    """An object that names a member twice. Parsed, the last one wins; the text the targets get still
    holds them all, so ``written`` keeps every member as written, for the limits to hold on them."""

    written: list[tuple[str, Any]]


def _object(repeating: list[_Repeated], pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: a dict, or a _Repeated, which it also adds to ``repeating``."""
    parsed = dict(pairs)
    if len(parsed) == len(pairs):
        return parsed
    repeated = _Repeated(parsed)
    repeated.written = pairs
    repeating.append(repeated)
    return repeated


def _repeated_member(item: dict[str, Any], model: type[BaseModel], path: str = "") -> str | None:
    """The path of the first member that ``model`` validates (so the relay may read it) and ``item``
    names twice, looking into the objects the schema's models validate in turn; else None."""
    members = _validated_members(model)
    if isinstance(item, _Repeated):
        seen: set[str] = set()
        for name, _ in item.written:
            if name in seen and name in members:
                return path + name
            seen.add(name)
    for name, inner in members.items():
        child = item.get(name)
        if inner is None or child is None:
            continue
        # A list's items, each at its index (events.0.eventType), or the one object (channel.id); only
        # objects hold members.
        items = enumerate(child) if isinstance(child, list) else [(None, child)]
        for index, value in items:
            where = f"{path}{name}." if index is None else f"{path}{name}.{index}."
            if isinstance(value, dict) and (repeated := _repeated_member(value, inner, where)) is not None:
                return repeated
    return None


@cache
def _validated_members(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """Every member name ``model`` validates (Genesys models read a field only by its alias), with the
    model that validates what the member holds (an object, or each item of a list), if any."""
    return {field.alias or name: _model_of(field.annotation) for name, field in model.model_fields.items()}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model inside a field's type (``Participant | None``, ``list[Content]``), if any: str,
    ``dict[str, Any]`` or ``list[dict[str, Any]]`` hold no member the schema checks."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    inner = {model for arg in get_args(annotation) if (model := _model_of(arg)) is not None}
    if not inner:
        return None
    if origin not in (list, Union, UnionType, Annotated) or len(inner) > 1:
        # A model inside a dict, or a union of models, is not followed here: say so rather than miss it.
        raise TypeError(f"the repeated-member check cannot follow {annotation!r}")
    return inner.pop()


def _members(item: dict[str, Any]) -> list[tuple[str, Any]]:
    return item.written if isinstance(item, _Repeated) else list(item.items())


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit`` (iterative: deep input cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = [child for _, child in _members(item)]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _strings(value: Any) -> Iterator[str]:
    """Every string in ``value``, names of members included, as written (iteratively)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for name, child in _members(item):
                stack.extend((name, child))
        elif isinstance(item, list):
            stack.extend(item)


def _lone_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _follow_all(model: type[BaseModel]) -> None:
    for inner in _validated_members(model).values():
        if inner is not None:
            _follow_all(inner)


# Every model the check may meet, followed once at import: a field shape it cannot follow (a model in
# a dict, a union of models) is a TypeError when the module loads, in every test run, not a 500 on the
# first body that repeats a member.
for _model in OPEN_MESSAGE_MODELS:
    _follow_all(_model)
