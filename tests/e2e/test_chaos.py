"""The chaos run (issue 6, points 4 and 5): the same scenario as ``make chaos``, with the same code and size,
one setting scaled: the killed batch comes back after a 20 s visibility timeout instead of the
template's 90 s (it was most of the run's time; ``make chaos`` keeps 90 s).

One module-scoped run of bench/chaos.py's ``ChaosRun`` (300 events, a flaky and a dead target, one
dispatcher worker SIGKILLed mid-batch); each test asserts one claim on its summary, which is computed
from what the receivers and the DLQ hold. The stack stays up for the security tests at the end
(secret scan, replayed and tampered Genesys signatures). The last tests check the warm-worker runner the
run relies on (relay.local.function_worker) on a small handler of their own, in a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.waiting import wait_until

from relay.local.function_worker import WorkerFunction
from relay.local.template import FunctionSpec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
VISIBILITY_TIMEOUT_SECONDS = 20


def load_chaos() -> ModuleType:
    """bench/chaos.py, the script ``make chaos`` runs (bench/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location("relay_bench_chaos", ROOT / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


chaos = load_chaos()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chaos.ChaosRun(
        tmp_path_factory.mktemp("chaos"), chaos.EVENTS, visibility_timeout_seconds=VISIBILITY_TIMEOUT_SECONDS
    ) as chaos_run:
        chaos_run.summary = chaos_run.execute()
        chaos_run.summary["security"] = chaos_run.security_scan()
        chaos_run.real_stdout.write(json.dumps(chaos_run.summary) + "\n")
        yield chaos_run


@pytest.fixture(scope="module")
def summary(run: Any) -> dict[str, Any]:
    result: dict[str, Any] = run.summary
    return result


def test_every_accepted_event_is_delivered_or_dead_lettered(summary: dict[str, Any]) -> None:
    assert summary["events_sent"] >= 300
    assert summary["accepted"] == summary["events_sent"]
    assert summary["drained"] is True
    assert summary["pairs_expected"] == 2 * summary["accepted"]
    assert summary["lost"] == 0
    assert summary["delivered"] + summary["dead_lettered"] >= summary["pairs_expected"]
    # The retry budget (8 attempts) outlasts a 30 % fault rate and a 15 s outage: both targets got
    # (nearly) everything, and what did not arrive is in the DLQ with the relay's reason.
    assert summary["targets"]["flaky"]["delivered"] > 0.9 * summary["accepted"]
    assert summary["targets"]["dead"]["delivered"] > 0.9 * summary["accepted"]
    assert "redrive-backstop" not in summary["dlq_reasons"]


def test_the_flaky_receiver_injected_every_kind_of_fault(summary: dict[str, Any]) -> None:
    answers = summary["targets"]["flaky"]["answers"]
    # 5xx, hangs and drops at random; 429s only beyond the receiver's hidden limit
    faults = answers.get("5xx", 0) + answers.get("dropped-or-hung", 0)
    within_limit = summary["targets"]["flaky"]["requests"] - answers.get("429", 0)
    assert answers.get("5xx", 0) > 0 and answers.get("429", 0) > 0 and answers.get("dropped-or-hung", 0) > 0
    assert 0.2 < faults / within_limit < 0.4


def test_the_dead_targets_breaker_opened_and_held_within_the_probe_allowance(summary: dict[str, Any]) -> None:
    dead = summary["dead_target"]
    assert dead["requests_while_down"] > 0  # the down receiver counted the connections it dropped
    assert dead["breaker_opened"] is True
    assert dead["open_seconds"] > 0
    assert dead["requests_while_open"] <= dead["allowance"]["total"]
    assert dead["within_allowance"] is True
    # Open means deferred, not hammered: far fewer requests while open than tasks it held.
    assert dead["requests_while_open"] < summary["accepted"] / 2


def test_the_flaky_target_kept_receiving_while_the_dead_one_was_down(summary: dict[str, Any]) -> None:
    assert summary["flaky_delivered_while_dead_down"] > 0


def test_the_killed_invocation_failed_whole_and_its_records_arrived_later(run: Any) -> None:
    kill = run.summary["kill"]
    assert kill["killed_invocations"] == 1
    assert kill["crashed_invocations"] >= 1
    assert kill["pairs"] > 0
    assert kill["pairs_lost"] == 0
    assert kill["pairs_delivered_after_kill"] + kill["pairs_dead_lettered"] >= kill["pairs"]
    # ... after the (scaled) visibility timeout the queue reports
    assert run.summary["settings"]["visibility_timeout_seconds"] == VISIBILITY_TIMEOUT_SECONDS
    assert run.summary["poller"]["failed_invocations"] >= 1
    # The killed container is gone; a later invocation started a fresh one (a cold start).
    killed_pid = run.workers.killed[0].pid
    assert killed_pid not in run.workers.worker_pids()
    assert kill["cold_starts"] >= 2


def test_no_secret_or_event_plaintext_in_any_log_line_or_audit_object(run: Any) -> None:
    security = run.summary["security"]
    assert security["log_lines_scanned"] > 1000
    assert security["audit_objects_scanned"] > 0
    assert security["markers_checked"] == run.summary["events_sent"]
    assert security["secrets_checked"] >= 15
    assert security["hits"] == {}
    assert security["total_hits"] == 0
    # The scan would have seen them: the fixtures file holds every configured secret, and the
    # receivers' decrypted events hold the markers.
    planted = run.count_hits([run.fixtures_path.read_text()])
    assert {"signature_secret", "flaky_bearer", "dead_basic_password", "flaky_signing_secret"} <= set(planted)
    decrypted = [json.dumps(r.event) for r in run.receiver(run.flaky_id).deliveries[:5]]
    assert run.count_hits(decrypted)["event_plaintext_marker"] == 5


def _settled(run: Any) -> None:
    assert run.stack.wait_settled(60), "the delivery queue did not settle"


def _requests_for(run: Any, event_id: str) -> int:
    return sum(
        1
        for target_id in (run.flaky_id, run.dead_id)
        for request in run.receiver(target_id).requests
        if (request.event or {}).get("id") == event_id
    )


def test_a_replayed_genesys_request_is_accepted_once_and_not_delivered_again(run: Any) -> None:
    # Given an event the chaos run delivered
    original = next(s for s in run.sent if 200 <= s.status < 300)
    before = _requests_for(run, original.event_id)
    assert before >= 2

    # When the same signed request arrives again
    replay = run.post(original.body, original.headers)
    _settled(run)  # the intake queues before it answers: a task queued by the replay is delivered by now

    # Then it is answered as accepted (idempotently) and nothing more reaches the targets
    assert 200 <= replay.status_code < 300
    assert replay.json()["eventId"] == original.event_id
    assert _requests_for(run, original.event_id) == before


def test_tampered_bodies_and_signatures_are_refused(run: Any) -> None:
    # Given a freshly signed event
    event_id, _, body, headers = run.signed_request()

    # When the body or the signature is changed after signing
    tampered_body = run.post(body.replace(b"chaos run", b"chaos r\xc3\xbcn"), headers)
    forged = dict(headers, **{"X-Hub-Signature-256": "sha256=" + "A" * 43 + "="})
    forged_signature = run.post(body, forged)
    unsigned = run.post(body, {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"})
    _settled(run)

    # Then each is refused and the event never reaches a target: a mismatch is a 401 once checked
    # against a freshly read secret, and 429 signature_recheck_pending while the secret was read again
    # moments ago (the tampered body's re-read; docs/intake.md)
    for mismatch in (tampered_body, forged_signature):
        assert (mismatch.status_code, mismatch.json()["error"]) in {
            (401, "signature_mismatch"),
            (429, "signature_recheck_pending"),
        }
    assert (forged_signature.status_code, forged_signature.json()["error"]) == (
        429,
        "signature_recheck_pending",
    )
    assert unsigned.status_code == 401
    assert _requests_for(run, event_id) == 0


# --- the worker runner the chaos run relies on (relay.local.function_worker), on a handler of its own --

HANDLER = """
import os, sys, time
calls = 0

def handler(event, context):
    global calls
    calls += 1
    print("handler output for", context.aws_request_id)  # to the function log, not the protocol pipe
    if event.get("raise"):
        raise KeyError("boom")
    time.sleep(event.get("sleep", 0))  # not a wait: the work an invocation takes
    return {"pid": os.getpid(), "calls": calls, "remaining": context.get_remaining_time_in_millis()}
"""


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "probe_handler.py").write_text(HANDLER)
    spec = FunctionSpec("ProbeFunction", tmp_path / "code", "probe_handler", "handler", 2, {}, {}, None)
    with (tmp_path / "functions.log").open("a") as output:
        function = WorkerFunction(spec, max_workers=2, output=output)
        yield function
        function.close()


def test_a_warm_worker_serves_invocations_and_keeps_handler_output_off_the_protocol(
    workers: Any, tmp_path: Path
) -> None:
    first, second = workers.invoke({}), workers.invoke({})

    assert first.error is None and second.error is None
    assert first.result["pid"] == second.result["pid"] != os.getpid()
    assert (first.result["calls"], second.result["calls"]) == (1, 2)  # imported once, state kept warm
    assert 0 < first.result["remaining"] <= 2000
    assert workers.stats.cold_starts == 1
    assert f"handler output for {first.request_id}" in (tmp_path / "functions.log").read_text()


def test_concurrent_invocations_get_their_own_containers(workers: Any) -> None:
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(workers.invoke, [{"sleep": 0.5}, {"sleep": 0.5}]))

    assert len({r.result["pid"] for r in results}) == 2
    assert [r.result["calls"] for r in results] == [1, 1]  # no module state shared between them


def test_a_worker_killed_mid_invocation_is_a_runtime_exit_and_the_next_one_starts_cold(workers: Any) -> None:
    warm = workers.invoke({}).result["pid"]
    outcome: list[Any] = []
    running = threading.Thread(target=lambda: outcome.append(workers.invoke({"sleep": 1.5})))
    running.start()
    wait_until(
        lambda: workers.kill_busy_worker(min_busy_seconds=0.2) is not None, what="a busy worker killed"
    )
    running.join()

    assert outcome[0].error == "Runtime.ExitError" and outcome[0].result is None
    assert workers.killed[0].pid == warm
    after = workers.invoke({})
    assert after.error is None and after.result["pid"] != warm and after.result["calls"] == 1
    assert workers.stats.cold_starts == 2 and workers.stats.crashed == 1


def test_an_error_keeps_the_container_and_a_timeout_replaces_it(workers: Any) -> None:
    warm = workers.invoke({}).result["pid"]

    failed = workers.invoke({"raise": True})
    still_warm = workers.invoke({})
    timed_out = workers.invoke({"sleep": 3})
    fresh = workers.invoke({})

    assert failed.error == "KeyError"
    assert still_warm.result["pid"] == warm
    assert timed_out.error == "Task timed out"
    assert fresh.result["pid"] != warm
    assert workers.stats.timed_out == 1


def test_a_cold_starts_init_is_not_counted_in_the_function_timeout(tmp_path: Path) -> None:
    # As in Lambda: the import (init) has its own limit; the 2 s timeout starts with the invocation.
    (tmp_path / "code").mkdir()
    slow_import = "import time\ntime.sleep(2.5)  # not a wait: a slow cold start\n"
    (tmp_path / "code" / "probe_handler.py").write_text(slow_import + HANDLER)
    spec = FunctionSpec("ProbeFunction", tmp_path / "code", "probe_handler", "handler", 2, {}, {}, None)
    with (tmp_path / "functions.log").open("a") as output:
        function = WorkerFunction(spec, max_workers=1, output=output)
        try:
            first = function.invoke({})
        finally:
            function.close()

    assert first.error is None and first.result["calls"] == 1
    assert function.stats.timed_out == 0


def test_workers_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "probe_handler.py").write_text(HANDLER)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from relay.local.function_worker import WorkerFunction\n"
            "from relay.local.template import FunctionSpec\n"
            "spec = FunctionSpec('P', Path(sys.argv[1]), 'probe_handler', 'handler', 5, {}, {}, None)\n"
            "f = WorkerFunction(spec, max_workers=1, output=open(sys.argv[2], 'a'))\n"
            "print(f.invoke({}).result['pid'], flush=True)\n"
            "time.sleep(60)\n",  # not a wait: alive until killed
            str(tmp_path / "code"),
            str(tmp_path / "functions.log"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    worker_pid = int(parent.stdout.readline())
    assert Path(f"/proc/{worker_pid}").exists()

    parent.send_signal(signal.SIGKILL)
    parent.wait()

    wait_until(
        lambda: not Path(f"/proc/{worker_pid}").exists(), timeout=10, what="the worker gone with its parent"
    )
