"""What `sam build` produces runs the way Lambda loads it: function code + its layers, nothing else.

Each handler is imported in a fresh python3.11 with an empty environment and only /var/task (the
function's build dir) and /opt/python (its layers) on the path, as in Lambda. Run `make build` first
(`make test` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".aws-sam" / "build"

PROBE = """
import importlib, json, sys, time
started = time.perf_counter()
importlib.import_module(sys.argv[1])
elapsed_ms = (time.perf_counter() - started) * 1000
import dateutil
print(json.dumps({
    "import_ms": round(elapsed_ms),
    "genesys_sdk": "PureCloudPlatformClientV2" in sys.modules,
    "relay_local": any(m == "relay.local" or m.startswith("relay.local.") for m in sys.modules),
    "relay_file": sys.modules["relay"].__file__,
    "dateutil": getattr(dateutil, "__version__", "?"),
}))
"""


def _import_in_lambda_layout(function: str, module: str, layers: list[str]) -> dict[str, object]:
    if not (BUILD / function).is_dir():
        pytest.fail(f"{BUILD / function} is missing: run `make build` first")
    path = [str(BUILD / function)] + [str(BUILD / layer / "python") for layer in layers]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/tmp",
        "PYTHONPATH": os.pathsep.join(path),
        "AWS_REGION": "us-east-1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, module], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_intake_runs_from_its_layer_without_the_sdk_or_the_local_stack() -> None:
    probe = _import_in_lambda_layout("IntakeFunction", "intake_handler", ["CoreLayer"])
    assert str(probe["relay_file"]).startswith(str(BUILD / "CoreLayer"))
    assert probe["genesys_sdk"] is False and probe["relay_local"] is False


def test_dispatcher_runs_from_its_layer_without_the_sdk_or_the_local_stack() -> None:
    probe = _import_in_lambda_layout("DispatcherFunction", "dispatcher_handler", ["CoreLayer"])
    assert str(probe["relay_file"]).startswith(str(BUILD / "CoreLayer"))
    assert probe["genesys_sdk"] is False and probe["relay_local"] is False


def test_config_sync_loads_the_sdk_from_its_layer_and_keeps_the_core_dependencies() -> None:
    # Lambda puts layers in /opt/python in order; here CoreLayer first, like the template's Layers list.
    probe = _import_in_lambda_layout(
        "ConfigSyncFunction", "config_sync_handler", ["CoreLayer", "GenesysSdkLayer"]
    )
    assert probe["genesys_sdk"] is True
    # Lambda unpacks both layers into one /opt/python, later ones overwriting earlier files: the SDK
    # layer must not carry anything the core layer has (python-dateutil 4.x once overwrote 2.9).
    core = {p.name for p in (BUILD / "CoreLayer" / "python").iterdir()}
    sdk = {p.name for p in (BUILD / "GenesysSdkLayer" / "python").iterdir()}
    assert core & sdk <= {"__pycache__"}
    lock = (ROOT / "layers/core/requirements.txt").read_text()
    assert f"python-dateutil=={probe['dateutil']}" in lock


def test_the_core_layer_ships_bytecode_and_not_the_developer_side() -> None:
    relay = BUILD / "CoreLayer" / "python" / "relay"
    assert not (relay / "local").exists() and not (relay / "cli").exists()
    assert not (relay / "testing").exists()
    assert list((relay / "__pycache__").glob("settings.cpython-311.pyc"))
