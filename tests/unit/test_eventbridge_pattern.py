"""EventBridge event patterns as the local stack matches them (relay.local.eventbridge)."""

from __future__ import annotations

from typing import Any

import pytest
from support.events import sample

from relay.local.eventbridge import PatternNotEmulated, check_pattern, matches
from relay.local.template import load_template

EVENT = sample("eventbridge_conversation_start.json")


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ({"source": [{"prefix": "aws.partner/genesys.com"}]}, True),
        ({"source": [{"prefix": "aws.partner/other"}]}, False),
        ({"source": ["aws.events", {"prefix": "aws.partner/"}]}, True),  # any condition in the list
        ({"source": [{"prefix": "aws.partner/"}], "detail-type": ["other"]}, False),  # every field
        ({"detail": {"eventBody": {"mediaType": ["MESSAGE"]}}}, True),  # nested
        ({"detail": {"eventBody": {"mediaType": ["VOICE"]}}}, False),
        ({"detail": {"eventBody": {"mediaType": [{"equals-ignore-case": "message"}]}}}, True),
        ({"detail": {"topicName": [{"suffix": ".customer.start"}]}}, True),
        ({"detail": {"metadata": {"CorrelationId": [{"exists": True}]}}}, True),
        ({"detail": {"metadata": {"Missing": [{"exists": False}]}}}, True),
        ({"detail": {"metadata": {"Missing": [{"exists": True}]}}}, False),
        ({"detail-type": [{"anything-but": ["Scheduled Event"]}]}, True),
        ({"detail-type": [{"anything-but": {"prefix": "v2.detail"}}]}, False),
        ({"detail": {"metadata": {"Missing": [{"anything-but": "x"}]}}}, False),  # must be present
        ({"resources": [{"prefix": "arn:"}]}, False),  # an empty array matches nothing
    ],
)
def test_patterns_match_as_eventbridge_does(pattern: dict[str, Any], expected: bool) -> None:
    check_pattern(pattern)
    assert matches(pattern, EVENT) is expected


def test_an_array_in_the_event_matches_when_any_element_does() -> None:
    event = {"resources": ["arn:a", "arn:b"]}
    assert matches({"resources": ["arn:b"]}, event)
    assert not matches({"resources": ["arn:c"]}, event)


@pytest.mark.parametrize(
    "pattern",
    [
        {"detail": {"n": [{"numeric": [">", 0]}]}},
        {"source": [{"wildcard": "aws.*"}]},
        {"source": [{"prefix": {"equals-ignore-case": "AWS."}}]},
        {"source": [{"prefix": "a", "suffix": "b"}]},
        {"detail": "not-a-list"},
    ],
)
def test_operators_the_matcher_does_not_know_are_refused_up_front(pattern: dict[str, Any]) -> None:
    with pytest.raises(PatternNotEmulated):
        check_pattern(pattern)


def test_the_templates_own_pattern_is_understood_and_admits_the_genesys_sample() -> None:
    template = load_template()
    rule = template.properties("IntakeFunction")["Events"]["GenesysEventBridge"]["Properties"]
    check_pattern(rule["Pattern"])
    assert matches(rule["Pattern"], EVENT)
    schedule = sample("eventbridge_schedule.json")
    assert not matches(rule["Pattern"], schedule)
