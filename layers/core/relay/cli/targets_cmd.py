"""``relay targets sync | list | check | enable | disable``: the config sync from a terminal, what it
stored, reachability, and switching a target on or off.

- ``sync`` runs relay.logic.config_sync with the same settings (environment) as ConfigSyncFunction.
- ``list`` prints what the TargetsTable holds, with each target's event filters, rate limit, auth type
  and the rate it may be sent at now (from its bucket in the BreakerTable: the configured limit, or
  less while a 429 cut is in force, or an implicit limit). Secrets are masked, and not even read: only
  whether a secret is referenced shows; the auth type reads none, basic, bearer or oauth2, ``+mtls``
  with a client certificate.
- ``check [TARGET_ID]`` sends one HEAD per target within a total timeout and reports status, latency
  and error, presenting an mTLS target's client certificate, asking an OAuth2 target's token
  endpoint for a token, and building a delivery with the target's secrets, as deliveries do
  (relay.cli.targets_check).
- ``enable TARGET_ID`` / ``disable TARGET_ID`` set the target's ``enabled`` flag (a target disabled after
  a 410 comes back without waiting for its config to change in Genesys; config sync keeps the flag while
  the config is unchanged); the change is audited (an S3 audit record and a log line: who, when).

A target record this release cannot read (a newer release's, a hand edit) is listed as such, with the
fields at fault (never a value), and ``list`` exits 1.

Exit codes (relay.cli.exit_codes): sync 1 when some configs were rejected, list 1 when some target
records are unreadable, check 1 when some targets are unreachable or refused, got no token from their
OAuth2 token endpoint, or have secrets a delivery could not use, enable/disable 1 when the change was
made but its audit record could not be written; a TARGET_ID naming several targets is a usage error
(2); one naming none, settings, Genesys or AWS failing, 3.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from relay.cli.arguments import positive_seconds
from relay.cli.exit_codes import CommandFailed, ExitCode, NeedsAttention
from relay.cli.stack_option import STACK_OPTION
from relay.cli.terminal import format_table, visible
from relay.models.timestamps import iso_utc_from_epoch

if TYPE_CHECKING:
    from relay.models.rate_limit import BucketState


def register(subparsers: Any) -> None:
    targets = subparsers.add_parser(
        "targets", help="sync targets from Genesys Cloud, list, check, enable and disable them"
    )
    sub = targets.add_subparsers(dest="targets_command", metavar="SUBCOMMAND", required=True)

    sync = sub.add_parser(
        "sync",
        parents=[STACK_OPTION],
        help="read the configured integrations from Genesys Cloud and store them",
    )
    sync.set_defaults(func=_sync)

    listing = sub.add_parser(
        "list",
        parents=[STACK_OPTION],
        help="the integrations and targets in the TargetsTable (secrets masked)",
    )
    listing.add_argument("--integration", metavar="INTEGRATION_ID", help="only this integration")
    listing.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="output format (json: one object per line, per integration with its targets)",
    )
    listing.set_defaults(func=_list)

    check = sub.add_parser(
        "check",
        parents=[STACK_OPTION],
        help="HEAD each target (or one; with its client certificate, and an OAuth2 target's token endpoint "
        "asked for a token) and report status, latency and error",
    )
    check.add_argument("target_id", nargs="?", metavar="TARGET_ID", help="only this target")
    check.add_argument(
        "--integration",
        metavar="INTEGRATION_ID",
        help="only this integration's targets (with TARGET_ID: needed if several hold it)",
    )
    check.add_argument(
        "--timeout",
        type=positive_seconds,
        default=3.0,
        metavar="SECONDS",
        help="the longest one check may take: connect, TLS and answer together (default 3)",
    )
    check.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="output format (json: one object per line, per target)",
    )
    check.set_defaults(func=_check)

    for name, enabled, what in (
        ("enable", True, "deliver to the target again (e.g. after a 410 disabled it); audited"),
        (
            "disable",
            False,
            "stop delivering to the target (its tasks are dead-lettered target-disabled); audited",
        ),
    ):
        switch = sub.add_parser(name, parents=[STACK_OPTION], help=what)
        switch.add_argument("target_id", metavar="TARGET_ID")
        switch.add_argument(
            "--integration",
            metavar="INTEGRATION_ID",
            help="the target's integration (needed if several hold it)",
        )
        switch.set_defaults(func=_switch, enabled=enabled)


# --- sync -------------------------------------------------------------------------------------------
def _sync(args: Any, out: IO[str] | None = None) -> int:
    from relay.settings import get_settings
    from relay.wiring.config_sync import run_config_sync

    out = out or sys.stdout
    settings = get_settings()
    if not settings.genesys_open_messaging_integration_ids and not settings.genesys_webhook_integration_ids:
        # The scheduled function only warns (a stack not configured yet); from a terminal it is a slip.
        stack = getattr(args, "stack_name", None)
        if stack:  # the stack's outputs decide, whatever the shell says: setting the variables won't help
            raise CommandFailed(
                f"nothing to sync: the stack {stack} was deployed without integration ids (its parameters "
                "GenesysOpenMessagingIntegrationIds and GenesysWebhookIntegrationIds are empty); the shell's "
                "GENESYS_*_INTEGRATION_IDS do not apply with --stack-name (docs/config-sync.md)"
            )
        raise CommandFailed(
            "nothing to sync: GENESYS_OPEN_MESSAGING_INTEGRATION_IDS and GENESYS_WEBHOOK_INTEGRATION_IDS "
            "are both empty (set them as ConfigSyncFunction has them: docs/config-sync.md, Settings)"
        )
    report = run_config_sync(settings)
    print(json.dumps(report.to_dict()), file=out)
    return ExitCode.ATTENTION if report.rejected else ExitCode.OK


# --- list -------------------------------------------------------------------------------------------
def _entries(integration_id: str | None) -> Iterator[Any]:
    from relay.settings import get_settings
    from relay.wiring import target_store

    store = target_store(get_settings(), cache_ttl_seconds=0)
    ids = [integration_id] if integration_id else store.list_integration_ids()
    for ident in ids:
        entry = store.get(ident)
        if entry is not None:
            yield entry
        elif integration_id:  # asked for by name: an empty table would read as "it has no targets"
            raise CommandFailed(f"integration {integration_id} is not in the TargetsTable")


def _masked(name: str | None) -> str | None:
    from relay.models.targets import CREDENTIAL_MASK

    return CREDENTIAL_MASK if name else None


def shown_url(url: str) -> str:
    """A target's URL for display (relay.models.targets.masked_url: tokens in its query masked)."""
    from relay.models.targets import masked_url

    return masked_url(url)


