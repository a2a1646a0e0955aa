"""Importing the dispatcher handler (as Lambda and the local stack do) stays on the hot path only:
not the Genesys SDK (seconds of cold start), not moto, not the developer-side relay.local or
relay.testing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HANDLER = Path(__file__).resolve().parents[2] / "functions" / "dispatcher" / "dispatcher_handler.py"

PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("dispatcher_handler", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert callable(module.lambda_handler)
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_the_dispatcher_handler_loads_no_sdk_moto_or_local_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(HANDLER)], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert "relay.logic.dispatch" in loaded  # the probe did load the handler's logic
    forbidden_packages = (
        "PureCloudPlatformClientV2",
        "moto",
        "relay.local",
        "relay.testing",
        "standardwebhooks",
        "hypothesis",
    )
    for forbidden in forbidden_packages:
        assert not [m for m in loaded if m == forbidden or m.startswith(forbidden + ".")], forbidden
