"""``relay local serve`` and ``relay local demo``: the whole relay on this machine.

stdout carries only the command's JSON lines (serve: one ready line; demo: one final tally), so a
script can read them; the functions' own output (powertools logs and EMF metrics, which Lambda would
send to CloudWatch) goes to stderr for serve and to a log file for demo.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any


def register(subparsers: Any) -> None:
    local = subparsers.add_parser("local", help="run the relay on this machine (moto, local API, poller)")
    commands = local.add_subparsers(dest="local_command", required=True)

    serve = commands.add_parser("serve", help="run the local stack in the foreground until SIGINT/SIGTERM")
    serve.add_argument(
        "--fixtures", type=Path, default=None, help="fixtures file (default events/fixtures/local.json)"
    )
    serve.add_argument("--port", type=int, default=0, help="API port on 127.0.0.1 (default: a free port)")
    serve.set_defaults(func=serve_command)

    demo = commands.add_parser(
        "demo", help="send signed sample events through the local stack and tally them"
    )
    demo.add_argument(
        "--fixtures", type=Path, default=None, help="fixtures file (default events/fixtures/local.json)"
    )
    demo.add_argument("--events", type=int, default=30, help="how many events to send (default 30)")
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the queue to drain")
    demo.add_argument("--function-logs", type=Path, default=None, help="where the functions' output goes")
    demo.set_defaults(func=demo_command)


def _emit(stream: IO[str], doc: dict[str, Any]) -> None:
    stream.write(json.dumps(doc) + "\n")
    stream.flush()


def _divert_stdout(to: IO[str]) -> IO[str]:
    """Send everything else written to stdout (handler logs, EMF) to ``to``; return the real stdout."""
    real = sys.stdout
    sys.stdout = to
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and handler.stream is real:
                handler.setStream(to)
    return real


def serve_command(args: argparse.Namespace) -> int:
    out = _divert_stdout(sys.stderr)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    from relay.local.stack import LocalStack

    with LocalStack(args.fixtures, args.port) as stack:
        _emit(out, {"ready": True, **stack.describe()})
        while not stop.wait(1.0):
            pass
        print("relay local serve: stopping", file=sys.stderr)
    return 0


def demo_command(args: argparse.Namespace) -> int:
    if args.function_logs is None:
        handle, name = tempfile.mkstemp(prefix="relay-demo-functions-", suffix=".log")
        log_file: IO[str] = open(handle, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        log_path = Path(name)
    else:
        log_path = args.function_logs
        log_file = log_path.open("w", encoding="utf-8")
    out = _divert_stdout(log_file)
    print(f"relay local demo: function output goes to {log_path}", file=sys.stderr)

    from relay.local.demo import run_demo
    from relay.local.stack import LocalStack

    try:
        with LocalStack(args.fixtures) as stack:
            print(f"relay local demo: stack up, sending {args.events} events", file=sys.stderr)
            report = run_demo(stack, args.events, timeout_seconds=args.timeout)
    finally:
        # Left open: threads that outlive the stack by a moment may still log into it.
        log_file.flush()
    _emit(out, report.to_dict())
    return 0 if report.ok else 1
