"""The Lambda layers install exactly what the developer environment was tested with (uv.lock)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        if line.startswith(" "):
            continue  # a requirement's continuation: its --hash options
        line = line.split("#", 1)[0].split(";", 1)[0].removesuffix("\\").strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", line)
        assert match, f"not pinned exactly: {line!r}"
        pins[_normal(match.group(1))] = match.group(3)
    return pins


def _hashes(text: str) -> dict[str, tuple[str, set[str]]]:
    """Each requirement of a hash-checked requirements file: name -> (version, its sha256 hashes)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for requirement in re.split(r"\n(?=\S)", text):
        if requirement.startswith("#") or not requirement.strip():
            continue
        name, version = _pins([requirement.split("\n", 1)[0]]).popitem()
        found[name] = (version, set(re.findall(r"--hash=sha256:([0-9a-f]{64})", requirement)))
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, dict[str, object]]:
    packages = tomllib.loads((ROOT / "uv.lock").read_text())["package"]
    return {_normal(p["name"]): p for p in packages}


def _runtime_closure(lock: dict[str, dict[str, object]], roots: list[str]) -> dict[str, str]:
    """Every package the runtime dependencies pull in, with its locked version (markers ignored)."""
    seen: dict[str, str] = {}
    pending = [_normal(r) for r in roots]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        package = lock[name]
        seen[name] = str(package["version"])
        for dep in package.get("dependencies", []):  # type: ignore[attr-defined]
            pending.append(_normal(dep["name"]))
    return seen


def test_core_layer_pins_the_whole_runtime_closure_at_the_locked_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = list(_pins(project["dependencies"]))
    layer = _pins((ROOT / "layers/core/requirements.txt").read_text().splitlines())
    assert layer == _runtime_closure(_lock(), roots)


LAYER_PINS = [
    "layers/core/requirements.txt",
    "layers/genesys/requirements.txt",
    "layers/genesys/sdk-only-deps.txt",
]


@pytest.mark.parametrize("path", LAYER_PINS)
def test_every_layer_pin_carries_exactly_uv_locks_hashes_so_pip_refuses_any_other_file(path: str) -> None:
    lock = _lock()
    pinned = _hashes((ROOT / path).read_text())
    assert pinned
    for name, (version, hashes) in pinned.items():
        package = lock[name]
        assert package["version"] == version, name
        files = [package.get("sdist", {}), *package.get("wheels", [])]  # type: ignore[list-item]
        locked = {str(f["hash"]).removeprefix("sha256:") for f in files if "hash" in f}
        assert hashes and hashes == locked, f"{path}: {name}'s hashes are not uv.lock's"
    # pip's hash-checking mode, asked for: a pin without hashes stops the build instead of passing.
    assert "--require-hashes" in (ROOT / "layers" / "wheels.mk").read_text()


def test_project_runtime_pins_are_the_locked_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = _lock()
    for name, version in _pins(project["dependencies"] + project["optional-dependencies"]["genesys"]).items():
        assert lock[name]["version"] == version, name


def test_genesys_layer_pins_equal_the_project_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    layer = (ROOT / "layers/genesys/requirements.txt").read_text().splitlines()
    assert _pins(layer) == _pins(project["optional-dependencies"]["genesys"])


def test_every_development_tool_is_pinned() -> None:
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert _pins(groups["dev"])  # raises on any unpinned entry
    sam = _hashes((ROOT / "tools/sam/requirements.txt").read_text())
    assert sam["aws-sam-cli"][0] == "1.170.0"
    checkov = _hashes((ROOT / "tools/checkov/requirements.txt").read_text())
    assert "checkov" in checkov
    # Installed in hash-checking mode: every pin carries its hashes (uv pip compile --generate-hashes).
    makefile = (ROOT / "Makefile").read_text()
    for tool, pins in (("sam", sam), ("checkov", checkov)):
        assert all(hashes for _, hashes in pins.values()), tool
        assert f"--require-hashes -r tools/{tool}/requirements.txt" in makefile


def _runtime_version() -> str:
    """template.yaml's Lambda runtime as "3.13" (the Globals of every function)."""
    runtime = re.search(r"^    Runtime: python(\d+\.\d+)$", (ROOT / "template.yaml").read_text(), re.M)
    assert runtime, "template.yaml's Globals name no python runtime"
    return runtime[1]


def test_the_tests_run_on_the_python_lambda_runs() -> None:
    # What is tested is what runs: the development environment is the runtime's minor version.
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == _runtime_version()


def test_every_tool_targets_the_lambda_runtimes_python() -> None:
    version = _runtime_version()
    major, minor = (int(part) for part in version.split("."))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={version},<{major}.{minor + 1}"
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
    assert pyproject["tool"]["mypy"]["python_version"] == version
    # the layers' wheels (cp313) and bytecode: another version's .pyc files would not load
    assert f"PYTHON_VERSION := {version}\n" in (ROOT / "layers" / "wheels.mk").read_text()
    for layer in ("core", "genesys"):
        assert (
            "include $(dir $(lastword $(MAKEFILE_LIST)))../wheels.mk\n"
            in (ROOT / "layers" / layer / "Makefile").read_text()
        ), layer
    for tool in ("sam", "checkov"):
        header = (ROOT / "tools" / tool / "requirements.txt").read_text().splitlines()[1]
        assert f"--python-version {version} " in header, f"tools/{tool}/requirements.txt: {header}"


def test_the_layers_wheels_come_from_the_pinned_bootstrap_pip_not_the_interpreters_own() -> None:
    # A Python 3.13 installed as python3.13 + python3.13-venv has no pip of its own (measured on a fresh
    # machine: `make build` stopped at "No module named pip"); the bootstrap environment has one, pinned.
    makefile = (ROOT / "Makefile").read_text()
    boot = _hashes((ROOT / "tools/boot/requirements.txt").read_text())
    assert set(boot) == {"pip", "uv"} and all(hashes for _, hashes in boot.values())
    assert "--require-hashes -r tools/boot/requirements.txt" in makefile
    sam_build = makefile[makefile.index("SAM_BUILD =") :].split("\n\n")[0]
    assert 'PIP="$(abspath $(BOOT))/bin/python -m pip"' in sam_build
    assert sam_build.startswith('SAM_BUILD = PATH="$(abspath $(BOOT))/bin:')  # sam's own pip lookup
    assert "PIP_INSTALL := $(PIP) install" in (ROOT / "layers" / "wheels.mk").read_text()


@pytest.mark.parametrize("target", ["demo", "serve"])
def test_make_demo_and_serve_print_only_what_relay_prints(target: str, tmp_path: Path) -> None:
    # README: `make demo` prints one JSON line; `serve`'s stdout is its ready line alone. make echoed
    # the command line first, so `make demo | jq` read a line that is not JSON.
    make = shutil.which("make")
    assert make is not None, "the README's two commands need make"
    # Given an environment whose relay prints one JSON line (the environment's own bootstrap left out)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    relay = venv / "bin" / "relay"
    relay.write_text("#!/bin/sh\necho '{\"ok\": true}'\n")
    relay.chmod(0o755)
    (venv / ".synced").touch()

    # When make runs the target with it
    result = subprocess.run(
        [make, "--no-print-directory", "-o", f"{venv}/.synced", f"VENV={venv}", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then stdout is the relay's line alone
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"ok": true}\n'
