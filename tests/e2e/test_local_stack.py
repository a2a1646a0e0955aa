"""The whole local stack, as a newcomer runs it: ``relay local serve`` and ``relay local demo``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests
from support.events import sample
from support.secure_peers import HttpsReceiver, Pki
from support.waiting import wait_until

from relay.local.receiver import Receiver
from relay.logic.signature import sign

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FIXTURES = ROOT / "events" / "fixtures" / "local.json"
SIGNING_SECRET = "whsec_ZTJlLW93bi1yZWNlaXZlci1zaWduaW5nLXNlY3JldA=="


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay", "local", *args]


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class LineReader:
    """Reads a process's stdout lines on a thread, so the test can wait with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.diagnostics: Path | None = None  # the process's stderr, shown when a wait fails
        self._new = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()

    def wait_for_json(self, key: str, timeout: float) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for line in self.lines:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict) and key in doc:
                    return doc
            return None

        with self._new:
            self._new.wait_for(lambda: found() is not None, timeout=timeout)
            doc = found()
        stderr = self.diagnostics.read_text()[-3000:] if self.diagnostics else ""
        assert doc is not None, f"no JSON line with {key!r} on stdout: {self.lines[-5:]}\n{stderr}"
        return doc


def default_fixtures() -> dict[str, Any]:
    """The default fixtures' document, for a test to change."""
    doc: dict[str, Any] = json.loads(DEFAULT_FIXTURES.read_text())
    return doc


def with_only_target(target: dict[str, Any]) -> dict[str, Any]:
    """The default fixtures' document, its integration delivering to ``target`` only."""
    doc = default_fixtures()
    doc["integrations"][0]["targets"] = [target]
    return doc


def plain_target_only(retry_matrix: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The default fixtures' document with only its unencrypted target, retrying as ``retry_matrix``
    says, and that target."""
    doc = default_fixtures()
    target = next(t for t in doc["integrations"][0]["targets"] if "encryptionKey" not in t)
    target["retryMatrix"] = retry_matrix
    doc["integrations"][0]["targets"] = [target]
    return doc, target


def written(doc: dict[str, Any], tmp_path: Path) -> Path:
    """``doc`` as the test's own fixtures file."""
    path = tmp_path / "fixtures.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def own_receiver() -> Iterator[Receiver]:
    with Receiver(signing_secrets={"/hooks/e2e": [SIGNING_SECRET]}) as receiver:
        yield receiver


@pytest.fixture
def fixtures_file(tmp_path: Path, own_receiver: Receiver) -> Path:
    """The default integration, delivering to a receiver this test runs (a non-port-0 loopback URL)."""
    doc = with_only_target(
        {
            "id": "5c0ffee0-1111-4222-8333-944455556666",
            "name": "e2e-own-receiver",
            "url": f"{own_receiver.url}/hooks/e2e",
            "method": "POST",
            "signingSecret": SIGNING_SECRET,
            "retryMatrix": {"attempts": 3, "baseIntervalMs": 200, "maxIntervalMs": 1000, "multiplier": 2},
            "onExhaustd": "dead-letter",  # misspelt: serve warns and goes on
        }
    )
    return written(doc, tmp_path)


@contextlib.contextmanager
def serving(
    fixtures: Path, stderr_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
    """`relay local serve` in a process group of its own, as in a terminal; killed with its children
    if the test leaves it running (it failed midway)."""
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            relay_command("serve", "--fixtures", str(fixtures)),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
            start_new_session=True,
            env=env,
        )
    try:
        assert process.stdout is not None
        stdout = LineReader(process.stdout)
        stdout.diagnostics = stderr_path
        yield process, stdout
    finally:
        if process.poll() is None:
            strays = children_of(process.pid)
            process.kill()
            process.wait()
            for pid in strays:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def post_signed(
    api: str, integration: dict[str, Any], event: dict[str, Any], session: requests.Session | None = None
) -> requests.Response:
    """Post ``event`` to the integration's webhook URL, signed as Genesys signs (on ``session``'s
    keep-alive connection if given)."""
    body = json.dumps(event).encode()
    return (session or requests).post(
        f"{api}/webhooks/{integration['id']}",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(body, integration["signatureSecret"]),
        },
        timeout=15,
    )


