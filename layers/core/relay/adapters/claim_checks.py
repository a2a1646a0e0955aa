"""Claim checks in S3: an event too large for one SQS message is stored once in the audit bucket.

The intake puts (deterministic keys ``events/<integrationId>/<event key hash>.json``, so a retried
intake overwrites the same object); the dispatcher loads the text back byte for byte. The bucket's
lifecycle rule expires ``events/`` after the delivery queue's retention period.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from relay.errors import ConfigurationError, DependencyUnavailable, UnreadableEvent
from relay.models.delivery import S3Ref


class S3ClaimChecks:
    """``s3`` is a boto3 S3 client; ``bucket`` (AUDIT_BUCKET) is where ``put`` stores. ``load`` reads
    wherever the reference points."""

    def __init__(self, s3: Any, bucket: str | None = None) -> None:
        self._s3 = s3
        self._bucket = bucket

    def put(self, key: str, body: bytes) -> S3Ref:
        if not self._bucket:
            raise ConfigurationError("setting AUDIT_BUCKET is required here but not set")
        try:
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType="application/json")
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailable(f"audit bucket unavailable ({type(exc).__name__})") from None
        return S3Ref(bucket=self._bucket, key=key)

    def load(self, ref: S3Ref) -> str:
        """The stored text, byte for byte (for an HTTP event: the body Genesys sent); UnreadableEvent if
        it is not UTF-8."""
        try:
            body: bytes = self._s3.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailable(f"claim check unreadable ({type(exc).__name__})") from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableEvent("the claim-checked event is not UTF-8") from None
