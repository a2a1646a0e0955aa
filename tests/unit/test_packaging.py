"""The Lambda layers install what the developer environment was tested with."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        assert match, f"not pinned exactly: {line!r}"
        pins[match.group(1).lower()] = match.group(3)
    return pins


def test_core_layer_pins_equal_the_project_runtime_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    layer = (ROOT / "layers/core/requirements.txt").read_text().splitlines()
    assert _pins(layer) == _pins(project["dependencies"])


def test_genesys_layer_pins_equal_the_project_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    layer = (ROOT / "layers/genesys/requirements.txt").read_text().splitlines()
    assert _pins(layer) == _pins(project["optional-dependencies"]["genesys"])


def test_every_development_tool_is_pinned() -> None:
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert _pins(groups["dev"])  # raises on any unpinned entry
    sam = (ROOT / "tools/sam/requirements.txt").read_text().splitlines()
    assert _pins([line for line in sam if not line.startswith(" ")])["aws-sam-cli"] == "1.170.0"
