"""The per-event path never loads the Genesys SDK (about 3 s and 220 MB at import).

Each handler is imported the way Lambda does it, from its file, in a fresh interpreter; the test then
asks that interpreter whether PureCloudPlatformClientV2 is in sys.modules. The config-sync handler is
the control: it does load the SDK, so the probe can see it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INTAKE = ROOT / "functions" / "intake" / "intake_handler.py"
DISPATCHER = ROOT / "functions" / "dispatcher" / "dispatcher_handler.py"
CONFIG_SYNC = ROOT / "functions" / "config_sync" / "config_sync_handler.py"
SDK = "PureCloudPlatformClientV2"

_PROBE = """
import importlib.util, json, sys
path = sys.argv[1]
spec = importlib.util.spec_from_file_location("handler_under_test", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert callable(module.lambda_handler)
sdk = sys.argv[2]
print(json.dumps({"sdk_loaded": any(m == sdk or m.startswith(sdk + ".") for m in sys.modules)}))
"""


def _sdk_loaded_by(handler: Path, home: Path) -> bool:
    # A clean environment apart from what imports need: no settings are read at import time.
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, str(handler), SDK],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1", "HOME": str(home)},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return bool(json.loads(completed.stdout.strip().splitlines()[-1])["sdk_loaded"])


@pytest.mark.parametrize("handler", [INTAKE, DISPATCHER], ids=["intake", "dispatcher"])
def test_hot_path_handler_does_not_import_the_genesys_sdk(handler: Path, tmp_path: Path) -> None:
    if not handler.exists():
        pytest.skip(f"{handler.relative_to(ROOT)} is not written yet")
    assert _sdk_loaded_by(handler, tmp_path) is False


def test_the_probe_sees_the_sdk_when_a_handler_loads_it(tmp_path: Path) -> None:
    # Control: config sync loads the SDK during init, and the probe must notice.
    assert _sdk_loaded_by(CONFIG_SYNC, tmp_path) is True
