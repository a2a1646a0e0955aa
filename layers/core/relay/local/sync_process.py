"""The local stack's config-sync process: ``relay targets sync`` in a process started before its
settings exist.

Importing the Genesys SDK takes seconds (6,700 modules). Started first, the process spends them while the
stack starts moto, creates its resources and starts the receivers and the fake Genesys; it then reads
the run's environment (one JSON object on stdin) and runs the command as ``relay targets sync`` would.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    import PureCloudPlatformClientV2  # noqa: F401 - the seconds this process is started early for

    line = sys.stdin.readline()
    if not line:
        return 0  # the stack stopped before it needed a sync
    os.environ.update(json.loads(line))
    sys.argv = ["relay", "targets", "sync"]
    from relay.__main__ import main as relay_main

    return relay_main()


if __name__ == "__main__":
    sys.exit(main())
