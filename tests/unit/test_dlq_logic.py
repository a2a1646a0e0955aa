"""Grouping, filtering and re-send rules of ``relay dlq`` (pure logic, no sockets)."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.cli import build_parser
from relay.cli.dlq_cmd import ProgressLine, format_groups, format_redrive
from relay.logic.dlq import (
    BACKSTOP_REASON,
    DLQ_REASONS,
    UNPARSEABLE,
    DeadLetter,
    Progress,
    RedriveFilter,
    RedriveOptions,
    RedriveResult,
    classify,
    group_dead_letters,
    in_acceptance_order,
    redrive_attributes,
)
from relay.models.delivery import (
    ATTR_ATTEMPTS,
    ATTR_DEFERRALS,
    ATTR_DLQ_REASON,
    ATTR_INTEGRATION_ID,
    ATTR_LAST_ERROR,
    ATTR_LAST_STATUS,
    ATTR_TARGET_ID,
    DeliveryTask,
)
from relay.models.queue import MAX_BATCH_BYTES, OutgoingMessage, ReceivedMessage, plan_batches


def body(integration_id: str = "int-1", target_id: str = "target-a") -> tuple[str, str]:
    task = DeliveryTask(
        delivery_id=uuid4(),
        integration_id=integration_id,
        target_id=target_id,
        event_id="e1",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        event={"text": "hello"},
    )
    return task.model_dump_json(by_alias=True), str(task.delivery_id)


def string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def message(
    text: str, attributes: dict[str, Any] | None = None, sent_ms: int | None = 1_000
) -> ReceivedMessage:
    return ReceivedMessage(
        message_id=str(uuid4()),
        receipt_handle="rh",
        body=text,
        attributes=attributes or {},
        sent_timestamp_ms=sent_ms,
    )


def letter(reason: str, target: str, sent_ms: int, integration: str = "int-1") -> DeadLetter:
    return DeadLetter(str(uuid4()), reason, integration, target, str(uuid4()), None, sent_ms)


# --- classify -----------------------------------------------------------------------------------


def _redrive_reason_help() -> str:
    parser = build_parser()
    for name in ("dlq", "redrive"):
        (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[name]
    (reason,) = (a for a in parser._actions if a.dest == "reason")
    return str(reason.help)


@pytest.mark.parametrize("reason", DLQ_REASONS)
def test_every_reason_is_explained_to_the_operator(reason: str) -> None:
    # `relay dlq redrive --reason` names it, and docs/operations-dlq.md's table says what to do about it
    assert reason in _redrive_reason_help().replace(",", " ").split()
    runbook = (Path(__file__).resolve().parents[2] / "docs" / "operations-dlq.md").read_text()
    assert f"\n| `{reason}` |" in runbook


def test_a_message_without_a_reason_came_through_the_redrive_backstop() -> None:
    text, delivery_id = body("int-9", "target-z")

    letter = classify(message(text))

    assert (letter.reason, letter.integration_id, letter.target_id) == (BACKSTOP_REASON, "int-9", "target-z")
    assert letter.delivery_id == delivery_id


def test_attributes_the_dispatcher_set_win_over_the_body() -> None:
    text, _ = body("int-1", "target-a")
    attributes = {
        ATTR_DLQ_REASON: string("target-gone"),
        ATTR_TARGET_ID: string("target-b"),
        ATTR_INTEGRATION_ID: string("int-2"),
        ATTR_LAST_STATUS: {"DataType": "Number", "StringValue": "410"},
    }

    letter = classify(message(text, attributes))

    assert (letter.reason, letter.integration_id, letter.target_id) == ("target-gone", "int-2", "target-b")
    assert letter.last_status == "410"


@pytest.mark.parametrize("text", ["not json", "{}", json.dumps({"deliveryId": "x", "targetId": "t"}), ""])
def test_a_body_that_is_not_a_delivery_task_is_unparseable(text: str) -> None:
    letter = classify(message(text, {ATTR_DLQ_REASON: string("poison")}))

    assert (letter.reason, letter.integration_id, letter.target_id) == ("poison", UNPARSEABLE, UNPARSEABLE)
    assert letter.delivery_id is None


def test_a_last_status_that_is_not_a_number_is_not_shown() -> None:
    text, _ = body()

    letter = classify(message(text, {ATTR_LAST_STATUS: string("<html>secret page</html>")}))

    assert letter.last_status is None


@pytest.mark.parametrize("code", ["oauth-token-failed", "http-500", "connect-timeout", "connection-error"])
def test_the_last_error_code_is_read_so_a_letter_without_a_status_says_why(code: str) -> None:
    # An exhausted letter whose token endpoint failed (or whose TLS handshake was refused) has no status
    text, _ = body()

    letter = classify(message(text, {ATTR_DLQ_REASON: string("exhausted"), ATTR_LAST_ERROR: string(code)}))

    assert (letter.last_status, letter.last_error) == (None, code)


@pytest.mark.parametrize(
    "value",
    [
        "target answered 410 Gone earlier in this batch",  # an unattempted record's sentence
        "<html>secret page</html>",
        "HTTP-500",
        "-starts-with-a-dash",
        "oauth-token-failed\n\x1b[2J",
        "a" * 65,
    ],
)
def test_a_last_error_that_is_not_an_error_code_is_not_shown(value: str) -> None:
    text, _ = body()

    letter = classify(message(text, {ATTR_LAST_ERROR: string(value)}))

    assert letter.last_error is None


# --- grouping -----------------------------------------------------------------------------------


def test_groups_count_keep_the_oldest_and_a_sample_from_their_own_messages() -> None:
    letters = [
        letter("exhausted", "target-a", 5_000),
        letter("exhausted", "target-a", 2_000),
        letter("exhausted", "target-b", 9_000),
        letter("poison", "target-a", 1_000),
        letter("exhausted", "target-a", 7_000),
    ]

    groups = group_dead_letters(letters)

    assert [(g.reason, g.target_id, g.count, g.oldest_sent_ms) for g in groups] == [
        ("exhausted", "target-a", 3, 2_000),
        ("exhausted", "target-b", 1, 9_000),
        ("poison", "target-a", 1, 1_000),
    ]
    assert groups[0].sample_delivery_id == letters[0].delivery_id
    assert groups[0].oldest_age_seconds(now_ms=62_000) == 60


def test_groups_name_every_last_status_and_last_error_of_their_letters() -> None:
    def failed(status: str | None, error: str | None) -> DeadLetter:
        return DeadLetter(str(uuid4()), "exhausted", "int-1", "t", str(uuid4()), status, 1, error)

    (group,) = group_dead_letters(
        [failed(None, "oauth-token-failed"), failed("503", "http-503"), failed(None, "oauth-token-failed")]
    )

    document = group.to_json(now_ms=1_000)
    assert (document["lastStatuses"], document["lastErrors"]) == (["503"], ["http-503", "oauth-token-failed"])


def test_the_same_target_id_under_two_integrations_is_two_groups() -> None:
    groups = group_dead_letters(
        [letter("exhausted", "t", 1, integration="int-1"), letter("exhausted", "t", 1, integration="int-2")]
    )

    assert sorted((g.integration_id, g.count) for g in groups) == [("int-1", 1), ("int-2", 1)]


reasons = st.sampled_from(["exhausted", "poison", BACKSTOP_REASON])
targets = st.sampled_from(["a", "b", "c"])
integrations = st.sampled_from(["i1", "i2"])
letters_strategy = st.lists(
    st.builds(letter, reasons, targets, st.integers(0, 10**12), integrations), max_size=40
)


@given(letters_strategy)
def test_every_letter_lands_in_exactly_one_group(letters: list[DeadLetter]) -> None:
    groups = group_dead_letters(letters)

    assert sum(g.count for g in groups) == len(letters)
    assert len({(g.reason, g.integration_id, g.target_id) for g in groups}) == len(groups)
    for group in groups:
        members = [
            x
            for x in letters
            if (x.reason, x.integration_id, x.target_id)
            == (group.reason, group.integration_id, group.target_id)
        ]
        assert group.count == len(members)
        assert group.oldest_sent_ms == min(x.sent_timestamp_ms or 0 for x in members)
    assert [g.count for g in groups] == sorted((g.count for g in groups), reverse=True)


# --- filtering ----------------------------------------------------------------------------------


@given(
    letters_strategy,
    st.frozensets(targets, max_size=2),
    st.frozensets(integrations, max_size=1),
    st.frozensets(reasons, max_size=2),
)
def test_a_filter_matches_when_every_given_set_holds_the_value(
    letters: list[DeadLetter],
    want_targets: frozenset[str],
    want_integrations: frozenset[str],
    want_reasons: frozenset[str],
) -> None:
    selection = RedriveFilter(want_targets, want_integrations, want_reasons)

    for x in letters:
        expected = (
            (not want_targets or x.target_id in want_targets)
            and (not want_integrations or x.integration_id in want_integrations)
            and (not want_reasons or x.reason in want_reasons)
        )
        assert selection.matches(x) is expected
    assert selection.active is bool(want_targets or want_integrations or want_reasons)


def test_an_empty_filter_matches_everything() -> None:
    assert RedriveFilter.of().matches(letter("poison", UNPARSEABLE, 0))
    assert not RedriveFilter.of().active


def ordered_letter(group: str | None, accepted_minute: int | None) -> ReceivedMessage:
    """A letter of ``group`` whose event the intake accepted at that minute (None: a body no task)."""
    text = "not a task"
    if accepted_minute is not None:
        text = DeliveryTask(
            delivery_id=uuid4(),
            integration_id="int-1",
            target_id="target-a",
            event_id=f"{group}-{accepted_minute}",
            received_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=accepted_minute),
            event_json="{}",
        ).model_dump_json(by_alias=True)
    return ReceivedMessage(str(uuid4()), "rh", text, {}, 1_000, group_id=group)


def acceptance_order(batch: list[ReceivedMessage]) -> list[ReceivedMessage]:
    """The messages of ``batch`` as the re-send orders them (each classified once, as it does)."""
    return [message for message, _ in in_acceptance_order([(m, classify(m)) for m in batch])]


def test_a_conversations_letters_are_put_in_the_order_their_events_were_accepted() -> None:
    # Given a batch as a FIFO DLQ hands it out: conversation a's first letter was redriven alone and
    # failed again, so it came back behind a's second; b's and an ungrouped letter are between them
    batch = [
        ordered_letter("a", 2),
        ordered_letter("b", 1),
        ordered_letter(None, 9),
        ordered_letter("a", 1),
        ordered_letter("b", 5),
    ]

    # Then a's letters swap places, and everything else stays where it was
    assert acceptance_order(batch) == [batch[3], batch[1], batch[2], batch[0], batch[4]]


def test_a_conversation_with_a_letter_that_is_not_a_task_keeps_its_order() -> None:
    batch = [ordered_letter("a", 2), ordered_letter("a", None), ordered_letter("a", 1)]
    assert acceptance_order(batch) == batch


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", None]), st.integers(min_value=0, max_value=5)),
        max_size=10,
    )
)
def test_reordering_only_moves_letters_within_their_conversation_and_sorts_each_one(
    letters: list[tuple[str | None, int]],
) -> None:
    batch = [ordered_letter(group, minute) for group, minute in letters]
    reordered = acceptance_order(batch)
    # Every place keeps its conversation, nothing is lost or doubled, letters without one stay
    assert [m.group_id for m in reordered] == [m.group_id for m in batch]
    assert sorted(m.message_id for m in reordered) == sorted(m.message_id for m in batch)
    assert all(r is m for r, m in zip(reordered, batch, strict=True) if m.group_id is None)
    # and each conversation reads in acceptance order, ties in the DLQ's order
    for group in ("a", "b", "c"):
        mine = [m for m in reordered if m.group_id == group]
        keys = [(DeliveryTask.model_validate_json(m.body).received_at, batch.index(m)) for m in mine]
        assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("options", "move_task"),
    [
        (RedriveOptions(), True),
        (RedriveOptions(filter=RedriveFilter.of(reasons=["exhausted"])), False),
        (RedriveOptions(max_messages=5), False),
        (RedriveOptions(dry_run=True), False),
        (RedriveOptions(method="resend"), False),
        (RedriveOptions(method="move-task"), True),
    ],
)
def test_only_an_unfiltered_unbounded_real_run_uses_the_move_task(
    options: RedriveOptions, move_task: bool
) -> None:
    assert options.wants_move_task() is move_task
    # An ordered (FIFO) DLQ is re-sent, in acceptance order, unless the move task is asked for by name
    assert options.wants_move_task(ordered=True) is (move_task and options.method == "move-task")


@pytest.mark.parametrize(
    "narrowed",
    [
        {"dry_run": True},
        {"max_messages": 5},
        {"filter": RedriveFilter.of(targets=["t-1"])},
        {"filter": RedriveFilter.of(reasons=["exhausted"])},
    ],
)
def test_the_move_task_asked_for_with_a_dry_run_a_bound_or_a_filter_is_refused(
    narrowed: dict[str, Any],
) -> None:
    # SQS's move task moves the whole queue: with any of these it would move what was left out.
    with pytest.raises(ValueError, match="moves every message of the queue"):
        RedriveOptions(method="move-task", **narrowed)


# --- the re-sent copy ---------------------------------------------------------------------------


def test_a_redriven_copy_is_a_fresh_try_without_dead_letter_notes() -> None:
    attributes = {
        ATTR_ATTEMPTS: {"DataType": "Number", "StringValue": "3"},
        ATTR_DEFERRALS: {"DataType": "Number", "StringValue": "2"},
        ATTR_DLQ_REASON: string("exhausted"),
        ATTR_LAST_STATUS: {"DataType": "Number", "StringValue": "503"},
        ATTR_LAST_ERROR: string("http_503"),
        ATTR_TARGET_ID: string("t"),
        ATTR_INTEGRATION_ID: string("i"),
        "traceparent": string("00-abc-def-01"),
    }

    copy = redrive_attributes(attributes)

    assert copy == {
        ATTR_ATTEMPTS: {"DataType": "Number", "StringValue": "0"},
        "traceparent": string("00-abc-def-01"),
    }
    assert attributes[ATTR_ATTEMPTS]["StringValue"] == "3"  # the original is not changed


def test_send_batches_hold_at_most_ten_and_stay_under_the_byte_limit() -> None:
    small = [OutgoingMessage(str(i), "x" * 100, {}) for i in range(23)]
    big = [
        OutgoingMessage(f"b{i}", "y" * 100_000, {ATTR_ATTEMPTS: {"DataType": "Number", "StringValue": "0"}})
        for i in range(5)
    ]

    batches = plan_batches(small + big)

    assert [len(b) for b in batches] == [10, 10, 5, 2, 1]  # 3 small + 2 big fit; 3 big do not
    assert [m.entry_id for b in batches for m in b] == [m.entry_id for m in small + big]  # order kept
    assert all(sum(m.size for m in b) <= MAX_BATCH_BYTES for b in batches)


def test_the_size_of_a_message_counts_its_attributes() -> None:
    bare = OutgoingMessage("1", "body", {})
    with_attribute = OutgoingMessage("1", "body", {"name": string("value")})

    assert with_attribute.size == bare.size + len("name") + len("String") + len("value")


# --- output -------------------------------------------------------------------------------------


def test_the_table_shows_ids_counts_and_ages() -> None:
    groups = group_dead_letters([letter("exhausted", "target-a", 0), letter("exhausted", "target-a", 0)])

    table = format_groups([g.to_json(now_ms=(2 * 3_600 + 5 * 60) * 1000) for g in groups])

    header, row = table.splitlines()
    assert header.split()[:5] == ["REASON", "INTEGRATION", "TARGET", "COUNT", "OLDEST"]
    assert row.split()[:6] == ["exhausted", "int-1", "target-a", "2", "2h05m", "-"]


def test_the_table_shows_the_last_error_after_the_last_status() -> None:
    letters = [
        DeadLetter(str(uuid4()), "exhausted", "int-1", "crm", str(uuid4()), None, 0, "oauth-token-failed"),
        DeadLetter(str(uuid4()), "exhausted", "int-1", "erp", str(uuid4()), "503", 0, "http-503"),
        DeadLetter(str(uuid4()), "exhausted", "int-1", "erp", str(uuid4()), "500", 0, "http-500"),
    ]

    table = format_groups([g.to_json(now_ms=0) for g in group_dead_letters(letters)])

    header, erp, crm = table.splitlines()
    assert header.index("LAST STATUS") < header.index("LAST ERROR") < header.index("SAMPLE DELIVERY ID")
    column = header.index("LAST ERROR")
    assert crm.split()[:6] == ["exhausted", "int-1", "crm", "1", "0s", "-"]
    assert crm[column:].split()[0] == "oauth-token-failed"
    assert erp[column:].split()[0] == "http-500,http-503"


def test_a_dry_run_summary_says_would_move() -> None:
    result = RedriveResult(mode="dry-run", scanned=8, matched=3, skipped=5)

    text = format_redrive(result.to_json())

    assert "would move 3 of 8 scanned" in text
    assert result.completed


def test_a_summary_of_a_run_whose_filters_chose_nothing_does_not_say_the_queue_was_empty() -> None:
    chose_nothing = RedriveResult(mode="dry-run", scanned=66, matched=0, skipped=66)
    empty = RedriveResult(mode="dry-run", scanned=0)

    assert (
        format_redrive(chose_nothing.to_json()).splitlines()[0]
        == "none of the 66 messages scanned was chosen"
    )
    assert format_redrive(empty.to_json()).splitlines()[0] == "no messages"


def test_a_result_with_a_failed_send_is_not_ok() -> None:
    assert not RedriveResult(mode="resend", moved=2, send_failed=1).completed
    assert not RedriveResult(mode="resend", not_deleted=1).completed


def test_one_letter_back_in_the_dlq_is_named_in_the_singular() -> None:
    one = RedriveResult(mode="resend", moved=1, arrived_during_run=1).attention
    two = RedriveResult(mode="resend", moved=2, arrived_during_run=2).attention

    assert one is not None and one.startswith(
        "1 message arrived in the DLQ during the run and is still there"
    )
    assert two is not None and two.startswith(
        "2 messages arrived in the DLQ during the run and are still there"
    )


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_redraws_in_place_on_a_terminal() -> None:
    stream = FakeTerminal()
    line = ProgressLine(stream, clock=lambda: 0.0, interval_seconds=0)

    line(Progress("redrive", 5, 10, moved=4, failed=1))
    line(Progress("redrive", 10, 10, moved=9, failed=1))
    line.close()

    drawn = stream.getvalue()
    assert drawn.count("\r") == 2 and drawn.endswith("\n")
    assert "[############............] 5/~10  moved 4  failed 1" in drawn


def test_the_progress_line_is_throttled_off_a_terminal() -> None:
    stream = io.StringIO()
    ticks = iter([0.0, 0.0, 1.0, 6.0, 6.0])
    line = ProgressLine(stream, clock=lambda: next(ticks))

    for done in (1, 2, 3):
        line(Progress("scan", done, None))

    # (a list's scan moves nothing: its line says only how far it read)
    assert stream.getvalue().splitlines() == ["scan: 1", "scan: 3"]


def test_the_last_progress_is_drawn_when_the_line_closes_so_it_agrees_with_the_summary() -> None:
    stream = io.StringIO()
    ticks = iter([0.0, 0.0, 1.0])
    line = ProgressLine(stream, clock=lambda: next(ticks))

    line(Progress("redrive", 3, 4, moved=3))
    line(Progress("redrive", 4, 4, moved=4))  # within the interval: not drawn yet
    line.close()

    assert stream.getvalue().splitlines()[-1].endswith("4/~4  moved 4  failed 0")


def test_a_discards_progress_line_counts_what_it_discarded_or_on_a_dry_run_what_it_would() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, clock=lambda: 0.0, interval_seconds=0)

    line(Progress("discard", 4, 8, moved=3, failed=1))
    line(Progress("would discard", 8, 8, moved=5))

    assert stream.getvalue().splitlines() == [
        "discard: [############............] 4/~8  discarded 3  not saved 1",
        "would discard: [########################] 8/~8  matched 5",
    ]
