"""Dead-letter queue inspection and redrive (``relay dlq list`` / ``relay dlq redrive``).

    letters   what may be shown about a DLQ message, groups, the redrive filter, redriven attributes
    scan      receive every message once without deleting; ``list_dead_letters``
    redrive   the move task, or re-send then delete (a message leaves the DLQ only once its copy is in)

Only ids ever leave this package: event bodies may hold customer messages. SQS comes through
relay.ports.DeadLetterQueues.
"""

from relay.logic.dlq.letters import (
    DLQ_REASONS,
    UNPARSEABLE,
    DeadLetter,
    DeadLetterGroup,
    DeadLetterGroups,
    RedriveFilter,
    classify,
    group_dead_letters,
    redrive_attributes,
)
from relay.logic.dlq.redrive import RedriveOptions, RedriveResult, redrive
from relay.logic.dlq.scan import DeadLetterReport, Progress, ProgressSink, list_dead_letters
from relay.models.delivery import BACKSTOP_REASON

__all__ = [
    "BACKSTOP_REASON",
    "DLQ_REASONS",
    "UNPARSEABLE",
    "DeadLetter",
    "DeadLetterGroup",
    "DeadLetterGroups",
    "DeadLetterReport",
    "Progress",
    "ProgressSink",
    "RedriveFilter",
    "RedriveOptions",
    "RedriveResult",
    "classify",
    "group_dead_letters",
    "list_dead_letters",
    "redrive",
    "redrive_attributes",
]
