"""The dispatcher's event archive and the audit's conversation id, against in-memory ports.

One archive object per invocation (never one per event), one line per event holding its text once and
every (target, deliveryId) of the batch; records only deferred are not archived; audit lines carry the
conversation id but never the event's text.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from test_dispatch_engine import INTEGRATION, NOW, always, answer, make_target

from relay.logic.dispatch import Dispatcher
from relay.models.archive import ArchiveRecord
from relay.models.breaker import BreakerState, Phase, target_key
from relay.models.delivery import DeliveryTask, S3Ref
from relay.models.http import HttpResult
from relay.settings import Settings
from relay.testing.fakes import (
    InMemoryAuditSink,
    InMemoryBreakerStore,
    InMemoryClaimCheckStore,
    InMemoryEventArchive,
    InMemoryRateLimitStore,
    InMemorySecrets,
    InMemoryTargets,
    ManualClock,
    RecordingQueueOps,
    ScriptedHttp,
)

SECRET_TEXT = "the customer's confidential words"
Answer = Callable[[str, str, Mapping[str, str], bytes], HttpResult]


def task_record(
    event_id: str,
    target_id: str = "crm",
    *,
    conversation_id: str | None = "conv-1",
    receive_count: int = 1,
    event_ref: S3Ref | None = None,
) -> dict[str, Any]:
    task = DeliveryTask(
        delivery_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{event_id}/{target_id}"),
        integration_id=INTEGRATION,
        target_id=target_id,
        event_id=event_id,
        conversation_id=conversation_id,
        received_at=datetime(2026, 3, 25, 13, 20, tzinfo=UTC),
        event_json=None if event_ref else json.dumps({"id": event_id, "text": SECRET_TEXT}),
        event_ref=event_ref,
    )
    message_id = str(uuid.uuid4())
    return {
        "messageId": message_id,
        "receiptHandle": f"receipt-{message_id}",
        "body": task.model_dump_json(by_alias=True, exclude_none=True),
        "attributes": {"ApproximateReceiveCount": str(receive_count)},
        "messageAttributes": {},
    }


class Archiving:
    """A dispatcher with an archive, and what it wrote."""

    def __init__(self, answer_with: Answer, *target_ids: str) -> None:
        self.clock = ManualClock(NOW)
        self.archive = InMemoryEventArchive()
        self.audit = InMemoryAuditSink()
        self.breakers = InMemoryBreakerStore()
        self.claim_checks = InMemoryClaimCheckStore()
        self.http = ScriptedHttp(answer_with)
        self.dispatcher = Dispatcher(
            settings=Settings.model_validate({}),
            targets=InMemoryTargets(*(make_target(t) for t in target_ids or ("crm",))),
            http=self.http,
            queue=RecordingQueueOps(),
            breakers=self.breakers,
            rate_limits=InMemoryRateLimitStore(),
            audit=self.audit,
            secrets=InMemorySecrets(),
            claim_checks=self.claim_checks,
            clock=self.clock,
            rng=random.Random(7),
            archive=self.archive,
        )

    def batch(self, *records: dict[str, Any], invocation_id: str = "inv-1") -> None:
        self.dispatcher.handle_batch(list(records), invocation_id=invocation_id)

    def archived(self) -> list[ArchiveRecord]:
        return self.archive.records(["2026-03-25"], containing="")

    def audit_text(self) -> str:
        return b"".join(self.audit.objects.values()).decode()


@pytest.fixture
def archiving() -> Iterator[list[Archiving]]:
    made: list[Archiving] = []
    yield made
    for each in made:
        each.dispatcher.close()


def test_one_archive_object_per_invocation_with_each_event_once(archiving: list[Archiving]) -> None:
    # Given a batch of three events, two of them fanned out to two targets
    a = Archiving(always(200), "crm", "erp")
    archiving.append(a)
    records = [
        task_record("e-1", "crm"),
        task_record("e-1", "erp"),
        task_record("e-2", "crm", conversation_id=None),
        task_record("e-3", "crm"),
        task_record("e-3", "erp"),
    ]

    # When it is delivered
    a.batch(*records, invocation_id="inv-7")

    # Then one archive object for the invocation (the only PUT besides one audit object per target)
    assert list(a.archive.objects) == ["archive/date=2026-03-25/inv-7.jsonl"]
    by_event = {r.event_id: r for r in a.archived()}
    assert sorted(by_event) == ["e-1", "e-2", "e-3"]
    # each event's text once, exactly as queued, with every target's delivery id of the batch
    assert json.loads(by_event["e-1"].event_json or "") == {"id": "e-1", "text": SECRET_TEXT}
    assert {d.target_id: d.delivery_id for d in by_event["e-1"].deliveries} == {
        "crm": uuid.uuid5(uuid.NAMESPACE_URL, "e-1/crm"),
        "erp": uuid.uuid5(uuid.NAMESPACE_URL, "e-1/erp"),
    }
    assert (by_event["e-1"].conversation_id, by_event["e-2"].conversation_id) == ("conv-1", None)
    assert {r.invocation_id for r in by_event.values()} == {"inv-7"}
    assert a.archive.objects["archive/date=2026-03-25/inv-7.jsonl"].count(SECRET_TEXT.encode()) == 3


def test_audit_lines_carry_the_conversation_id_and_never_the_event_text(archiving: list[Archiving]) -> None:
    a = Archiving(always(200))
    archiving.append(a)

    a.batch(task_record("e-1", conversation_id="conv-42"))

    (line,) = [json.loads(text) for text in a.audit_text().splitlines()]
    assert (line["eventId"], line["conversationId"], line["outcome"]) == ("e-1", "conv-42", "delivered")
    assert SECRET_TEXT not in a.audit_text()


def test_retries_and_dead_letters_are_archived_but_records_only_deferred_are_not(
    archiving: list[Archiving],
) -> None:
    # Given a failing target (a retry), an unknown target (dead-lettered without an attempt) and a
    # target whose breaker is open (deferred)
    a = Archiving(always(503), "crm", "down")
    archiving.append(a)
    a.breakers.save(
        target_key(INTEGRATION, "down"),
        BreakerState(phase=Phase.OPEN, consecutive_failures=5, trips=1, until=NOW + 60),
        expected_version=0,
    )

    # When one batch holds a retry (attempt 2), a record for the unknown target and a deferred one
    a.batch(
        task_record("retried", receive_count=2), task_record("lost", "nowhere"), task_record("held", "down")
    )

    # Then the retried and the dead-lettered events are archived, the deferred one is not (yet)
    assert sorted(r.event_id for r in a.archived()) == ["lost", "retried"]


def test_a_claim_checked_event_is_archived_by_reference(archiving: list[Archiving]) -> None:
    a = Archiving(always(200))
    archiving.append(a)
    ref = a.claim_checks.put("events/int-1/big.json", json.dumps({"id": "big", "text": SECRET_TEXT}).encode())

    a.batch(task_record("big", event_ref=ref))

    (record,) = a.archived()
    assert (record.event_json, record.event_ref) == (None, ref)
    assert SECRET_TEXT.encode() not in b"".join(a.archive.objects.values())


def test_an_archive_that_cannot_be_written_does_not_fail_the_batch(archiving: list[Archiving]) -> None:
    a = Archiving(lambda method, url, headers, body: answer(200))
    archiving.append(a)
    a.archive.unavailable = True
    rec = task_record("e-1")

    response = a.dispatcher.handle_batch([rec], invocation_id="inv-1")

    assert response == {"batchItemFailures": []}
    assert a.archive.objects == {} and "delivered" in a.audit_text()
