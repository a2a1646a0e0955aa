"""Text for a terminal: what a sender or Genesys wrote (an event id, a conversation id, a target's name)
reaches the operator's screen in tables, summaries and error lines, and must not split a line, fake
one, or drive the terminal. JSON output needs none of this (json.dumps escapes them)."""

from __future__ import annotations

import re

# C0 and C1 controls (line breaks, ESC), DEL, Unicode line and paragraph separators, bidi controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with each control character escaped as Python writes it (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)
