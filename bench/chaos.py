"""``make chaos``: 300+ Genesys-signed events through the local stack while things break; one JSON line.

The scenario (docs/chaos.md):

- one integration, two targets, both signed (whsec_), authenticated (bearer / basic) and encrypted;
- target "flaky": its receiver answers about 30 % of requests with a fault (5xx, a hang past the
  dispatcher's read timeout, a dropped connection), and 429 with Retry-After beyond its own hidden
  limit of ``HIDDEN_LIMIT_PER_SECOND`` (throttling depends on the rate, as a real receiver's does);
- target "dead": its receiver goes down entirely (every connection accepted, counted and dropped)
  for ``DOWN_SECONDS``, then comes back;
- the dispatcher runs in warm worker processes (relay.local.function_worker), and one worker is
  SIGKILLed in the middle of a batch: the batch fails whole and its records come back after the
  queue's visibility timeout (90 s with DispatcherTimeoutSeconds 15).

Then it waits until the delivery queue is drained and the poller idle, and counts from what the
receivers and the DLQ actually hold (never from the relay's own reports): delivered and
dead-lettered (event, target) pairs, lost pairs (neither), duplicates, the dead target's breaker
history (polled from the BreakerTable) and the requests it got while open against the probe
allowance, the flaky target's deliveries while the dead one was down, the killed invocation's
records, and a scan of every captured log line and audit object for the secrets in play.

Run: ``make chaos`` or ``.venv/bin/python bench/chaos.py [--events N] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import requests

from relay.adapters.breaker_store import DynamoBreakerStore
from relay.local.aws_stack import local_client
from relay.local.function_worker import WorkerFunction
from relay.local.log import LOCAL_STACK_SERVICE
from relay.local.poller import PollerStats
from relay.local.receiver import Behaviour, Receiver
from relay.local.stack import LocalStack
from relay.logic.crypto import derive_key, parse_salt
from relay.logic.signature import sign
from relay.models.breaker import Phase, target_key
from relay.models.delivery import DeliveryTask
from relay.models.secrets import SecretKind, secret_name
from relay.wiring import breaker_store, secret_store

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "events" / "openmessaging_text.json"

EVENTS = 300
# Template parameters: a 15 s dispatcher timeout makes the queue's visibility timeout 90 s (6 x), so a
# killed batch comes back within the run. The rest of the template's settings stay as deployed
# (BatchSize 10, window 0, MaximumConcurrency 5 per lane, MaxReceiveCount 10).
PARAMETERS = {"DispatcherTimeoutSeconds": "15"}
READ_TIMEOUT_SECONDS = 1.5
BREAKER_RESET_SECONDS = 2.0
BREAKER_MAX_RESET_SECONDS = 8.0
ENVIRONMENT = {
    "READ_TIMEOUT_SECONDS": str(READ_TIMEOUT_SECONDS),
    "CONNECT_TIMEOUT_SECONDS": "1",
    "BREAKER_RESET_SECONDS": str(BREAKER_RESET_SECONDS),
    "BREAKER_MAX_RESET_SECONDS": str(BREAKER_MAX_RESET_SECONDS),
}
# 8 planned attempts stay below MaxReceiveCount (10): the redrive backstop never pre-empts the relay.
RETRY_MATRIX = {"attempts": 8, "baseIntervalMs": 200, "maxIntervalMs": 2000, "multiplier": 2}
FAULT_RATE = 0.3
# The flaky receiver's own limit: 429 beyond it. Random 429s would tell the relay's adaptive rate limit
# (docs/dispatcher.md) to slow down whatever the rate, which is not what a throttle means.
HIDDEN_LIMIT_PER_SECOND = 10.0
# The dead target goes down once it has received this many requests (deliveries are under way: the
# workers' cold starts are behind), for DOWN_SECONDS. From then on the first dispatcher worker busy for
# KILL_MIN_BUSY_SECONDS with a batch of at least KILL_MIN_RECORDS records is killed.
DOWN_AFTER_REQUESTS = 10
DOWN_SECONDS = 15.0
KILL_MIN_BUSY_SECONDS = 0.3
KILL_MIN_RECORDS = 5
SETTLE_TIMEOUT_SECONDS = 400.0
SENDERS = 4
LOST_TRAILS = 5  # lost pairs whose trail the summary shows
# The fields of a lost pair's audit lines the summary shows, in this order.
TRAIL_AUDIT_FIELDS = ("startedAt", "messageId", "attempt", "outcome", "status", "errorCode", "breakerState")
MARKER_PREFIX = "CHAOSMARK-"
MARKER = re.compile(re.escape(MARKER_PREFIX) + r"[0-9a-f]{32}")


# --- the fixtures (written at run time, fresh secrets every run) -----------------------------------------


@dataclass(frozen=True)
class ChaosSecrets:
    signature: str
    flaky_bearer: str
    dead_user: str
    dead_password: str
    flaky_signing: str
    dead_signing: str
    flaky_encryption: str
    dead_encryption: str


def _whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_secrets() -> ChaosSecrets:
    return ChaosSecrets(
        signature="chaos-sig-" + secrets.token_urlsafe(24),
        flaky_bearer="chaos-bearer-" + secrets.token_urlsafe(24),
        dead_user="chaos",
        dead_password="chaos-pw-" + secrets.token_urlsafe(18),
        flaky_signing=_whsec(),
        dead_signing=_whsec(),
        flaky_encryption="chaos-enc-" + secrets.token_urlsafe(24),
        dead_encryption="chaos-enc-" + secrets.token_urlsafe(24),
    )


def fixtures_document(keys: ChaosSecrets, integration_id: str, flaky_id: str, dead_id: str) -> dict[str, Any]:
    return {
        "integrations": [
            {
                "id": integration_id,
                "name": "Chaos Open Channel",
                "signatureSecret": keys.signature,
                "targets": [
                    {
                        "id": flaky_id,
                        "name": "flaky",
                        "url": "http://127.0.0.1:0/hooks/flaky",
                        "security": {"type": "bearer", "value": keys.flaky_bearer},
                        "signingSecret": keys.flaky_signing,
                        "encryptionKey": keys.flaky_encryption,
                        "retryMatrix": RETRY_MATRIX,
                    },
                    {
                        "id": dead_id,
                        "name": "dead",
                        "url": "http://127.0.0.1:0/hooks/dead",
                        "security": {"type": "basic", "value": f"{keys.dead_user}:{keys.dead_password}"},
                        "signingSecret": keys.dead_signing,
                        "encryptionKey": keys.dead_encryption,
                        "retryMatrix": RETRY_MATRIX,
                    },
                ],
            }
        ]
    }


# --- capturing every line the functions and the stack write ---------------------------------------------


@contextmanager
def captured_output(function_log: IO[str], stack_log: IO[str]) -> Iterator[IO[str]]:
    """Divert stdout (powertools logs, EMF) to ``function_log`` and stderr and logging to ``stack_log``
    for the duration; yield the real stdout (for the one JSON line)."""
    real_out, real_err = sys.stdout, sys.stderr
    swaps = {id(real_out): function_log, id(real_err): stack_log}
    moved: list[tuple[logging.StreamHandler[Any], IO[str]]] = []
    sys.stdout, sys.stderr = function_log, stack_log
    root_handler = logging.StreamHandler(stack_log)
    logging.getLogger().addHandler(root_handler)
    logging.getLogger(LOCAL_STACK_SERVICE).setLevel(logging.INFO)
    try:
        yield real_out
    finally:
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, logging.StreamHandler) and handler is not root_handler:
                    original = {id(v): k for k, v in swaps.items()}.get(id(handler.stream))
                    if original is not None:
                        moved.append((handler, handler.stream))
                        handler.setStream(real_out if original == id(real_out) else real_err)
        logging.getLogger().removeHandler(root_handler)
        sys.stdout, sys.stderr = real_out, real_err
        function_log.flush()
        stack_log.flush()


def divert_existing_handlers(to_out: IO[str], real_out: IO[str]) -> None:
    """Point logging handlers created before the diversion (bound to the real stdout) at ``to_out``."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and handler.stream is real_out:
                handler.setStream(to_out)


