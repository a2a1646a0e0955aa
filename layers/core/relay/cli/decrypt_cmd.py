"""``relay decrypt``: open an encrypted 2.1 envelope (a DLQ body, a receiver's log, an audit sample).

    relay decrypt envelope.json --key-env RELAY_ENCRYPTION_KEY
    relay decrypt - --secret relay/prod/encryption/<targetId> < envelope.json
    relay decrypt envelope.json --key-file key.txt --verify-with-env WHSEC --headers headers.json

The key is never taken on the command line (it would show in the process list and shell history):
from a file, an environment variable, or the target's encryption secret in Secrets Manager (current
and previous versions are tried). Prints the event on stdout exactly as Genesys sent it, no newline
added: the plaintext's bytes, or, for an envelope that is not encrypted (no key needed), its
``sourceEvent`` cut from the envelope's text; never parsed and written again (which would turn ``1E+2``
into ``100.0``). A re-formatted copy of a plain envelope, whose text no longer holds the event's own,
prints its ``sourceEvent`` as indented JSON, with a warning on stderr. Exit codes as for every
command (relay.cli.exit_codes): 1 when the envelope does not open or verify; 2 for a file that cannot be
read, a variable that is not set (or, for --verify-with-env, holds no whsec_ secret), a secret that
does not exist, or --verify-with-env without --headers
(or the other way round); 3 when Secrets Manager cannot be read. A signature is verified whatever its
age (the envelope comes from a file); one older than a receiver's 5-minute window is said on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from relay.cli.arguments import file_or_stdin
from relay.cli.exit_codes import ExitCode, NeedsAttention, UsageError
from relay.json_input import load_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "decrypt",
        help="decrypt an encrypted 2.1 envelope with the target's key",
        description="Prints the event exactly as Genesys sent it: the decrypted bytes (or, for an envelope "
        "that is not encrypted, its sourceEvent's own text; no key needed), no newline added.",
    )
    parser.add_argument("envelope", help="file holding the envelope JSON, or - for stdin")
    key = parser.add_mutually_exclusive_group()  # an encrypted envelope needs one (checked once read)
    key.add_argument(
        "--key-file",
        metavar="PATH",
        help="file holding the encryption secret (as written, less a final line ending; else stripped)",
    )
    key.add_argument("--key-env", metavar="VAR", help="environment variable holding the encryption secret")
    key.add_argument(
        "--secret", metavar="NAME", help="Secrets Manager name of the target's encryption secret"
    )
    parser.add_argument(
        "--verify-with-env",
        metavar="VAR",
        help="also verify the Standard Webhooks signature with the whsec_ secret in this variable",
    )
    parser.add_argument(
        "--headers", metavar="PATH", help="JSON object of the request headers (for --verify-with-env)"
    )
    parser.set_defaults(func=_decrypt)


def _keys(args: argparse.Namespace) -> list[str]:
    if args.key_file:
        try:
            text = Path(args.key_file).read_text(encoding="utf-8-sig")  # a BOM (Notepad) is no part of a key
        except UnicodeDecodeError:
            raise UsageError(f"--key-file {args.key_file}: not UTF-8 text") from None
        except OSError as exc:  # named by its option: the envelope is a file too
            raise UsageError(f"--key-file {args.key_file}: {exc.strerror or exc}") from None
        # A key may begin or end with blanks, or be blanks (config sync takes it as given); an editor
        # adds a line ending. The key as written, less that line ending, first; then stripped, as a key
        # pasted with blanks around it was meant.
        as_written = text.removesuffix("\n").removesuffix("\r")
        if not as_written:
            raise UsageError(f"--key-file {args.key_file}: the file is empty")
        return [key for key in dict.fromkeys((as_written, text.strip())) if key]
    if args.key_env:
        return [_environment_value(args.key_env, "--key-env")]
    from relay.errors import ConfigurationError
    from relay.settings import get_settings
    from relay.wiring import secret_store

    settings = get_settings()  # invalid settings fail the command (3) before anything is blamed on --secret
    try:
        return secret_store(settings).get(args.secret).values()
    except ConfigurationError as exc:  # no such secret, or not in the relay's shape: the name is wrong
        raise UsageError(f"--secret: {exc}") from None


def _environment_value(name: str, option: str) -> str:
    from relay.settings import environment_variable

    value = environment_variable(name)  # an operator's shell, not the relay's settings
    if value is None:
        raise UsageError(f"{option}: environment variable {name} is not set")
    if not value:
        raise UsageError(f"{option}: environment variable {name} is empty")
    return value


def _headers(path: str | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        headers = load_json(Path(path).read_bytes())
    except OSError as exc:
        raise UsageError(f"--headers {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # json's message gives the position, never the text
        raise UsageError(f"--headers {path}: not JSON: {exc}") from None
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise UsageError(f"--headers {path}: not a JSON object of header names to strings")
    return headers


def _refuse_unless_signing_secret(value: str, name: str) -> None:
    """A variable that holds no whsec_ secret is the command line's fault, not the envelope's (exit 2)."""
    from relay.errors import ConfigurationError
    from relay.logic.webhook_signing import secret_key

    try:
        secret_key(value)
    except ConfigurationError as exc:
        raise UsageError(f"--verify-with-env: environment variable {name}: {exc}") from None


def _decrypt(args: argparse.Namespace) -> int:
    from relay.receiver_sdk import InvalidDelivery, as_envelope, verify_signature

    # One without the other verifies nothing: say so rather than report the envelope or pass silently.
    if args.verify_with_env and not args.headers:
        raise UsageError("--verify-with-env needs --headers: the request's headers, as a JSON object")
    if args.headers and not args.verify_with_env:
        raise UsageError("--headers is read only to verify the signature: add --verify-with-env VAR")
    raw = file_or_stdin(args.envelope)
    keys = _keys(args) if args.key_file or args.key_env or args.secret else None
    headers = _headers(args.headers)
    signing_secret = args.verify_with_env and _environment_value(args.verify_with_env, "--verify-with-env")
    if signing_secret:
        _refuse_unless_signing_secret(signing_secret, args.verify_with_env)
    try:
        if signing_secret:
            # A stored delivery is checked whatever its age: the 5-minute window is a live receiver's
            # defence against replays, not a property of the signature.
            verify_signature(headers, raw, signing_secret, tolerance_seconds=None)
            _say_if_stale(headers)
        event = _event_bytes(raw, as_envelope(load_json(raw)), keys)
        _refuse_what_json_has_not(event)
    except (InvalidDelivery, ValueError) as exc:
        raise NeedsAttention(f"cannot open the envelope: {exc}") from None
    sys.stdout.flush()
    sys.stdout.buffer.write(event)
    sys.stdout.buffer.flush()
    return ExitCode.OK


def _say_if_stale(headers: dict[str, str]) -> None:
    from relay.logic.webhook_signing import DEFAULT_TOLERANCE_SECONDS

    signed_at = int(next(v for k, v in headers.items() if k.lower() == "webhook-timestamp"))
    age = int(time.time()) - signed_at
    if abs(age) > DEFAULT_TOLERANCE_SECONDS:
        when = f"{age} s ago" if age > 0 else f"{-age} s ahead of this clock"
        print(
            f"relay decrypt: the signature verifies; it was made {when}, so a receiver checking it now "
            f"would refuse it (more than {DEFAULT_TOLERANCE_SECONDS} s from its clock)",
            file=sys.stderr,
        )


def _event_bytes(raw: bytes, envelope: dict[str, Any], keys: list[str] | None) -> bytes:
    """What ``relay decrypt`` prints: the event exactly as Genesys sent it (parsed and written again,
    ``1E+2`` would become ``100.0``)."""
    from relay.receiver_sdk import (
        InvalidDelivery,
        decrypt_event,
        decrypt_event_bytes,
        encrypted,
        source_event_bytes,
    )

    if encrypted(envelope):
        if keys is None:
            raise UsageError("the envelope is encrypted: give its key with --key-file, --key-env or --secret")
        return decrypt_event_bytes(envelope, keys)
    try:
        return source_event_bytes(raw)
    except InvalidDelivery:  # a copy re-formatted since: its own text is gone
        event = _written_again(decrypt_event(envelope, ()))  # first: announce only what will follow
        print(
            "relay decrypt: the envelope is not laid out as the relay writes it (re-formatted?): "
            "its sourceEvent as parsed JSON follows, not Genesys' own text",
            file=sys.stderr,
        )
        return event


def _refuse_what_json_has_not(event: bytes) -> None:
    """ValueError if the event's own text spells NaN or Infinity, which Python reads but JSON has not,
    or escapes a lone surrogate (``\\ud800``), which is no Unicode text: what is printed is JSON,
    whichever way the event came (the relay itself never accepts either)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"its event holds {constant}, which is not JSON")

    parsed = json.loads(event, parse_constant=refuse)
    try:
        json.dumps(parsed, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValueError("its event holds a lone surrogate (\\ud800-\\udfff), not Unicode text") from None


def _written_again(event: dict[str, Any]) -> bytes:
    """A parsed event as strict JSON in UTF-8, or ValueError saying why it cannot be: NaN and Infinity
    (1e400 parses as one) are not JSON, and a lone surrogate (\\ud800) is not UTF-8."""
    try:
        text = json.dumps(event, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("its sourceEvent holds NaN or Infinity, which JSON cannot write") from None
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        raise ValueError(
            "its sourceEvent holds a lone surrogate (\\ud800-\\udfff), not Unicode text"
        ) from None
