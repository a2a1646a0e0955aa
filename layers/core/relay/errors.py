"""Every exception the relay raises, in one rooted hierarchy grouped by what the caller must do.

    RelayError
    ├── ConfigurationError            the deployment is wrong: fix settings, not input
    │   ├── UnknownStack              `--stack-name` names no stack, or one without an output a command needs
    │   ├── SecretNotFound            a secret the deployment names does not exist
    │   └── UnusableSecret            a secret's value is not in the relay's JSON shape (pasted bare, say)
    ├── RejectedRequest               the client sent something we refuse (maps to a 4xx, never retried)
    │   ├── BadRequest (400)   ├── InvalidSignature (401)   ├── UnknownIntegration (404)
    │   ├── MethodNotAllowed (405)    ├── PayloadTooLarge (413)  └── UnsupportedMediaType (415)
    ├── DependencyUnavailable         an AWS dependency failed: answer 503 + Retry-After, the sender retries;
    │   │                             the dispatcher leaves the record for SQS to show again
    │   ├── BreakerStoreUnavailable   the breaker table failed: the dispatcher fails open
    │   ├── RateLimitStoreUnavailable the rate-limit buckets (same table) failed: it fails open too
    │   ├── TargetWriteConflict       a target changed under every try of a read-modify-write
    │   └── UnreadableRecord          a TargetsTable record this release cannot read (a newer release's,
    │                                 a hand edit): retried until it is fixed, never a crash
    ├── RetryShortly                  the request cannot be settled yet: 429 + Retry-After (Genesys retries)
    │   ├── RequestInProgress         the same event is being accepted right now
    │   └── SignatureRecheckPending   a mismatch the secret cannot be re-read for yet (rotation)
    ├── UnsafeUrl                     a target URL breaks the URL policy (scheme, private address, ...)
    ├── TokenUnavailable              no OAuth access token for a target: its token endpoint failed,
    │                                 refused or answered something unusable (the delivery is retried)
    ├── UnreadableEvent               a task's event cannot be sent as JSON: the dispatcher dead-letters
    │   ├── NonFiniteNumber           it as poison; the intake refuses it (400)
    │   └── ClaimCheckMissing         its claim-check object is gone from S3 (expired, deleted): the
    │                                 dispatcher dead-letters it as claim-check-missing
    ├── ConfigRejected                config sync: one item's config is refused, the run goes on
    ├── UnknownTarget                 operator commands: no such target
    ├── AmbiguousTarget               operator commands: the target id exists under several integrations
    ├── ResetConflict                 `relay breaker reset` lost every race: nothing written
    ├── ReplayRefused                 `relay deliveries replay`: not archived (past retention), several
    │                                 events, a target unknown, disabled or not the event's: nothing queued
    ├── MoveTaskUnavailable           this SQS endpoint has no StartMessageMoveTask (redrive re-sends)
    ├── DecryptionFailed              no key offered opens an encrypted envelope
    ├── InvalidDelivery               receiver SDK: not a genuine, readable relay delivery (also a ValueError)
    ├── JsonTooDeep                   JSON from outside nested deeper than Python parses: malformed input
    │                                 like any other not-JSON (also a ValueError; relay.json_input)
    ├── LocalStackError               the local stack (developer side) could not do what it was asked
    ├── CommandError                  ends a `relay` command: one stderr line and its exit code
    │   ├── NeedsAttention (1)  ├── UsageError (2)  ├── CommandFailed (3)  └── Interrupted (130)
    └── GenesysError                  talking to Genesys Cloud failed (config sync only; never raised itself)
        ├── GenesysRunError           the sync run ends: Lambda error (alarm), `relay targets sync` exit 3;
        │   │                         raised itself for an answer nothing below covers (another 4xx)
        │   ├── GenesysAuthError      login refused (400/401/403), or a fresh token refused (401)
        │   ├── GenesysLoginError     the token endpoint's answer is unusable (not JSON, no expires_in, ...)
        │   ├── GenesysForbidden      403, names the scope the OAuth client lacks
        │   ├── GenesysRateLimited    429 past our bound
        │   ├── GenesysDeadlineExceeded  the run's deadline would pass (a wait, a request)
        │   └── GenesysUnavailable    connection failures, TLS, 5xx
        │       └── GenesysTimeout    connect/read timeout
        └── GenesysItemError          one item cannot be read: it is rejected, the run goes on
            ├── GenesysNotFound       404
            └── GenesysMalformedResponse  2xx with a body we cannot read

A delivery attempt's result is a value (relay.logic.outcomes.Outcome), not an exception. Each trigger
(API handler, SQS handler, CLI, local stack) maps these to outcomes in exactly one place; a bare
``except Exception`` appears only there. Messages never contain secret values. (The one exception
defined elsewhere, relay.adapters.connections.DeadlineExceeded, is a RelayError too; it is also a
urllib3 timeout so that urllib3's own machinery treats it as one.)
"""