def auth_type(target: Any) -> str:
    """How the relay authenticates to the target: none, basic, bearer or oauth2, and ``+mtls`` when it
    presents a client certificate. Never a secret."""
    kind: str = target.security.type.value
    return f"{kind}+mtls" if target.security.client_certificate_name else kind


def target_view(
    target: Any, bucket: BucketState | None = None, *, now: float | None = None
) -> dict[str, Any]:
    """A stored target for display: secret references masked, header values left out; with its bucket
    (``None``: not read, so the rate it may be sent at now is unknown)."""
    oauth2 = target.security.oauth2
    return {
        "integrationId": target.integration_id,
        "targetId": target.target_id,
        "name": target.name,
        "enabled": target.enabled,
        "method": target.method,
        "url": shown_url(target.url),
        "headers": sorted(target.headers),
        "security": target.security.type.value,
        "authType": auth_type(target),
        "auth": _masked(target.security.secret_name),
        "oauth2": _oauth2_view(oauth2) if oauth2 else None,
        "clientCertificate": _masked(target.security.client_certificate_name),
        "signingSecret": _masked(target.signing_secret_name),
        "encryptionKey": _masked(target.encryption_key_name),
        "filters": target.filters.model_dump(mode="json", by_alias=True, exclude_none=True),
        "rateLimit": (
            {"perSecond": target.rate_limit.per_second, "burst": target.rate_limit.capacity}
            if target.rate_limit is not None
            else None
        ),
        **_rate_now(target, bucket, now),
        # How it is delivered: an operator confirms here that a config change took (ordering above all)
        "ordering": target.ordering.value,
        "onExhausted": target.on_exhausted.value,
        "retryMatrix": target.retry_matrix.model_dump(mode="json", by_alias=True),
        "connectTimeoutSeconds": target.connect_timeout_seconds,  # null: the dispatcher's default
        "readTimeoutSeconds": target.read_timeout_seconds,
        "version": target.version,
        "syncedAt": target.synced_at,
    }


def _oauth2_view(oauth2: Any) -> dict[str, Any]:
    """The token endpoint and client are configuration, not secrets (the client secret is ``auth``), but
    the token URL's query may carry one, as a target URL's may: masked the same way."""
    view: dict[str, Any] = oauth2.model_dump(mode="json", by_alias=True, exclude_none=True)
    view["tokenUrl"] = shown_url(oauth2.token_url)
    return view


