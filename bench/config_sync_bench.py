"""Config sync benchmark: the function's cold start and one sync run against the fake Genesys API.

Cold start: ``import config_sync_handler`` in a fresh interpreter, as a cold Lambda container does it
(the handler loads the Genesys SDK during init), with bytecode already compiled (as in a build):
wall clock of the import, of the whole process, and peak RSS.

Run time: ``sync_targets`` against the fake Genesys API (real SDK over loopback HTTP) writing to moto's
server (DynamoDB + Secrets Manager over HTTP): the first run (login, every record and secret written)
and the following runs (nothing changed: reads, compares, syncedAt refreshed), for the default
fixtures (1 integration, 2 targets) and a synthetic 1 x 20. moto and loopback stand in for AWS and
Genesys, so these figures are the relay's own work plus local round trips, not AWS latency.

Prints one JSON object as the last line of standard output.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HANDLER_DIR = ROOT / "functions" / "config_sync"
COLD_STARTS = 3
WARM_RUNS = 5

_COLD_PROBE = """
import json, resource, sys, time
started = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import config_sync_handler  # noqa: F401  (loads the Genesys SDK during init)
import_ms = (time.perf_counter() - started) * 1000
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"import_ms": import_ms, "max_rss_mb": rss_mb}))
"""


def cold_start() -> dict[str, Any]:
    imports, processes, rss = [], [], []
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AWS_REGION": "us-east-1", "HOME": "/tmp"}
    for _ in range(COLD_STARTS):
        started = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-c", _COLD_PROBE, str(HANDLER_DIR)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=300,
        )
        processes.append((time.perf_counter() - started) * 1000)
        figures = json.loads(completed.stdout.strip().splitlines()[-1])
        imports.append(figures["import_ms"])
        rss.append(figures["max_rss_mb"])
    return {
        "handler_import_ms_median": round(statistics.median(imports), 1),
        "handler_import_ms_min": round(min(imports), 1),
        "process_ms_median": round(statistics.median(processes), 1),
        "max_rss_mb": round(max(rss), 1),
        "samples": COLD_STARTS,
    }


def synthetic_fixtures(targets: int) -> Any:
    from relay.local.fixtures import Fixtures

    base = Fixtures.load()
    integration = base.integrations[0].model_dump(by_alias=True, exclude_none=True)
    template = integration["targets"][1]  # the encrypted one: every secret kind
    integration["targets"] = [
        {**template, "id": str(uuid.UUID(int=i + 1, version=4)), "name": f"bench-{i}"} for i in range(targets)
    ]
    return Fixtures.model_validate({"integrations": [integration]})


def sync_runs(fixtures: Any, endpoint: str, prefix: str) -> dict[str, Any]:
    from relay.local.aws_stack import create_resources
    from relay.local.fake_genesys import FakeGenesys
    from relay.local.template import load_template
    from relay.settings import load_settings
    from relay.wiring.config_sync import run_config_sync, warm_up

    resources = create_resources(load_template(parameters={"Stage": "local"}), endpoint, prefix)
    with FakeGenesys(fixtures) as fake:
        # The relay is configured through Settings, never through this process's environment.
        settings = load_settings(
            {
                **resources.env,
                **fake.settings_env(),
                "RELAY_ALLOW_LOOPBACK_TARGETS": "true",
                "SECRETS_PREFIX": f"relay/bench-{prefix}",
            }
        )
        started = time.perf_counter()
        warm_up()  # the handler does this during init; keep it out of the run figures
        sdk_ms = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        first = run_config_sync(settings)
        first_ms = (time.perf_counter() - started) * 1000
        first_requests = len(fake.requests)

        warm = []
        for _ in range(WARM_RUNS):
            fake.clear_requests()
            started = time.perf_counter()
            report = run_config_sync(settings)
            warm.append((time.perf_counter() - started) * 1000)
        assert not report.rejected and not report.changed, report.to_dict()
    return {
        "targets": len(first.targets),
        "sdk_warm_up_ms": round(sdk_ms, 1),
        "first_run_ms": round(first_ms, 1),
        "first_run_genesys_requests": first_requests,
        "first_run_secrets_written": first.secrets_written,
        "unchanged_run_ms_median": round(statistics.median(warm), 1),
        "unchanged_run_genesys_requests": len(fake.requests),
    }


def main() -> None:
    figures: dict[str, Any] = {"cold_start": cold_start()}
    # Log lines and EMF go to /dev/null: written (their cost counts), not shown.
    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    try:
        from relay.local.aws_stack import MotoServer
        from relay.local.fixtures import Fixtures

        with MotoServer() as moto:
            figures["run_default_fixtures"] = sync_runs(Fixtures.load(), moto.url, "bench1")
            figures["run_20_targets"] = sync_runs(synthetic_fixtures(20), moto.url, "bench2")
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