from __future__ import annotations

from collections.abc import Iterable


class RelayError(Exception):
    """Root of every error the relay raises on purpose."""


class ConfigurationError(RelayError):
    """A required setting is missing or invalid."""


class RejectedRequest(RelayError):
    """Client input we refuse; carries the HTTP status and a stable error code."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(RejectedRequest):
    status = 400
    code = "bad_request"


class InvalidSignature(RejectedRequest):
    status = 401
    code = "invalid_signature"


class UnknownIntegration(RejectedRequest):
    status = 404
    code = "unknown_integration"


class MethodNotAllowed(RejectedRequest):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(RejectedRequest):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RejectedRequest):
    status = 415
    code = "unsupported_media_type"


class DependencyUnavailable(RelayError):
    """An AWS dependency (SQS, DynamoDB, S3, Secrets Manager) failed; the caller should retry later."""

    def __init__(self, message: str, *, retry_after_seconds: int = 5) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class RetryShortly(RelayError):
    """The request cannot be settled yet; the sender should retry after ``retry_after_seconds``. The
    intake answers 429 (Genesys retries it like a 5xx, and it is no server failure)."""

    code = "retry_shortly"

    def __init__(self, message: str, *, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class RequestInProgress(RetryShortly):
    """A concurrent attempt is accepting the same event right now."""

    code = "duplicate_in_progress"


class SignatureRecheckPending(RetryShortly):
    """The signature does not match the cached secret, and the secret was re-read too recently to be
    read again: after a rotation the retry is checked against a fresh read, never refused for good
    because a forged request used the re-read first."""

    code = "signature_recheck_pending"


class UnsafeUrl(RelayError):
    """A target URL that the URL policy refuses."""


class TokenUnavailable(RelayError):
    """A target's OAuth token endpoint gave no usable access token: unreachable, timed out, refused
    the client (4xx), failed (5xx), or answered something that is not a bearer token. The message
    names the endpoint's host and what happened, never the client secret, a token or the answer.
    ``retry_after``: the endpoint's Retry-After header as it came (parsed where the retry is planned)."""

    def __init__(self, message: str, *, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BreakerStoreUnavailable(DependencyUnavailable):
    """The breaker table could not be read or written (the dispatcher fails open)."""


class RateLimitStoreUnavailable(DependencyUnavailable):
    """A target's rate-limit bucket could not be read or written (the dispatcher fails open)."""


class TargetWriteConflict(DependencyUnavailable):
    """A target's record changed between every read and conditional write of a read-modify-write (the
    dispatcher's disable on 410): nothing was written over the other writers' changes."""


class UnreadableRecord(DependencyUnavailable):
    """A TargetsTable record this release cannot validate: written by a newer release before a rollback,
    or by hand. The table answered, but what it holds is unusable until the record is fixed (a deploy,
    config sync rewriting it), so it is retried like an unavailable dependency: the intake answers 503
    for an unreadable integration record, the dispatcher retries a task whose target's record is
    unreadable as a ``configuration`` failure (relay.logic.dispatch.records). The message names the
    record and the fields at fault, never a value (a record may hold a secret); ``why`` is the same
    without the record's name (``target record unreadable: <fields and problems>``)."""

    def __init__(self, record: str, why: str, *, version: int | None = None) -> None:
        super().__init__(f"{record}: {why}")
        self.why = why
        self.version = version  # the item's own version attribute (what a conditional rewrite compares)


class UnreadableEvent(RelayError):
    """A delivery task's event is not what a target may receive: not UTF-8, not one JSON object, or
    holding a number no receiver could read. The dispatcher dead-letters the task as ``poison``."""


class NonFiniteNumber(UnreadableEvent):
    """A number no 64-bit float holds (``1e400``), or ``NaN``/``Infinity``: no receiver could read it."""

    def __init__(self, literal: str) -> None:
        shown = literal if len(literal) <= 40 else literal[:37] + "..."
        super().__init__(f"{shown} is not a finite number a 64-bit float can hold")


class ClaimCheckMissing(UnreadableEvent):
    """The S3 object a task's ``eventRef`` points at is not there (NoSuchKey: the bucket's
    ExpireClaimChecks rule expired it, or someone deleted it). Not a dependency failure: S3 answered,
    and every retry would get the same answer, so the dispatcher dead-letters the task at once as
    ``claim-check-missing`` instead of retrying it as ``dependency-unavailable``."""


class ConfigRejected(RelayError):
    """Config sync refuses one integration or target config; the message is safe to log (no secret
    values). The record stored by the last good sync stays in force."""


class UnknownTarget(RelayError):
    """No such target in the TargetsTable (under the integration given, if any)."""


class AmbiguousTarget(RelayError):
    """The target id exists under several integrations; the operator must choose one."""

    def __init__(self, target_id: str, integration_ids: Iterable[str]) -> None:
        self.integration_ids = tuple(integration_ids)
        super().__init__(
            f"target {target_id} exists under integrations {', '.join(self.integration_ids)}: "
            "choose one with --integration"
        )


class ResetConflict(RelayError):
    """The breaker changed under every reset attempt (dispatchers very busy with it): nothing written."""


class ReplayRefused(RelayError):
    """An event cannot be replayed as asked; the message says why and what to do. Nothing was queued."""


class UnknownStack(ConfigurationError):
    """``--stack-name`` names no stack in this account and region, or one lacking an output a command
    needs."""


class SecretNotFound(ConfigurationError):
    """A secret the deployment names does not exist (config sync has not stored it, or it was deleted)."""


class UnusableSecret(ConfigurationError):
    """A secret exists but its value is not in the relay's JSON shape: nothing can be checked or
    signed with it until it is put right (the intake answers 500, which Genesys retries)."""


class MoveTaskUnavailable(RelayError):
    """This SQS endpoint does not implement StartMessageMoveTask (moto, some emulators)."""


class DecryptionFailed(RelayError):
    """The envelope could not be decrypted with any key offered (wrong key, tampered, malformed)."""


class InvalidDelivery(RelayError, ValueError):
    """Receiver SDK: the request is not a genuine, readable relay delivery (bad signature, stale,
    tampered, wrong key). Also a ValueError, as receivers written against earlier versions catch it."""


class JsonTooDeep(RelayError, ValueError):
    """JSON nested deeper than Python's parser follows (``json.loads`` would raise RecursionError). A
    ValueError, like json's own errors, so every "not JSON" path refuses it the same way."""

    def __init__(self) -> None:
        super().__init__("JSON nested too deeply to read")


class LocalStackError(RelayError):
    """The local stack could not start or run as configured (developer side only)."""


class FixturesRejected(LocalStackError):
    """Config sync, which checks each target as Genesys Cloud's would be checked, refused part of the
    fixtures file: the file is wrong, not the stack. The message names each item and why."""


class GenesysError(RelayError):
    """Talking to Genesys Cloud failed; always raised as a GenesysRunError or a GenesysItemError."""


class GenesysRunError(GenesysError):
    """The whole sync run cannot go on: it ends (a Lambda error), the next scheduled run starts over."""


class GenesysAuthError(GenesysRunError):
    """Login refused, or a fresh token refused (401): check the OAuth client id and secret."""


class GenesysLoginError(GenesysRunError):
    """The token endpoint answered, but not with a usable token (not JSON, no valid expires_in, ...)."""


class GenesysForbidden(GenesysRunError):
    """403: the OAuth client lacks a permission; ``scope`` names it."""

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class GenesysRateLimited(GenesysRunError):
    """429 past our bound on Retry-After waits: this run ends, the next scheduled run tries again."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class GenesysDeadlineExceeded(GenesysRunError):
    """The run's deadline (GENESYS_SYNC_DEADLINE_SECONDS) would pass in a Retry-After wait or a request."""


class GenesysUnavailable(GenesysRunError):
    """Connection refused or reset, TLS failure, or a 5xx from Genesys Cloud."""


class GenesysTimeout(GenesysUnavailable):
    """Connect or read timeout (GENESYS_TIMEOUT_SECONDS)."""


class GenesysItemError(GenesysError):
    """One item (integration, credential) cannot be read: it is rejected, its last good record stays."""


class GenesysNotFound(GenesysItemError):
    """404: the integration (or credential) named in settings does not exist."""


class GenesysMalformedResponse(GenesysItemError):
    """Genesys answered an item's read 2xx with a body that is not the JSON we expect."""


class CommandError(RelayError):
    """Ends a ``relay`` command with one line on stderr and ``exit_code`` (relay.cli.exit_codes.ExitCode
    names the codes; relay.cli.run writes the line)."""

    exit_code: int = 3

    def __init__(self, message: str, *, command: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.command = command  # the parser's prog when argparse refused the command line


class NeedsAttention(CommandError):
    """The command ran, and something needs the operator's attention."""

    exit_code = 1


class UsageError(CommandError):
    """A bad argument, or a file named on the command line that cannot be read."""

    exit_code = 2


class CommandFailed(CommandError):
    """The command could not run."""

    exit_code = 3


class Interrupted(CommandError):
    """Ctrl-C, with what the command wants the operator to know about the state it left."""

    exit_code = 130
