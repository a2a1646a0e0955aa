"""Shared fixtures: a moto server over real HTTP, and the template's resources created in it.

Everything AWS is faked at the boundary only: the relay's own code runs unchanged against moto's
server, reached through AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.handlers import Handler, LoadHandler, load_handler
from support.lambda_context import own_call_bounds

from relay.local.aws_stack import LocalResources, MotoServer, create_resources, forget_cached_configuration
from relay.local.template import load_template
from relay.observability import metrics

# pytester: tests/unit/test_socket_guard.py runs a unit test of its own under the socket guard.
pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
_prefixes = itertools.count(1)


# `make test` hands whole files to its workers in collection order (--dist loadfile
# --no-loadscope-reorder). End-to-end files take a minute or more each and unit files a second or two,
# so the long ones go first and the short ones even out the end: taken the other way round, the
# longest file of all can start last, while the other workers sit idle.
_FIRST_TO_LAST = ("e2e", "integration", "build", "unit")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def kind(item: pytest.Item) -> int:
        folder = item.path.relative_to(ROOT / "tests").parts[0]
        return _FIRST_TO_LAST.index(folder) if folder in _FIRST_TO_LAST else len(_FIRST_TO_LAST)

    items.sort(key=kind)  # stable: each file's tests keep their order


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with MotoServer() as server:
        yield server.url


@pytest.fixture
def aws_stack(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalResources]:
    """Fresh queues, tables and bucket (unique prefix) and the functions' environment pointing at them,
    with the intake deduplicating on the IdempotencyTable (IntakeDeduplication=table): its tasks go to
    the DeliveryQueue, as most adapter tests expect. ``first_hop_stack``: the template's default."""
    yield from _fresh_stack(moto_endpoint, monkeypatch, {"IntakeDeduplication": "table"})


@pytest.fixture
def first_hop_stack(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalResources]:
    """As ``aws_stack``, with the intake sending to the FIFO first hop (IntakeDeduplication=queue)."""
    yield from _fresh_stack(moto_endpoint, monkeypatch, {"IntakeDeduplication": "queue"})


def _fresh_stack(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, parameters: dict[str, str]
) -> Iterator[LocalResources]:
    prefix = f"t{os.getpid()}-{next(_prefixes)}"
    template = load_template(parameters={"Stage": "local", **parameters})
    resources = create_resources(template, moto_endpoint, prefix)
    for name, value in resources.env.items():
        monkeypatch.setenv(name, value)
    forget_cached_configuration()
    yield resources
    forget_cached_configuration()


@pytest.fixture
def function_handler(aws_stack: LocalResources, monkeypatch: pytest.MonkeyPatch) -> LoadHandler:
    """Loads functions/<name>'s handler to run as in Lambda: in ``aws_stack``'s environment plus the
    function's own AWS call bounds, without which it would run on the operator tools' defaults, whose
    worst case (connect + read timeout) is sized for no Lambda timeout (the intake's 8 s holds one)."""

    def load(name: str) -> Handler:
        for key, value in own_call_bounds(name).items():
            monkeypatch.setenv(key, value)
        forget_cached_configuration()
        return load_handler(name)

    return load


@pytest.fixture(autouse=True)
def no_metrics_from_earlier_tests() -> None:
    """Each test starts with nothing counted in the process-wide powertools metrics: tests that drive
    the intake or an operator command in-process count there with no handler to flush, and a later
    handler in the same worker would otherwise publish their counts as its own."""
    metrics.clear_metrics()
