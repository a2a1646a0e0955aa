"""What the tests of ``relay local serve`` and ``relay local demo`` share: the command line, the default
fixtures' document to change, and a look at the processes a run leaves behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FIXTURES = ROOT / "events" / "fixtures" / "local.json"
SIGNING_SECRET = "whsec_ZTJlLW93bi1yZWNlaXZlci1zaWduaW5nLXNlY3JldA=="


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay", "local", *args]


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def default_fixtures() -> dict[str, Any]:
    """The default fixtures' document, for a test to change."""
    doc: dict[str, Any] = json.loads(DEFAULT_FIXTURES.read_text())
    return doc


def with_only_target(target: dict[str, Any]) -> dict[str, Any]:
    """The default fixtures' document, its integration delivering to ``target`` only."""
    doc = default_fixtures()
    doc["integrations"][0]["targets"] = [target]
    return doc


def plain_target_only(retry_matrix: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The default fixtures' document with only its unencrypted target, retrying as ``retry_matrix``
    says, and that target."""
    doc = default_fixtures()
    target = next(t for t in doc["integrations"][0]["targets"] if "encryptionKey" not in t)
    target["retryMatrix"] = retry_matrix
    doc["integrations"][0]["targets"] = [target]
    return doc, target


def written(doc: dict[str, Any], tmp_path: Path) -> Path:
    """``doc`` as the test's own fixtures file."""
    path = tmp_path / "fixtures.json"
    path.write_text(json.dumps(doc))
    return path
