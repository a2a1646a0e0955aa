"""``relay local serve``, ``relay local demo`` and ``relay local put-event``: the whole relay on this machine.

stdout carries only the command's JSON lines (serve: one ready line; demo: one final tally; put-event:
PutEvents' answer), so a script can read them; the functions' own output (powertools logs and EMF
metrics, which Lambda would send to CloudWatch) goes to stderr for serve and to a log file for demo.

Exit codes (relay.cli.exit_codes): demo 1 when not every event was delivered, put-event 1 when an entry
was refused; 2 for a fixtures or event file that cannot be read or is not valid, or no API to send to;
3 when the stack cannot start or the API cannot be reached. serve stopped by Ctrl-C/SIGTERM exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from relay.cli.arguments import (
    file_or_stdin,
    file_path,
    per_second,
    port,
    positive_int,
    positive_seconds,
)
from relay.cli.exit_codes import CommandFailed, ExitCode, UsageError
from relay.cli.logs import stdout_log_handlers

if TYPE_CHECKING:
    from pydantic import ValidationError
    from requests import Response

    from relay.local.fixtures import Fixtures
    from relay.local.stack import LocalStack

API_ENV = "RELAY_LOCAL_API"  # where put-event sends when --api is not given


def register(subparsers: Any) -> None:
    local = subparsers.add_parser("local", help="run the relay on this machine (moto, local API, poller)")
    commands = local.add_subparsers(dest="local_command", metavar="SUBCOMMAND", required=True)

    serve = commands.add_parser("serve", help="run the local stack in the foreground until SIGINT/SIGTERM")
    serve.add_argument(
        "--fixtures", type=file_path, default=None, help="fixtures file (default events/fixtures/local.json)"
    )
    serve.add_argument("--port", type=port, default=0, help="API port on 127.0.0.1 (default: a free port)")
    serve.set_defaults(func=serve_command)

    demo = commands.add_parser(
        "demo", help="send signed sample events through the local stack and tally them"
    )
    demo.add_argument(
        "--fixtures", type=file_path, default=None, help="fixtures file (default events/fixtures/local.json)"
    )
    demo.add_argument("--events", type=positive_int, default=30, help="how many events to send (default 30)")
    demo.add_argument(
        "--rate",
        type=per_second,
        default=10.0,
        help="events per second (default 10, live-chat pace: the latency figures are measured at it)",
    )
    demo.add_argument(
        "--timeout", type=positive_seconds, default=120.0, help="seconds to wait for the queue to drain"
    )
    demo.add_argument(
        "--function-logs", type=file_path, default=None, help="where the functions' output goes"
    )
    demo.set_defaults(func=demo_command)

    put_event = commands.add_parser(
        "put-event",
        help="send Genesys EventBridge events to a running `relay local serve` (PutEvents)",
        description=(
            "FILE holds an EventBridge event (like events/eventbridge_*.json), a list of them, or a "
            'PutEvents request {"Entries": [...]}. Prints PutEvents\' answer; exit 0 when every entry '
            "was accepted."
        ),
    )
    put_event.add_argument("file", type=file_path, help="the event(s) to send; - for stdin")
    put_event.add_argument("--api", default=None, help=f"the API URL `serve` printed (default: ${API_ENV})")
    put_event.add_argument("--event-bus", default=None, help="EventBusName for events given as events")
    put_event.set_defaults(func=put_event_command)


def _emit(stream: IO[str], doc: dict[str, Any]) -> None:
    stream.write(json.dumps(doc) + "\n")
    stream.flush()


def _divert_stdout(to: IO[str]) -> IO[str]:
    """Send everything else written to stdout (handler logs, EMF) to ``to``; return the real stdout."""
    real = sys.stdout
    sys.stdout = to
    for handler in stdout_log_handlers(real):
        handler.setStream(to)
    return real


def _fixtures(path: Path | None) -> Fixtures:
    """The fixtures file, read before anything starts: a missing file is an OSError (the boundary names
    it), one that is not valid fixtures a usage error, a key no field has a warning. Only locations and
    pydantic's messages are shown, never the values: a fixtures file holds secrets."""
    from pydantic import ValidationError

    from relay.local.fixtures import DEFAULT_FIXTURES, Fixtures

    where = path or DEFAULT_FIXTURES
    try:
        fixtures = Fixtures.load(where)
    except ValidationError as exc:
        raise UsageError(f"{where}: not a valid fixtures file: {_problems(exc)}") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise UsageError(f"{where}: not a valid fixtures file: {exc}") from None
    from relay.local.fake_genesys import config_problems

    # Config sync's own rules too, now: found only once the stack ran it, they cost a start each.
    if problems := config_problems(fixtures):
        refused = "; ".join(problems)
        raise UsageError(f"{where}: not a valid fixtures file: config sync would refuse {refused}")
    for key in fixtures.unknown_keys():  # a note to the person who wrote the file, not a log record
        print(f"{where}: {key} is not a fixtures field; ignored", file=sys.stderr)
    return fixtures


