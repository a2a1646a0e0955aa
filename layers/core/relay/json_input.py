"""JSON that comes from outside the relay (files, request and response bodies, decrypted payloads).

``json.loads`` raises RecursionError, not ValueError, for arrays or objects nested deeper than Python's
recursion limit (``'[' * 100000``): code that refuses "not JSON" by catching ValueError would let it
escape as a crash. ``load_json`` makes it one more ValueError. Standard library only: the receiver SDK
uses it.
"""

from __future__ import annotations

import json
from typing import Any

from relay.errors import JsonTooDeep


def json_spellings(containing: str | tuple[str, ...]) -> frozenset[str]:
    """How ``containing`` (a text, or several: the forms one id may be typed in) may stand in a JSON line
    the relay wrote: as it is, or escaped as Python's json escapes a string (quotes, backslashes and
    control characters always; non-ASCII as \\uXXXX or not). A search of written lines for an id looks
    for each spelling, so one read of the objects serves every form; the lines found are parsed and
    compared."""
    texts = (containing,) if isinstance(containing, str) else containing
    return frozenset(
        spelling
        for text in texts
        for spelling in (text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1])
    )


def load_json(text: str | bytes | bytearray, **options: Any) -> Any:
    """``json.loads(text, **options)``, with nesting too deep to parse a ``JsonTooDeep`` (a ValueError)."""
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise JsonTooDeep from None
