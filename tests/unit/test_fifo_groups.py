"""The local poller's FIFO emulation (relay.local.fifo_groups): a message group reaches the function
from its head, whatever order moto's receive brings it in."""

from __future__ import annotations

from typing import Any

from relay.local.fifo_groups import FifoGroups


def message(group: str, n: int, receives: int = 1) -> dict[str, Any]:
    return {
        "MessageId": f"{group}-{n}",
        "Attributes": {"MessageGroupId": group, "ApproximateReceiveCount": str(receives)},
    }


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["MessageId"] for m in messages]


def held(groups: FifoGroups, *batch: dict[str, Any]) -> None:
    """Hand ``batch`` out and settle it with nothing deleted (the function held it all)."""
    keep, back = groups.in_order(list(batch))
    assert back == []
    groups.settled(keep, deleted=set())


def test_a_later_message_received_without_the_groups_head_goes_back() -> None:
    groups = FifoGroups()
    held(groups, message("a", 1), message("a", 2))

    keep, back = groups.in_order([message("a", 2), message("a", 3), message("b", 1)])

    assert ids(keep) == ["b-1"]
    assert ids(back) == ["a-2", "a-3"]


def test_a_receive_that_brings_the_first_outstanding_messages_only_is_invoked() -> None:
    # Ten messages ran out halfway through the held group (other groups came first): the head is
    # there, the rest of the group stays blocked behind it.
    groups = FifoGroups()
    held(groups, *(message("a", n) for n in range(5)), *(message("b", n) for n in range(5)))

    interleaved = [m for n in range(3) for m in (message("a", n), message("b", n))]
    keep, back = groups.in_order(interleaved)

    assert ids(keep) == ids(interleaved) and back == []


def test_a_message_handed_out_is_outstanding_before_its_invocation_ends() -> None:
    # moto shows a held message again as soon as its hold ends, possibly while the invocation that
    # held it is still running: a receive then must not pass it.
    groups = FifoGroups()
    first, _ = groups.in_order([message("a", 1), message("a", 2)])

    keep, back = groups.in_order([message("a", 2), message("a", 3)])

    assert ids(first) == ["a-1", "a-2"]
    assert keep == [] and ids(back) == ["a-2", "a-3"]


def test_deleted_messages_let_the_group_move_on_even_when_settled_late() -> None:
    groups = FifoGroups()
    first, _ = groups.in_order([message("a", 1), message("a", 2)])  # held; its invocation is slow
    again, _ = groups.in_order([message("a", 1), message("a", 2), message("a", 3)])
    groups.settled(again, deleted={"a-1", "a-2", "a-3"})
    groups.settled(first, deleted=set())  # the slow invocation settles last

    keep, back = groups.in_order([message("a", 4)])

    assert ids(keep) == ["a-4"] and back == []


def test_a_message_at_the_redrive_limit_is_forgotten() -> None:
    groups = FifoGroups(max_receive_count=3)
    keep, _ = groups.in_order([message("a", 1, receives=3), message("a", 2, receives=3)])
    groups.settled(keep, deleted=set())  # the queue's redrive policy moves both to the DLQ next

    keep, back = groups.in_order([message("a", 3)])

    assert ids(keep) == ["a-3"] and back == []