@pytest.mark.parametrize("stop", ["SIGTERM", "Ctrl-C"])
def test_serve_prints_ready_delivers_a_signed_post_and_stops_cleanly(
    fixtures_file: Path, own_receiver: Receiver, tmp_path: Path, stop: str
) -> None:
    # Given `relay local serve` running with fixtures that name our receiver
    stderr_path = tmp_path / "serve.stderr"
    with serving(fixtures_file, stderr_path) as (process, stdout):
        ready = stdout.wait_for_json("ready", timeout=90)
        assert ready["ready"] is True
        assert ready["api"].startswith("http://127.0.0.1:")
        children = children_of(process.pid)

        # When Genesys (as we sign like it) posts an event to <api>/webhooks/<integrationId>
        integration = json.loads(fixtures_file.read_text())["integrations"][0]
        event = sample("openmessaging_text.json")
        response = post_signed(ready["api"], integration, event)

        # Then the intake accepts it and our receiver gets it, signed with the target's secret
        assert response.status_code == 202, response.text
        assert own_receiver.wait_for(1, timeout=30)
        delivery = own_receiver.deliveries[0]
        assert delivery.signature_valid is True
        assert delivery.event is not None and delivery.event["id"] == event["id"]
        assert delivery.envelope is not None and delivery.envelope["formatVersion"] == "2.1"

        # When events keep coming on one keep-alive connection (as Genesys sends them) while it is sent
        # SIGTERM, or Ctrl-C is pressed (SIGINT to the terminal's whole process group)
        accepted: list[str] = []

        def keep_posting() -> None:
            with requests.Session() as session:
                for n in range(1_000):
                    posted = {**event, "id": f"{event['id']}-{n}"}
                    try:
                        answer = post_signed(ready["api"], integration, posted, session)
                    except requests.RequestException:
                        return
                    if answer.status_code != 202:
                        return
                    accepted.append(posted["id"])

        poster = threading.Thread(target=keep_posting)
        poster.start()
        wait_until(lambda: len(accepted) >= 5, what="events accepted on a kept-alive connection", timeout=30)
        if stop == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=60)
        poster.join(timeout=30)

    # Then every event it answered 202 reached the receiver: it stopped accepting before it stopped
    # delivering, and let what it had accepted be delivered
    received = {d.event["id"] for d in own_receiver.deliveries if d.event is not None}
    assert accepted and set(accepted) <= received, sorted(set(accepted) - received)

    # Then it exits cleanly, printed exactly one ready line, logged no error on the way out, and left no
    # child process behind
    assert code == 0
    logged = stderr_path.read_text()
    assert "Traceback" not in logged and '"level":"ERROR"' not in logged.replace(" ", ""), logged[-3000:]
    assert "integrations.0.targets.0.onExhaustd (did you mean onExhausted?) is not a fixtures field" in logged
    assert sum(1 for line in stdout.lines if '"ready"' in line) == 1
    # and its last word on stopping says that nothing it accepted was left behind
    stop_lines = [line for line in logged.splitlines() if line.startswith("relay local serve: stopping")]
    assert stop_lines[-1].endswith("every invocation finished, nothing left in the queues"), stop_lines
    assert children, "serve should have started moto's server as a child process"
    assert [pid for pid in children if alive(pid)] == []


