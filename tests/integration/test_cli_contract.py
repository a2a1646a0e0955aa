"""The ``relay`` command's one contract, over every command and its failure modes: the exit code means the
same everywhere (relay.cli.exit_codes), an error is one line on stderr, ``relay <command> <subcommand>:
<message>``, with no traceback and no secret, and ``relay --version`` answers.

Most cases run ``relay.cli.main`` in this process with captured streams; those about the process itself
(the console entry point, Ctrl-C) run ``python -m relay``. AWS is moto's server (``aws_stack``), asked
for only by the cases that need it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from relay import __version__
from relay.cli import CommandParser, build_parser, main, run
from relay.cli.exit_codes import NeedsAttention
from relay.local.aws_stack import LOCAL_CREDENTIALS, forget_cached_configuration
from relay.local.loopback import SHUTDOWN_POLL_SECONDS

pytestmark = pytest.mark.integration

KEY = "enc-key-for-the-contract-test"  # the --key-env value: must never be printed
WRONG_KEY = "wrong-key-never-printed"
FIXTURE_SECRET = "whsec-too-short"  # fails signatureSecret's min_length: must not be echoed
WAIT = 30.0  # bound on waiting for a subprocess: generous, proves no hang
UUID_1, UUID_2 = "0b7f0d8e-1c2a-4e3b-9f4d-5a6b7c8d9e01", "0b7f0d8e-1c2a-4e3b-9f4d-5a6b7c8d9e02"


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # {name} is replaced by the path of a file the `files` fixture made
    code: int
    command: str  # the line's prefix: "relay targets sync"
    says: str  # a regular expression the message after "<command>: " must match
    aws: bool = False  # needs moto's server and the stack's settings
    env: dict[str, str] = field(default_factory=dict)


SETTINGS = ("TARGETS_TABLE", "BREAKER_TABLE", "DEAD_LETTER_QUEUE_URL", "DELIVERY_QUEUE_URL")
USAGE, ATTENTION, FAILED = 2, 1, 3


INVALID_EVENTS = {
    "nan_event": '{"deliveryId":"d","formatVersion":"2.1","sourceEvent":{"a":NaN}}',
    "huge_number_event": '{"deliveryId": "d", "formatVersion": "2.1", "sourceEvent": {"a": 1e400}}',
    "lone_surrogate_event": '{"deliveryId":"d","formatVersion":"2.1","sourceEvent":{"a":"\\ud800"}}',
    "infinity_as_written": '{"deliveryId":"d","sourceEvent":{"a":Infinity},"formatVersion":"2.1"}',
    "lone_surrogate_as_written": '{"deliveryId":"d","sourceEvent":{"a":"\\ud800"},"formatVersion":"2.1"}',
}


def decrypt_refused(file: str, says: str) -> Case:
    """``relay decrypt FILE`` of a plain envelope whose event it cannot print as JSON: nothing printed,
    nothing announced, one line saying why (exit 1, an envelope that does not open)."""
    return Case(("decrypt", file), ATTENTION, "relay decrypt", f"^cannot open the envelope: its {says}")


def put_event_refused(file: str, says: str) -> Case:
    """``relay local put-event FILE`` refusing the file as a usage error, before sending anything."""
    return Case(
        ("local", "put-event", file, "--api", "http://127.0.0.1:9"), USAGE, "relay local put-event", says
    )


CASES = {
    # --- argparse's own, one line like the rest ---------------------------------------------------
    "no command": Case((), USAGE, "relay", "the following arguments are required: COMMAND"),
    "unknown command": Case(("bogus",), USAGE, "relay", "argument COMMAND: invalid choice: 'bogus'"),
    "no subcommand": Case(("targets",), USAGE, "relay targets", "required: SUBCOMMAND"),
    "unknown option": Case(
        ("targets", "sync", "--bogus"), USAGE, "relay targets sync", "unrecognized arguments: --bogus"
    ),
    "timeout nan": Case(
        ("targets", "check", "--timeout", "nan"),
        USAGE,
        "relay targets check",
        "argument --timeout: must be a finite number of seconds, not nan",
    ),
    "timeout inf": Case(
        ("targets", "check", "--timeout", "inf"),
        USAGE,
        "relay targets check",
        "argument --timeout: must be a finite number of seconds, not inf",
    ),
    "show timeout without athena": Case(
        ("deliveries", "show", "some-event", "--timeout", "5"),
        USAGE,
        "relay deliveries show",
        "--timeout applies only with --athena",
    ),
    # Past about 1e9 s a socket or thread wait overflows: every --timeout stops at one day.
    "check timeout 1e10": Case(
        ("targets", "check", "--timeout", "1e10"),
        USAGE,
        "relay targets check",
        r"^argument --timeout: must be at most 86400 seconds \(one day\), not 1e10 \(see --help\)$",
    ),
    "check timeout 1e308": Case(
        ("targets", "check", "--timeout", "1e308"), USAGE, "relay targets check", "at most 86400 seconds"
    ),
    "athena timeout past a day": Case(
        ("deliveries", "show", "some-event", "--athena", "--timeout", "86401"),
        USAGE,
        "relay deliveries show",
        r"argument --timeout: must be at most 86400 seconds \(one day\), not 86401 \(see --help\)$",
    ),
    "demo timeout 1e10": Case(
        ("local", "demo", "--timeout", "1e10"), USAGE, "relay local demo", "--timeout: must be at most 86400"
    ),
    "empty repeatable filter": Case(
        ("dlq", "redrive", "--target", "t-1", "--target", ""),
        USAGE,
        "relay dlq redrive",
        "argument --target: must not be empty",
    ),
    "empty integration filter": Case(
        ("dlq", "redrive", "--integration", " "),
        USAGE,
        "relay dlq redrive",
        "argument --integration: must not",
    ),
    "max 0": Case(
        ("dlq", "list", "--max", "0"), USAGE, "relay dlq list", "argument --max: must be 1 or more"
    ),
    "max not a number": Case(("dlq", "list", "--max", "x"), USAGE, "relay dlq list", "not a whole number"),
    "no key for an encrypted envelope": Case(
        ("decrypt", "{sealed}"),
        USAGE,
        "relay decrypt",
        "^the envelope is encrypted: give its key with --key-file, --key-env or --secret$",
    ),
    "port out of range": Case(("local", "serve", "--port", "70000"), USAGE, "relay local serve", "--port"),
    "events 0": Case(("local", "demo", "--events", "0"), USAGE, "relay local demo", "--events: must be 1"),
    # A file argument typed as "" (an unset shell variable) names nothing, not the current directory
    "empty fixtures path": Case(
        ("local", "serve", "--fixtures", ""),
        USAGE,
        "relay local serve",
        "^argument --fixtures: must not be empty",
    ),
    "empty event file": Case(
        ("local", "put-event", "", "--api", "http://127.0.0.1:9"),
        USAGE,
        "relay local put-event",
        "^argument file: must not be empty",
    ),
    "event file path longer than any": Case(
        ("local", "put-event", "e" * 5000, "--api", "http://127.0.0.1:9"),
        USAGE,
        "relay local put-event",
        r"^argument file: 5000 characters, more than any path relay takes \(at most 4096\)",
    ),
    # --- a command's own usage errors ----------------------------------------------------------------
    "unknown dlq reason, no queue touched": Case(
        (
            "dlq",
            "redrive",
            "--reason",
            "exhaustd",
            "--dlq-url",
            "http://unused",
            "--queue-url",
            "http://unused",
        ),
        USAGE,
        "relay dlq redrive",
        "unknown reason exhaustd; one of exhausted, ",
    ),
    "key variable not set": Case(
        ("decrypt", "{envelope}", "--key-env", "UNSET_KEY"),
        USAGE,
        "relay decrypt",
        "--key-env: environment variable UNSET_KEY is not set",
    ),
    "key variable empty": Case(
        ("decrypt", "{envelope}", "--key-env", "EMPTY_KEY"),
        USAGE,
        "relay decrypt",
        "^--key-env: environment variable EMPTY_KEY is empty$",
        env={"EMPTY_KEY": ""},
    ),
    "signing variable not set": Case(
        (
            "decrypt",
            "{envelope}",
            "--key-env",
            "KEY",
            "--verify-with-env",
            "UNSET_WHSEC",
            "--headers",
            "{headers}",
        ),
        USAGE,
        "relay decrypt",
        "--verify-with-env: environment variable UNSET_WHSEC is not set",
    ),
    # The variable's value, not the envelope, is wrong: a usage error (it was 1, "cannot open the envelope")
    "signing variable not a whsec secret": Case(
        (
            "decrypt",
            "{envelope}",
            "--key-env",
            "KEY",
            "--verify-with-env",
            "NOT_WHSEC",
            "--headers",
            "{headers}",
        ),
        USAGE,
        "relay decrypt",
        "^--verify-with-env: environment variable NOT_WHSEC: signing secret is not whsec_ \\+ base64$",
        env={"NOT_WHSEC": "not-a-signing-secret!"},
    ),
    "verify without the headers to verify": Case(
        ("decrypt", "{envelope}", "--key-env", "KEY", "--verify-with-env", "KEY"),
        USAGE,
        "relay decrypt",
        "^--verify-with-env needs --headers: the request's headers, as a JSON object$",
        env={"KEY": "k"},
    ),
    "headers without verify": Case(
        ("decrypt", "{envelope}", "--headers", "{not_json}"),
        USAGE,
        "relay decrypt",
        "^--headers is read only to verify the signature: add --verify-with-env VAR$",
    ),
    "headers not JSON": Case(
        ("decrypt", "{envelope}", "--key-env", "KEY", "--verify-with-env", "KEY", "--headers", "{not_json}"),
        USAGE,
        "relay decrypt",
        r"--headers .*not_json\.txt: not JSON",
    ),
    "headers nested too deeply": Case(
        ("decrypt", "{envelope}", "--key-env", "KEY", "--verify-with-env", "KEY", "--headers", "{deep}"),
        USAGE,
        "relay decrypt",
        r"--headers .*deep\.json: not JSON: JSON nested too deeply to read$",
    ),
    "event with NaN": decrypt_refused("{nan_event}", "sourceEvent holds NaN or Infinity"),
    "event with 1e400": decrypt_refused("{huge_number_event}", "sourceEvent holds NaN or Infinity"),
    "event with a lone surrogate": decrypt_refused("{lone_surrogate_event}", "sourceEvent holds a lone"),
    "event with Infinity as the relay lays it out": decrypt_refused(
        "{infinity_as_written}", "event holds Infinity, which is not JSON$"
    ),
    "event with a lone surrogate as the relay lays it out": decrypt_refused(
        "{lone_surrogate_as_written}", r"event holds a lone surrogate \(\\ud800-\\udfff\), not Unicode text$"
    ),
    "key file not UTF-8": Case(
        ("decrypt", "{sealed}", "--key-file", "{latin1}"),
        USAGE,
        "relay decrypt",
        "latin1.txt: not UTF-8 text$",
    ),
    "key file a directory": Case(
        ("decrypt", "{sealed}", "--key-file", "{directory}"),
        USAGE,
        "relay decrypt",
        r"^--key-file .*a-directory: Is a directory$",
    ),
    "empty key file": Case(
        ("decrypt", "{envelope}", "--key-file", "{empty}"), USAGE, "relay decrypt", "the file is empty"
    ),
    "fixtures not JSON": Case(
        ("local", "serve", "--fixtures", "{not_json}"),
        USAGE,
        "relay local serve",
        "not a valid fixtures file",
    ),
    "fixtures with a key written twice": Case(
        ("local", "serve", "--fixtures", "{repeated_key_fixtures}"),
        USAGE,
        "relay local serve",
        "not a valid fixtures file: the key 'integrations' appears twice in one object$",
    ),
    "fixtures with a port out of range": Case(
        ("local", "serve", "--fixtures", "{port_65536_fixtures}"),
        USAGE,
        "relay local serve",
        "port is not a number from 0 to 65535",
    ),
    "fixtures nested too deeply": Case(
        ("local", "serve", "--fixtures", "{deep}"),
        USAGE,
        "relay local serve",
        r"deep\.json: not a valid fixtures file: JSON nested too deeply to read$",
    ),
    "fixtures invalid": Case(
        ("local", "demo", "--fixtures", "{short_secret_fixtures}"),
        USAGE,
        "relay local demo",
        r"not a valid fixtures file: integrations\.0\.signatureSecret: String should have at least 16",
    ),
    "fixtures with two mistakes": Case(
        ("local", "serve", "--fixtures", "{two_mistakes_fixtures}"),
        USAGE,
        "relay local serve",
        # Both named in one run, each where it is.
        r"not a valid fixtures file: integrations\.0\.signatureSecret: String should have at least 16 "
        r"characters; integrations\.0\.targets\.0\.method: Input should be 'POST' or 'PUT' \(2 problems\)$",
    ),
    "fixtures config sync would refuse": Case(
        ("local", "serve", "--fixtures", "{sync_refuses_fixtures}"),
        USAGE,
        "relay local serve",
        # Before anything starts (a start each cost before), every target's problems in one line.
        rf"not a valid fixtures file: config sync would refuse target {UUID_1}: invalid config: headers: "
        rf".*Content-Encoding is the relay's to set.*; target {UUID_2}: invalid config: encryptionKey: "
        r".*at least 16",
    ),
    "fixtures with URLs config sync refuses before any lookup": Case(
        ("local", "serve", "--fixtures", "{url_refused_fixtures}"),
        USAGE,
        "relay local serve",
        # Found by the stack's config-sync run, each cost a whole start before; the password is not shown.
        rf"not a valid fixtures file: config sync would refuse target {UUID_1}: URL refused: URL must not "
        rf"carry credentials; use the target's security settings; target {UUID_2}: URL refused: only https "
        r"URLs are allowed, or http to a loopback address such as 127\.0\.0\.1, not http$",
    ),
    "fixtures with a target id twice": Case(
        ("local", "serve", "--fixtures", "{repeated_target_fixtures}"),
        USAGE,
        "relay local serve",
        r"not a valid fixtures file: \(top level\): Value error, target id t-1 is used twice, at "
        r"integrations\.0\.targets\.0 and integrations\.1\.targets\.0",
    ),
    "fixtures without an enabled target": Case(
        ("local", "demo", "--fixtures", "{no_targets_fixtures}"),
        USAGE,
        "relay local demo",
        "no integration with an enabled target",
    ),
    "event file not JSON": put_event_refused("{not_json}", r"not_json\.txt: Expecting value"),
    "event file nested too deeply": put_event_refused(
        "{deep}", r"deep\.json: JSON nested too deeply to read$"
    ),
    "event file with an empty list": put_event_refused(
        "{no_events}", r"no_events\.json: holds no events: the list is empty$"
    ),
    "event file with empty Entries": put_event_refused(
        "{no_entries}", r'no_entries\.json: holds no events: its "Entries" is empty$'
    ),
    "event file not events": put_event_refused("{envelope}", "expected an EventBridge event"),
    "no API to send to": Case(
        ("local", "put-event", "{envelope}"), USAGE, "relay local put-event", "no API: pass --api"
    ),
    "unknown integration to list": Case(
        ("targets", "list", "--integration", "no-such-integration"),
        FAILED,
        "relay targets list",
        "^integration no-such-integration is not in the TargetsTable$",
        aws=True,
    ),
    "unknown integration's breakers": Case(
        ("breaker", "status", "--integration", "no-such-integration"),
        FAILED,
        "relay breaker status",
        "^integration no-such-integration has no targets in the TargetsTable$",
        aws=True,
    ),
    "unknown target to check": Case(
        ("targets", "check", "no-such-target"),
        FAILED,
        "relay targets check",
        "no target no-such-target in the TargetsTable",
        aws=True,
    ),
    # An id typed as "" or blank (an unset shell variable) names nothing: a usage error, before AWS
    "empty target id to check": Case(
        ("targets", "check", ""), USAGE, "relay targets check", "argument TARGET_ID: must not be empty"
    ),
    "empty breaker target id": Case(
        ("breaker", "status", ""), USAGE, "relay breaker status", "argument TARGET_ID: must not be empty"
    ),
    "blank id to replay": Case(
        ("deliveries", "replay", " ", "--dry-run"),
        USAGE,
        "relay deliveries replay",
        "argument ID: must not be empty",
    ),
    "empty stack name": Case(
        ("breaker", "status", "--stack-name", ""),
        USAGE,
        "relay breaker status",
        "argument --stack-name: must not be empty",
    ),
    "empty integration": Case(
        ("targets", "list", "--integration="),
        USAGE,
        "relay targets list",
        "argument --integration: must not be empty",
    ),
    # A value pasted whole (a file, a log) is refused without the error line echoing all of it
    "an id longer than any": Case(
        ("deliveries", "show", "9f0c" * 25_000),
        USAGE,
        "relay deliveries show",
        r"^argument ID: 100000 characters, more than any id, name, URL or path relay takes \(at most 4096\)$",
    ),
    "a duration pasted whole": Case(
        ("deliveries", "show", "9f0c", "--since", "x" * 5_000),
        USAGE,
        "relay deliveries show",
        r"^argument --since: not a duration: 'x{40}\.\.\. \(5000 characters\)' \(e\.g\. 90m",
    ),
    # argparse alone reads "-1h" as an option and answered "expected one argument"
    "a duration typed as minus an hour": Case(
        ("deliveries", "show", "9f0c", "--since", "-1h"),
        USAGE,
        "relay deliveries show",
        r"^argument --since: must be a duration above 0, not -1h",
    ),
    "a fractional duration typed negative": Case(
        ("deliveries", "replay", "9f0c", "--dry-run", "--since", "-.5d"),
        USAGE,
        "relay deliveries replay",
        r"^argument --since: must be a duration above 0, not -\.5d",
    ),
    "redrive rate above what SQS takes": Case(
        ("dlq", "redrive", "--rate", "501", "--dry-run"),
        USAGE,
        "relay dlq redrive",
        r"argument --rate: must be at most 500 \(SQS moves at most 500 messages a second\), not 501",
    ),
    # --rate paces SQS's move task: where the redrive can never start one, it is refused, not ignored
    "rate on the ordered queue": Case(
        ("dlq", "redrive", "--queue", "ordered", "--rate", "5", "--dry-run"),
        USAGE,
        "relay dlq redrive",
        r"^--rate paces only SQS's move task, which this redrive never starts \(--queue ordered re-sends",
    ),
    "rate on the first-hop queue": Case(
        ("dlq", "redrive", "--queue", "first-hop", "--rate", "5", "--dry-run"),
        USAGE,
        "relay dlq redrive",
        r"never starts \(--queue first-hop re-sends, each letter under a fresh deduplication id, unless "
        r"--method move-task\)$",
    ),
    "task filter on an event queue": Case(
        ("dlq", "redrive", "--queue", "intake-failures", "--reason", "poison"),
        USAGE,
        "relay dlq redrive",
        r"^--reason applies only to --queue delivery, ordered or first-hop$",
    ),
    "rate with resend": Case(
        ("dlq", "redrive", "--method", "resend", "--rate", "5"),
        USAGE,
        "relay dlq redrive",
        r"never starts \(--method resend re-sends every message\)$",
    ),
    "rate with a filter": Case(
        ("dlq", "redrive", "--target", "t-1", "--rate", "5"),
        USAGE,
        "relay dlq redrive",
        r"never starts \(a filter or --max re-sends the messages it picks\)$",
    ),
    "visibility above what SQS takes": Case(
        ("dlq", "list", "--visibility", "43201"),
        USAGE,
        "relay dlq list",
        r"argument --visibility: must be at most 43200 \(SQS hides a message at most 12 h\), not 43201",
    ),
    "unknown breaker target": Case(
        ("breaker", "reset", "no-such-target"),
        FAILED,
        "relay breaker reset",
        "no target no-such-target in the TargetsTable",
        aws=True,
    ),
    # --- an AWS setting botocore cannot use: a setting to fix (3), named, its value never quoted ---------
    "endpoint not a URL": Case(
        ("targets", "list", "--stack-name", "relay"),
        FAILED,
        "relay targets list",
        "^ConfigurationError: invalid settings: AWS_ENDPOINT_URL$",
        env={"AWS_ENDPOINT_URL": "notaurl"},
    ),
    "endpoint with credentials, cut short": Case(
        ("breaker", "status", "--stack-name", "relay"),
        FAILED,
        "relay breaker status",
        "^ConfigurationError: invalid settings: AWS_ENDPOINT_URL$",
        env={"AWS_ENDPOINT_URL": f"http://ops:{KEY}@[::1"},
    ),
    "empty endpoint": Case(
        ("dlq", "list"),
        FAILED,
        "relay dlq list",
        "^ConfigurationError: invalid settings: AWS_ENDPOINT_URL$",
        env={"AWS_ENDPOINT_URL": "", "DEAD_LETTER_QUEUE_URL": "http://sqs.local/1/dlq"},
    ),
    "empty region": Case(
        ("targets", "list"),
        FAILED,
        "relay targets list",
        "^ConfigurationError: invalid settings: AWS_REGION$",
        env={"AWS_REGION": "", "TARGETS_TABLE": "targets"},
    ),
    # The Genesys API host (local mode, tests): the SDK's URL error was "an unreadable body" at login
    "Genesys API host not an http URL": Case(
        ("targets", "sync"),
        FAILED,
        "relay targets sync",
        "^ConfigurationError: invalid settings: GENESYS_API_HOST$",
        env={
            "GENESYS_API_HOST": "ftp://genesys.local",
            "GENESYS_CLIENT_ID": "client",
            "GENESYS_CLIENT_SECRET": "client-secret",
            "TARGETS_TABLE": "targets",
            "GENESYS_WEBHOOK_INTEGRATION_IDS": "3f1d2c4b-5a69-4e7f-8a1b-2c3d4e5f6a70",
        },
    ),
    # An EventBridge integration id with a space around it keyed a record no target names: refused
    "EventBridge integration id with spaces": Case(
        ("targets", "list"),
        FAILED,
        "relay targets list",
        "^ConfigurationError: invalid settings: EVENTBRIDGE_INTEGRATION_ID$",
        env={
            "EVENTBRIDGE_INTEGRATION_ID": " 6685901b-6d0e-43db-95ff-d64406e9dce2 ",
            "TARGETS_TABLE": "targets",
        },
    ),
    "a service's endpoint not a URL": Case(
        ("targets", "list", "--stack-name", "relay"),
        FAILED,
        "relay targets list",
        r"^ConfigurationError: no AWS cloudformation client: its endpoint is not a valid URL "
        r"\(AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_CLOUDFORMATION or the AWS config file\)$",
        env={"AWS_ENDPOINT_URL_CLOUDFORMATION": "notaurl"},
    ),
    "secret that does not exist": Case(
        ("decrypt", "{envelope}", "--secret", "relay/local/encryption/nope"),
        USAGE,
        "relay decrypt",
        "--secret: secret relay/local/encryption/nope does not exist",
        aws=True,
    ),
    # --- a file argument that is missing or unreadable: no traceback ---------------------------------
    "envelope missing": Case(
        ("decrypt", "/nonexistent/envelope.json", "--key-env", "KEY"),
        USAGE,
        "relay decrypt",
        "/nonexistent/envelope.json: No such file or directory",
    ),
    "a path with a line break and an escape sequence": Case(
        # One line, escaped: the message quotes what was typed, and must not split or drive the terminal
        ("decrypt", "/nonexistent/x\nforged: 1\x1b[2J", "--key-env", "KEY"),
        USAGE,
        "relay decrypt",
        # (outcome() already joins a message's lines with "; ")
        r"/nonexistent/x; forged: 1\\x1b\[2J: No such file or directory$",
    ),
    "envelope is a directory": Case(
        ("decrypt", "{directory}", "--key-env", "KEY"), USAGE, "relay decrypt", ": Is a directory$"
    ),
    "key file missing": Case(
        ("decrypt", "{envelope}", "--key-file", "/nonexistent/key"),
        USAGE,
        "relay decrypt",
        "^--key-file /nonexistent/key: No such file or directory$",  # named by its option
    ),
    "headers file missing": Case(
        (
            "decrypt",
            "{envelope}",
            "--key-env",
            "KEY",
            "--verify-with-env",
            "KEY",
            "--headers",
            "/nonexistent/h",
        ),
        USAGE,
        "relay decrypt",
        "^--headers /nonexistent/h: No such file or directory$",
    ),
    "serve fixtures missing": Case(
        ("local", "serve", "--fixtures", "/nonexistent/fixtures.json"),
        USAGE,
        "relay local serve",
        "/nonexistent/fixtures.json: No such file or directory",
    ),
    "demo fixtures missing": Case(
        ("local", "demo", "--fixtures", "/nonexistent/fixtures.json"),
        USAGE,
        "relay local demo",
        "/nonexistent/fixtures.json: No such file or directory",
    ),
    "demo log not writable": Case(
        ("local", "demo", "--function-logs", "/nonexistent/functions.log"),
        USAGE,
        "relay local demo",
        "/nonexistent/functions.log: No such file or directory",
    ),
    "event file missing": put_event_refused(
        "/nonexistent/event.json", "/nonexistent/event.json: No such file or directory"
    ),
    # --- done, but needs attention -----------------------------------------------------------------
    "wrong key": Case(
        ("decrypt", "{sealed}", "--key-env", "WRONG_KEY"),
        ATTENTION,
        "relay decrypt",
        "cannot open the envelope: no key decrypts this envelope",
    ),
    "not a relay envelope: another format": Case(
        ("decrypt", "{old_format}"),
        ATTENTION,
        "relay decrypt",
        "^cannot open the envelope: not a relay 2.1 envelope ",
    ),
    "not a relay envelope: no deliveryId": Case(
        ("decrypt", "{log_line}"),
        ATTENTION,
        "relay decrypt",
        "^cannot open the envelope: not a relay 2.1 envelope ",
    ),
    "envelope not JSON": Case(
        ("decrypt", "{not_json}", "--key-env", "KEY"), ATTENTION, "relay decrypt", "cannot open the envelope"
    ),
    "envelope nested too deeply": Case(
        ("decrypt", "{deep}", "--key-env", "KEY"),
        ATTENTION,
        "relay decrypt",
        "^cannot open the envelope: JSON nested too deeply to read$",
    ),
    # --- could not run: settings, AWS, an API ------------------------------------------------------
    "list without its table": Case(
        ("targets", "list"),
        FAILED,
        "relay targets list",
        "ConfigurationError: setting TARGETS_TABLE is required",
    ),
    "sync with invalid settings": Case(
        ("targets", "sync"),
        FAILED,
        "relay targets sync",
        "ConfigurationError: invalid settings: GENESYS_TIMEOUT_SECONDS",
        env={"GENESYS_TIMEOUT_SECONDS": "-1"},
    ),
    "breaker without its tables": Case(
        ("breaker", "status"), FAILED, "relay breaker status", "ConfigurationError: setting TARGETS_TABLE"
    ),
    "dlq without its queue": Case(
        ("dlq", "list"), FAILED, "relay dlq list", "ConfigurationError: setting DEAD_LETTER_QUEUE_URL"
    ),
    "first-hop dlq without its queue": Case(
        ("dlq", "list", "--queue", "first-hop"),
        FAILED,
        "relay dlq list",
        "^ConfigurationError: setting FIRST_HOP_DEAD_LETTER_QUEUE_URL is required",
    ),
    "dlq queue that does not exist": Case(
        ("dlq", "list", "--dlq-url", "{missing_queue}"),
        FAILED,
        "relay dlq list",
        r"DependencyUnavailable: SQS \w+ failed: no queue http://\S+-gone \(",
        aws=True,
    ),
    "dlq redrive to a queue that does not exist": Case(
        ("dlq", "redrive", "--max", "2", "--dlq-url", "{dlq}", "--queue-url", "{missing_queue}"),
        FAILED,
        "relay dlq redrive",
        r"DependencyUnavailable: SQS \w+ failed: no queue http://\S+-gone \(",
        aws=True,
    ),
    "dlq redrive dry run to a queue that does not exist": Case(
        (
            "dlq",
            "redrive",
            "--dry-run",
            "--no-progress",
            "--dlq-url",
            "{dlq}",
            "--queue-url",
            "{missing_queue}",
        ),
        FAILED,
        "relay dlq redrive",
        r"DependencyUnavailable: SQS \w+ failed: no queue http://\S+-gone \(",
        aws=True,
    ),
    "API not reachable": Case(
        ("local", "put-event", "{event}", "--api", "{refusing_api}"),
        FAILED,
        "relay local put-event",
        r"cannot reach http://127\.0\.0\.1:\d+: ConnectionError",
    ),
}


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The files and addresses the cases name; a port that refuses connections while the test runs."""
    sealed = {
        "deliveryId": "d-1",
        "sourceEvent": {},
        "formatVersion": "2.1",
        "encryptionDirective": {
            "algorithm": "aes-256-gcm",
            "keyDerivation": "scrypt",
            "keyId": "k1",
            "salt": "00" * 16,
            "iv": "00" * 12,
            "encryptedPayload": "00" * 8,
            "authTag": "00" * 16,
        },
    }
    integration = {"id": "i-1", "name": "i", "signatureSecret": FIXTURE_SECRET, "targets": []}
    target = {"id": "t-1", "name": "t", "url": "http://127.0.0.1:0/hook"}
    contents = {
        "envelope": {"deliveryId": "d-1", "sourceEvent": {"id": "e-1"}, "formatVersion": "2.1"},
        "old_format": {"deliveryId": "d-1", "sourceEvent": {"id": "e-1"}, "formatVersion": "1.0"},
        "log_line": {"sourceEvent": {"id": "e-1"}},
        "headers": {"webhook-id": "d-1", "webhook-timestamp": "1764000000", "webhook-signature": "v1,x"},
        "sealed": sealed,
        "event": {"source": "s", "detail-type": "t", "detail": {}},
        "no_events": [],
        "no_entries": {"Entries": []},
        "short_secret_fixtures": {"integrations": [integration]},
        "two_mistakes_fixtures": {
            "integrations": [{**integration, "targets": [{**target, "method": "GET"}]}]
        },
        "sync_refuses_fixtures": {
            "integrations": [
                {
                    **integration,
                    "signatureSecret": "s" * 16,
                    "targets": [  # config sync takes UUIDs only
                        {**target, "id": UUID_1, "headers": {"Content-Encoding": "gzip"}},
                        {**target, "id": UUID_2, "encryptionKey": "fifteen-chars!!"},
                    ],
                }
            ]
        },
        "no_targets_fixtures": {"integrations": [{**integration, "signatureSecret": "s" * 16}]},
        "url_refused_fixtures": {
            "integrations": [
                {
                    **integration,
                    "signatureSecret": "s" * 16,
                    "targets": [
                        {**target, "id": UUID_1, "url": "http://user:pass-word@127.0.0.1:8/hook"},
                        {**target, "id": UUID_2, "url": "http://crm.example.com/hook"},
                    ],
                }
            ]
        },
        "port_65536_fixtures": {
            "integrations": [
                {
                    **integration,
                    "signatureSecret": "s" * 16,
                    "targets": [{**target, "url": "http://127.0.0.1:65536/x"}],
                }
            ]
        },
        "repeated_target_fixtures": {
            "integrations": [
                {**integration, "id": f"i-{n}", "signatureSecret": "s" * 16, "targets": [target]}
                for n in (1, 2)
            ]
        },
    }
    paths = {}
    for name, document in contents.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(document))
    # Envelopes whose event JSON cannot carry: NaN or Infinity (Python reads them, 1e400 becomes one),
    # a lone surrogate; re-formatted (the parsed event is written again) or laid out as the relay writes
    paths |= {name: tmp_path / f"{name}.json" for name in INVALID_EVENTS}
    for name, text in INVALID_EVENTS.items():
        paths[name].write_text(text)
    paths["not_json"] = tmp_path / "not_json.txt"
    paths["not_json"].write_text("not json")
    paths["deep"] = tmp_path / "deep.json"
    paths["deep"].write_text("[" * 100_000 + "]" * 100_000)  # deeper than Python's json parser goes
    paths["repeated_key_fixtures"] = tmp_path / "repeated_key_fixtures.json"
    paths["repeated_key_fixtures"].write_text('{"integrations": [], "integrations": []}')
    paths["latin1"] = tmp_path / "latin1.txt"
    paths["latin1"].write_bytes("clé".encode("latin-1"))
    paths["empty"] = tmp_path / "empty.txt"
    paths["empty"].write_text("\n")
    paths["directory"] = tmp_path / "a-directory"
    paths["directory"].mkdir()
    with socket.socket() as bound_not_listening:  # connections to it are refused
        bound_not_listening.bind(("127.0.0.1", 0))
        refusing = f"http://127.0.0.1:{bound_not_listening.getsockname()[1]}"
        yield {**{name: str(path) for name, path in paths.items()}, "refusing_api": refusing}


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An operator's shell without the relay's resource settings (a case asks for aws_stack to get them)."""
    for name in (*SETTINGS, "AWS_ENDPOINT_URL", "RELAY_LOCAL_API", "UNSET_KEY", "UNSET_WHSEC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEY", KEY)
    monkeypatch.setenv("WRONG_KEY", WRONG_KEY)
    forget_cached_configuration()
    yield
    forget_cached_configuration()


def assert_one_error_line(err: str, command: str, says: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    prefix = f"{command}: "
    assert lines[0].startswith(prefix), lines[0]
    assert re.search(says, lines[0][len(prefix) :]), lines[0]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_failure_is_its_exit_code_and_one_error_line(
    case: Case,
    files: dict[str, str],
    settings_env: None,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the case's settings and files (and moto, for the cases that reach AWS)
    if case.aws:
        stack = request.getfixturevalue("aws_stack")
        files = {
            **files,
            "missing_queue": f"{stack.dead_letter_queue_url}-gone",
            "dlq": stack.dead_letter_queue_url,
        }
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    forget_cached_configuration()
    argv = [arg.format(**files) for arg in case.argv]

    # When the command runs
    code = main(argv)

    # Then it exits with the case's code, and says why in one line with no traceback and no secret
    out, err = capsys.readouterr()
    assert code == case.code, err
    assert_one_error_line(err, case.command, case.says)
    for secret in (KEY, WRONG_KEY, FIXTURE_SECRET):
        assert secret not in out + err


HTML_ERROR_PAGE = b"<!doctype html>\n<html><title>500 Internal Server Error</title><h1>oops</h1></html>\n"
# A captive portal's or proxy's sign-in page: 200, and well-formed enough for an XML parser
HTML_SIGN_IN_PAGE = b"<html><body><h1>Sign in to continue</h1></body></html>"


class HtmlEndpoint:
    """A loopback 'AWS endpoint' answering every request with an HTML page, as a proxy or a captive
    portal does: not AWS's answer (ResponseParserError)."""

    def __init__(self, status: int = 500, body: bytes = HTML_ERROR_PAGE) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST  # S3 reads with GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def every_aws_call_answered_by(
    endpoint: HtmlEndpoint, monkeypatch: pytest.MonkeyPatch, **settings: str
) -> None:
    """Point the relay's AWS clients at ``endpoint``, one try per call (its answer does not change),
    with ``settings`` as further environment variables."""
    for name, value in {
        **LOCAL_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint.url,
        "AWS_MAX_ATTEMPTS": "1",
        **settings,
    }.items():
        monkeypatch.setenv(name, value)
    forget_cached_configuration()


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (("targets", "list", "--stack-name", "relay"), "relay targets list"),
        (("dlq", "list", "--stack-name", "relay"), "relay dlq list"),
    ],
)
def test_an_endpoint_answering_something_other_than_aws_is_aws_unavailable(
    argv: tuple[str, ...],
    command: str,
    settings_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given every AWS call answered by an HTML page (one try each: the answer does not change)
    endpoint = HtmlEndpoint()
    every_aws_call_answered_by(endpoint, monkeypatch)
    try:
        # When a command needs the stack's outputs
        code = main(list(argv))
    finally:
        endpoint.close()

    # Then AWS is unavailable (3), not a bug in the relay (70)
    out, err = capsys.readouterr()
    assert (code, out) == (FAILED, ""), err
    assert_one_error_line(
        err, command, r"^DependencyUnavailable: CloudFormation unavailable \(ResponseParserError\)$"
    )


@pytest.mark.parametrize(
    ("argv", "command", "says"),
    [
        (("targets", "list", "--stack-name", "relay"), "relay targets list", "CloudFormation unavailable"),
        (("targets", "list"), "relay targets list", "targets table unavailable"),
        (("breaker", "status"), "relay breaker status", "targets table unavailable"),
        (("dlq", "list"), "relay dlq list", "SQS get_queue_attributes failed"),
        (("deliveries", "show", "e-1"), "relay deliveries show", "audit bucket unreadable"),
    ],
)
def test_a_sign_in_page_answering_200_is_aws_unavailable_not_an_empty_answer(
    argv: tuple[str, ...],
    command: str,
    says: str,
    settings_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given every AWS call answered 200 with a captive portal's page (the resources named as usual)
    endpoint = HtmlEndpoint(200, HTML_SIGN_IN_PAGE)
    every_aws_call_answered_by(
        endpoint,
        monkeypatch,
        TARGETS_TABLE="relay-TargetsTable",
        BREAKER_TABLE="relay-BreakerTable",
        DEAD_LETTER_QUEUE_URL=f"{endpoint.url}/123456789012/relay-DeadLetterQueue",
        AUDIT_BUCKET="relay-auditbucket",
    )
    try:
        code = main(list(argv))
    finally:
        endpoint.close()

    # Then AWS is unavailable (3): not an empty table or queue (0), nor a bug (70)
    out, err = capsys.readouterr()
    assert (code, out) == (FAILED, ""), out + err
    assert_one_error_line(err, command, rf"^DependencyUnavailable: {says}.*\(ResponseParserError\)$")


def test_version_prints_the_relays_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"relay {__version__}\n"


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    for code in (0, 1, 2, 3, 70, 130):
        assert re.search(rf"^  {code}\s+\S", help_text, re.MULTILINE), code


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command line's words that reach a command of its own (``("dlq", "redrive")``)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield words
    for group in groups:
        for name, child in group.choices.items():
            yield from _commands(child, (*words, name))


def test_every_commands_help_opens_with_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    commands = list(_commands(build_parser()))
    assert ("dlq", "redrive") in commands and ("breaker", "reset") in commands

    for words in commands:
        assert main([*words, "--help"]) == 0
        text = capsys.readouterr().out
        # argparse prints the usage block, a blank line, then the description when there is one
        after_usage = text.split("\n\n", 1)[1]
        assert not after_usage.startswith(("positional arguments", "options")), (words, text)


# --- the boundary itself: an error nobody planned for, Ctrl-C ------------------------------------------
def _parser_with(command: Any) -> argparse.ArgumentParser:
    """A relay parser with one command, ``relay explode``, that runs ``command``."""
    parser = CommandParser(prog="relay")
    parser.add_argument("--debug", action="store_true")
    parser.add_subparsers(dest="command").add_parser("explode").set_defaults(func=command)
    return parser


def _bug(args: argparse.Namespace) -> int:
    raise KeyError(f"a message holding {KEY}")


def _ctrl_c(args: argparse.Namespace) -> int:
    raise KeyboardInterrupt


def test_a_bug_is_one_line_naming_only_its_type(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(_parser_with(_bug), ["explode"])

    assert code == 70
    err = capsys.readouterr().err
    assert err == "relay explode: internal error (KeyError); relay --debug ... shows the traceback\n"


def test_debug_prints_the_traceback_before_the_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(_parser_with(_bug), ["--debug", "explode"])

    assert code == 70
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "KeyError" in err
    assert err.splitlines()[-1].startswith("relay explode: internal error (KeyError)")


def _many_lines(args: argparse.Namespace) -> int:
    for n in range(100_000):  # far more than a pipe holds
        print(json.dumps({"line": n}))
    return 0


def _run_into_a_pipe_its_reader_left(
    command: Callable[[argparse.Namespace], int], monkeypatch: pytest.MonkeyPatch
) -> int:
    """``command`` run with stdout a pipe whose reader has left (`relay ... | head -1`)."""
    reader, writer = os.pipe()
    os.close(reader)
    with open(writer, "w") as left_pipe:
        monkeypatch.setattr(sys, "stdout", left_pipe)
        return run(_parser_with(command), ["explode"])


def test_a_reader_that_leaves_early_ends_the_command_quietly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # When a command writes its output into a pipe whose reader has left, as
    # `relay breaker status --format json | head -1` leaves
    code = _run_into_a_pipe_its_reader_left(_many_lines, monkeypatch)

    # Then it ends as a command whose output fit the pipe does: exit 0, nothing on stderr
    assert (code, capsys.readouterr().err) == (0, "")


def _many_lines_then_attention(args: argparse.Namespace) -> int:
    _many_lines(args)
    raise NeedsAttention("3 messages left in the DLQ")


def test_a_reader_that_leaves_early_keeps_the_commands_status_and_its_error_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # When a command writes its output into a pipe whose reader has left (`relay dlq redrive ... | head -1`
    # under pipefail), then finds that something needs attention
    code = _run_into_a_pipe_its_reader_left(_many_lines_then_attention, monkeypatch)

    # Then its status and its line on stderr (not the pipe that broke) are what a full read gets
    assert (code, capsys.readouterr().err) == (1, "relay explode: 3 messages left in the DLQ\n")


def test_ctrl_c_in_any_command_is_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_parser_with(_ctrl_c), ["explode"]) == 130
    assert capsys.readouterr().err == "relay explode: interrupted\n"


# --- the process: python -m relay ---------------------------------------------------------------------
def _relay(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
        check=False,
    )


def test_the_process_answers_version_and_a_missing_envelope_without_a_traceback() -> None:
    version = _relay("--version")
    assert (version.returncode, version.stdout, version.stderr) == (0, f"relay {__version__}\n", "")

    missing = _relay("decrypt", "/nonexistent", "--key-env", "KEY")
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == "relay decrypt: /nonexistent: No such file or directory\n"


# Loaded by the interpreter at start-up (site.py imports sitecustomize from PYTHONPATH): the moment
# relay.cli starts to load, Ctrl-C arrives, a real SIGINT, as from an operator who pressed it at once.
CTRL_C_WHILE_IMPORTING = """
import os, signal, sys

class CtrlCWhenImporting:
    def find_spec(self, name, path=None, target=None):
        if name == "relay.cli":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCWhenImporting())
"""


def test_ctrl_c_while_the_console_command_loads_is_130_without_a_traceback(tmp_path: Path) -> None:
    # Given the `relay` console script, about to import the CLI
    (tmp_path / "sitecustomize.py").write_text(CTRL_C_WHILE_IMPORTING)
    script = Path(sys.executable).parent / "relay"

    # When Ctrl-C arrives while it imports
    process = subprocess.run(
        [str(script), "targets", "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=WAIT,
        check=False,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )

    # Then it exits 130 with one line, as Ctrl-C during a command does
    assert (process.returncode, process.stdout, process.stderr) == (130, "", "relay: interrupted\n")


def _stdin_closed() -> None:
    """In the command's process before it starts: no stdin at all, as `relay ... <&-` leaves it."""
    os.close(0)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (("decrypt", "-", "--key-env", "KEY"), "relay decrypt"),
        (("local", "put-event", "-", "--api", "http://127.0.0.1:9"), "relay local put-event"),
    ],
)
def test_stdin_closed_is_a_file_that_cannot_be_read(argv: tuple[str, ...], command: str) -> None:
    # `relay <command> - <&-`: every command reading `-` reads it in one place
    process = subprocess.run(
        [sys.executable, "-m", "relay", *argv],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        preexec_fn=_stdin_closed,
    )

    assert (process.returncode, process.stdout) == (USAGE, ""), process.stderr
    assert_one_error_line(process.stderr, command, "^-: cannot be read: stdin is closed$")


class StallingSqs:
    """A loopback 'SQS' that holds every request until the test ends: the command waits in a call."""

    def __init__(self) -> None:
        self.called = threading.Event()
        self.release = threading.Event()
        stall = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                stall.called.set()
                stall.release.wait(WAIT)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,), daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _ctrl_c_as_in_a_terminal() -> None:
    """In the command's process before it starts: Ctrl-C's default action, as a terminal gives it. Tests
    run in the background of a non-interactive shell inherit SIGINT ignored, exec keeps that, and
    Python then leaves it ignored: the command would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_twice_during_a_dlq_command_is_130_and_says_what_happens_to_the_messages() -> None:
    # Given `relay dlq list` waiting on an SQS call that never answers
    sqs = StallingSqs()
    env = {
        **os.environ,
        **LOCAL_CREDENTIALS,
        "AWS_ENDPOINT_URL": sqs.url,
        "AWS_REGION": "us-east-1",
        "DEAD_LETTER_QUEUE_URL": "http://sqs.local/123456789012/relay-DeadLetterQueue",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "dlq", "list", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    try:
        assert sqs.called.wait(WAIT), "the command never called SQS"

        # When the operator presses Ctrl-C (the run would stop after its batch), then again
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first == "stopping after the batch in hand (Ctrl-C again to stop at once)\n", first
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=WAIT)
    finally:
        process.kill()
        sqs.close()

    # Then it exits 130 with one line saying what became of the messages, and no traceback
    assert process.returncode == 130 and out == "", (process.returncode, err)
    # (a list moves nothing, and its line does not speak of moves)
    assert_one_error_line(
        err, "relay dlq list", r"^interrupted\. The messages read go back to the queue as they were: nothing"
    )
