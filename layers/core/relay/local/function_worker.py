"""Run a template function in warm worker processes, one per "container", the way Lambda does.

``WorkerFunction`` offers ``LocalFunction``'s interface (``spec``, ``invoke(event) -> Invocation``), but
each invocation runs in a separate Python process that imported the handler once (the cold start) and
then serves one invocation at a time over a pipe. Workers are spawned on demand, up to
``max_workers`` (the event source's ``MaximumConcurrency``), and reused while warm.

What this adds over the in-process runner:

- no shared module state between concurrent invocations (each container has its own);
- a worker can be killed mid-invocation (``kill_busy_worker``, SIGKILL): that invocation returns an
  error ``Invocation`` ("Runtime.ExitError", as Lambda reports a runtime that died), the poller fails
  the whole batch, and the next invocation spawns a fresh worker (a cold start);
- a run past ``Timeout`` is stopped (the worker is killed), as Lambda stops it.

The protocol channel is a pair of pipes on their own file descriptors, apart from the handler's
stdout/stderr (powertools prints logs and EMF metrics to stdout), which go to the function log
(``output``: a file the stack names, or this process's stderr). Workers ask Linux to SIGKILL them
when the stack's process dies (PR_SET_PDEATHSIG), so none outlives it. Linux sends that signal when the
*thread* that started the worker ends, not its process: so every worker of a function is started by one
thread the function owns (``_Spawner``), which lives until the function is closed and its last
invocation has ended. A worker started for one poller slot and then busy for another does not die
when the first slot's thread ends (at stop); it dies only with the stack's process, or when its
function closes.

The stack's own lines (a worker that died, a run past its timeout) go to relay.local.log, not to the
functions' logger (why: that module's doc).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from queue import SimpleQueue
from typing import IO, Any

from relay.errors import LocalStackError
from relay.local.lambda_runtime import Invocation, LambdaContext, LocalFunction, load_handler
from relay.local.log import log
from relay.local.template import FunctionSpec, Template

# Lambda's error type when the runtime process exits mid-invocation.
RUNTIME_EXIT_ERROR = "Runtime.ExitError"
TIMED_OUT = "Task timed out"
# Time a worker gets to import its handler before the invocation counts as failed.
INIT_TIMEOUT_SECONDS = 60.0


class WorkerDied(LocalStackError):
    """The worker process exited (or was killed) before it answered."""


@dataclass
class WorkerStats:
    """Counters tests and the chaos run read."""

    cold_starts: int = 0  # workers spawned
    invocations: int = 0
    crashed: int = 0  # invocations whose worker died before answering
    timed_out: int = 0
    max_workers_alive: int = 0


@dataclass(frozen=True)
class KilledInvocation:
    """An invocation ``kill_busy_worker`` cut short: the worker's pid, the event it was running, when."""

    pid: int
    event: dict[str, Any]
    killed_at: float  # time.time()


