"""The delivery pool: what an invocation sets for its calls holds in every thread of its batch."""

from __future__ import annotations

import contextvars

from relay.logic.dispatch.runners import ContextPool, run_steps

_invocation: contextvars.ContextVar[str | None] = contextvars.ContextVar("invocation", default=None)


def test_steps_in_the_pool_see_the_context_of_the_thread_that_ran_them() -> None:
    # Given a pool, and a context variable set by the caller (as the AWS-call deadline is)
    pool = ContextPool(max_workers=3)
    seen: list[str | None] = []
    token = _invocation.set("batch-1")
    try:
        # When steps run on all of its threads, and one is submitted directly
        run_steps(
            pool,
            [lambda: seen.append(_invocation.get()) for _ in range(6)],
            width=3,
            wide=True,
            serial_budget_seconds=0,
        )
        direct = pool.submit(_invocation.get).result()
    finally:
        _invocation.reset(token)

    # Then every step saw the caller's value, and a later caller without it sees none
    assert seen == ["batch-1"] * 6
    assert direct == "batch-1"
    assert pool.submit(_invocation.get).result() is None
    pool.shutdown()