# --- observation ------------------------------------------------------------------------------------------


@dataclass
class BreakerWatch:
    """Polls one target's breaker item and keeps every change it saw: (time.time(), phase, trips)."""

    store: DynamoBreakerStore
    key: str
    interval: float = 0.1
    history: list[tuple[float, str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"breaker-watch-{self.key}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                state = self.store.load(self.key)
                seen = (state.phase.value, state.trips)
                if not self.history or (self.history[-1][1], self.history[-1][2]) != seen:
                    self.history.append((time.time(), *seen))
            except Exception:  # noqa: BLE001 - a missed look is a gap in the history, not a failure
                pass
            self._stop.wait(self.interval)

    def open_intervals(self, until: float) -> list[tuple[float, float]]:
        """[start, end) spans during which the breaker was seen open or half-open."""
        spans: list[tuple[float, float]] = []
        start: float | None = None
        for at, phase, _ in self.history:
            if phase != Phase.CLOSED.value and start is None:
                start = at
            elif phase == Phase.CLOSED.value and start is not None:
                spans.append((start, at))
                start = None
        if start is not None:
            spans.append((start, until))
        return spans

    def trips_from_closed(self) -> int:
        phases = [Phase.CLOSED.value, *(phase for _, phase, _ in self.history)]
        return sum(1 for a, b in zip(phases, phases[1:], strict=False) if a == Phase.CLOSED.value and b != a)


@dataclass
class Sent:
    event_id: str
    marker: str
    body: bytes
    headers: dict[str, str]
    status: int
    sent_at: float


class ChaosRun:
    """The stack with the chaos fixtures, started; ``execute()`` runs the scenario and returns the summary.

    The stack stays up afterwards (tests replay and tamper requests through it); ``close()`` stops it.
    """

    def __init__(
        self, workdir: Path, events: int = EVENTS, *, visibility_timeout_seconds: int | None = None
    ) -> None:
        """``visibility_timeout_seconds``: the delivery queues' visibility timeout, which is when the
        killed batch comes back; None keeps the template's (6 x the dispatcher timeout, 90 s)."""
        self.workdir = workdir
        self.events = events
        self.visibility_timeout_seconds = visibility_timeout_seconds
        self.keys = new_secrets()
        self.integration_id = str(uuid.uuid4())
        self.flaky_id = str(uuid.uuid4())
        self.dead_id = str(uuid.uuid4())
        self.fixtures_path = workdir / "chaos-fixtures.json"
        self.fixtures_path.write_text(
            json.dumps(fixtures_document(self.keys, self.integration_id, self.flaky_id, self.dead_id))
        )
        self.function_log_path = workdir / "functions.log"
        self.stack_log_path = workdir / "stack.log"
        self.function_log: IO[str] = self.function_log_path.open("a", encoding="utf-8")
        self.stack_log: IO[str] = self.stack_log_path.open("a", encoding="utf-8")
        self.sent: list[Sent] = []
        self.stack: LocalStack | None = None
        self._capture = captured_output(self.function_log, self.stack_log)
        self.real_stdout: IO[str] = sys.stdout
        self.timeline: dict[str, float] = {}

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> ChaosRun:
        self.real_stdout = self._capture.__enter__()
        divert_existing_handlers(self.function_log, self.real_stdout)
        self.stack = LocalStack(
            self.fixtures_path,
            parameters=PARAMETERS,
            environment=ENVIRONMENT,
            dispatcher_workers=True,
            function_output=self.function_log,
        )
        self.stack.start()
        divert_existing_handlers(self.function_log, self.real_stdout)
        if self.visibility_timeout_seconds is not None:
            self._set_delivery_visibility(self.visibility_timeout_seconds)
        return self

    def _set_delivery_visibility(self, seconds: int) -> None:
        assert self.stack is not None and self.stack.resources is not None
        resources = self.stack.resources
        # Above the dispatcher's 15 s timeout, so a batch still running is never handed out again.
        assert seconds > int(PARAMETERS["DispatcherTimeoutSeconds"]), seconds
        for url in (resources.delivery_queue_url, resources.slow_delivery_queue_url):
            if url:
                self.stack.sqs.set_queue_attributes(
                    QueueUrl=url, Attributes={"VisibilityTimeout": str(seconds)}
                )

    def visibility_timeout(self) -> int:
        """The delivery queue's visibility timeout, as the queue reports it."""
        assert self.stack is not None and self.stack.resources is not None
        attributes = self.stack.sqs.get_queue_attributes(
            QueueUrl=self.stack.resources.delivery_queue_url, AttributeNames=["VisibilityTimeout"]
        )["Attributes"]
        return int(attributes["VisibilityTimeout"])

    def close(self) -> None:
        try:
            if self.stack is not None:
                self.stack.stop()
        finally:
            self._capture.__exit__(None, None, None)
            self.function_log.close()
            self.stack_log.close()

    def __enter__(self) -> ChaosRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- pieces ------------------------------------------------------------------------------------
    @property
    def workers(self) -> WorkerFunction:
        assert self.stack is not None and isinstance(self.stack.dispatcher, WorkerFunction)
        return self.stack.dispatcher

    def receiver(self, target_id: str) -> Receiver:
        assert self.stack is not None
        return self.stack.receivers[target_id].receiver

    def signed_request(self) -> tuple[str, str, bytes, dict[str, str]]:
        """(event id, marker, body, headers) of a fresh Text event signed like Genesys."""
        event: dict[str, Any] = json.loads(SAMPLE.read_text())
        event_id = uuid.uuid4().hex
        marker = MARKER_PREFIX + uuid.uuid4().hex
        event["id"] = event_id
        event["channel"]["id"] = self.integration_id
        event["channel"]["messageId"] = event_id
        event["channel"]["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        event["text"] = f"chaos run {marker}: confidential text the relay must never log"
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "relay-chaos",
            "X-Hub-Signature-256": sign(body, self.keys.signature),
        }
        return event_id, marker, body, headers

    def post(self, body: bytes, headers: dict[str, str]) -> requests.Response:
        assert self.stack is not None
        return requests.post(
            self.stack.webhook_url(self.integration_id), data=body, headers=headers, timeout=30
        )

    # --- the scenario ------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        assert self.stack is not None and self.stack.resources is not None
        started = time.monotonic()
        flaky, dead = self.receiver(self.flaky_id), self.receiver(self.dead_id)
        flaky.behaviour = Behaviour(
            fault_rate=FAULT_RATE,
            faults=("5xx", "timeout", "drop"),
            hidden_limit_per_second=HIDDEN_LIMIT_PER_SECOND,
            retry_after_seconds=1,
            hang_seconds=READ_TIMEOUT_SECONDS + 1.5,
        )
        assert self.stack.settings is not None
        store = breaker_store(self.stack.settings)
        watches = {
            "dead": BreakerWatch(store, target_key(self.integration_id, self.dead_id)),
            "flaky": BreakerWatch(store, target_key(self.integration_id, self.flaky_id)),
        }
        for watch in watches.values():
            watch.start()

        sender = threading.Thread(target=self._send_all, name="chaos-sender", daemon=True)
        self.timeline["send_start"] = time.time()
        sender.start()
        self._chaos(dead)
        sender.join()
        self.timeline["send_end"] = time.time()
        assert self.stack is not None
        drained = self.stack.wait_settled(SETTLE_TIMEOUT_SECONDS)
        self.timeline["settled"] = time.time()
        for watch in watches.values():
            watch.stop()
        summary = self._summary(watches, drained)
        summary["elapsed_s"] = round(time.monotonic() - started, 1)
        return summary

    def _send_all(self) -> None:
        """Post the events from SENDERS connections at once (Genesys posts concurrently too)."""
        remaining = iter(range(self.events))
        lock = threading.Lock()

        def send() -> None:
            assert self.stack is not None
            url = self.stack.webhook_url(self.integration_id)
            with requests.Session() as session:
                while True:
                    with lock:
                        if next(remaining, None) is None:
                            return
                    event_id, marker, body, headers = self.signed_request()
                    sent_at = time.time()
                    try:
                        status = session.post(url, data=body, headers=headers, timeout=30).status_code
                    except requests.RequestException:
                        status = 0
                    with lock:
                        self.sent.append(Sent(event_id, marker, body, headers, status, sent_at))

        senders = [threading.Thread(target=send, name=f"chaos-send-{n}") for n in range(SENDERS)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()

    def _chaos(self, dead: Receiver) -> None:
        """Take the dead target down and bring it back; kill one busy dispatcher worker mid-batch."""
        begin = time.monotonic()
        up_at = begin + 300.0  # set when the outage starts
        while True:
            now = time.monotonic()
            if now >= up_at and (self.workers.killed or now > up_at + 120):
                break  # no busy worker to kill for 2 minutes: the summary shows killed_invocations 0
            if "down_start" not in self.timeline and (
                len(dead.requests) >= DOWN_AFTER_REQUESTS or now > begin + 120
            ):
                dead.behaviour.up = False
                self.timeline["down_start"] = time.time()
                up_at = now + DOWN_SECONDS
            if now >= up_at and "down_end" not in self.timeline:
                dead.behaviour.up = True
                self.timeline["down_end"] = time.time()
            if "down_start" in self.timeline and not self.workers.killed:
                self.workers.kill_busy_worker(
                    min_busy_seconds=KILL_MIN_BUSY_SECONDS, min_records=KILL_MIN_RECORDS if now < up_at else 1
                )
            time.sleep(0.05)
        dead.behaviour.up = True
        self.timeline.setdefault("down_end", time.time())

    # --- what actually happened --------------------------------------------------------------------
    def dead_letter_pairs(self) -> tuple[set[tuple[str, str]], Counter[str]]:
        """(event id, target id) of every DeliveryTask in the DLQ, and the DLQ reasons."""
        assert self.stack is not None and self.stack.resources is not None
        pairs: set[tuple[str, str]] = set()
        reasons: Counter[str] = Counter()
        while True:
            messages = self.stack.sqs.receive_message(
                QueueUrl=self.stack.resources.dead_letter_queue_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=600,  # read each once; they stay in the DLQ
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not messages:
                return pairs, reasons
            for message in messages:
                attrs = message.get("MessageAttributes") or {}
                reasons[(attrs.get("relay-dlq-reason") or {}).get("StringValue", "redrive-backstop")] += 1
                try:
                    task = DeliveryTask.model_validate_json(message["Body"])
                except ValueError:
                    reasons["not-a-delivery-task"] += 1
                    continue
                pairs.add((task.event_id, task.target_id))

    def delivered(self) -> dict[tuple[str, str], float]:
        """(event id, target id) -> when its receiver first answered 2xx to a correctly signed request."""
        first: dict[tuple[str, str], float] = {}
        for target_id in (self.flaky_id, self.dead_id):
            for request in self.receiver(target_id).deliveries:
                event_id = (request.event or {}).get("id")
                if event_id is None or request.signature_valid is not True:
                    continue
                key = (str(event_id), target_id)
                first[key] = min(first.get(key, request.received_at), request.received_at)
        return first

    def audit_objects(self) -> list[tuple[str, bytes]]:
        assert self.stack is not None and self.stack.resources is not None
        client = local_client("s3", self.stack.resources.endpoint_url)
        found: list[tuple[str, bytes]] = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.stack.resources.audit_bucket, Prefix="audit/"):
            for entry in page.get("Contents", []):
                body = client.get_object(Bucket=self.stack.resources.audit_bucket, Key=entry["Key"])["Body"]
                found.append((entry["Key"], body.read()))
        return found

    def secrets_in_play(self) -> dict[str, str]:
        """Every secret value of the run, by label (never printed; the summary shows only counts)."""
        assert self.stack is not None and self.stack.genesys is not None and self.stack.settings is not None
        settings = self.stack.settings
        secrets_manager = secret_store(settings)
        keys = self.keys
        found: dict[str, str] = {
            "genesys_client_secret": self.stack.genesys.client_secret,
            "signature_secret": keys.signature,
            "flaky_bearer": keys.flaky_bearer,
            "dead_basic_password": keys.dead_password,
            "dead_basic_b64": base64.b64encode(f"{keys.dead_user}:{keys.dead_password}".encode()).decode(),
            "flaky_encryption_key": keys.flaky_encryption,
            "dead_encryption_key": keys.dead_encryption,
        }
        for name, whsec in (("flaky", keys.flaky_signing), ("dead", keys.dead_signing)):
            found[f"{name}_signing_secret"] = whsec
            found[f"{name}_signing_key_b64"] = whsec.removeprefix("whsec_")
        for name, target_id in (("flaky", self.flaky_id), ("dead", self.dead_id)):
            stored = secrets_manager.get(
                secret_name(settings.secrets_prefix, SecretKind.ENCRYPTION, target_id)
            )
            derived = derive_key(stored.current.get_secret_value(), parse_salt(stored.salt, what="key"))
            found[f"{name}_derived_key_b64"] = base64.b64encode(derived).decode()
            found[f"{name}_derived_key_hex"] = derived.hex()
        return found

    def count_hits(self, texts: list[str], secret_values: dict[str, str] | None = None) -> Counter[str]:
        """label -> how many of ``texts`` contain that secret; markers count per occurrence."""
        values = secret_values if secret_values is not None else self.secrets_in_play()
        markers = {s.marker for s in self.sent}
        hits: Counter[str] = Counter()
        for text in texts:
            for label, value in values.items():
                if value in text:
                    hits[label] += 1
            hits["event_plaintext_marker"] += sum(1 for m in MARKER.findall(text) if m in markers)
        return hits

    def security_scan(self) -> dict[str, Any]:
        """Every captured line and audit object, searched for every secret and every event's marker."""
        assert self.stack is not None
        self.function_log.flush()
        self.stack_log.flush()
        texts: list[tuple[str, str]] = []
        for path in (self.function_log_path, self.stack_log_path):
            texts += [
                (path.name, line) for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            ]
        texts.append(("sync-report", json.dumps(self.stack.sync_report)))
        audits = self.audit_objects()
        texts += [(key, body.decode("utf-8", errors="replace")) for key, body in audits]
        secret_values = self.secrets_in_play()
        markers = {s.marker for s in self.sent}
        hits = self.count_hits([text for _, text in texts], secret_values)
        return {
            "log_lines_scanned": sum(1 for source, _ in texts if source.endswith(".log")),
            "audit_objects_scanned": len(audits),
            "audit_records_scanned": sum(len(body.splitlines()) for _, body in audits),
            "secrets_checked": len(secret_values),
            "markers_checked": len(markers),
            "hits": {label: count for label, count in sorted(hits.items()) if count},
            "total_hits": sum(hits.values()),
        }

    def _summary(self, watches: dict[str, BreakerWatch], drained: bool) -> dict[str, Any]:
        assert self.stack is not None and self.stack.poller is not None and self.stack.template is not None
        accepted = [s for s in self.sent if 200 <= s.status < 300]
        targets = {"flaky": self.flaky_id, "dead": self.dead_id}
        expected = {(s.event_id, t) for s in accepted for t in targets.values()}
        delivered = self.delivered()
        dead_lettered, reasons = self.dead_letter_pairs()
        lost = expected - set(delivered) - dead_lettered
        now = time.time()

        per_target: dict[str, Any] = {}
        for name, target_id in targets.items():
            receiver = self.receiver(target_id)
            answered = Counter(
                "dropped-or-hung"
                if r.answered is None
                else f"{r.answered // 100}xx"
                if r.answered != 429
                else "429"
                for r in receiver.requests
            )
            per_target[name] = {
                "delivered": sum(1 for (_, t) in delivered if t == target_id and (_, t) in expected),
                "dead_lettered": sum(1 for (_, t) in dead_lettered if t == target_id),
                "requests": len(receiver.requests),
                "answers": dict(sorted(answered.items())),
                "duplicates": sum(1 for d in receiver.deliveries if d.duplicate),
            }

        down_start, down_end = self.timeline.get("down_start", 0.0), self.timeline.get("down_end", 0.0)
        dead_requests = self.receiver(self.dead_id).requests
        flaky_deliveries = self.receiver(self.flaky_id).deliveries
        watch = watches["dead"]
        spans = watch.open_intervals(until=now)
        open_seconds = sum(end - start for start, end in spans)
        while_open = sum(1 for r in dead_requests if any(a <= r.received_at < b for a, b in spans))
        source = self.stack.poller.source
        trips = watch.trips_from_closed()
        stragglers = trips * (source.maximum_concurrency - 1) * source.batch_size
        probes_allowed = len(spans) + int(open_seconds // BREAKER_RESET_SECONDS)
        after_probe = len(spans) * (source.batch_size - 1)
        allowance = stragglers + probes_allowed + after_probe
        audit_records = self.audit_records()
        probe_lines = self._probe_lines(audit_records, self.dead_id)

        killed = self.workers.killed
        killed_pairs: set[tuple[str, str]] = set()
        for invocation in killed:
            for record in invocation.event.get("Records", []):
                try:
                    task = DeliveryTask.model_validate_json(record["body"])
                except ValueError:
                    continue
                killed_pairs.add((task.event_id, task.target_id))
        killed_at = killed[0].killed_at if killed else now
        later = {
            pair
            for pair in killed_pairs
            if any(
                r.received_at > killed_at and (r.event or {}).get("id") == pair[0]
                for r in self.receiver(pair[1]).deliveries
            )
        }
        stats = self.stack.poller.stats()
        slow = self.stack.slow_poller.stats() if self.stack.slow_poller else PollerStats()
        t0 = self.timeline["send_start"]
        return {
            "events_sent": len(self.sent),
            "accepted": len(accepted),
            "rejected_by_intake": dict(Counter(str(s.status) for s in self.sent if s not in accepted)),
            "pairs_expected": len(expected),
            "delivered": sum(1 for p in expected if p in delivered),
            "dead_lettered": len(dead_lettered & expected),
            "dlq_reasons": dict(reasons),
            "lost": len(lost),
            "duplicates": sum(t["duplicates"] for t in per_target.values()),
            "targets": per_target,
            "dead_target": {
                "down_window_s": [round(down_start - t0, 1), round(down_end - t0, 1)],
                "requests_while_down": sum(
                    1 for r in dead_requests if down_start <= r.received_at < down_end
                ),
                "breaker_opened": trips > 0,
                "breaker_history": [[round(at - t0, 2), phase, n] for at, phase, n in watch.history],
                "open_seconds": round(open_seconds, 1),
                "requests_while_open": while_open,
                "probes_sent": probe_lines,
                "allowance": {
                    "trips_from_closed": trips,
                    "in_flight_at_trip": stragglers,
                    "probes": probes_allowed,
                    "rest_of_recovering_probe_batch": after_probe,
                    "total": allowance,
                },
                "within_allowance": while_open <= allowance,
            },
            "flaky_breaker_trips": watches["flaky"].trips_from_closed(),
            "flaky_delivered_while_dead_down": sum(
                1 for r in flaky_deliveries if not r.duplicate and down_start <= r.received_at < down_end
            ),
            "kill": {
                "killed_invocations": len(killed),
                "killed_at_s": round(killed_at - t0, 1) if killed else None,
                "records": sum(len(k.event.get("Records", [])) for k in killed),
                "pairs": len(killed_pairs),
                "pairs_delivered_after_kill": len(later),
                "pairs_dead_lettered": len(killed_pairs & dead_lettered),
                "pairs_lost": len(killed_pairs & lost),
                "cold_starts": self.workers.stats.cold_starts,
                "crashed_invocations": self.workers.stats.crashed,
            },
            "poller": {
                "invocations": stats.invocations,
                "failed_invocations": stats.failed_invocations,
                "records": stats.records,
                "max_in_flight": stats.max_in_flight,
            },
            # Records the fast lane routed to the slow lane (a target measured slow), and what ran there.
            "slow_lane_poller": {
                "invocations": slow.invocations,
                "failed_invocations": slow.failed_invocations,
                "records": slow.records,
            },
            "settings": {
                "events": self.events,
                "fault_rate": FAULT_RATE,
                "hidden_limit_per_second": HIDDEN_LIMIT_PER_SECOND,
                "down_seconds": DOWN_SECONDS,
                "down_after_requests": DOWN_AFTER_REQUESTS,
                "retry_matrix": RETRY_MATRIX,
                "breaker_reset_seconds": BREAKER_RESET_SECONDS,
                "breaker_max_reset_seconds": BREAKER_MAX_RESET_SECONDS,
                "read_timeout_seconds": READ_TIMEOUT_SECONDS,
                "parameters": PARAMETERS,
                "visibility_timeout_seconds": self.visibility_timeout(),
                "batch_size": source.batch_size,
                "maximum_concurrency": source.maximum_concurrency,
            },
            "drained": drained,
            "send_s": round(self.timeline["send_end"] - t0, 1),
            # What a run that lost a pair or did not settle leaves to explain it.
            "pending": {} if drained else self.stack.pending(),
            "lost_trails": self.lost_trails(lost, targets, audit_records, t0),
            "flaky_breaker_history": [
                [round(at - t0, 2), phase, n] for at, phase, n in watches["flaky"].history
            ],
        }

    def lost_trails(
        self,
        lost: set[tuple[str, str]],
        targets: dict[str, str],
        records: list[tuple[str, dict[str, Any]]],
        t0: float,
    ) -> dict[str, Any]:
        """For the first LOST_TRAILS lost pairs, what their receiver got ([seconds into the run,
        answer]) and the audit lines the dispatcher wrote for them."""
        names = {target_id: name for name, target_id in targets.items()}
        trails: dict[str, Any] = {}
        for event_id, target_id in sorted(lost)[:LOST_TRAILS]:
            audit = [
                [record.get(field) for field in TRAIL_AUDIT_FIELDS]
                for _, record in records
                if (record.get("eventId"), record.get("targetId")) == (event_id, target_id)
            ]
            trails[f"{names[target_id]}:{event_id}"] = {
                "requests": [
                    [round(r.received_at - t0, 2), r.answered]
                    for r in self.receiver(target_id).requests
                    if (r.event or {}).get("id") == event_id
                ],
                "audit": sorted(audit, key=lambda line: str(line[0])),
            }
        return trails

    def _probe_lines(self, records: list[tuple[str, dict[str, Any]]], target_id: str) -> int:
        """Audit lines for ``target_id`` that were a half-open probe."""
        return sum(1 for key, record in records if target_id in key and record.get("probe"))

    def audit_records(self) -> list[tuple[str, dict[str, Any]]]:
        """(object key, line) for every JSON line of every audit object."""
        records: list[tuple[str, dict[str, Any]]] = []
        for key, body in self.audit_objects():
            for line in body.splitlines():
                try:
                    records.append((key, json.loads(line)))
                except ValueError:
                    continue
        return records


def ok(summary: dict[str, Any]) -> bool:
    """What the issue requires of a chaos run."""
    dead = summary["dead_target"]
    kill = summary["kill"]
    return bool(
        summary["drained"]
        and summary["events_sent"] >= EVENTS
        and summary["accepted"] == summary["events_sent"]
        and summary["lost"] == 0
        and dead["breaker_opened"]
        and dead["within_allowance"]
        and summary["flaky_delivered_while_dead_down"] > 0
        and kill["killed_invocations"] == 1
        and kill["pairs_lost"] == 0
        and kill["pairs"] > 0
        and summary["security"]["total_hits"] == 0
    )


def run(workdir: Path, events: int = EVENTS) -> dict[str, Any]:
    started = time.monotonic()
    with ChaosRun(workdir, events) as chaos:
        summary = chaos.execute()
        summary["security"] = chaos.security_scan()
        real_stdout = chaos.real_stdout
    summary["total_s"] = round(time.monotonic() - started, 1)
    summary["logs"] = {"functions": str(chaos.function_log_path), "stack": str(chaos.stack_log_path)}
    summary = {"ok": ok(summary), **summary}
    real_stdout.write(json.dumps(summary) + "\n")
    real_stdout.flush()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--workdir", type=Path, default=None, help="where the fixtures and logs go")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="relay-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    summary = run(workdir, args.events)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