def _rate_now(target: Any, bucket: BucketState | None, now: float | None) -> dict[str, Any]:
    """``effectiveRate`` (requests per second now; None: unlimited or unknown), ``rateState``
    (``configured``, ``adaptive``: a 429 cut or an implicit limit in force, ``unlimited``, ``unknown``)
    and ``retryAfterUntil`` (a Retry-After floor still ahead)."""
    from relay.logic.token_bucket import AimdPolicy, current_rate

    if bucket is None or now is None:
        return {"effectiveRate": None, "rateState": "unknown", "retryAfterUntil": None}
    rate = current_rate(bucket, target.rate_limit, now, AimdPolicy())
    configured = target.rate_limit.per_second if target.rate_limit is not None else None
    if rate is None:
        state = "unlimited"
    elif bucket.cut_rate is not None and (configured is None or rate < configured):
        state = "adaptive"
    else:
        state = "configured"
    floor = bucket.floor_until if bucket.floor_until > now else None
    return {
        "effectiveRate": round(rate, 2) if rate is not None else None,
        "rateState": state,
        # Spelled as `relay breaker status` spells it (…Z), so the two can be compared as text
        "retryAfterUntil": iso_utc_from_epoch(floor, "seconds") if floor else None,
    }


def _buckets(targets: list[Any]) -> tuple[dict[str, BucketState], float | None]:
    """Each target's bucket as stored (absent: a full bucket), read once; ``now`` None when the
    BreakerTable is not configured here (the rates are then unknown)."""
    import time

    from relay.models.rate_limit import BucketState, rate_key
    from relay.settings import get_settings
    from relay.wiring import rate_limit_store

    settings = get_settings()
    if not settings.breaker_table:
        return {}, None
    store = rate_limit_store(settings)
    keys = {rate_key(t.integration_id, t.target_id) for t in targets}
    return {key: store.load(key) or BucketState() for key in keys}, time.time()


def _rate_cell(view: dict[str, Any]) -> str:
    """The rate a target may be sent at now, and a Retry-After quiet still ahead: until then it is sent
    nothing, whatever its rate (a receiver may ask for up to 12 h)."""
    if view["rateState"] in ("unknown", "unlimited"):
        cell = str(view["rateState"])
    else:
        cell = f"{view['effectiveRate']:g}/s"
        cell = f"{cell} (429: cut)" if view["rateState"] == "adaptive" else cell
    quiet = view.get("retryAfterUntil")
    return f"{cell}; quiet until {quiet} (Retry-After)" if quiet else cell


def _list(args: Any, out: IO[str] | None = None) -> int:
    from relay.models.rate_limit import rate_key

    out = out or sys.stdout
    entries = list(_entries(args.integration))
    buckets, now = _buckets([t for entry in entries for t in entry.targets])

    def view(target: Any) -> dict[str, Any]:
        bucket = buckets.get(rate_key(target.integration_id, target.target_id))
        return target_view(target, bucket, now=now)

    if args.format == "json":
        for entry in entries:
            integration = entry.integration
            doc = {
                "integrationId": integration.integration_id,
                "name": integration.name,
                "enabled": integration.enabled,
                "signatureSecret": _masked(integration.signature_secret_name),
                "version": integration.version,
                "syncedAt": integration.synced_at,
                "targets": [view(t) for t in entry.targets],
                "unreadableTargets": [_unreadable_view(bad) for _, bad in sorted(entry.unreadable.items())],
            }
            print(json.dumps(doc), file=out)
        return _list_code(entries)
    rows = [
        (
            "INTEGRATION",
            "TARGET",
            "NAME",
            "ON",
            "METHOD",
            "URL",
            "SECURITY",
            "SIGN",
            "ENCRYPT",
            "FILTERS",
            "LIMIT",
            "RATE NOW",
            "V",
            "SYNCED",
        )
    ]
    for entry in entries:
        for target, t in ((target, view(target)) for target in entry.targets):
            rows.append(
                (
                    t["integrationId"],
                    t["targetId"],
                    t["name"],
                    "yes" if t["enabled"] else "no",
                    t["method"],
                    t["url"],
                    f"{t['authType']} {t['auth'] or ''}".strip(),
                    t["signingSecret"] or "-",
                    t["encryptionKey"] or "-",
                    target.filters.describe(),
                    target.rate_limit.describe() if target.rate_limit is not None else "-",
                    _rate_cell(t),
                    str(t["version"]),
                    t["syncedAt"] or "-",
                )
            )
        for _, bad in sorted(entry.unreadable.items()):
            version = "-" if bad.version is None else str(bad.version)
            unknown = ("?", "?", "?", "?", "?", "?", "?", "?", "?")
            rows.append((bad.integration_id, bad.target_id, bad.why, *unknown, version, "-"))
    _print_table(rows, out)
    return _list_code(entries)


