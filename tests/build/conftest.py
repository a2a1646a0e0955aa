"""Print the figures tests/build records (cold imports, unzipped sizes) at the end of the run.

They travel as each test's user_properties, so they reach this summary from pytest-xdist workers too.
"""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = [
        (name, value)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call" and "tests/build/" in getattr(report, "nodeid", "")
        for name, value in report.user_properties
    ]
    if figures:
        terminalreporter.section("built artifacts (tests/build)")
        for name, value in sorted(figures):
            terminalreporter.write_line(f"{name}: {value}")
