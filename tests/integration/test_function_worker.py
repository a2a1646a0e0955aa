"""The warm-worker runner (relay.local.function_worker) as the local event sources use it: workers
started for one poller slot's thread and reused by others, and the stack's own lines about them.

The runner's basics (warm reuse, a kill mid-invocation, timeouts, dying with the stack's process) are
checked in tests/e2e/test_chaos.py, next to the chaos run that relies on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.waiting import wait_until

from relay.local.function_worker import WorkerFunction
from relay.local.lambda_runtime import Invocation
from relay.local.template import FunctionSpec

pytestmark = pytest.mark.integration

HANDLER = """
import os, time
from pathlib import Path

def handler(event, context):
    release = event.get("until")
    while release and not Path(release).exists():
        time.sleep(0.01)  # not a wait: the invocation's work, which runs until the test creates the file
    return {"pid": os.getpid()}
"""


def probe_spec(tmp_path: Path) -> FunctionSpec:
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "probe_handler.py").write_text(HANDLER)
    return FunctionSpec("ProbeFunction", tmp_path / "code", "probe_handler", "handler", 20, {}, {}, None)


@pytest.fixture
def one_container(tmp_path: Path) -> Iterator[WorkerFunction]:
    """A function with one worker at most: every slot's invocation runs in the same warm worker."""
    with (tmp_path / "functions.log").open("a") as output:
        function = WorkerFunction(probe_spec(tmp_path), max_workers=1, output=output)
        yield function
        function.close()


def thread_gone(thread: threading.Thread) -> bool:
    """The thread has ended for Linux too (join() returns a moment before the kernel is done with it)."""
    return not Path(f"/proc/self/task/{thread.native_id}").exists()


def spawner_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "worker-spawner-ProbeFunction"]


def test_a_worker_busy_for_one_slot_survives_the_end_of_the_slot_thread_that_first_needed_it(
    one_container: WorkerFunction, tmp_path: Path
) -> None:
    # Given a poller slot's thread whose invocation started the function's worker, and which is still
    # there, idle
    first_slot_may_end = threading.Event()
    started: list[Invocation] = []

    def first_slot() -> None:
        started.append(one_container.invoke({}))
        first_slot_may_end.wait()

    slot = threading.Thread(target=first_slot, name="sqs-poller-0")
    slot.start()
    wait_until(lambda: started, what="the first slot's invocation")
    warm_pid = started[0].result["pid"]

    # And another slot's invocation running in that warm worker
    release = tmp_path / "release"
    outcome: list[Invocation] = []
    other_slot = threading.Thread(
        target=lambda: outcome.append(one_container.invoke({"until": str(release)})), name="sqs-poller-1"
    )
    other_slot.start()
    wait_until(lambda: warm_pid in one_container.busy_workers(), what="the other slot's invocation running")

    # When the first slot's thread ends, as an idle slot's thread does when its poller stops
    first_slot_may_end.set()
    slot.join()
    wait_until(lambda: thread_gone(slot), what="the first slot's thread gone")
    release.touch()
    other_slot.join()

    # Then the invocation under way ran to its end in the same worker, which is still warm
    assert outcome[0].error is None, outcome[0]
    assert outcome[0].result["pid"] == warm_pid
    assert one_container.stats.crashed == 0
    assert one_container.worker_pids() == [warm_pid]


def test_close_lets_a_busy_worker_finish_and_then_ends_the_thread_that_started_the_workers(
    one_container: WorkerFunction, tmp_path: Path
) -> None:
    # Given an invocation running
    release = tmp_path / "release"
    outcome: list[Invocation] = []
    running = threading.Thread(target=lambda: outcome.append(one_container.invoke({"until": str(release)})))
    running.start()
    wait_until(lambda: one_container.busy_workers(), what="the invocation running")

    # When the function is closed (the stack stops) while it runs
    one_container.close()

    # Then the thread that started its worker is still there, so the worker is not killed with it
    assert spawner_threads() == ["worker-spawner-ProbeFunction"]

    # And once the invocation ends, it has its answer, and that thread ends too
    release.touch()
    running.join()
    assert outcome[0].error is None, outcome[0]
    wait_until(lambda: spawner_threads() == [], what="the spawner thread ended after close()")
    assert one_container.worker_pids() == []


# A process like `relay local serve`'s: an in-process function decorated as the intake is ran first
# (powertools leaves its Lambda context appended on the "relay" logger), then a dispatcher worker dies
# mid-invocation, and the stack logs it.
STACK_LIKE = """
import sys, threading
from pathlib import Path

from relay.local.function_worker import WorkerFunction
from relay.local.lambda_runtime import LambdaContext
from relay.local.template import FunctionSpec
from relay.observability import logger

@logger.inject_lambda_context(clear_state=True)
def intake(event, context):
    logger.info("intake ran")

context = LambdaContext("relay-IntakeFunction", 128, 10, "us-east-1", "123456789012")
context.aws_request_id = "intake-request-id"
intake({}, context)

spec = FunctionSpec("SlowDispatcherFunction", Path(sys.argv[1]), "probe_handler", "handler", 20, {}, {}, None)
dispatcher = WorkerFunction(spec, max_workers=1, output=open(sys.argv[2], "a"))
running = threading.Thread(target=dispatcher.invoke, args=({"until": sys.argv[3]},))
running.start()
while dispatcher.kill_busy_worker() is None:
    running.join(0.01)  # until the invocation is under way
running.join()
dispatcher.close()
"""


def test_the_stacks_line_about_a_dead_worker_carries_no_other_functions_lambda_context(
    tmp_path: Path,
) -> None:
    probe_spec(tmp_path)

    # When, in a process where the intake ran in-process, a dispatcher worker dies mid-invocation
    never = tmp_path / "never-created"  # the dispatcher's invocation runs until it is killed
    ran = subprocess.run(
        [
            sys.executable,
            "-c",
            STACK_LIKE,
            str(tmp_path / "code"),
            str(tmp_path / "functions.log"),
            str(never),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    lines: list[dict[str, Any]] = [
        json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")
    ]

    # Then the intake's own line has its context (the control), and the stack's line about the worker
    # carries no function's context: it is the local stack's, not the intake's
    (intake_line,) = [line for line in lines if line["message"] == "intake ran"]
    assert intake_line["function_name"] == "relay-IntakeFunction"
    (dead,) = [line for line in lines if "exited with -9" in line["message"]]
    assert dead["message"].startswith("SlowDispatcherFunction: worker ")
    assert not {key for key in dead if key.startswith(("function_", "cold_start", "xray"))}, dead
    assert dead["service"] == "relay-local-stack"