def _unreadable_view(bad: Any) -> dict[str, Any]:
    """A target record that cannot be read: its ids, why (fields at fault, no value) and its version."""
    return {
        "integrationId": bad.integration_id,
        "targetId": bad.target_id,
        "error": bad.why,
        "version": bad.version,
    }


def _list_code(entries: list[Any]) -> int:
    """1 (needs attention) when a target record cannot be read: its tasks are retried, not delivered."""
    return ExitCode.ATTENTION if any(entry.unreadable for entry in entries) else ExitCode.OK


# --- check (relay.cli.targets_check) ---------------------------------------------------------------
def _check(args: Any, out: IO[str] | None = None) -> int:
    from relay.cli.breaker_cmd import _find_target
    from relay.cli.targets_check import check_targets, needs_attention, print_results, unreadable_result
    from relay.settings import get_settings
    from relay.wiring import target_store

    out = out or sys.stdout
    settings = get_settings()
    results = []
    if args.target_id is not None:  # one target, as every command names one (several: --integration)
        targets = [_find_target(target_store(settings, cache_ttl_seconds=0), args)]
    else:
        entries = list(_entries(args.integration))
        targets = [t for entry in entries for t in entry.targets]
        # A record this release cannot read is not checked, but shown: "every target" must not hide it.
        results += [unreadable_result(bad) for entry in entries for bad in entry.unreadable.values()]
    results += check_targets(settings, targets, timeout=args.timeout)
    results.sort(key=lambda r: (r["integrationId"], r["targetId"]))
    print_results(results, out, as_json=args.format == "json")
    return ExitCode.ATTENTION if needs_attention(results) else ExitCode.OK


# --- enable / disable -----------------------------------------------------------------------------
def _switch(args: Any, out: IO[str] | None = None) -> int:
    import uuid

    from relay.adapters.target_store import DISABLED_RECHECK_SECONDS
    from relay.cli.breaker_cmd import _find_target
    from relay.logic.deliveries.operator import switch_target
    from relay.logic.dispatch.fifo_settle import ENABLE_RECHECK_SECONDS, holds_while_disabled
    from relay.settings import get_settings
    from relay.wiring import target_store
    from relay.wiring.operator import actor, audit_sink

    out = out or sys.stdout
    settings = get_settings()
    audit = audit_sink(settings)
    store = target_store(settings, cache_ttl_seconds=0)
    target = _find_target(store, args)
    state = "enabled" if args.enabled else "disabled"
    named = f"target {target.target_id} ({target.name})"
    if target.enabled == args.enabled:
        print(visible(f"{named} is already {state}: nothing changed"), file=out)
        return ExitCode.OK
    audited = switch_target(
        store,
        audit,
        target,
        enabled=args.enabled,
        actor=actor(settings),
        now=datetime.now(UTC),
        operation_id=uuid.uuid4().hex,
    )
    if audited is None:  # changed by another writer since the read above
        print(visible(f"{named} is already {state}: nothing changed"), file=out)
        return ExitCode.OK
    # Dispatchers read targets through a per-container cache (relay.adapters.target_store).
    reaches = (
        f"dispatchers stop sending to it within {settings.target_cache_ttl_seconds:g} s"
        if not args.enabled
        else f"dispatchers send to it again within about {DISABLED_RECHECK_SECONDS:g} s"
    )
    if holds_while_disabled(target):
        # Its conversations wait in the ordered queue, each looked at again on its own clock.
        reaches += (
            "; its conversations wait, in order, until it is enabled"
            if not args.enabled
            else "; the conversations it held resume at their next look, within about "
            f"{ENABLE_RECHECK_SECONDS:g} s (later for any held long enough to near the queue's "
            "redrive backstop)"
        )
    print(visible(f"{named} {state}; {reaches}; audited as {audited.records[0]['actor']}"), file=out)
    if audited.unwritten:
        raise NeedsAttention(
            f"target {state}, but its audit record could not be written (it is in the log output)"
        )
    return ExitCode.OK


def _print_table(rows: Sequence[tuple[str, ...]], out: IO[str]) -> None:
    print(format_table(rows), file=out)
