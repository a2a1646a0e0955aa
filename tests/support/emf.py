"""The CloudWatch metrics (EMF) that powertools prints, as a test reads them back, and the variables
Lambda sets that name the release a function runs (which the crash metrics carry as dimensions)."""

from __future__ import annotations

import json
from typing import Any


def emf_blobs(output: str) -> list[dict[str, Any]]:
    """The EMF objects among captured output lines."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{") and '"_aws"' in line]


def dimension_sets(blob: dict[str, Any]) -> list[dict[str, str]]:
    """Each dimension set of an EMF object's (single) directive, with its values."""
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    return [{name: blob[name] for name in names} for names in directive["Dimensions"]]


def in_lambda(function_name: str | None, version: str = "7") -> dict[str, str]:
    """What Lambda puts in a function's environment while its published version ``version`` runs
    (invoked through the alias `live`); nothing for None (outside Lambda)."""
    if function_name is None:
        return {}
    return {"AWS_LAMBDA_FUNCTION_NAME": function_name, "AWS_LAMBDA_FUNCTION_VERSION": version}
