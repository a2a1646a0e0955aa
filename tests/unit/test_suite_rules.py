"""Rules of the test suite that no single test shows (docs/architecture.md, "Tests"): no test skips
itself, and no test sleeps to wait for something. Read from the test sources themselves."""

from __future__ import annotations

import re
from pathlib import Path

from support import ROOT

TESTS = ROOT / "tests"
THIS_FILE = Path(__file__).resolve()
WAITING = TESTS / "support" / "waiting.py"  # wait_until: the one place a sleep waits, on a condition
SKIP = re.compile(r"pytest\.skip\(|pytest\.xfail\(|mark\.skip\b|mark\.skipif\b|mark\.xfail\b|importorskip\(")
SLEEP = re.compile(r"(?<!def )\bsleep\(")
NOT_A_WAIT = "# not a wait:"  # a sleep that is the behaviour under test (a slow endpoint, a busy worker)


def lines_matching(pattern: re.Pattern[str]) -> list[tuple[Path, int, str]]:
    return [
        (path, number, line)
        for path in sorted(TESTS.rglob("*.py"))
        if path.resolve() != THIS_FILE
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]


def test_no_test_skips_itself() -> None:
    # A skipped test asserts nothing, and says so only in a summary line: make it fail instead.
    found = [f"{path.relative_to(ROOT)}:{number}" for path, number, _ in lines_matching(SKIP)]
    assert found == [], f"skips: {found}"


def test_nothing_sleeps_to_wait_for_something() -> None:
    # Wait on a condition with support.waiting.wait_until; a sleep that is itself under test says so.
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path, number, line in lines_matching(SLEEP)
        if path != WAITING and NOT_A_WAIT not in line
    ]
    assert found == [], f"sleeps without '{NOT_A_WAIT} <why>': {found}"


def test_the_rules_see_what_they_look_for() -> None:
    # Control: the patterns match the forms they forbid, so an empty result above means something.
    assert all(SKIP.search(f) for f in ("pytest.skip('x')", "@pytest.mark.skipif(True, reason='')"))
    assert SKIP.search("pytest.importorskip('yaml')") and not SKIP.search("def skipped_records():")
    assert SLEEP.search("time.sleep(3)") and SLEEP.search("await asyncio.sleep(1)")
    assert not SLEEP.search("def sleep(seconds: float) -> None:")
    assert lines_matching(re.compile(r"def wait_until\b")) != []  # the sources are read
