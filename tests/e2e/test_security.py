"""SSRF through the real config path: targets that point inside the network never reach the store.

The fake Genesys Cloud API serves webhook integrations whose URLs are private, loopback, link-local,
the cloud metadata address, or a name that resolves to loopback; one run of ``relay targets sync`` (in
its own process, as the local stack runs it) refuses each of them, stores none, and the loopback
receiver they point at never gets a request.

The secret scan, replayed and tampered signatures run against the chaos stack (tests/e2e/test_chaos.py);
the URL policy itself is unit-tested address by address in tests/unit/test_url_policy.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from relay.adapters.target_store import TargetStore
from relay.local.aws_stack import LocalResources, forget_cached_configuration
from relay.local.fake_genesys import FakeGenesys
from relay.local.fixtures import Fixtures
from relay.local.receiver import Receiver
from relay.wiring import aws_client

pytestmark = pytest.mark.e2e

INTEGRATION_ID = str(uuid.uuid4())


@pytest.fixture
def trap() -> Iterator[Receiver]:
    """A loopback receiver the loopback SSRF targets point at: it must never be called."""
    with Receiver() as receiver:
        yield receiver


def ssrf_targets(trap: Receiver) -> dict[str, str]:
    """name -> URL of every internal destination the relay must refuse."""
    port = trap.url.rsplit(":", 1)[1]
    return {
        "private-10": "https://10.1.2.3/hooks/x",
        "private-192": "https://192.168.10.20/hooks/x",
        "shared-100-64": "https://100.64.0.7/hooks/x",
        "loopback-http": f"http://127.0.0.1:{port}/hooks/x",
        "loopback-https": f"https://127.0.0.1:{port}/hooks/x",
        "link-local": "https://169.254.10.20/hooks/x",
        "metadata": "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "metadata-ipv4-mapped": "https://[::ffff:169.254.169.254]/latest/meta-data/",
        "name-resolving-to-loopback": f"https://localhost:{port}/hooks/x",
    }


def fixtures(targets: dict[str, str]) -> Fixtures:
    return Fixtures.model_validate(
        {
            "integrations": [
                {
                    "id": INTEGRATION_ID,
                    "name": "SSRF attempts",
                    "signatureSecret": "ssrf-signature-secret-0001",
                    "targets": [
                        {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, url)), "name": name, "url": url}
                        for name, url in targets.items()
                    ],
                }
            ]
        }
    )


def run_sync(genesys: FakeGenesys, *, allow_loopback: bool) -> dict[str, Any]:
    """``relay targets sync`` in its own process against the fake; its JSON report."""
    env = {
        **os.environ,
        **genesys.settings_env(),
        "RELAY_ALLOW_LOOPBACK_TARGETS": "true" if allow_loopback else "false",
    }
    result = subprocess.run(
        [sys.executable, "-m", "relay", "targets", "sync"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report (exit {result.returncode}): {result.stderr[-2000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def stored_targets(resources: LocalResources) -> list[str]:
    forget_cached_configuration()
    entry = TargetStore(aws_client("dynamodb"), resources.targets_table, cache_ttl_seconds=0).get(
        INTEGRATION_ID
    )
    return [t.url for t in entry.targets] if entry is not None else []


def test_internal_destinations_are_refused_by_config_sync_and_never_called(
    aws_stack: LocalResources, trap: Receiver
) -> None:
    # Given Genesys configures webhook targets pointing inside the network
    targets = ssrf_targets(trap)
    ids = {str(uuid.uuid5(uuid.NAMESPACE_URL, url)): name for name, url in targets.items()}

    # When config sync runs without the local stack's loopback setting
    with FakeGenesys(fixtures(targets)) as genesys:
        report = run_sync(genesys, allow_loopback=False)

    # Then every one of them is refused with a reason, none is stored, and none was ever called
    rejected = {r["id"]: r["reason"] for r in report["rejected"] if r.get("kind") == "target"}
    assert {ids[i] for i in rejected} == set(targets), report
    assert all(reason for reason in rejected.values())
    assert stored_targets(aws_stack) == []
    assert trap.requests == []


def test_the_local_setting_admits_loopback_only(aws_stack: LocalResources, trap: Receiver) -> None:
    # Given the same targets
    targets = ssrf_targets(trap)
    ids = {str(uuid.uuid5(uuid.NAMESPACE_URL, url)): name for name, url in targets.items()}

    # When config sync runs with the local stack's setting (RELAY_ALLOW_LOOPBACK_TARGETS=true)
    with FakeGenesys(fixtures(targets)) as genesys:
        report = run_sync(genesys, allow_loopback=True)

    # Then loopback destinations are admitted, and every private, shared, link-local and metadata one
    # is still refused
    rejected = {ids[r["id"]] for r in report["rejected"] if r.get("kind") == "target"}
    assert rejected == {
        "private-10",
        "private-192",
        "shared-100-64",
        "link-local",
        "metadata",
        "metadata-ipv4-mapped",
    }
    assert sorted(stored_targets(aws_stack)) == sorted(
        targets[name] for name in ("loopback-http", "loopback-https", "name-resolving-to-loopback")
    )
    assert trap.requests == []
