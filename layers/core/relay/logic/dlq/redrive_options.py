"""What ``relay dlq redrive`` is asked to do (``RedriveOptions``) and what it did (``RedriveResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from relay.logic.dlq.letters import DeadLetterGroup, RedriveFilter
from relay.models.queue import MoveTaskStatus

RedriveMethod = Literal["auto", "move-task", "resend"]


@dataclass(frozen=True)
class RedriveOptions:
    filter: RedriveFilter = field(default_factory=RedriveFilter)
    max_messages: int | None = None
    dry_run: bool = False
    method: RedriveMethod = "auto"
    max_per_second: int | None = None  # move task rate; None lets SQS choose
    visibility_seconds: int = 120  # how long a message in hand stays hidden (send + delete fit easily)
    wait_seconds: int = 1
    poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.method == "move-task" and self._narrowed():
            # SQS's move task cannot filter, count or pretend: asked for with any of these it would
            # move the whole queue.
            raise ValueError(
                "--method move-task moves every message of the queue: it takes no --dry-run, --max, "
                "--target, --integration or --reason (leave --method out, or use --method resend)"
            )

    def wants_move_task(self, *, ordered: bool = False) -> bool:
        """The move task moves everything, unchanged: only for an unfiltered, unbounded, real run. It
        keeps a FIFO DLQ's order, the order its letters failed in: an ``ordered`` DLQ uses it only when
        asked to (the re-send puts each conversation's letters back in the order they were accepted)."""
        if self.method == "resend" or (ordered and self.method == "auto"):
            return False
        return not self._narrowed()

    def _narrowed(self) -> bool:
        return self.filter.active or self.max_messages is not None or self.dry_run


@dataclass
class RedriveResult:
    mode: Literal["move-task", "resend", "dry-run"]
    fallback_reason: str | None = None
    scanned: int = 0
    matched: int = 0
    moved: int = 0
    send_failed: int = 0
    not_deleted: int = 0  # re-sent but still in the DLQ too: a duplicate the receivers dedupe
    skipped: int = 0  # did not match the filter, or past --max
    arrived_during_run: int = 0  # left for the next run, so a failing target cannot ping-pong
    task: MoveTaskStatus | None = None
    groups: list[DeadLetterGroup] = field(default_factory=list)
    error: str | None = None
    now_ms: int = 0
    depth: int = 0  # SQS's approximate depth when the run started
    # Filter values no letter of the whole DLQ carried ("--target X"): a typo, or a name for an id.
    unmatched_filters: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        """Everything the run set out to move was moved (or, in a dry run, read)."""
        if self.error or self.send_failed or self.not_deleted:
            return False
        return self.task is None or self.task.status == "COMPLETED"

    @property
    def attention(self) -> str | None:
        """What the operator must look at after the run (None: nothing)."""
        if not self.completed:
            return "not everything was moved: read the summary"
        if self.unmatched_filters:
            return (
                f"no letter in the DLQ has {', '.join(self.unmatched_filters)} "
                "(filters take the ids `relay dlq list` shows, not names)"
            )
        if self.arrived_during_run and self.mode == "resend":
            # Often the very messages just moved, failing again: the target still refuses them.
            count = self.arrived_during_run
            messages, are = ("message", "is") if count == 1 else ("messages", "are")
            return (
                f"{count} {messages} arrived in the DLQ during the run and {are} still there "
                "(moved ones failing again?): check the target, then redrive again"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        task = self.task
        return {
            "mode": self.mode,
            # What the exit code says (0, or 1 with the reason in ``attention``), for a script that reads
            # only the JSON: moved all but with letters back in the DLQ is not "all done".
            "ok": self.attention is None,
            "attention": self.attention,
            "fallbackReason": self.fallback_reason,
            "scanned": self.scanned,
            "matched": self.matched,
            "moved": self.moved,
            "sendFailed": self.send_failed,
            "notDeleted": self.not_deleted,
            "skipped": self.skipped,
            "arrivedDuringRun": self.arrived_during_run,
            "approximateDepth": self.depth,
            "task": None
            if task is None
            else {
                "status": task.status,
                "moved": task.moved,
                "toMove": task.to_move,
                "failureReason": task.failure_reason,
            },
            "groups": [group.to_json(self.now_ms) for group in self.groups],
            "unmatchedFilters": self.unmatched_filters,
            "error": self.error,
        }