# Enough to fix a file in one go; a file wrong everywhere is named by its first few problems.
_PROBLEMS_SHOWN = 10


def _problems(exc: ValidationError) -> str:
    """Each problem of a refused fixtures file (a pydantic ValidationError), located: every one, so
    fixing the file takes one run, not one run per mistake."""
    from relay.models.webhook_config import safe_errors

    text = safe_errors(exc, whole="(top level)", most=_PROBLEMS_SHOWN)
    return text if exc.error_count() == 1 else f"{text} ({exc.error_count()} problems)"


def _fixtures_refused(path: Path | None, exc: Exception) -> UsageError:
    """Config sync refused part of the fixtures file: the file is wrong (2), like any other check of it."""
    from relay.local.fixtures import DEFAULT_FIXTURES

    return UsageError(f"{path or DEFAULT_FIXTURES}: not a valid fixtures file: {exc}")


# Settings the stack's functions take from this command's environment, over their template's: they
# otherwise see only that and the local mode's (moto, loopback targets). The docs tell a local user to
# export these (docs/local-stack.md): a loopback HTTPS receiver's CA, and a block hold short enough to
# watch a blocked conversation move on (the OrderedBlockHoldSeconds parameter on AWS).
CALLER_SETTINGS = ("RELAY_LOCAL_TRUSTED_CAS", "ORDERED_BLOCK_HOLD_SECONDS")


def _caller_settings() -> dict[str, str]:
    return {name: os.environ[name] for name in CALLER_SETTINGS if name in os.environ}


def _stack_failed(exc: Exception) -> CommandFailed:
    return CommandFailed(f"the local stack did not start: {exc}")


# How long a stopping serve lets the events it accepted be delivered (retries due later are dropped).
STOP_SETTLE_SECONDS = 10.0
# What a queue's counts (LocalStack.pending()) mean once its poller has stopped: a message not visible
# then is one whose delivery failed and that waits for its retry.
_LEFT_IN_QUEUE = {"visible": "visible", "in_flight": "waiting_for_retry", "delayed": "delayed"}
# A stop's last line when what was accepted has all been handled (in the settle wait or after it).
_NOTHING_LEFT = "stopping: every invocation finished, nothing left in the queues"


def _stop_and_report_what_is_left(stack: LocalStack) -> None:
    """The pollers stop receiving and wait for the invocations running (a delivery under way is
    finished, not cut); then what is still in the queues, which goes with them, is named on stderr.
    Only then: named before that wait, the invocations in flight would count as dropped, and most of
    them go on to deliver."""
    running = sum(counts["invocations"] for counts in stack.pending().values())
    if running:
        print(
            f"relay local serve: stopping: waiting for {running} running invocation(s) to finish",
            file=sys.stderr,
        )
    stack.stop_pollers()
    left = {
        queue: {label: counts[key] for key, label in _LEFT_IN_QUEUE.items()}
        for queue, counts in stack.pending().items()
        if any(counts[key] for key in _LEFT_IN_QUEUE)
    }
    if left:
        print(
            f"relay local serve: stopping with deliveries left undelivered (dropped with the stack's "
            f"queues): {json.dumps(left)}",
            file=sys.stderr,
        )
    else:
        print(f"relay local serve: {_NOTHING_LEFT}", file=sys.stderr)