def test_a_stop_that_outlasts_the_settle_wait_finishes_the_running_deliveries_and_calls_none_dropped(
    own_receiver: Receiver, tmp_path: Path
) -> None:
    from relay.local.receiver import Behaviour

    # Given serve delivering to our receiver, which holds every request until told (a slow target;
    # its read timeout outlasts the stop's 10 s wait for the queues to settle)
    doc = with_only_target(
        {
            "id": "5c0ffee0-1111-4222-8333-944455556667",
            "name": "e2e-slow-receiver",
            "url": f"{own_receiver.url}/hooks/e2e",
            "signingSecret": SIGNING_SECRET,
            "readTimeoutSeconds": 45,
        }
    )
    integration = doc["integrations"][0]
    answer = threading.Event()
    own_receiver.behaviour = Behaviour(gate=answer, hang_seconds=60)
    stderr_path = tmp_path / "serve.stderr"
    with serving(written(doc, tmp_path), stderr_path) as (process, stdout):
        ready = stdout.wait_for_json("ready", timeout=90)
        event = sample("openmessaging_text.json")
        sent = [f"{event['id']}-{n}" for n in range(3)]
        for event_id in sent:
            assert post_signed(ready["api"], integration, {**event, "id": event_id}).status_code == 202
        wait_until(lambda: own_receiver.held == len(sent), what="the receiver holding every delivery")

        # When Ctrl-C is pressed while they are under way, and the receiver answers only once serve
        # has given up waiting for the queues to settle
        os.killpg(process.pid, signal.SIGINT)
        wait_until(
            lambda: re.search(r"waiting for \d+ running|dropped with the stack", stderr_path.read_text()),
            what="serve done waiting for the queues to settle",
            timeout=40,
        )
        answer.set()
        code = process.wait(timeout=60)

    # Then every delivery was answered, and serve calls none of them dropped: it waited for the
    # invocations running, and then found nothing left in the queues
    assert code == 0
    assert {d.event["id"] for d in own_receiver.deliveries if d.event is not None} == set(sent)
    logged = stderr_path.read_text()
    stop_lines = [line for line in logged.splitlines() if line.startswith("relay local serve: stopping")]
    assert not [line for line in stop_lines if "dropped" in line], stop_lines
    assert re.search(r"stopping: waiting for [1-3] running invocation\(s\) to finish", logged), stop_lines
    assert stop_lines[-1].endswith("every invocation finished, nothing left in the queues"), stop_lines


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_ctrl_c_while_serve_starts_stops_it_without_saying_ready(fixtures_file: Path, tmp_path: Path) -> None:
    # Given `relay local serve` starting its dispatcher containers (worker processes)
    with serving(fixtures_file, tmp_path / "serve.stderr") as (process, stdout):
        wait_until(
            lambda: any("function_worker" in command_line(pid) for pid in children_of(process.pid)),
            what="serve starts its dispatcher workers",
            timeout=90,
        )
        children = children_of(process.pid)

        # When Ctrl-C is pressed before it is ready
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=60)

    # Then it never says ready, exits as interrupted, and leaves no child process behind
    assert not any('"ready"' in line for line in stdout.lines), stdout.lines
    assert code == 130
    assert [pid for pid in children if alive(pid)] == []


def test_serve_presents_the_client_certificate_to_an_https_target_trusted_through_the_environment(
    tmp_path: Path,
) -> None:
    # Given an HTTPS receiver that requires a client certificate from its own CA, and fixtures whose
    # target presents one; the CA is trusted as the docs say: RELAY_LOCAL_TRUSTED_CAS in serve's
    # environment
    pki = Pki.create(tmp_path)
    with HttpsReceiver(pki) as receiver:
        doc = with_only_target(
            {
                "id": "7e57c0de-1111-4222-8333-944455556666",
                "name": "mtls",
                "url": f"{receiver.url}/hooks/mtls",
                "clientCertificate": pki.client_bundle("relay-e2e"),
            }
        )
        integration = doc["integrations"][0]
        env = {**os.environ, "RELAY_LOCAL_TRUSTED_CAS": str(pki.ca_file())}
        with serving(written(doc, tmp_path), tmp_path / "serve.stderr", env) as (process, stdout):
            ready = stdout.wait_for_json("ready", timeout=90)

            # When Genesys posts an event
            response = post_signed(ready["api"], integration, sample("openmessaging_text.json"))

            # Then the target gets it over TLS, from a relay that presented the client certificate
            assert response.status_code == 202, response.text
            (seen,) = wait_until(lambda: receiver.requests, what="a delivery to the mTLS target")
            assert seen.path == "/hooks/mtls" and seen.client_certificate == "relay-e2e"
            assert receiver.refused_handshakes == 0
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0


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


def test_a_target_config_sync_refuses_stops_serve_before_it_is_ready_naming_the_target_and_why(
    tmp_path: Path,
) -> None:
    # Given fixtures whose first target points at the cloud metadata address (config sync refuses it)
    doc = default_fixtures()
    refused = doc["integrations"][0]["targets"][0]
    refused["url"] = "https://169.254.169.254/latest/meta-data/"

    # When serve starts on them
    with serving(written(doc, tmp_path), tmp_path / "serve.stderr") as (process, stdout):
        code = process.wait(timeout=120)

    # Then it refuses the file as it refuses any other mistake in it (exit 2: the file is wrong, not the
    # stack), never says ready, and says which file, which target and why
    errors = (tmp_path / "serve.stderr").read_text()
    assert code == 2, errors
    assert not any('"ready"' in line for line in stdout.lines)
    assert "fixtures.json: not a valid fixtures file: config sync refused target " in errors
    assert f"target {refused['id']}: URL refused" in errors
    assert "link-local cloud metadata address" in errors


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
