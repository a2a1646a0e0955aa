"""``make bench``: run every benchmark in its own process and write one JSON file with all figures.

Each ``bench/*_bench.py`` (and ``bench/chaos.py``) prints one JSON object as its last line of
standard output. A fresh process per benchmark keeps cold-import figures honest and stops one
benchmark's warm caches from flattering the next.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"


def run_one(script: Path) -> dict[str, object]:
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=BENCH_DIR.parent, timeout=1800
    )
    elapsed = round(time.perf_counter() - started, 1)
    lines = [line for line in completed.stdout.splitlines() if line.strip().startswith("{")]
    if completed.returncode != 0 or not lines:
        return {
            "error": f"exit {completed.returncode}",
            "stderr_tail": completed.stderr[-2000:],
            "seconds": elapsed,
        }
    figures: dict[str, object] = json.loads(lines[-1])
    figures["bench_seconds"] = elapsed
    return figures


def main() -> int:
    scripts = sorted(BENCH_DIR.glob("*_bench.py")) + sorted(BENCH_DIR.glob("chaos.py"))
    results: dict[str, object] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": _cpus(), "platform": platform.platform()},
    }
    failed = False
    for script in scripts:
        name = script.stem.removesuffix("_bench")
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        results[name] = figures = run_one(script)
        failed = failed or "error" in figures
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 1 if failed else 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