def serve_command(args: argparse.Namespace) -> int:
    _fixtures(args.fixtures)
    out = _divert_stdout(sys.stderr)
    stop, hurry = threading.Event(), threading.Event()
    ready = False

    def stop_then_hurry(*_: object) -> None:
        (hurry if stop.is_set() else stop).set()  # a second signal: stop waiting for the queues to settle

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop_then_hurry)

    from relay.errors import FixturesRejected, LocalStackError, RelayError
    from relay.local.stack import LocalStack

    try:
        # Each dispatcher in containers of its own (worker processes), as in AWS: in this process the
        # event source's concurrent batches would queue behind one another (one module, one
        # container), and a slow target would hold the fast lane until it is measured and moved. Its demo
        # receivers keep no request: nothing reads them here, and kept they grew by ~7 kB a delivery.
        with LocalStack(
            args.fixtures,
            args.port,
            environment=_caller_settings(),
            dispatcher_workers=True,
            keep_received=False,
        ) as stack:
            stack.warm_up_dispatchers()
            if stop.is_set():  # the signal came while the stack started: it never was ready
                print("relay local serve: interrupted before it was ready; stopping", file=sys.stderr)
                return ExitCode.INTERRUPTED
            _emit(out, {"ready": True, **stack.describe()})
            ready = True
            while not stop.wait(1.0):
                pass
            # Accept nothing more (requests in flight finish), then let what was accepted be delivered:
            # stopping the pollers first answered 202 to events nothing would deliver any more.
            print("relay local serve: stopping: no longer accepting events", file=sys.stderr)
            if stack.api is not None:
                stack.api.stop()
            if stack.wait_settled(STOP_SETTLE_SECONDS, give_up=hurry):
                print(f"relay local serve: {_NOTHING_LEFT}", file=sys.stderr)
            else:
                if hurry.is_set():
                    print(
                        "relay local serve: second signal: no longer waiting for the queues to settle",
                        file=sys.stderr,
                    )
                _stop_and_report_what_is_left(stack)
    except FixturesRejected as exc:
        raise _fixtures_refused(args.fixtures, exc) from None
    except (RelayError, OSError) as exc:
        if stop.is_set() and not ready:
            # Stopped while it started: a step that failed on the way down does not change what the
            # user asked for (the error is still shown).
            print(
                f"relay local serve: interrupted before it was ready ({type(exc).__name__}: {exc})",
                file=sys.stderr,
            )
            return ExitCode.INTERRUPTED
        if isinstance(exc, LocalStackError):
            raise _stack_failed(exc) from None
        raise
    return ExitCode.OK  # stopping is what Ctrl-C and SIGTERM are for here


