"""``relay local serve`` as a newcomer runs it: ready, delivering, stopping on SIGINT or SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests
from support.events import sample
from support.local_cli import (
    ROOT,
    SIGNING_SECRET,
    alive,
    children_of,
    default_fixtures,
    relay_command,
    with_only_target,
    written,
)
from support.secure_peers import HttpsReceiver, Pki
from support.waiting import wait_until

from relay.local.receiver import Behaviour, Receiver
from relay.logic.signature import sign

pytestmark = pytest.mark.e2e


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


@pytest.mark.parametrize("presses", [1, 2], ids=["Ctrl-C", "Ctrl-C-twice"])
def test_a_stop_that_outlasts_the_settle_wait_finishes_the_running_deliveries_and_calls_none_dropped(
    own_receiver: Receiver, tmp_path: Path, presses: int
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

        # When Ctrl-C is pressed while they are under way (pressed again once serve stops accepting: a
        # second press ends the wait for the queues to settle), and the receiver answers only once
        # serve has given up waiting for them
        os.killpg(process.pid, signal.SIGINT)
        if presses == 2:
            wait_until(lambda: "no longer accepting" in stderr_path.read_text(), what="serve stopping")
            os.killpg(process.pid, signal.SIGINT)
        wait_until(
            lambda: re.search(r"waiting for \d+ running|dropped with the stack", stderr_path.read_text()),
            what="serve done waiting for the queues to settle",
            timeout=40,
        )
        if presses == 2:  # it gave up at the second press, and said so
            assert "second signal: no longer waiting for the queues to settle" in stderr_path.read_text()
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
    assert code == 130, (tmp_path / "serve.stderr").read_text()[-3000:]
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


def test_a_blocked_conversation_moves_on_within_the_block_hold_serve_was_given(
    own_receiver: Receiver, tmp_path: Path
) -> None:
    # Given an ordered target that blocks, whose receiver refuses the first delivery it gets (a 400, a
    # permanent failure: no retry), and serve given a 2 s block hold in its environment, as the docs say
    # (on AWS, the OrderedBlockHoldSeconds parameter; the template's default is an hour)
    own_receiver.behaviour = Behaviour(status_sequence=deque([400]))
    doc = with_only_target(
        {
            "id": "b10cb10c-1111-4222-8333-944455556666",
            "name": "blocks",
            "url": f"{own_receiver.url}/hooks/e2e",
            "signingSecret": SIGNING_SECRET,
            "ordering": "conversation",
            "onExhausted": "block",
        }
    )
    integration = doc["integrations"][0]
    env = {**os.environ, "ORDERED_BLOCK_HOLD_SECONDS": "2"}
    with serving(written(doc, tmp_path), tmp_path / "serve.stderr", env) as (process, stdout):
        ready = stdout.wait_for_json("ready", timeout=90)

        # When three messages of one conversation are posted, one after the other
        sent = []
        for n in range(3):
            event = {**sample("openmessaging_text.json"), "id": f"blocked-{n}", "text": f"message {n}"}
            event["channel"] = {**event["channel"], "messageId": f"blocked-{n}"}
            assert post_signed(ready["api"], integration, event).status_code == 202
            sent.append(event["id"])

        # Then the first is refused and holds its conversation, and once its hold ends the receiver
        # (refusing no more) gets all three, in order, each accepted once
        wait_until(
            lambda: len(own_receiver.deliveries) == 3, what="the conversation moving on after its hold"
        )
        assert [d.event["id"] for d in own_receiver.deliveries if d.event is not None] == sent
        assert [r.answered for r in own_receiver.requests][:2] == [400, 200]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


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
