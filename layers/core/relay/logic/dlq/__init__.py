"""Dead-letter queue inspection, redrive and discard (``relay dlq list`` / ``redrive`` / ``discard``).

    letters        what may be shown about a DLQ message, groups, the redrive filter, redriven attributes
    scan           receive every message once without deleting; ``list_dead_letters`` (any queue)
    redrive        the move task, or the re-send: which one a run takes (a message leaves the DLQ only once
                   its copy is in)
    redrive_options  what a redrive is asked to do and what it did
    resend         receive, send copies, delete what SQS accepted; ordered letters in acceptance order
    failed_events  the EventBridge path's failure queues: the event each message holds, why it is
                   there, grouped for ``list_dead_letters``
    resubmit       their events back through the intake's EventBridge path (deleted once accepted)
    discard        delete the letters a redrive cannot help, each saved (fsynced) first, the run audited

Only ids ever leave this package (but for discard's save file, which the operator names): event
bodies may hold customer messages. SQS comes through
relay.ports.DeadLetterQueues, the intake through relay.ports.EventBridgeIntake.
"""

from relay.logic.dlq.discard import DiscardAudit, DiscardFilter, DiscardOptions, DiscardResult, discard
from relay.logic.dlq.failed_events import (
    FAILURE_QUEUES,
    FailedEvent,
    FailedEventGroup,
    FailedEventGroups,
    FailureQueue,
    read_failed_event,
)
from relay.logic.dlq.letters import (
    DLQ_REASONS,
    UNPARSEABLE,
    DeadLetter,
    DeadLetterGroup,
    DeadLetterGroups,
    RedriveFilter,
    classify,
    group_dead_letters,
    in_acceptance_order,
    redrive_attributes,
)
from relay.logic.dlq.redrive import RedriveOptions, RedriveResult, redrive
from relay.logic.dlq.resubmit import Refusal, ResubmitOptions, ResubmitResult, resubmit
from relay.logic.dlq.scan import DeadLetterReport, Progress, ProgressSink, list_dead_letters
from relay.models.delivery import BACKSTOP_REASON

__all__ = [
    "BACKSTOP_REASON",
    "DLQ_REASONS",
    "FAILURE_QUEUES",
    "UNPARSEABLE",
    "DeadLetter",
    "DeadLetterGroup",
    "DeadLetterGroups",
    "DeadLetterReport",
    "DiscardAudit",
    "DiscardFilter",
    "DiscardOptions",
    "DiscardResult",
    "FailedEvent",
    "FailedEventGroup",
    "FailedEventGroups",
    "FailureQueue",
    "Progress",
    "ProgressSink",
    "RedriveFilter",
    "RedriveOptions",
    "RedriveResult",
    "Refusal",
    "ResubmitOptions",
    "ResubmitResult",
    "classify",
    "discard",
    "in_acceptance_order",
    "group_dead_letters",
    "list_dead_letters",
    "read_failed_event",
    "redrive",
    "redrive_attributes",
    "resubmit",
]
