"""``relay decrypt``: open an encrypted 2.1 envelope (a DLQ body, a receiver's log, an audit sample).

    relay decrypt envelope.json --key-env RELAY_ENCRYPTION_KEY
    relay decrypt - --secret relay/prod/encryption/<targetId> < envelope.json
    relay decrypt envelope.json --key-file key.txt --verify-with-env WHSEC --headers headers.json

The key is never taken on the command line (it would show in the process list and shell history):
from a file, an environment variable, or the target's encryption secret in Secrets Manager (current
and previous versions are tried). Prints the decrypted event as JSON on stdout; exit 0 on success,
1 when the envelope cannot be opened, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_UNREADABLE = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("decrypt", help="decrypt an encrypted 2.1 envelope with the target's key")
    parser.add_argument("envelope", help="file holding the envelope JSON, or - for stdin")
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument(
        "--key-file", metavar="PATH", help="file whose content (stripped) is the encryption secret"
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
        return [Path(args.key_file).read_text().strip()]
    if args.key_env:
        value = os.environ.get(args.key_env)  # an operator's shell, not the relay's settings
        if not value:
            raise ValueError(f"environment variable {args.key_env} is not set")
        return [value]
    from relay.settings import get_settings
    from relay.wiring import secret_store

    return secret_store(get_settings()).get(args.secret).values()


def _decrypt(args: argparse.Namespace) -> int:
    from relay.receiver_sdk import InvalidDelivery, decrypt_event, verify_signature

    raw = sys.stdin.buffer.read() if args.envelope == "-" else Path(args.envelope).read_bytes()
    from relay.errors import RelayError

    try:
        keys = _keys(args)
    except (OSError, ValueError, RelayError) as exc:
        print(f"relay decrypt: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.verify_with_env:
            headers: dict[str, str] = json.loads(Path(args.headers).read_text()) if args.headers else {}
            verify_signature(headers, raw, os.environ.get(args.verify_with_env, ""))
        envelope = json.loads(raw)
        if not isinstance(envelope, dict):
            raise InvalidDelivery("not a JSON object")
        event = decrypt_event(envelope, keys)
    except (InvalidDelivery, ValueError) as exc:
        print(f"relay decrypt: cannot open the envelope: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(json.dumps(event, indent=2, ensure_ascii=False))
    return EXIT_OK
