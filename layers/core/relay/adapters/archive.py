"""The event archive in S3 (relay.models.archive): the dispatcher's one object per invocation, and
reading it back for ``relay deliveries replay``.

Key: ``archive/date=YYYY-MM-DD/<invocationId>.jsonl`` in the audit bucket, under its own lifecycle rule
(ArchiveRetentionDays) and IAM statement (the dispatcher may only PutObject there). The bucket's
default encryption applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from relay.adapters.audit import matching_lines, put_jsonl
from relay.adapters.aws_errors import NO_AWS_ANSWER
from relay.errors import DependencyUnavailable
from relay.models.archive import ARCHIVE_PREFIX, ArchiveRecord, FoundRecords, archive_key, read_records
from relay.models.delivery import S3Ref


class S3EventArchive:
    """``s3`` is a boto3 S3 client; ``bucket`` is AUDIT_BUCKET. An EventArchive and an ArchiveReader."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def write(self, date: str, invocation_id: str, records: Sequence[ArchiveRecord]) -> None:
        body = b"".join(record.to_line() for record in records)
        put_jsonl(self._s3, self._bucket, archive_key(date, invocation_id), body)

    def records(self, dates: Sequence[str], *, containing: str | tuple[str, ...]) -> FoundRecords:
        prefixes = [f"{ARCHIVE_PREFIX}date={date}/" for date in dates]
        return read_records(matching_lines(self._s3, self._bucket, prefixes, containing))

    def claim_check_exists(self, ref: S3Ref) -> bool:
        try:
            self._s3.head_object(Bucket=ref.bucket, Key=ref.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise DependencyUnavailable("claim check unreadable (ClientError)") from None
        except NO_AWS_ANSWER as exc:
            raise DependencyUnavailable(f"claim check unreadable ({type(exc).__name__})") from None
        return True
