"""Claim checks in S3: an event too large for one SQS message is stored once in the audit bucket.

The intake puts (deterministic keys ``events/<integrationId>/<event key hash>.json``, so a retried
intake overwrites the same object); the dispatcher loads the text back byte for byte. The bucket's
lifecycle rule (ExpireClaimChecks) expires ``events/`` after the delivery queue's and the DLQ's
retention together; a task that still points at an expired object gets ClaimCheckMissing, not
DependencyUnavailable: S3 answered, and it will answer the same every time.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from relay.adapters.aws_errors import AWS_ERRORS, NO_AWS_ANSWER
from relay.errors import ClaimCheckMissing, ConfigurationError, DependencyUnavailable, UnreadableEvent
from relay.models.delivery import S3Ref

# What S3 answers for a key that holds no object, or whose current version is a delete marker (what
# lifecycle expiry leaves in a versioned bucket): NoSuchKey, or a bare 404 from endpoints that send no
# error body. NoSuchBucket (also a 404) is not among them: the deployment is wrong, not the event.
_NO_OBJECT = frozenset({"NoSuchKey", "NotFound", "404"})


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
        except AWS_ERRORS as exc:
            raise DependencyUnavailable(f"audit bucket unavailable ({type(exc).__name__})") from None
        return S3Ref(bucket=self._bucket, key=key)

    def load(self, ref: S3Ref) -> str:
        """The stored text, byte for byte (for an HTTP event: the body Genesys sent); ClaimCheckMissing
        if the object is gone, UnreadableEvent if it is not UTF-8."""
        try:
            body: bytes = self._s3.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NO_OBJECT:
                raise ClaimCheckMissing(
                    f"claim check s3://{ref.bucket}/{ref.key} is gone ({code}): expired or deleted, "
                    "the event text is no longer stored"
                ) from None
            raise DependencyUnavailable(f"claim check unreadable ({type(exc).__name__})") from None
        except NO_AWS_ANSWER as exc:
            raise DependencyUnavailable(f"claim check unreadable ({type(exc).__name__})") from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableEvent("the claim-checked event is not UTF-8") from None
