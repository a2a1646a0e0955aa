"""The --save file of ``relay dlq discard`` (``LetterFile``) on a real file system: a line it reports
saved stays in the file, whatever another run appending to the same file does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from relay.adapters.letter_file import LetterFile

FAILING_RUN = """
import os, resource, sys
from relay.adapters.letter_file import LetterFile
path, stop = sys.argv[1], sys.argv[2]
limit = os.path.getsize(path)  # its file cannot grow: a full disk, a quota
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
copies = LetterFile(path)
print("ready", flush=True)
while not os.path.exists(stop):
    saved, why = copies.append(['{"body":"' + "x" * 200 + '"}'])
    assert saved == 0 and why, (saved, why)
"""


def test_a_run_that_cannot_write_never_cuts_off_the_lines_another_run_saved(tmp_path: Path) -> None:
    # Given two discards saving to one file, one of which cannot write a line (it cuts its part back)
    path = tmp_path / "discarded.jsonl"
    path.write_text('{"messageId":"earlier"}\n')
    path.chmod(0o600)
    stop = tmp_path / "stop"
    failing = subprocess.Popen(
        [sys.executable, "-c", FAILING_RUN, str(path), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert failing.stdout is not None and failing.stdout.readline() == "ready\n"

        # When the other saves its letters' lines meanwhile (each counted only once on disk)
        copies = LetterFile(str(path))
        try:
            for number in range(1500):
                assert copies.append([json.dumps({"messageId": f"m-{number}"})]) == (1, None)
        finally:
            copies.close()
    finally:
        stop.touch()
        failing.wait(timeout=60)

    # Then every line it reported saved is still in the file, whole
    assert failing.returncode == 0
    lines = [json.loads(line)["messageId"] for line in path.read_text().splitlines()]
    assert lines == ["earlier"] + [f"m-{number}" for number in range(1500)]
