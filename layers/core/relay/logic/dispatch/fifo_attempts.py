"""How many times an ordered record was attempted: counted in the attempts table, not from its
receive count, since a held record is received again without an attempt."""

from __future__ import annotations

from relay.errors import DependencyUnavailable
from relay.logic import retry
from relay.logic.dispatch.records import SqsRecord
from relay.observability import logger
from relay.ports import AttemptCounter


class OrderedAttempts:
    def __init__(self, counter: AttemptCounter) -> None:
        self._counter = counter

    def number(self, record: SqsRecord) -> int:
        """The attempt this receive makes: attempts before the message (a redrive's are 0) plus its
        failures so far, read only when it was received before (a first receive has none).
        ``DependencyUnavailable`` if the table fails."""
        before = retry.attempts_before(record.message_attributes)
        if record.receive_count > 1:
            before += self._counter.failures(record.message_id)
        return before + 1

    def made(self, record: SqsRecord) -> int:
        """What a letter says was attempted: the table's count; the message's own count if the table
        is down."""
        try:
            return self.number(record) - 1
        except DependencyUnavailable:
            return retry.attempts_before(record.message_attributes)

    def count_failure(self, record: SqsRecord) -> None:
        try:
            self._counter.add_failure(record.message_id)
        except DependencyUnavailable as exc:  # at worst one attempt more than planned
            logger.warning(
                "failed attempt not counted", extra={"messageId": record.message_id, "error": str(exc)}
            )
