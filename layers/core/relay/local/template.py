"""Read template.yaml the way CloudFormation would, so the local stack never keeps a second copy of
names and settings.

The YAML loader understands the short-form intrinsic tags (``!Ref``, ``!GetAtt``, ``!Sub``, ...) and
turns them into their long form; ``Template.resolve`` evaluates them against parameter values and
the physical ids of the resources the local stack created. SAM ``Globals`` are merged into each
function the way the SAM transform merges them (maps merged, ``Layers`` appended).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[4] / "template.yaml"

_SCALAR_TAGS = {"Ref": "Ref", "Condition": "Condition"}
_FN_TAGS = (
    "Base64 Cidr FindInMap GetAZs GetAtt If ImportValue Join Select Split Sub Transform "
    "And Equals Not Or Length ToJsonString"
).split()


# libyaml's parser when PyYAML has it (its wheels do): a tenth of the pure-Python parse time, which
# every local stack, test fixture and operator command pays.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _CfnLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """SafeLoader plus CloudFormation's short-form tags."""


def _construct(tag: str, long_name: str) -> None:
    def build(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if long_name == "Fn::GetAtt":
                value = str(value).split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {long_name: value}

    _CfnLoader.add_constructor(f"!{tag}", build)


for _tag, _long in _SCALAR_TAGS.items():
    _construct(_tag, _long)
for _tag in _FN_TAGS:
    _construct(_tag, f"Fn::{_tag}")


@dataclass(frozen=True)
class PhysicalResource:
    """What ``Ref`` and ``Fn::GetAtt`` return for a resource the local stack created."""

    ref: str
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_dir: Path
    handler_module: str
    handler_function: str
    timeout_seconds: int
    environment: dict[str, str]
    events: dict[str, dict[str, Any]]
    reserved_concurrency: int | None


class Template:
    def __init__(self, document: dict[str, Any], path: Path, parameters: Mapping[str, Any] | None = None):
        self.document = document
        self.path = path
        self.parameters: dict[str, Any] = {
            name: spec.get("Default") for name, spec in document.get("Parameters", {}).items()
        }
        self.parameters.update(parameters or {})
        self.physical: dict[str, PhysicalResource] = {}
        self.pseudo: dict[str, str] = {
            "AWS::Region": "us-east-1",
            "AWS::AccountId": "123456789012",
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "relay-local",
            "AWS::NoValue": "",
        }

    # --- reading -----------------------------------------------------------------------------------
    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        resources: dict[str, dict[str, Any]] = self.document["Resources"]
        return resources

    def resources_of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {lid: r for lid, r in self.resources.items() if r["Type"] == resource_type}

    def properties(self, logical_id: str) -> dict[str, Any]:
        """A resource's Properties, with SAM Globals merged in for serverless functions."""
        resource = self.resources[logical_id]
        props: dict[str, Any] = dict(resource.get("Properties", {}))
        if resource["Type"] == "AWS::Serverless::Function":
            props = _merge_globals(self.document.get("Globals", {}).get("Function", {}), props)
        return props

    def function(self, logical_id: str) -> FunctionSpec:
        props = self.resolve(self.properties(logical_id))
        module, _, func = props["Handler"].rpartition(".")
        variables = props.get("Environment", {}).get("Variables", {})
        return FunctionSpec(
            logical_id=logical_id,
            code_dir=(self.path.parent / props["CodeUri"]).resolve(),
            handler_module=module,
            handler_function=func,
            timeout_seconds=int(props.get("Timeout", 3)),
            environment={k: _env_string(v) for k, v in variables.items()},
            events=props.get("Events", {}),
            reserved_concurrency=_optional_int(props.get("ReservedConcurrentExecutions")),
        )

    # --- evaluating intrinsics ---------------------------------------------------------------------
    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            handler = _INTRINSICS.get(key)
            if handler is not None:
                return handler(self, arg)
        return {k: self.resolve(v) for k, v in value.items()}

    def ref(self, name: str) -> Any:
        if name in self.parameters:
            return self.parameters[name]
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.physical:
            return self.physical[name].ref
        if name in self.resources:
            return _unprovisioned(name)
        raise KeyError(f"!Ref {name}: no parameter, pseudo parameter or created resource of that name")

    def get_att(self, logical_id: str, attribute: str) -> str:
        if logical_id not in self.physical and logical_id in self.resources:
            return _unprovisioned(f"{logical_id}.{attribute}")
        try:
            return self.physical[logical_id].attributes[attribute]
        except KeyError:
            raise KeyError(f"!GetAtt {logical_id}.{attribute}: not available locally") from None

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.document.get("Conditions", {})[name]))

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name:
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


def _unprovisioned(name: str) -> str:
    # Resources the local stack does not emulate (layers, the HTTP API, alarms) still need a value
    # when a property that mentions them is resolved; this marker makes any accidental use obvious.
    return f"<not-provisioned-locally:{name}>"


def _merge_globals(globals_: Mapping[str, Any], props: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = dict(globals_)
    for key, value in props.items():
        if key == "Layers":
            merged[key] = list(globals_.get("Layers", [])) + list(value)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_globals(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def _join(t: Template, arg: Any) -> str:
    separator, items = arg
    resolved = t.resolve(items)
    flat = [str(x) for item in resolved for x in (item if isinstance(item, list) else [item])]
    return str(separator).join(flat)


def _ref(t: Template, arg: Any) -> Any:
    value = t.ref(arg)
    spec = t.document.get("Parameters", {}).get(arg, {})
    if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
        return [v for v in value.split(",") if v]
    return value


_INTRINSICS: dict[str, Any] = {
    "Ref": _ref,
    "Fn::GetAtt": lambda t, arg: t.get_att(*(arg if isinstance(arg, list) else str(arg).split(".", 1))),
    "Fn::Sub": lambda t, arg: t._sub(arg),
    "Fn::Join": _join,
    "Fn::Select": lambda t, arg: t.resolve(arg[1])[int(t.resolve(arg[0]))],
    "Fn::Split": lambda t, arg: str(t.resolve(arg[1])).split(arg[0]),
    "Fn::If": lambda t, arg: t.resolve(arg[1] if t.condition(arg[0]) else arg[2]),
    "Fn::Equals": lambda t, arg: t.resolve(arg[0]) == t.resolve(arg[1]),
    "Fn::Not": lambda t, arg: not t.resolve(arg[0]),
    "Fn::And": lambda t, arg: all(t.resolve(a) for a in arg),
    "Fn::Or": lambda t, arg: any(t.resolve(a) for a in arg),
    "Condition": lambda t, arg: t.condition(arg),
    "Fn::FindInMap": lambda t, arg: t.document["Mappings"][t.resolve(arg[0])][t.resolve(arg[1])][
        t.resolve(arg[2])
    ],
}


def load_template(path: str | Path | None = None, parameters: Mapping[str, Any] | None = None) -> Template:
    """The template at ``path`` (default: the repository's), its own copy: callers may change it."""
    template_path = Path(path or DEFAULT_TEMPLATE).resolve()
    status = template_path.stat()
    document = _parsed(template_path, status.st_mtime_ns, status.st_size)
    return Template(copy.deepcopy(document), template_path, parameters)


@functools.lru_cache(maxsize=8)
def _parsed(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    """One parse per version of the file (a test suite loads the template a few hundred times)."""
    del mtime_ns, size  # the cache key: an edited file is parsed again
    with path.open() as handle:
        document: dict[str, Any] = yaml.load(handle, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    return document
