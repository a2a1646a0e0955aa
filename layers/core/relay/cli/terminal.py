"""Text for a terminal: what a sender or Genesys wrote (an event id, a conversation id, a target's name)
reaches the operator's screen in tables, summaries and error lines, and must not split a line, fake
one, or drive the terminal. JSON output needs none of this (json.dumps escapes them)."""

from __future__ import annotations

import re
from collections.abc import Sequence

# C0 and C1 controls (line breaks, ESC), DEL, Unicode line and paragraph separators, bidi controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with each control character escaped as Python writes it (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def visible_lines(text: str) -> str:
    """``text`` with its own line breaks kept and every other control character escaped: a summary of
    several lines, any of which may quote what a sender wrote."""
    return "\n".join(visible(line) for line in text.split("\n"))


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart: the relay's one table layout. Every cell
    is shown escaped (``visible``) here, before it is measured, so that no command's table can print a
    cell raw: a DLQ message's attributes, a target's name or an event id are anyone's to write."""
    cells = [[visible(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
