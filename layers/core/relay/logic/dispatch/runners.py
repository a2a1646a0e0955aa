"""How a batch's records share the delivery pool: one thread while that keeps up, all of them once the
receivers make the batch wait.

Every thread in flight costs CPU beyond its request: the hand-off to the pool, and the GIL passed
between threads around each socket call. Profiled with a receiver that answers at once
(docs/dispatcher.md, "CPU per delivery"): a batch of ten on ten threads costs about 0.7 ms of CPU per
delivery, on one thread about 0.5 ms, and is no slower. A receiver that makes each request wait needs
the threads: ten 2 s requests take 2 s side by side, 20 s one after another.

So a run starts on one thread when all its targets are known to answer quickly, on all of them
otherwise (a target answering slowly, or one this container has not measured yet), and a run still
going after the serial budget with records not yet started gets all its threads at once: a target
that turns slow costs its batch that budget, once.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import ParamSpec, TypeVar

Step = Callable[[], None]
_P = ParamSpec("_P")
_T = TypeVar("_T")
# How often a run that is still going calls its ``while_waiting``.
WAITING_TICK_SECONDS = 0.25


class ContextPool(ThreadPoolExecutor):
    """A pool whose work runs in the context (contextvars) of the thread that handed it over: what an
    invocation set for its own calls, such as the deadline of its AWS calls
    (relay.adapters.aws.calls_until), holds for every thread that works on its batch."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        context = contextvars.copy_context()
        return super().submit(lambda: context.run(fn, *args, **kwargs))


class _Run:
    """The steps not started yet, taken in order by however many runners the run has."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self._todo = deque(enumerate(steps))
        self.crashed: list[tuple[int, Exception]] = []

    def runner(self) -> None:
        while True:
            try:
                index, step = self._todo.popleft()  # atomic: no two runners take the same step
            except IndexError:
                return
            try:
                step()
            except Exception as exc:  # a bug in one step must not stop the others
                self.crashed.append((index, exc))

    @property
    def waiting(self) -> bool:
        return bool(self._todo)


def run_steps(
    pool: ThreadPoolExecutor,
    steps: Sequence[Step],
    *,
    width: int,
    wide: bool,
    serial_budget_seconds: float,
    while_waiting: Callable[[], None] | None = None,
) -> list[tuple[int, Exception]]:
    """Run every step on ``pool``, at most ``width`` at once, in order of starting, and wait for all.

    ``wide``: start with all the runners (a target in the run is not known to be quick); otherwise one,
    and the rest if steps are still waiting after ``serial_budget_seconds`` (0: always all at once).
    ``while_waiting``: called every ``WAITING_TICK_SECONDS`` while the run is not over (a run that ends
    sooner never calls it). Returns the steps that raised: their index in ``steps`` and the exception."""
    if not steps:
        return []
    run = _Run(steps)
    limit = min(width, len(steps))
    started: list[Future[None]] = [
        pool.submit(run.runner) for _ in range(limit if wide or serial_budget_seconds <= 0 else 1)
    ]
    if len(started) < limit:
        wait(started, timeout=serial_budget_seconds)
        if run.waiting:
            started += [pool.submit(run.runner) for _ in range(limit - len(started))]
    while wait(started, timeout=WAITING_TICK_SECONDS if while_waiting else None).not_done:
        assert while_waiting is not None
        while_waiting()
    return run.crashed
