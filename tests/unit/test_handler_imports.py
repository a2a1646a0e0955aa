"""Importing a handler stays on its hot path: the intake and the dispatcher load neither the Genesys SDK
(about 3 s and 220 MB at import, config sync's alone) nor test, in-memory fake (relay.testing),
local-stack or X-Ray code.

Each handler is loaded as Lambda loads it (support.handlers) in a fresh interpreter with a bare
environment, as in a cold container; the probe then lists sys.modules. Config sync is the control: it
does load the SDK, so the probe can see it. (tests/build checks the same on what `sam build` makes.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

SDK = "PureCloudPlatformClientV2"
# powertools' __init__ imports its tracing module; the X-Ray SDK (the cost) loads only with a Tracer.
NEVER_ON_THE_HOT_PATH = (
    SDK,
    "moto",
    "relay.local",
    "relay.testing",
    "aws_xray_sdk",
    "hypothesis",
    "pytest",
    "standardwebhooks",
)

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from support.handlers import load_handler
assert callable(load_handler(sys.argv[2]))
print(json.dumps(sorted(sys.modules)))
"""


def modules_loaded_by(function: str, home: Path) -> set[str]:
    # No settings are read at import time: nothing in the environment but what imports need.
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "tests"), function],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1", "HOME": str(home)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


@pytest.mark.parametrize(
    ("function", "logic"), [("intake", "relay.logic.intake"), ("dispatcher", "relay.logic.dispatch")]
)
def test_a_hot_path_handler_loads_no_sdk_test_or_local_stack_code(
    function: str, logic: str, tmp_path: Path
) -> None:
    modules = modules_loaded_by(function, tmp_path)
    assert f"{function}_handler" in modules and logic in modules  # the probe did load the handler
    assert [package for package in NEVER_ON_THE_HOT_PATH if loaded(modules, package)] == []


def test_the_probe_sees_the_sdk_when_a_handler_loads_it(tmp_path: Path) -> None:
    # Control: config sync loads the SDK during init, and the probe must notice.
    assert loaded(modules_loaded_by("config_sync", tmp_path), SDK)
