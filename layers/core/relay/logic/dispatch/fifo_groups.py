"""A batch of the ordered queue as message groups (one conversation of one target each): grouping,
which run first (a half-open probe's), the partial batch response's rule for a group, and releasing
settled groups before the batch ends.

SQS FIFO hands out no later message of a group while an invocation holds one of its records, and the
event source deletes a batch's records only when the invocation returns. So once a batch has run
``ORDERED_RELEASE_AFTER_MS``, ``GroupReleaser`` deletes each group's records as soon as the group is
settled (every record delivered or dead-lettered), after writing their audit lines and archived
events: one slow conversation no longer holds up the others of its batch (docs/dispatcher.md,
"Ordering"). The event source deletes them again when the invocation returns; SQS answers that with
success.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait

from relay.errors import DependencyUnavailable
from relay.logic.dispatch.batch import Batch
from relay.logic.dispatch.metrics import Metric
from relay.logic.dispatch.records import SqsRecord
from relay.observability import logger
from relay.ports import OrderedQueueOps
from relay.settings import Settings


def message_groups(records: Iterable[SqsRecord]) -> dict[str, list[SqsRecord]]:
    """Records by message group, each group in the batch's (the queue's) order."""
    groups: dict[str, list[SqsRecord]] = {}
    for record in records:
        groups.setdefault(record.group_id or "", []).append(record)
    return groups


def fail_behind_failures(groups: dict[str, list[SqsRecord]], batch: Batch) -> None:
    """The partial batch response stops at each group's first unsettled record: everything after it
    is reported failed too, or SQS would delete it and the group would lose its order."""
    for records in groups.values():
        failed = False
        for record in records:
            if failed and not batch.has_failed(record):
                batch.fail(record)
            failed = failed or batch.has_failed(record)


def probe_first(keys: dict[str, str | None], probing: set[str]) -> tuple[list[str], list[str]]:
    """The groups to run first, and those that wait until they are over. A group holding a half-open
    probe goes first and the other groups of the probe's target wait for it, so that they meet the
    probe's answer; every other target's groups go at once (one slow probe must not hold up the
    batch). ``keys``: each group's target key (a group is one target's; None: its target was not
    read)."""
    probed = {keys[gid] for gid in probing}
    later = [gid for gid, key in keys.items() if gid not in probing and key in probed]
    return [gid for gid in keys if gid not in later], later


class GroupReleaser:
    def __init__(
        self,
        *,
        settings: Settings,
        queue: OrderedQueueOps,
        write_early: Callable[[Batch, set[str]], None],
    ) -> None:
        self._after_seconds = settings.ordered_release_after_ms / 1000
        self._queue = queue
        self._write_early = write_early  # audit.write_early, with the engine's sinks

    def wait(
        self, futures: dict[Future[None], str], groups: dict[str, list[SqsRecord]], batch: Batch
    ) -> None:
        """Wait for the groups' runs (``futures``, each its group id); once the batch has run the
        release delay, release each group as soon as it is settled. A batch that ends in time deletes
        nothing itself: the event source does, at no extra call."""
        finished, running = wait(futures, timeout=self._after_seconds)
        while running:
            settled = [
                futures[future]
                for future in finished
                if future.exception() is None
                and not any(batch.has_failed(r) for r in groups[futures[future]])
            ]
            if settled:
                self._release([record for gid in settled for record in groups[gid]], batch)
            finished, running = wait(running, return_when=FIRST_COMPLETED)

    def _release(self, records: list[SqsRecord], batch: Batch) -> None:
        """Write the records' audit lines and archived events, then delete them: after the delete, a
        crash of this invocation could no longer bring them back to be audited."""
        self._write_early(batch, {record.message_id for record in records})
        try:
            self._queue.delete([record.receipt_handle for record in records])
        except DependencyUnavailable as exc:  # the event source deletes them when the batch ends
            logger.warning("could not release settled conversations early", extra={"error": str(exc)})
            return
        batch.metrics.service_count(Metric.ORDERED_RELEASED_EARLY, len(records))