def demo_command(args: argparse.Namespace) -> int:
    fixtures = _fixtures(args.fixtures)
    if not any(target.enabled for integration in fixtures.integrations for target in integration.targets):
        raise UsageError("the fixtures have no integration with an enabled target to send events to")
    if args.function_logs is None:
        handle, name = tempfile.mkstemp(prefix="relay-demo-functions-", suffix=".log")
        log_file: IO[str] = open(handle, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        log_path = Path(name)
    else:
        log_path = args.function_logs
        log_file = log_path.open("w", encoding="utf-8")
    out = _divert_stdout(log_file)
    print(f"relay local demo: function output goes to {log_path}", file=sys.stderr)

    from relay.errors import FixturesRejected, LocalStackError
    from relay.local.demo import run_demo
    from relay.local.stack import LocalStack

    try:
        # Dispatchers in worker processes, warm before the first event, as serve runs them: in one
        # process the event source's concurrent batches took turns, and at 10 events/s an invocation
        # just over 100 ms (a busy machine) queued every later one behind it (p50 250-440 ms).
        with LocalStack(
            args.fixtures, function_output=log_file, environment=_caller_settings(), dispatcher_workers=True
        ) as stack:
            stack.warm_up_dispatchers()
            print(f"relay local demo: stack up, sending {args.events} events", file=sys.stderr)
            report = run_demo(stack, args.events, timeout_seconds=args.timeout, rate=args.rate)
    except FixturesRejected as exc:
        raise _fixtures_refused(args.fixtures, exc) from None
    except LocalStackError as exc:
        raise _stack_failed(exc) from None
    finally:
        # Left open: threads that outlive the stack by a moment may still log into it.
        log_file.flush()
    if report.ok and args.function_logs is None:
        # A run that went well leaves no temporary file behind (a run per `make test` piled them up);
        # one that did not keeps its log for reading. --function-logs FILE always keeps it.
        log_path.unlink(missing_ok=True)
        print(f"relay local demo: all delivered; {log_path} removed", file=sys.stderr)
    _emit(out, report.to_dict())
    return ExitCode.OK if report.ok else ExitCode.ATTENTION


def put_event_command(args: argparse.Namespace) -> int:
    import requests

    from relay.json_input import load_json
    from relay.local.eventbridge import PUT_EVENTS_PATH
    from relay.settings import environment_variable

    api = args.api or environment_variable(API_ENV)
    if not api:
        raise UsageError(f"no API: pass --api <the api URL serve printed> or set {API_ENV}")
    try:
        text = file_or_stdin(args.file).decode("utf-8-sig")  # a BOM is no content
        requests_to_send = put_events_requests(load_json(text), args.event_bus)
    except ValueError as exc:  # not JSON (or not UTF-8), or not events
        raise UsageError(f"{args.file}: {exc}") from None
    # One answer for the whole file, an entry per event in its order: a request refused whole (over
    # PutEvents' limits, say) fails each of its entries with the refusal, and the others still go.
    merged: dict[str, Any] = {"FailedEntryCount": 0, "Entries": []}
    for request in requests_to_send:
        try:
            response = requests.post(f"{api.rstrip('/')}{PUT_EVENTS_PATH}", json=request, timeout=30)
        except (
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL,
        ):
            raise UsageError(
                f"--api {api}: not an http URL (the api URL `relay local serve` printed)"
            ) from None
        except requests.RequestException as exc:
            raise CommandFailed(f"cannot reach {api}: {type(exc).__name__}") from None
        answer = _put_events_answer(response, api)
        if "Entries" in answer:
            merged["FailedEntryCount"] += int(answer.get("FailedEntryCount", 0))
            merged["Entries"] += answer["Entries"]
            continue
        refusal = {"ErrorCode": str(answer["__type"]), "ErrorMessage": str(answer.get("message", ""))}
        merged["FailedEntryCount"] += len(request["Entries"])
        merged["Entries"] += [dict(refusal) for _ in request["Entries"]]
    _emit(sys.stdout, merged)
    return ExitCode.OK if merged["FailedEntryCount"] == 0 else ExitCode.ATTENTION


def _put_events_answer(response: Response, api: str) -> dict[str, Any]:
    """PutEvents' answer: its entries (2xx), or its refusal of the whole request (4xx with ``__type``).
    Anything else is not the local stack's PutEvents (a wrong --api): the command could not run."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        if response.ok and isinstance(answer.get("Entries"), list):
            return answer
        if not response.ok and isinstance(answer.get("__type"), str):
            return answer
    raise CommandFailed(
        f"{api} did not answer as the local stack's PutEvents (HTTP {response.status_code}): "
        "pass the api URL `relay local serve` printed"
    )


_EVENT_FIELDS = {"source": "Source", "detail-type": "DetailType", "detail": "Detail", "time": "Time"}


def _is_event(document: Any) -> bool:
    return isinstance(document, dict) and {"source", "detail-type", "detail"} <= set(document)


def _entry(event: Any, event_bus: str | None) -> Any:
    """The PutEvents entry of an EventBridge event (of what it has, when it is not one; a value that
    is no JSON object goes as it is, for PutEvents to refuse as no entry rather than as one without
    a Source)."""
    if not isinstance(event, dict):
        return event
    entry: dict[str, Any] = {
        key: event[name] for name, key in _EVENT_FIELDS.items() if event.get(name) is not None
    }
    if "Detail" in entry:
        # Not ASCII-escaped: an emoji stays 4 bytes (escaped, 12), and entries are sized in bytes.
        entry["Detail"] = json.dumps(entry["Detail"], ensure_ascii=False)
    if not entry.get("Time"):  # "time": "" is no time, as EventBridge reads it
        entry.pop("Time", None)
    entry["Resources"] = event.get("resources", [])
    if event_bus:
        entry["EventBusName"] = event_bus
    return entry


def put_events_requests(document: Any, event_bus: str | None = None) -> list[dict[str, Any]]:
    """PutEvents requests from a file's content: a request as it is, or EventBridge events as entries,
    at most 10 and 256 KB of them to a request (PutEvents refuses more).

    An event's ``id`` is not kept: EventBridge gives every entry a new one (PutEvents' ``EventId``).
    ``ValueError`` for content that is neither, or holds no event (PutEvents would refuse it whole).
    """
    from relay.local.eventbridge import MAX_ENTRIES, MAX_ENTRIES_BYTES, entry_size

    if isinstance(document, dict) and "Entries" in document:
        if document["Entries"] == []:
            raise ValueError('holds no events: its "Entries" is empty')
        return [document]
    if isinstance(document, list):
        if not document:
            raise ValueError("holds no events: the list is empty")
        events = document
    elif _is_event(document):
        events = [document]
    else:
        raise ValueError('expected an EventBridge event (source, detail-type, detail) or {"Entries": [...]}')
    # A list element that is not an event goes as the entry it makes: PutEvents fails that entry in
    # its place, as it would in a request, and the others still go.
    entries = [_entry(event, event_bus) for event in events]
    # Requests as full as PutEvents takes: ten entries, 256 KB of them (an entry over it goes alone,
    # and is refused by itself).
    batches: list[list[Any]] = []
    size = 0
    for entry in entries:
        entry_bytes = entry_size(entry)
        if not batches or len(batches[-1]) == MAX_ENTRIES or size + entry_bytes > MAX_ENTRIES_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(entry)
        size += entry_bytes
    return [{"Entries": batch} for batch in batches]
