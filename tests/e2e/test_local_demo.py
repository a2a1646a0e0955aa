"""``relay local demo`` as a newcomer runs it, and the tally it prints, on the stack it starts in its own
process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.local_cli import (
    ROOT,
    SIGNING_SECRET,
    alive,
    children_of,
    default_fixtures,
    plain_target_only,
    relay_command,
    written,
)

from relay.local.receiver import Receiver

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_receiver() -> Iterator[Receiver]:
    with Receiver(signing_secrets={"/hooks/e2e": [SIGNING_SECRET]}) as receiver:
        yield receiver


def test_demo_delivers_every_event_and_loses_none() -> None:
    # When the demo runs on the default fixtures
    result = subprocess.run(
        relay_command("demo", "--events", "12"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    # Then it exits 0 and its final line says every accepted event reached every target
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["sent"] == 12
    assert final["accepted"] == final["sent"]
    assert final["delivered"] == final["sent"]
    assert final["lost"] == 0
    assert final["dead_lettered"] == 0
    assert final["p50_ms"] is not None and final["p99_ms"] is not None
    # And the functions' log it announced is gone: a run that went well leaves no temporary file
    (announced,) = re.findall(r"function output goes to (\S+)", result.stderr)
    assert not Path(announced).exists() and f"{announced} removed" in result.stderr


def test_an_ordered_and_an_unordered_target_in_one_stack_get_every_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.local.demo import run_demo
    from relay.local.stack import LocalStack

    # Given the default fixtures with one of the two targets ordered per conversation: the fast lane's
    # and the ordered lane's dispatchers then run side by side in this one process
    doc = default_fixtures()
    doc["integrations"][0]["targets"][0]["ordering"] = "conversation"
    fixtures = written(doc, tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    # When the demo sends its events through it
    with LocalStack(fixtures) as stack:
        report = run_demo(stack, 12, timeout_seconds=90)
        assert stack.poller is not None and stack.ordered_poller is not None
        lanes = {"fast": stack.poller.stats(), "ordered": stack.ordered_poller.stats()}

    # Then both targets got every event, and none of either lane's invocations failed
    assert report.accepted == 12
    assert (report.delivered, report.lost, report.dead_lettered) == (12, 0, 0)
    assert lanes["fast"].invocations > 0 and lanes["ordered"].invocations > 0
    assert {lane: stats.failed_invocations for lane, stats in lanes.items()} == {"fast": 0, "ordered": 0}


def test_a_fixtures_target_disabled_in_genesys_gets_nothing_and_the_stack_still_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.local.demo import run_demo
    from relay.local.stack import LocalStack

    # Given the default fixtures with one target disabled ("enabled": false: disabled in Genesys,
    # which config sync refuses to store, docs/config-sync.md)
    doc = default_fixtures()
    off = doc["integrations"][0]["targets"][1]
    off["enabled"] = False
    fixtures = written(doc, tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    # When the stack starts and the demo sends events through it
    with LocalStack(fixtures) as stack:
        report = run_demo(stack, 4, timeout_seconds=90)
        rejected = [(r["id"], r["reason"]) for r in stack.sync_report["rejected"]]
        got = len(stack.receivers[off["id"]].receiver.requests)

    # Then sync's only rejection is that target, the other got every event, and it got none
    assert rejected == [(off["id"], "webhook integration is disabled in Genesys")]
    assert (report.accepted, report.delivered, report.lost) == (4, 4, 0)
    assert got == 0


def test_the_ready_line_shows_every_receiver_when_targets_share_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.local.stack import LocalStack

    # Given the default fixtures with both targets named alike (Genesys allows it)
    doc = default_fixtures()
    targets = doc["integrations"][0]["targets"]
    for target in targets:
        target["name"] = "dup"
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    # When the stack starts
    with LocalStack(written(doc, tmp_path)) as stack:
        described = stack.describe()["receivers"]
        started = {t["id"]: stack.receivers[t["id"]].url for t in targets}

    # Then the ready line shows both receivers, each name followed by its target id
    assert described == {f"dup ({target_id})": url for target_id, url in started.items()}
    assert len(set(started.values())) == 2


def test_a_receiver_at_a_path_the_relay_percent_encodes_verifies_decrypts_and_counts_what_it_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.local.demo import run_demo
    from relay.local.stack import LocalStack

    # Given the default fixtures with target paths a request line carries percent-encoded
    doc = default_fixtures()
    targets = doc["integrations"][0]["targets"]
    for target, path in zip(targets, ["/hooks/crm ü", "/hooks/archive/集"], strict=True):
        target["url"] = f"http://127.0.0.1:0{path}"
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    # When the demo sends a few events
    with LocalStack(written(doc, tmp_path)) as stack:
        report = run_demo(stack, 3, timeout_seconds=90, rate=None)
        got = [r for t in targets for r in stack.receivers[t["id"]].receiver.deliveries]

    # Then each receiver checked the signature and opened the envelope, and nothing reads as lost
    assert report.ok, report.to_dict()
    assert (report.delivered, report.lost) == (3, 0)
    assert len(got) == 6 and all(r.signature_valid and r.event for r in got)


def test_the_demo_expects_nothing_a_targets_event_filters_leave_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.local.demo import load_samples, run_demo
    from relay.local.stack import LocalStack

    # Given the default fixtures with one target taking Text messages only (the samples have others)
    doc = default_fixtures()
    texts_only = doc["integrations"][0]["targets"][0]
    texts_only["filters"] = {"types": ["Text"]}
    fixtures = written(doc, tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    count = 2 * len(load_samples())
    texts = 2 * sum(1 for sample in load_samples() if sample.get("type") == "Text")
    assert 0 < texts < count

    # When the demo sends two rounds of the samples
    with LocalStack(fixtures) as stack:
        report = run_demo(stack, count, timeout_seconds=90)
        got = {
            (request.event or {}).get("type")
            for request in stack.receivers[texts_only["id"]].receiver.deliveries
        }
        got_texts = len(stack.receivers[texts_only["id"]].receiver.deliveries)

    # Then what the filter left out is counted as such, not as lost, and the run is ok
    assert report.ok, report.to_dict()
    assert (report.delivered, report.lost, report.filtered_out) == (count, 0, count - texts)
    assert got == {"Text"} and got_texts == texts


def test_the_tally_counts_dead_letters_from_the_dlq_and_stop_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.local.demo import run_demo
    from relay.local.receiver import Behaviour
    from relay.local.stack import LocalStack

    # Given a stack whose only target always answers 500, with a short retry matrix
    doc, target = plain_target_only(
        {"attempts": 2, "baseIntervalMs": 200, "maxIntervalMs": 500, "multiplier": 2}
    )
    fixtures = written(doc, tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    children_before = set(children_of(os.getpid()))

    # Six failed attempts in all: above the default breaker threshold (5) an attempt could wait out the
    # breaker's 30 s reset, depending on how the attempts interleave. The breaker is not this test's subject.
    with LocalStack(fixtures, environment={"BREAKER_FAILURE_THRESHOLD": "10"}) as stack:
        stack.receivers[target["id"]].receiver.behaviour = Behaviour(status=500)
        started_children = set(children_of(os.getpid())) - children_before

        # When the demo sends three events through it
        report = run_demo(stack, 3, timeout_seconds=90)

    # Then every accepted event is counted as dead-lettered (read from the DLQ), none delivered or lost
    assert report.accepted == 3
    assert report.delivered == 0
    assert report.dead_lettered == 3
    assert report.lost == 0
    assert report.ok is False

    # And stopping restored the environment and left none of the stack's processes or threads
    assert "AWS_ENDPOINT_URL" not in os.environ
    assert started_children and [pid for pid in started_children if alive(pid)] == []
    leftovers = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith(("sqs-poller", "api-adapter", "eventbridge", "worker-spawner"))
    ]
    assert leftovers == []


def test_the_tally_reads_the_ordered_dead_letters_and_the_audit_of_targets_it_cannot_see(
    tmp_path: Path, own_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.local.demo import run_demo
    from relay.local.receiver import Behaviour
    from relay.local.stack import LocalStack

    # Given an ordered target that always answers 500 with one attempt (its letters go to the ordered
    # lane's DLQ), and a target at a URL of our own (the demo cannot see its requests)
    doc = default_fixtures()
    integration = doc["integrations"][0]
    ordered = next(t for t in integration["targets"] if "encryptionKey" not in t)
    ordered.update(ordering="conversation", retryMatrix={"attempts": 1})
    own = {
        "id": "0a0a0a0a-1111-4222-8333-944455556666",
        "name": "own",
        "url": f"{own_receiver.url}/hooks/e2e",
        "signingSecret": SIGNING_SECRET,
    }
    integration["targets"] = [ordered, own]
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    # When the demo sends three events
    with LocalStack(written(doc, tmp_path)) as stack:
        stack.receivers[ordered["id"]].receiver.behaviour = Behaviour(status=500)
        report = run_demo(stack, 3, timeout_seconds=90)

    # Then our receiver got each event once, which the tally knows from the relay's audit, and each
    # event counts as dead-lettered (read from the ordered DLQ): none lost
    assert len(own_receiver.deliveries) == 3
    assert report.unobserved_targets == ["own"]
    assert (report.accepted, report.delivered, report.dead_lettered, report.lost) == (3, 0, 3, 0)


def test_deliveries_still_queued_when_the_demo_stops_waiting_are_pending_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.local.demo import run_demo
    from relay.local.receiver import Behaviour
    from relay.local.stack import LocalStack

    # Given a target that always answers 500, with more attempts than the demo waits for (its breaker
    # opens after five failures and defers the rest)
    doc, target = plain_target_only(
        {"attempts": 50, "baseIntervalMs": 1_000, "maxIntervalMs": 30_000, "multiplier": 2}
    )
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    # When the demo stops waiting long before the attempts run out
    with LocalStack(written(doc, tmp_path)) as stack:
        stack.receivers[target["id"]].receiver.behaviour = Behaviour(status=500)
        report = run_demo(stack, 2, timeout_seconds=10)
        tried = len(stack.receivers[target["id"]].receiver.requests)

    # Then its events are pending, not lost: the queue still holds them
    summary = report.to_dict()
    assert tried >= 2, summary
    assert report.drained is False, summary
    assert (report.accepted, report.delivered, report.pending, report.lost) == (2, 0, 2, 0), summary
    assert report.ok is False


def test_the_tally_counts_a_long_conversations_ordered_letters_and_events_no_target_takes(
    tmp_path: Path,
) -> None:
    from relay.local.demo import run_demo
    from relay.local.receiver import Behaviour
    from relay.local.stack import LocalStack

    # Given an ordered target that refuses every event (a 400: dead-lettered at once), and a second
    # integration whose only target's filters take none of the demo's (outbound) events
    doc, target = plain_target_only({"attempts": 1, "baseIntervalMs": 0, "maxIntervalMs": 0, "multiplier": 1})
    target["ordering"] = "conversation"
    filtered = {**target, "id": "5d1c9a20-7b3e-4f6a-9c8d-0e1f2a3b4c5d", "name": "inbound-only"}
    filtered.pop("ordering")
    filtered["filters"] = {"directions": ["Inbound"]}
    second = {**doc["integrations"][0], "id": "6e2dab31-8c4f-4a7b-8d9e-1f2a3b4c5d6e", "targets": [filtered]}
    doc["integrations"].append(second)

    with LocalStack(written(doc, tmp_path)) as stack:
        stack.receivers[target["id"]].receiver.behaviour = Behaviour(status=400)

        # When the demo sends 30 events, half to each integration, the first half in one conversation
        report = run_demo(stack, 30, timeout_seconds=120, rate=None)

    # Then the ordered DLQ's letters beyond the first ten of the conversation count as dead-lettered,
    # not lost, and events no target takes are neither delivered nor lost
    assert report.accepted == 30 and report.lost == 0, report.to_dict()
    assert report.dead_lettered == 15 and report.for_no_target == 15 and report.delivered == 0
    assert report.poller["records"] >= 15  # the ordered lane's event source is counted too
    assert report.ok is False
