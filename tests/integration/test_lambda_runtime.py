"""The in-process Lambda runtime: a template handler is one container, so its invocations never overlap.

Lambda never runs two invocations in one container at once, and the handlers' module-level powertools
objects are not built for it: the chaos run once saw an intake invocation fail with "dictionary changed
size during iteration" inside powertools' metrics flush while another invocation added a metric.
"""

from __future__ import annotations

import threading
from pathlib import Path

from relay.local.lambda_runtime import LocalFunction, load_handler
from relay.local.template import FunctionSpec

PROBE = """
import threading, time
active = 0
most = 0
lock = threading.Lock()

def handler(event, context):
    global active, most
    with lock:
        active += 1
        most = max(most, active)
    time.sleep(0.05)  # not a wait: an invocation's own work, long enough for others to overlap it
    with lock:
        active -= 1
    return {"most": most}
"""


def test_invocations_of_one_handler_module_never_overlap(tmp_path: Path) -> None:
    # Given a handler module that records how many of its invocations run at once
    code = tmp_path / "code"
    code.mkdir()
    (code / "overlap_probe_handler.py").write_text(PROBE)
    spec = FunctionSpec("ProbeFunction", code, "overlap_probe_handler", "handler", 5, {}, {}, None)
    # Two functions sharing the handler module, as the HTTP API and the EventBridge rule share the intake's
    functions = [LocalFunction(spec, load_handler(spec)), LocalFunction(spec, load_handler(spec))]

    # When eight threads invoke them at the same time
    results = []
    threads = [
        threading.Thread(target=lambda f=functions[i % 2]: results.append(f.invoke({}))) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then every invocation succeeded, one at a time
    assert len(results) == 8 and all(r.error is None for r in results)
    assert max(r.result["most"] for r in results) == 1


def test_a_handler_passed_in_is_not_serialised(tmp_path: Path) -> None:
    # Control: a test's own handler function (not a template module) keeps running concurrently,
    # so the probe above can see overlap when there is nothing to prevent it.
    spec = FunctionSpec("ProbeFunction", tmp_path, "unused", "handler", 5, {}, {}, None)
    active, most, lock = [0], [0], threading.Lock()
    released = threading.Event()

    def handler(event: dict[str, object], context: object) -> None:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            if active[0] == 2:
                released.set()
        released.wait(timeout=10)
        with lock:
            active[0] -= 1

    function = LocalFunction(spec, handler)
    threads = [threading.Thread(target=function.invoke, args=({},)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert most[0] == 2
