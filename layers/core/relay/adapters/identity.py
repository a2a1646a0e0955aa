"""Who runs an operator command, for the audit record of what it changed: the caller's AWS identity
(STS GetCallerIdentity) and the operating-system user, since several people may share one role."""

from __future__ import annotations

import getpass
from typing import Any

from relay.adapters.aws_errors import AWS_ERRORS


def caller_identity(sts: Any) -> str:
    """``arn:aws:sts::1234:assumed-role/ops/alice (os user alice)``; the OS user alone without AWS."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    try:
        arn = str(sts.get_caller_identity()["Arn"])
    except AWS_ERRORS:
        return f"os user {user}"
    return f"{arn} (os user {user})"