class _Worker:
    """One warm process and its two pipe ends."""

    def __init__(self, spec: FunctionSpec, output: IO[str] | None, environment: Mapping[str, str]) -> None:
        request_read, request_write = os.pipe()
        answer_read, answer_write = os.pipe()
        description = json.dumps(
            {
                "logical_id": spec.logical_id,
                "code_dir": str(spec.code_dir),
                "handler_module": spec.handler_module,
                "handler_function": spec.handler_function,
                "timeout_seconds": spec.timeout_seconds,
            }
        )
        sink: IO[str] | int = output if output is not None else sys.stderr.fileno()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(request_read), str(answer_write), description],
                pass_fds=(request_read, answer_write),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                env={**os.environ, **environment},  # the function's own, given at launch
                start_new_session=True,  # Ctrl-C stops the stack, which stops its workers in turn
            )
        finally:
            os.close(request_read)
            os.close(answer_write)
        self.requests = Connection(request_write, readable=False)
        self.answers = Connection(answer_read, writable=False)
        self.ready = False
        self.busy_since: float | None = None
        self.event: dict[str, Any] = {}
        self.killed = False  # by kill_busy_worker

    @property
    def pid(self) -> int:
        return self.process.pid

    def receive(self, deadline: float) -> dict[str, Any] | None:
        """The worker's next answer; None when ``deadline`` passed first. Raises WorkerDied."""
        remaining = deadline - time.monotonic()
        try:
            if not self.answers.poll(max(0.0, remaining)):
                return None
            doc: dict[str, Any] = json.loads(self.answers.recv_bytes())
            return doc
        except (EOFError, OSError):
            raise WorkerDied(f"worker {self.pid} exited with {self.process.wait()}") from None

    def wait_ready(self) -> None:
        """Until the worker imported its handler (its cold start); raises WorkerDied."""
        if not self.ready:
            hello = self.receive(time.monotonic() + INIT_TIMEOUT_SECONDS)
            if hello is None or not hello.get("ready"):
                raise WorkerDied(f"worker {self.pid} did not start")
            self.ready = True

    def call(self, request: dict[str, Any], timeout_seconds: float) -> dict[str, Any] | None:
        """Send one invocation; its answer, or None when ``timeout_seconds`` passed first. The timeout
        starts once the worker is ready: as in Lambda, a cold start's init is not the function's time."""
        self.wait_ready()
        deadline = time.monotonic() + timeout_seconds
        try:
            self.requests.send_bytes(json.dumps(request).encode())
        except OSError:
            raise WorkerDied(f"worker {self.pid} exited with {self.process.wait()}") from None
        return self.receive(deadline)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        self.hang_up()
        self.wait_exited()

    def hang_up(self) -> None:
        for end in (self.requests, self.answers):
            end.close()  # the worker reads EOF and exits

    def wait_exited(self) -> None:
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()


