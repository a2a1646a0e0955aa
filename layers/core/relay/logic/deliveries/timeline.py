"""What happened to an event: every audit line naming its event id, delivery id or conversation id,
for every target, in time order, with a summary of where each delivery stands."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from relay.logic.deliveries.operator import REPLAYED
from relay.logic.dispatch.audit import DEAD_LETTERED
from relay.models.targets import Ordering, Target

# What a timeline shows of an audit line (never a response body: `relay deliveries show` prints to a
# terminal, and the body is the target's text). ``error`` is the relay's own sentence for ``errorCode``
# (which token endpoint answered what, which TLS failure): the code alone does not say what to fix.
FIELDS = (
    "startedAt",
    "finishedAt",
    "eventId",
    "conversationId",
    "deliveryId",
    "integrationId",
    "targetId",
    "attempt",
    "outcome",
    "status",
    "latencyMs",
    "errorCode",
    "error",
    "dlqReason",
    "breakerState",
    "retryInSeconds",
    "deferredSeconds",
    "actor",
    "replayOf",
    "invocationId",
)
# A line is about an id it names here; ``replayOf`` leads from a delivery id to the replay that
# replaced it (`relay deliveries replay --new-id`), whose line names the new id to follow.
IDS = ("eventId", "deliveryId", "conversationId", "replayOf")
# The ids that name one event; a conversation id names each of its events.
_EXACT = ("eventId", "deliveryId", "replayOf")
_INTEGERS = ("attempt", "status", "retryInSeconds", "deferredSeconds")
_NUMBERS = ("latencyMs",)


# A dispatcher files an invocation's audit and archive objects under the UTC day its batch started, and
# an invocation runs up to Lambda's 15 minutes: a line written just after midnight may sit under the day
# before.
BATCH_SPAN = timedelta(minutes=15)


def days_back(now: datetime, since: timedelta) -> list[str]:
    """The audit's date partitions (UTC days, oldest first) that hold what was written from
    ``now - since`` to ``now``: from the day a batch running then may have started (BATCH_SPAN)."""
    first, last = (now - since - BATCH_SPAN).date(), now.date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def names(line: Mapping[str, Any], ident: str) -> bool:
    """The line is about ``ident``: its event, its delivery, its conversation, or the delivery it replays."""
    return any(line.get(key) == ident for key in IDS)


@dataclass(frozen=True)
class Timeline:
    ident: str
    dates: tuple[str, ...]
    attempts: tuple[dict[str, Any], ...]  # time order

    @property
    def found(self) -> bool:
        return bool(self.attempts)

    def deliveries(self) -> list[dict[str, Any]]:
        """One summary per delivery of an event to a target: its ids, attempts and latest outcome.

        A replay under a fresh id (``--new-id``) is a delivery of its own, naming the one it replaced,
        so its attempts are not counted as the original's. A replay under the same id, and a redrive
        from a dead-letter queue, start its attempts afresh (as the dispatcher counts them):
        ``attempts`` are those since the delivery's last replay or redrive (the latest attempt's
        number), ``attemptsInAll`` every one, ``replays`` how often it was replayed, ``redrives`` how
        often it was attempted again after being dead-lettered (a redrive writes no line of its own:
        an attempt after a dead-lettered line is one), ``restartedBy`` which of the two came last."""
        summaries: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
        for line in self.attempts:
            key = (line.get("eventId"), line.get("targetId"), line.get("deliveryId"))
            summary = summaries.setdefault(
                key,
                {
                    "eventId": line.get("eventId"),
                    "conversationId": line.get("conversationId"),
                    "integrationId": line.get("integrationId"),
                    "targetId": line.get("targetId"),
                    "deliveryIds": [line["deliveryId"]] if line.get("deliveryId") else [],
                    "replayOf": None,
                    "attempts": 0,
                    "attemptsInAll": 0,
                    "replays": 0,
                    "redrives": 0,
                    "restartedBy": None,
                    "lastOutcome": None,
                    "lastStatus": None,
                },
            )
            summary["replayOf"] = summary["replayOf"] or line.get("replayOf")
            if line.get("outcome") == REPLAYED:
                summary["replays"] += 1
                summary["restartedBy"] = "replay"
                summary["attempts"] = 0  # a replay's task carries fresh attempt counters
            if line.get("attempt") is not None:
                if summary["lastOutcome"] == DEAD_LETTERED:  # redriven: the copy's counters are fresh
                    summary["redrives"] += 1
                    summary["restartedBy"] = "redrive"
                # Since a restart, the dispatcher's own number: two replays (or a replay and a redrive)
                # running side by side each make an attempt 1, which is not 2 attempts since the replay.
                restarted = summary["restartedBy"] is not None
                summary["attempts"] = int(line["attempt"]) if restarted else summary["attempts"] + 1
                summary["attemptsInAll"] += 1
            summary["lastOutcome"] = line.get("outcome")
            summary["lastStatus"] = line.get("status")
        return list(summaries.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.ident,
            "dates": list(self.dates),
            "deliveries": self.deliveries(),
            "attempts": list(self.attempts),
        }


def from_table_row(row: Mapping[str, str | None]) -> dict[str, Any]:
    """An audit line as the Glue table returns it (Athena: lower-case column names, every value text)
    in the audit record's own shape, FIELDS only."""
    by_column = {key.lower(): key for key in FIELDS}
    line: dict[str, Any] = dict.fromkeys(FIELDS)
    for column, text in row.items():
        key = by_column.get(column.lower())
        if key is None or text is None or text == "":
            continue
        line[key] = int(float(text)) if key in _INTEGERS else float(text) if key in _NUMBERS else text
    return line


def timeline(lines: Iterable[Mapping[str, Any]], ident: str, dates: Iterable[str]) -> Timeline:
    """The lines about ``ident``, reduced to FIELDS and sorted by start (then end, target, attempt).
    An event or delivery id names its own event only, even if another event's conversation id happens
    to be the same text (as ``relay deliveries replay`` reads it: relay.logic.deliveries.lookup)."""
    about = [line for line in lines if names(line, ident)]
    own_events = {line.get("eventId") for line in about if any(line.get(key) == ident for key in _EXACT)}
    if own_events:
        about = [line for line in about if line.get("eventId") in own_events]
    chosen = [{key: line.get(key) for key in FIELDS} for line in about]
    chosen.sort(
        key=lambda line: (
            str(line["startedAt"] or ""),
            str(line["finishedAt"] or ""),
            str(line["targetId"] or ""),
            line["attempt"] or 0,
        )
    )
    return Timeline(ident=ident, dates=tuple(dates), attempts=tuple(chosen))


def unaudited_ordered(found: Timeline, targets: Mapping[str, Sequence[Target]]) -> list[tuple[str, Target]]:
    """The (event id, ordered target) pairs of the events ``found`` shows that have no line: an event of
    an ordered conversation is audited only once a dispatcher receives it, so one waiting behind a held
    or blocked record has none yet. ``targets``: each integration's targets (its filters may also have
    left the event out, which the audit does not record)."""
    seen: dict[tuple[str, str], set[str]] = {}
    for line in found.attempts:
        seen.setdefault((line["integrationId"], line["eventId"]), set()).add(line["targetId"])
    return [
        (event_id, target)
        for (integration_id, event_id), audited in seen.items()
        for target in targets.get(integration_id, ())
        if target.ordering is Ordering.CONVERSATION and target.target_id not in audited
    ]
