"""``relay breaker status [TARGET_ID] | reset TARGET_ID``: read and reset the dispatcher's circuit breakers,
and the quiet a receiver asked for with a Retry-After (which holds a target back whatever its breaker).

Both read the BreakerTable through the dispatcher's own store and transitions (relay.logic.breaker_control),
so what they show and write is exactly what every dispatcher reads. A reset is a conditional, versioned
write: a transition a dispatcher makes meanwhile is never overwritten blindly (the reset re-reads and
retries, and says so).

Exit codes (relay.cli.exit_codes): 1 when a reset kept losing to concurrent changes (nothing written),
or when ``status`` of every target shows a record this release cannot read (a row saying why);
2 when TARGET_ID names several targets (choose with --integration); 3 when it names none, or settings
or DynamoDB fail.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from relay.cli.exit_codes import CommandFailed, ExitCode, NeedsAttention, UsageError
from relay.cli.stack_option import STACK_OPTION
from relay.cli.targets_cmd import _print_table  # one table layout for the relay's commands
from relay.cli.terminal import visible

if TYPE_CHECKING:
    from relay.logic.breaker_control import QuietLift


def register(subparsers: Any) -> None:
    group = subparsers.add_parser(
        "breaker", help="read and reset the dispatcher's per-target circuit breakers"
    )
    sub = group.add_subparsers(dest="breaker_command", metavar="SUBCOMMAND", required=True)

    status = sub.add_parser(
        "status", parents=[STACK_OPTION], help="one target's breaker, or every target's in the TargetsTable"
    )
    status.add_argument("target_id", nargs="?", metavar="TARGET_ID", help="only this target")
    status.add_argument("--integration", metavar="INTEGRATION_ID", help="only this integration")
    status.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="output format (json: one object per line, per target)",
    )
    status.set_defaults(func=_status)

    reset = sub.add_parser(
        "reset",
        parents=[STACK_OPTION],
        help="force a target's breaker closed (zero failures and trips) and lift a Retry-After quiet",
    )
    reset.add_argument("target_id", metavar="TARGET_ID")
    reset.add_argument(
        "--integration", metavar="INTEGRATION_ID", help="the target's integration (needed if several hold it)"
    )
    reset.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    reset.set_defaults(func=_reset)


def _stores() -> tuple[Any, Any, Any, Any]:
    from relay.settings import get_settings
    from relay.wiring import breaker_store, rate_limit_store, target_store

    settings = get_settings()
    targets = target_store(settings, cache_ttl_seconds=0)
    return settings, targets, breaker_store(settings), rate_limit_store(settings)


def _find_target(targets: Any, args: Any) -> Any:
    """The target TARGET_ID (and --integration) names. None there: the command fails (3), as it always
    did; several: a usage error (2), --integration must choose."""
    from relay.errors import AmbiguousTarget, UnknownTarget
    from relay.logic.breaker_control import find_target

    try:
        return find_target(targets, args.target_id, args.integration)
    except UnknownTarget as exc:
        raise CommandFailed(str(exc)) from None
    except AmbiguousTarget as exc:
        raise UsageError(str(exc)) from None


# --- status -----------------------------------------------------------------------------------------
STATUS_COLUMNS = (
    "INTEGRATION",
    "TARGET",
    "NAME",
    "PHASE",
    "FAILS",
    "TRIPS",
    "OPENED",
    "UNTIL",
    "PROBE IN",
    "PROBE",
    "V",
    "LANE",
    "QUIET UNTIL",
)


def _status(args: Any, out: IO[str] | None = None) -> int:
    from relay.logic.breaker_control import breaker_views, known_targets, policy_from, unreadable_view

    out = out or sys.stdout
    settings, targets, breakers, buckets = _stores()
    if args.target_id is not None:  # "" names no target (exit 3); it does not mean all of them
        chosen, unreadable = [_find_target(targets, args)], []
    else:  # "every target" must not hide a record this release cannot read: a row saying why, exit 1
        chosen, bad = known_targets(targets, args.integration)
        unreadable = [unreadable_view(record) for record in bad]
        if args.integration and not chosen and not unreadable:
            raise CommandFailed(f"integration {args.integration} has no targets in the TargetsTable")
    found = breaker_views(breakers, buckets, chosen, time.time(), policy_from(settings))
    views = [v.to_json() for v in found]
    views = sorted(views + unreadable, key=lambda v: (v["integrationId"], v["targetId"]))
    code = ExitCode.ATTENTION if unreadable else ExitCode.OK
    if args.format == "json":
        for doc in views:
            print(json.dumps(doc), file=out)
        return code
    if not views:
        print("no targets in the TargetsTable", file=out)
        return ExitCode.OK
    rows: list[tuple[str, ...]] = [STATUS_COLUMNS]
    rows.extend(_row(v) for v in views)
    _print_table(rows, out)
    return code


def _row(v: dict[str, Any]) -> tuple[str, ...]:
    if v.get("error"):
        unknown = ("?",) * (len(STATUS_COLUMNS) - 3)  # its breaker is judged against a URL not read
        return (v["integrationId"], v["targetId"], v["error"], *unknown)
    until = v["openUntil"] or v["probeLeaseUntil"]
    probe_in = v["secondsUntilProbe"]
    return (
        v["integrationId"],
        v["targetId"],
        v["name"],
        v["phase"],
        str(v["consecutiveFailures"]),
        str(v["trips"]),
        v["openedAt"] or "-",
        until or "-",
        "-" if probe_in is None else f"{probe_in:g}s",
        "claimed" if v["probeClaimed"] else "-",
        str(v["version"]),
        v["lane"],
        v["retryAfterUntil"] or "-",
    )


# --- reset ------------------------------------------------------------------------------------------
def _reset(args: Any, out: IO[str] | None = None) -> int:
    from relay.errors import ResetConflict
    from relay.logic.breaker_control import lift_quiet, policy_from, reset_breaker, view
    from relay.models.breaker import endpoint_digest, target_key

    out = out or sys.stdout
    settings, targets, breakers, buckets = _stores()
    target = _find_target(targets, args)
    try:
        result = reset_breaker(
            breakers,
            target_key(target.integration_id, target.target_id),
            endpoint=endpoint_digest(target.url),
        )
    except ResetConflict as exc:
        raise NeedsAttention(str(exc)) from None
    now, policy = time.time(), policy_from(settings)
    quiet = lift_quiet(breakers, buckets, target, now)
    # The status objects of before and after, their quiet too: the one read, then one kept (if any).
    before = view(target, result.before, now, policy, result.lane, quiet.seen_until).to_json()
    after = view(target, result.after, now, policy, result.lane, quiet.kept_until).to_json()
    if args.format == "json":
        doc = {
            "integrationId": target.integration_id,
            "targetId": target.target_id,
            "written": result.written,
            "attempts": result.attempts,
            "before": before,
            "after": after,
            **quiet.to_json(),
        }
        print(json.dumps(doc), file=out)
        return ExitCode.OK
    rows: list[tuple[str, ...]] = [("", "PHASE", "FAILS", "TRIPS", "UNTIL", "PROBE", "V")]
    for label, v in (("before", before), ("after", after)):
        rows.append(
            (
                label,
                v["phase"],
                str(v["consecutiveFailures"]),
                str(v["trips"]),
                v["openUntil"] or v["probeLeaseUntil"] or "-",
                "claimed" if v["probeClaimed"] else "-",
                str(v["version"]),
            )
        )
    _print_table(rows, out)
    if not result.written:
        print(
            visible(f"breaker of {target.target_id} was closed with no failures: nothing written"), file=out
        )
    else:
        retried = (
            f" (re-read after {result.concurrent_changes} concurrent change(s) by a dispatcher)"
            if result.concurrent_changes
            else ""
        )
        print(visible(f"breaker of {target.target_id} reset to closed{retried}"), file=out)
    _say_quiet(target.target_id, quiet, out)
    return ExitCode.OK


def _say_quiet(target_id: str, quiet: QuietLift, out: IO[str]) -> None:
    """What became of a Retry-After quiet (docs/operations-breaker.md, "Reset")."""
    doc = quiet.to_json()
    if doc["retryAfterLifted"]:
        print(visible(f"Retry-After quiet of {target_id} until {doc['retryAfterLifted']} lifted"), file=out)
    if doc["retryAfterUntil"]:
        until = doc["retryAfterUntil"]
        print(
            visible(f"{target_id} asked for quiet again meanwhile: kept until {until} (Retry-After)"),
            file=out,
        )
