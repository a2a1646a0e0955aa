"""The intake handler stays lean: no Genesys SDK, no test or local-stack code on its import path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HANDLER_DIR = ROOT / "functions" / "intake"

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import intake_handler
assert callable(intake_handler.lambda_handler)
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_the_intake_handler_loads_neither_the_sdk_nor_moto_nor_the_local_stack() -> None:
    # Given a fresh interpreter, as in a cold Lambda container
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(HANDLER_DIR)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1"},
    )

    # When it imports the handler module, then none of the heavy or developer-only packages came along
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "intake_handler" in modules and "relay.logic.intake" in modules
    # powertools' __init__ imports its tracing module; the X-Ray SDK (the cost) loads only with a Tracer.
    forbidden = {
        "PureCloudPlatformClientV2",
        "moto",
        "relay.local",
        "relay.testing",
        "aws_xray_sdk",
        "hypothesis",
        "pytest",
    }
    loaded = sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert loaded == []
