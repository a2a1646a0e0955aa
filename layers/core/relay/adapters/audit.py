"""The audit trail in S3: one JSON Lines object per invocation and target, and reading it back.

Key: ``audit/date=YYYY-MM-DD/target=<targetId>/<invocationId>.jsonl`` (Athena/Glue-style partitions;
one object per invocation and target keeps the S3 cost per event low). The records are built by
relay.logic.dispatch.audit (and, for operator actions such as a replay, relay.logic.deliveries) and
never hold a secret or the plaintext of an encrypted event.

Reading (operator commands only) lists the date prefixes asked for and fetches their objects side by
side; only lines containing the text searched for are parsed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import batched
from typing import Any

from botocore.exceptions import ClientError

from relay.adapters.aws_errors import AWS_ERRORS
from relay.errors import DependencyUnavailable
from relay.json_input import json_spellings, load_json

AUDIT_PREFIX = "audit/"
READERS = 16  # objects fetched at once by an operator command
CHUNK = 256  # objects held in memory at most while they are searched


def audit_key(date: str, target_id: str, invocation_id: str) -> str:
    return f"{audit_prefix(date, target_id)}{invocation_id}.jsonl"


def audit_prefix(date: str, target_id: str | None = None) -> str:
    """Where a day's audit objects are, or one target's of that day."""
    day = f"{AUDIT_PREFIX}date={date}/"
    return day if target_id is None else f"{day}target={target_id}/"


# One encoder for every line: json.dumps with options builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def to_jsonl(records: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(_ENCODER.encode(r) + "\n" for r in records).encode()


class S3AuditSink:
    """``s3`` is a boto3 S3 client; ``bucket`` is AUDIT_BUCKET."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._bucket = bucket
        self._s3 = s3

    def write(
        self, date: str, target_id: str, invocation_id: str, records: Sequence[Mapping[str, Any]]
    ) -> None:
        put_jsonl(self._s3, self._bucket, audit_key(date, target_id, invocation_id), to_jsonl(records))


class S3AuditReader:
    """The audit lines of some days (an AuditReader port), for ``relay deliveries show``."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def lines(
        self, dates: Sequence[str], *, containing: str | tuple[str, ...], target: str | None = None
    ) -> list[dict[str, Any]]:
        prefixes = [audit_prefix(date, target) for date in dates]
        return [
            line
            for text in matching_lines(self._s3, self._bucket, prefixes, containing)
            if isinstance(line := _json(text), dict)
        ]


def put_jsonl(s3: Any, bucket: str, key: str, body: bytes) -> None:
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson")
    except AWS_ERRORS as exc:
        raise DependencyUnavailable(f"audit bucket unwritable ({type(exc).__name__})") from None


def matching_lines(
    s3: Any, bucket: str, prefixes: Sequence[str], containing: str | tuple[str, ...]
) -> Iterator[str]:
    """The lines of every object under ``prefixes`` that contain ``containing`` (or any of several
    texts; each as it is or JSON-escaped: an id with non-ASCII, quotes or control characters is written
    escaped), object by object in key order. DependencyUnavailable when the bucket cannot be listed or
    read."""
    keys = [key for prefix in prefixes for key in _keys(s3, bucket, prefix)]
    needles = [spelling.encode() for spelling in json_spellings(containing)]
    with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="audit-read") as pool:
        for chunk in batched(keys, CHUNK, strict=False):
            for body in pool.map(lambda key: _get(s3, bucket, key), chunk):
                if any(needle in body for needle in needles):
                    for raw in body.splitlines():
                        if any(needle in raw for needle in needles):
                            yield raw.decode("utf-8", "replace")


def _keys(s3: Any, bucket: str, prefix: str) -> Iterator[str]:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                yield str(entry["Key"])
    except AWS_ERRORS as exc:
        raise DependencyUnavailable(f"audit bucket unreadable ({_code(exc)})") from None


def _get(s3: Any, bucket: str, key: str) -> bytes:
    try:
        body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except AWS_ERRORS as exc:
        raise DependencyUnavailable(f"audit object unreadable ({_code(exc)})") from None
    return body


def _json(text: str) -> Any:
    try:
        return load_json(text)
    except ValueError:
        return None  # not a line the relay wrote: nothing to show


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__
