"""Dispatchers as Lambda runs them, on the local AWS stand-in: the template's DispatcherFunction in up
to ``size`` warm worker processes (relay.local.function_worker: each one container, its dispatcher
built by the wiring), fed by the local SQS event source mapping (relay.local.poller) with the
template's batch settings and ``size`` as its MaximumConcurrency. What the rate-limit tests and the
rate-limit benchmark race; ``relay local serve`` runs the same parts inside the whole stack.

    with DispatcherFleet(resources, size=8) as fleet:
        ...                              # records on resources.delivery_queue_url get delivered
    fleet.poller.stats()
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from contextlib import ExitStack
from typing import IO

from relay.local.aws_stack import LocalResources, local_client
from relay.local.function_worker import WorkerFunction
from relay.local.poller import SqsEventSource, SqsPoller

DISPATCHER = "DispatcherFunction"


class DispatcherFleet:
    """``environment`` is set for the dispatchers on top of ``resources.env``; their log lines and
    metrics go to ``output`` (default: nowhere)."""

    def __init__(
        self,
        resources: LocalResources,
        size: int,
        *,
        environment: Mapping[str, str] | None = None,
        output: IO[str] | None = None,
    ) -> None:
        self._resources = resources
        self._size = size
        self._environment = {**resources.env, **(environment or {})}
        self._output = output
        self._exit = ExitStack()
        self.poller: SqsPoller | None = None

    def __enter__(self) -> DispatcherFleet:
        template = self._resources.template
        output = self._output or self._exit.enter_context(open(os.devnull, "w"))  # noqa: SIM115
        workers = WorkerFunction.from_template(
            template, DISPATCHER, max_workers=self._size, output=output, environment=self._environment
        )
        self._exit.callback(workers.close)
        source = dataclasses.replace(
            SqsEventSource.from_template(template, DISPATCHER), maximum_concurrency=self._size
        )
        self.poller = SqsPoller(source, workers, local_client("sqs", self._resources.endpoint_url))
        self.poller.start()
        self._exit.callback(self.poller.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()
