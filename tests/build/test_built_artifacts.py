"""What `sam build` produces runs the way Lambda loads it: function code + its layers, nothing else.

`make test` builds twice: the deployable build in .aws-sam/build for ARCH (RELAY_BUILD_ARCH here;
arm64 by default, like template.yaml's Architecture parameter) and, unless that is x86_64 already,
an x86_64 twin in .aws-sam/build-x86_64 from the same sources and pins. This machine is x86_64, so:

- each handler of the x86_64 build is imported in a fresh Python 3.13 with an empty environment and
  only /var/task (the function's build dir) and /opt/python (its layers) on the path, as in Lambda;
- in every build, each compiled extension is checked by its wheel's tags (cp313 or abi3, manylinux for
  AL2023's glibc 2.34 or older, the build's machine) and its ELF header (aarch64 for arm64);
- each function with its layers must fit Lambda's 250 MB unzipped limit.

The cold imports and sizes are printed at the end of the run (tests/build/conftest.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
FUNCTIONS = (
    "IntakeFunction",
    "DispatcherFunction",
    "FirstHopDispatcherFunction",
    "SlowDispatcherFunction",
    "ConfigSyncFunction",
    "OrderedDispatcherFunction",
)
LAYERS = ("CoreLayer", "GenesysSdkLayer")
DEPLOYABLE_ARCH = (
    os.environ.get("RELAY_BUILD_ARCH") or TEMPLATE.document["Parameters"]["Architecture"]["Default"]
)
# Lambda's quota: a function's code and all its layers, unzipped (250 MB = 262,144,000 bytes).
UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1000
ELF_MACHINES = {"x86_64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64
WHEEL_MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}
AL2023_GLIBC = (2, 34)
Record = Callable[[str, object], None]


def builds() -> dict[str, Path]:
    """{architecture: build directory} for what `make build` / `make build-x86_64` left."""
    found = {DEPLOYABLE_ARCH: ROOT / ".aws-sam" / "build"}
    found.setdefault("x86_64", ROOT / ".aws-sam" / "build-x86_64")
    return found


def build_for(arch: str) -> Path:
    build = builds()[arch]
    if not (build / "CoreLayer").is_dir():
        target = "build" if arch == DEPLOYABLE_ARCH else f"build-{arch}"
        pytest.fail(f"{build} is missing: run `make {target}` first (make test does)")
    return build


def layers_of(function: str) -> list[str]:
    """The function's layers in the template's order (Globals first, as SAM appends them)."""
    return [layer["Ref"] for layer in TEMPLATE.properties(function)["Layers"]]


PROBE = """
import importlib, json, sys, time
started = time.perf_counter()
importlib.import_module(sys.argv[1])
elapsed_ms = (time.perf_counter() - started) * 1000
import dateutil
print(json.dumps({
    "import_ms": round(elapsed_ms),
    "python": "%d.%d" % sys.version_info[:2],
    "genesys_sdk": "PureCloudPlatformClientV2" in sys.modules,
    "relay_local": any(m == "relay.local" or m.startswith("relay.local.") for m in sys.modules),
    "relay_file": sys.modules["relay"].__file__,
    "dateutil": getattr(dateutil, "__version__", "?"),
}))
"""


def _import_in_lambda_layout(function: str, module: str, record: Record) -> dict[str, object]:
    build = build_for("x86_64")
    path = [str(build / function)] + [str(build / layer / "python") for layer in layers_of(function)]
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
    record(f"cold import {function} (ms)", result["import_ms"])
    runtime = TEMPLATE.resolve(TEMPLATE.properties(function))["Runtime"]
    assert f"python{result['python']}" == runtime, "imported by another Python than Lambda runs"
    return result


def test_intake_runs_from_its_layer_without_the_sdk_or_the_local_stack(record_property: Record) -> None:
    probe = _import_in_lambda_layout("IntakeFunction", "intake_handler", record_property)
    assert str(probe["relay_file"]).startswith(str(build_for("x86_64") / "CoreLayer"))
    assert probe["genesys_sdk"] is False and probe["relay_local"] is False


def test_dispatcher_runs_from_its_layer_without_the_sdk_or_the_local_stack(record_property: Record) -> None:
    probe = _import_in_lambda_layout("DispatcherFunction", "dispatcher_handler", record_property)
    assert str(probe["relay_file"]).startswith(str(build_for("x86_64") / "CoreLayer"))
    assert probe["genesys_sdk"] is False and probe["relay_local"] is False


def test_config_sync_loads_the_sdk_from_its_layer_and_keeps_the_core_dependencies(
    record_property: Record,
) -> None:
    # Lambda puts layers in /opt/python in order; CoreLayer first, like the template's Layers list.
    assert layers_of("ConfigSyncFunction") == ["CoreLayer", "GenesysSdkLayer"]
    probe = _import_in_lambda_layout("ConfigSyncFunction", "config_sync_handler", record_property)
    assert probe["genesys_sdk"] is True
    # Lambda unpacks both layers into one /opt/python, later ones overwriting earlier files: the SDK
    # layer must not carry anything the core layer has (python-dateutil 4.x once overwrote 2.9).
    build = build_for("x86_64")
    core = {p.name for p in (build / "CoreLayer" / "python").iterdir()}
    sdk = {p.name for p in (build / "GenesysSdkLayer" / "python").iterdir()}
    assert core & sdk <= {"__pycache__"}
    lock = (ROOT / "layers/core/requirements.txt").read_text()
    assert f"python-dateutil=={probe['dateutil']}" in lock


@pytest.mark.parametrize("arch", sorted(builds()))
def test_the_layers_ship_bytecode_for_the_runtime_and_not_the_developer_side(arch: str) -> None:
    build = build_for(arch)
    tag = sys.implementation.cache_tag  # cpython-313: test_packaging checks it is the runtime's
    relay = build / "CoreLayer" / "python" / "relay"
    assert not (relay / "local").exists() and not (relay / "cli").exists()
    assert not (relay / "testing").exists()
    assert list((relay / "__pycache__").glob(f"settings.{tag}.pyc"))
    # The SDK layer is bytecode only: a .pyc of another Python version would not import at all.
    sdk = build / "GenesysSdkLayer" / "python" / "PureCloudPlatformClientV2" / "__init__.pyc"
    assert sdk.read_bytes()[:4] == importlib.util.MAGIC_NUMBER


@pytest.mark.parametrize("arch", sorted(builds()))
def test_compiled_extensions_are_built_for_the_architecture_and_al2023(arch: str) -> None:
    build = build_for(arch)
    extensions = [so for layer in LAYERS for so in (build / layer).rglob("*.so*")]
    assert {"_pydantic_core", "_rust"} <= {so.name.split(".")[0] for so in extensions}, "checked nothing"
    for so in extensions:
        header = so.read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and header[4] == 2, f"{so}: not a 64-bit ELF file"
        (machine,) = struct.unpack_from("<H", header, 18)
        assert machine == ELF_MACHINES[arch], f"{so}: ELF machine {machine}, not {arch}"
        suffix = re.search(r"\.(cpython-\d+-[a-z0-9_]+-linux-gnu|abi3)\.so", so.name)
        if suffix and suffix[1] != "abi3":
            assert suffix[1] == f"{sys.implementation.cache_tag}-{WHEEL_MACHINES[arch]}-linux-gnu", so
    wheels = [w for layer in LAYERS for w in (build / layer).rglob("*.dist-info/WHEEL")]
    assert wheels, "no wheel metadata to check"
    for wheel in wheels:
        for tag in re.findall(r"^Tag: (\S+)$", wheel.read_text(), re.M):
            _assert_lambda_can_load(tag, arch, wheel.parent.name)


def _assert_lambda_can_load(tag: str, arch: str, distribution: str) -> None:
    interpreter, abi, platform = tag.split("-")
    runtime = f"cp{sys.version_info.major}{sys.version_info.minor}"
    pure = abi == "none" and interpreter.startswith(("py3", "py2"))  # any Python, no C-API
    assert pure or interpreter == runtime or (abi == "abi3" and interpreter <= runtime), (distribution, tag)
    if platform == "any":
        return
    legacy = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
    match = re.fullmatch(r"(manylinux_(\d+)_(\d+)|manylinux2014|manylinux2010|manylinux1)_(\w+)", platform)
    assert match, f"{distribution}: {tag} is not a manylinux wheel"
    glibc = (int(match[2]), int(match[3])) if match[2] else legacy[match[1]]
    assert glibc <= AL2023_GLIBC, f"{distribution}: {tag} needs glibc {glibc}, AL2023 has {AL2023_GLIBC}"
    assert match[4] == WHEEL_MACHINES[arch], f"{distribution}: {tag} is not for {arch}"


def _unzipped_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


@pytest.mark.parametrize("arch", sorted(builds()))
def test_each_function_with_its_layers_fits_lambdas_unzipped_limit(
    arch: str, record_property: Record
) -> None:
    build = build_for(arch)
    layer_bytes = {layer: _unzipped_bytes(build / layer) for layer in LAYERS}
    for layer, size in layer_bytes.items():
        record_property(f"{arch} {layer} unzipped (MB)", round(size / 1e6, 1))
    for function in FUNCTIONS:
        total = _unzipped_bytes(build / function) + sum(layer_bytes[layer] for layer in layers_of(function))
        record_property(f"{arch} {function} with layers unzipped (MB)", round(total / 1e6, 1))
        assert total < UNZIPPED_LIMIT_BYTES, f"{function} ({arch}): {total:,} bytes unzipped"
