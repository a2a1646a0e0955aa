"""The audit trail in S3: one JSON Lines object per invocation and target.

Key: ``audit/date=YYYY-MM-DD/target=<targetId>/<invocationId>.jsonl`` (Athena/Glue-style partitions;
one object per invocation and target keeps the S3 cost per event low). The records are built by
relay.logic.dispatch.audit and never hold a secret or the plaintext of an encrypted event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from relay.errors import DependencyUnavailable


def audit_key(date: str, target_id: str, invocation_id: str) -> str:
    return f"audit/date={date}/target={target_id}/{invocation_id}.jsonl"


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
        try:
            self._s3.put_object(
                Bucket=self._bucket,
                Key=audit_key(date, target_id, invocation_id),
                Body=to_jsonl(records),
                ContentType="application/x-ndjson",
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailable(f"audit bucket unwritable ({type(exc).__name__})") from None
