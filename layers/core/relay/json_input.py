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


def load_json(text: str | bytes | bytearray, **options: Any) -> Any:
    """``json.loads(text, **options)``, with nesting too deep to parse a ``JsonTooDeep`` (a ValueError)."""
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise JsonTooDeep from None