class _Spawner:
    """The one thread that starts a function's workers (why one, and why it lives on: the module doc).

    ``spawn`` runs the start in this thread and hands back the worker, or what starting raised.
    """

    def __init__(self, name: str) -> None:
        self._requests: SimpleQueue[tuple[Callable[[], _Worker], Future[_Worker]] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def spawn(self, start: Callable[[], _Worker]) -> _Worker:
        started: Future[_Worker] = Future()
        with self._lock:
            if self._stopped:
                raise RuntimeError("the function's workers are stopped")
            self._requests.put((start, started))
        return started.result()

    def stop(self) -> None:
        """End the thread once it has started what it was asked to; the workers it started, if any
        are still alive, die with it."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._requests.put(None)

    def _run(self) -> None:
        while (request := self._requests.get()) is not None:
            start, started = request
            try:
                started.set_result(start())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
                started.set_exception(exc)


class WorkerFunction(LocalFunction):
    """A template function whose invocations run in warm worker processes (see the module doc)."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        max_workers: int,
        output: IO[str] | None = None,
        environment: Mapping[str, str] | None = None,
        function_name: str | None = None,
        memory_limit_in_mb: int = 128,
        region: str = "us-east-1",
        account_id: str = "123456789012",
    ) -> None:
        """``environment``: the function's own variables, on top of this process's, for each worker."""
        super().__init__(
            spec,
            _runs_in_a_worker,
            function_name=function_name,
            memory_limit_in_mb=memory_limit_in_mb,
            region=region,
            account_id=account_id,
        )
        self.max_workers = max(1, max_workers)
        self.output = output
        self.environment = dict(environment or {})
        self.stats = WorkerStats()
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}
        self.killed: list[KilledInvocation] = []
        self._spawning = 0
        self._closed = False
        self._lock = threading.Condition()
        self._spawner = _Spawner(f"worker-spawner-{spec.logical_id}")

    @classmethod
    def from_template(  # type: ignore[override]
        cls,
        template: Template,
        logical_id: str,
        *,
        max_workers: int,
        output: IO[str] | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> WorkerFunction:
        base = LocalFunction.from_template(template, logical_id, handler=_runs_in_a_worker)
        return cls(
            base.spec,
            max_workers=max_workers,
            output=output,
            environment=environment,
            function_name=base.function_name,
            memory_limit_in_mb=base.memory_limit_in_mb,
            region=base.region,
            account_id=base.account_id,
        )

    # --- invocation -------------------------------------------------------------------------------
    def invoke(self, event: dict[str, Any]) -> Invocation:
        context = self.new_context()
        started = time.perf_counter()
        worker = self._acquire()
        worker.event = event
        request = {
            "event": event,
            "context": {
                "function_name": self.function_name,
                "memory_limit_in_mb": self.memory_limit_in_mb,
                "timeout_seconds": self.spec.timeout_seconds,
                "region": self.region,
                "account_id": self.account_id,
                "aws_request_id": context.aws_request_id,
            },
        }
        keep = False
        try:
            answer = worker.call(request, self.spec.timeout_seconds)
            if answer is None:
                # Lambda stops a run at its timeout; the container does not survive it.
                log.error("%s timed out (request %s)", self.spec.logical_id, context.aws_request_id)
                with self._lock:
                    self.stats.timed_out += 1
                return Invocation(None, TIMED_OUT, _ms_since(started), context.aws_request_id)
            with self._lock:
                # A kill that came after the answer cut nothing short: the invocation ran whole (its
                # records are deleted as for any success), so it is no killed invocation. The worker
                # is dead all the same.
                keep = not worker.killed
                self.killed = [k for k in self.killed if k.pid != worker.pid or keep]
            if "error" in answer:
                log.error("%s failed (request %s)", self.spec.logical_id, context.aws_request_id)
                return Invocation(None, str(answer["error"]), _ms_since(started), context.aws_request_id)
            return Invocation(answer.get("result"), None, _ms_since(started), context.aws_request_id)
        except WorkerDied as exc:
            log.error("%s: %s (request %s)", self.spec.logical_id, exc, context.aws_request_id)
            with self._lock:
                self.stats.crashed += 1
            return Invocation(None, RUNTIME_EXIT_ERROR, _ms_since(started), context.aws_request_id)
        finally:
            self._release(worker, keep=keep)

    def _acquire(self) -> _Worker:
        worker: _Worker | None
        with self._lock:
            while True:
                if self._closed:
                    raise RuntimeError("the function's workers are stopped")
                if self._idle:
                    worker = self._idle.pop()
                    break
                if len(self._busy) + self._spawning < self.max_workers:
                    self._spawning += 1
                    worker = None
                    break
                self._lock.wait()
        if worker is None:
            try:
                worker = self._spawner.spawn(self._new_worker)
            finally:
                with self._lock:
                    self._spawning -= 1
                    self._stop_spawner_when_done()
            with self._lock:
                self.stats.cold_starts += 1
        with self._lock:
            worker.busy_since = time.monotonic()
            self._busy[worker.pid] = worker
            self.stats.invocations += 1
            self.stats.max_workers_alive = max(
                self.stats.max_workers_alive, len(self._busy) + len(self._idle)
            )
        return worker

    def _new_worker(self) -> _Worker:
        return _Worker(self.spec, self.output, self.environment)

    def _release(self, worker: _Worker, *, keep: bool) -> None:
        with self._lock:
            self._busy.pop(worker.pid, None)
            worker.busy_since = None
            alive = keep and worker.process.poll() is None and not self._closed
            if alive:
                self._idle.append(worker)
            self._lock.notify_all()
        if not alive:
            worker.kill()
            worker.close()
            with self._lock:
                self._stop_spawner_when_done()

    def _stop_spawner_when_done(self) -> None:
        """Once closed, with no invocation running and none starting, the spawner's thread may end:
        no worker it started is left to keep alive. Called holding the lock."""
        if self._closed and not self._busy and not self._spawning:
            self._spawner.stop()

    def prewarm(self, count: int) -> int:
        """Start up to ``count`` more containers now and keep them warm, so that their cold starts
        happen before traffic (benchmarks measure warm throughput); how many were started."""
        with self._lock:
            room = self.max_workers - len(self._idle) - len(self._busy) - self._spawning
            wanted = max(0, min(count, room))
            self._spawning += wanted
        started: list[_Worker] = []
        try:
            started = [self._spawner.spawn(self._new_worker) for _ in range(wanted)]
            for worker in started:
                worker.wait_ready()
        except WorkerDied:
            for worker in started:
                worker.kill()
                worker.close()
            raise
        finally:
            with self._lock:
                self._spawning -= wanted
                self._stop_spawner_when_done()
        with self._lock:
            self.stats.cold_starts += len(started)
            self._idle.extend(started)
            alive = len(self._busy) + len(self._idle)
            self.stats.max_workers_alive = max(self.stats.max_workers_alive, alive)
            self._lock.notify_all()
        return len(started)

    def warm_up(self, event: dict[str, Any]) -> None:
        """Every container this function may run, started and invoked once with ``event`` (for the
        dispatcher an empty batch): imports, clients and the first invocation behind them, as the
        containers of a function under steady traffic have. Benchmarks do this before their clock."""
        self.prewarm(self.max_workers)
        calls = [threading.Thread(target=self.invoke, args=(event,)) for _ in range(self.max_workers)]
        for call in calls:
            call.start()
        for call in calls:
            call.join()

    # --- chaos and observation --------------------------------------------------------------------
    def busy_workers(self) -> dict[int, float]:
        """pid -> seconds its current invocation has been running."""
        now = time.monotonic()
        with self._lock:
            return {pid: now - (w.busy_since or now) for pid, w in self._busy.items()}

    def kill_busy_worker(self, *, min_busy_seconds: float = 0.0, min_records: int = 0) -> int | None:
        """SIGKILL one worker that has been running an invocation (of at least ``min_records`` SQS
        records) for at least ``min_busy_seconds``; its pid, or None when no worker qualifies."""
        with self._lock:
            candidates = [
                w
                for w in self._busy.values()
                if w.busy_since is not None
                and time.monotonic() - w.busy_since >= min_busy_seconds
                and len(w.event.get("Records", ())) >= min_records
                and not w.answers.poll(0)  # one whose answer is written has finished its invocation
            ]
            if not candidates:
                return None
            victim = max(candidates, key=lambda w: time.monotonic() - (w.busy_since or 0.0))
            victim.killed = True
            victim.process.send_signal(signal.SIGKILL)
            self.killed.append(KilledInvocation(victim.pid, victim.event, time.time()))
            return victim.pid

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in (*self._idle, *self._busy.values())]

    def close(self) -> None:
        """Stop every idle worker; busy ones stop when their invocation ends, and the thread that
        started them once the last has."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._lock.notify_all()
        # All told first, then waited for: each takes a moment to exit (unloading boto3 and the relay),
        # which one after another added up to over a second of every stack's stop.
        for worker in idle:
            worker.hang_up()
        for worker in idle:
            worker.wait_exited()
        with self._lock:
            self._stop_spawner_when_done()


def serve(argv: list[str]) -> None:
    """The worker process: import the handler once, then serve invocations until the pipe closes.

    Requests and answers are JSON (never pickle): what crosses is what Lambda would see.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the stack's process
    requests = Connection(int(argv[0]), writable=False)
    answers = Connection(int(argv[1]), readable=False)
    started = time.perf_counter()
    spec = json.loads(argv[2])
    handler = load_handler(
        FunctionSpec(
            logical_id=spec["logical_id"],
            code_dir=Path(spec["code_dir"]),
            handler_module=spec["handler_module"],
            handler_function=spec["handler_function"],
            timeout_seconds=spec["timeout_seconds"],
            environment={},
            events={},
            reserved_concurrency=None,
        )
    )
    answers.send_bytes(json.dumps({"ready": True, "init_ms": _ms_since(started)}).encode())
    while True:
        try:
            request = json.loads(requests.recv_bytes())
        except EOFError:
            return
        fields = request["context"]
        context = LambdaContext(
            fields["function_name"],
            fields["memory_limit_in_mb"],
            fields["timeout_seconds"],
            fields["region"],
            fields["account_id"],
        )
        context.aws_request_id = fields["aws_request_id"]
        try:
            data = json.dumps({"result": handler(request["event"], context)})
        except Exception as exc:  # noqa: BLE001 - a handler error is an outcome, as in Lambda
            traceback.print_exc()
            data = json.dumps({"error": type(exc).__name__})
        sys.stdout.flush()
        sys.stderr.flush()
        answers.send_bytes(data.encode())


def _runs_in_a_worker(event: dict[str, Any], context: Any) -> Any:
    raise RuntimeError("this function's handler runs in worker processes, not in this one")


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    serve(sys.argv[1:])
