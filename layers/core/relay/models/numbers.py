"""Numbers in a target's configuration. pydantic's lax mode reads ``true`` as 1: a typo in
``"perSecond": true`` would become a limit of one request a second instead of a refusal."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


ConfigInt = Annotated[int, BeforeValidator(_not_a_boolean)]
ConfigFloat = Annotated[float, BeforeValidator(_not_a_boolean)]
