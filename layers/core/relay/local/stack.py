"""The whole relay on one machine, configured from template.yaml and the fixtures file.

    with LocalStack() as stack:          # or LocalStack(fixtures_path, api_port)
        stack.api_url                    # http://127.0.0.1:<port>/local
        stack.receivers                  # target id -> DemoReceiver (url, receiver)
        stack.stack_name                 # "relay-local": `relay ... --stack-name relay-local`

Start order: moto's server and the template's resources in it (queues, tables, bucket), registered as
the CloudFormation stack ``relay-local`` with the template's outputs (so the operator commands'
``--stack-name`` works locally as on AWS), the functions' settings, a demo receiver for each
``http://127.0.0.1:0/...`` target (its URL rewritten to the receiver's port, and the receiver given
the target's signing secret and encryption key), the fake
Genesys Cloud API serving the rewritten fixtures, one config-sync run against it (so the targets reach
DynamoDB and Secrets Manager the way they do in AWS), the EventBridge stand-in (the template's rules and
Lambda's asynchronous invocation of the intake), the HTTP API adapter (which also serves EventBridge's
PutEvents at ``<api>/eventbridge/events``), and an SQS poller per dispatcher, each with its event
source's settings: the fast lane's (the FIFO FirstHopQueue, where the intake sends first attempts with
the template's default IntakeDeduplication=queue, and the DeliveryQueue, where re-sent records go), the
slow lane's (SlowDeliveryQueue) and the ordered lane's (OrderedDeliveryQueue, FIFO).
``stop()`` undoes it in reverse order.

The slow lane's dispatcher always runs in worker processes (relay.local.function_worker), spawned when
it first has records: it runs the fast lane's handler module, and an in-process handler module is one
container, so sharing it would make the two lanes wait for each other, the very thing the slow lane
is for. The fast lane's two and the ordered lane (each its own handler directory, so its own module
state) run in this process unless ``dispatcher_workers``.

Each function runs with its own ``Settings``, made from its template environment plus the local-mode
settings (moto's endpoint, dummy credentials, loopback targets) and ``environment`` overrides: in this
process inside ``settings_scope`` (relay.local.lambda_runtime), in a worker or the config-sync process
through that process's environment at launch. The stack never changes this process's environment.

Genesys EventBridge events fan out to the fixtures' EventBridge integration (``eventBridgeIntegrationId``,
by default the first integration): the stack passes it as the template parameter
``EventBridgeIntegrationId``, so ``EVENTBRIDGE_INTEGRATION_ID`` reaches the functions from the template.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from relay.cli.exit_codes import ExitCode
from relay.errors import FixturesRejected, LocalStackError
from relay.local.api_adapter import ApiAdapter
from relay.local.aws_stack import (
    LocalResources,
    MotoServer,
    create_resources,
    deployment_environment,
    local_client,
    local_mode_environment,
    register_stack,
)
from relay.local.eventbridge import LOCAL_RETRY_DELAYS_SECONDS, PUT_EVENTS_PATH, LocalEventBridge
from relay.local.fake_genesys import FakeGenesys
from relay.local.fixtures import Fixtures, FixtureTarget, wants_demo_receiver
from relay.local.function_worker import WorkerFunction
from relay.local.lambda_runtime import LocalFunction
from relay.local.poller import SqsEventSource, SqsPoller
from relay.local.receiver import Receiver
from relay.local.template import Template, load_template
from relay.models.targets import masked_url
from relay.settings import Settings, load_settings

STAGE = "local"
PREFIX = "relay"
STACK_NAME = "relay-local"  # the CloudFormation stack the local resources are registered as, in moto
DISPATCHER = "DispatcherFunction"
SLOW_DISPATCHER = "SlowDispatcherFunction"
ORDERED_DISPATCHER = "OrderedDispatcherFunction"  # the ordered lane's (FIFO) dispatcher
FIRST_HOP_DISPATCHER = "FirstHopDispatcherFunction"  # the fast lane's dispatcher on the FIFO first hop
# SQS's counts of a queue's messages, by what ``pending()`` calls them.
_PENDING_ATTRIBUTES = {
    "ApproximateNumberOfMessages": "visible",
    "ApproximateNumberOfMessagesNotVisible": "in_flight",
    "ApproximateNumberOfMessagesDelayed": "delayed",
}


@dataclass(frozen=True)
class DemoReceiver:
    """A receiver the stack started for a port-0 target."""

    integration_id: str
    target_id: str
    target_name: str
    url: str  # the target's rewritten URL
    receiver: Receiver


class LocalStack:
    def __init__(
        self,
        fixtures_path: str | Path | None = None,
        api_port: int = 0,
        *,
        template_path: str | Path | None = None,
        parameters: dict[str, str] | None = None,
        environment: dict[str, str] | None = None,
        dispatcher_workers: bool = False,
        function_output: IO[str] | None = None,
        eventbridge_retry_delays: tuple[float, ...] = LOCAL_RETRY_DELAYS_SECONDS,
        keep_received: bool = True,
    ) -> None:
        """``parameters``: template parameter overrides (e.g. DispatcherTimeoutSeconds); ``environment``:
        extra function environment set after the template's; ``dispatcher_workers``: run the dispatcher in
        warm worker processes (function_worker.WorkerFunction) writing to ``function_output``;
        ``eventbridge_retry_delays``: the waits between tries of a failed asynchronous invocation;
        ``keep_received=False``: the demo receivers keep no request (``Receiver(keep_requests=False)``),
        for a stack that runs for hours and never reads them (``relay local serve``)."""
        self.fixtures_path = fixtures_path
        self.parameters = dict(parameters or {})
        self.extra_environment = dict(environment or {})
        self.dispatcher_workers = dispatcher_workers
        self.function_output = function_output
        self.keep_received = keep_received
        # The dispatcher of the intake's first attempts, and its poller: the first hop's
        # (FirstHopDispatcherFunction) when the intake sends there (IntakeDeduplication=queue), else the
        # DeliveryQueue's (DispatcherFunction). What the demo, the benchmarks and the chaos run watch.
        self.dispatcher: LocalFunction | None = None
        # The DeliveryQueue's, when the first hop takes the first attempts: its re-sent records.
        self.requeue_dispatcher: LocalFunction | None = None
        self.requeue_poller: SqsPoller | None = None
        self.slow_dispatcher: LocalFunction | None = None  # always in worker processes (see above)
        self.api_port = api_port
        self.template_path = template_path
        self.fixtures = Fixtures.load(fixtures_path)
        self.template: Template | None = None
        self.resources: LocalResources | None = None
        self.stack_name = STACK_NAME
        self.stack_outputs: dict[str, str] = {}
        self.receivers: dict[str, DemoReceiver] = {}
        self.genesys: FakeGenesys | None = None
        self.api: ApiAdapter | None = None
        self.eventbridge: LocalEventBridge | None = None
        self.eventbridge_retry_delays = eventbridge_retry_delays
        self.poller: SqsPoller | None = None
        self.slow_poller: SqsPoller | None = None
        # The ordered lane: its dispatcher and the poller of its FIFO queue.
        self.ordered_dispatcher: LocalFunction | None = None
        self.ordered_poller: SqsPoller | None = None
        self.sqs: Any = None
        self.api_url = ""
        self.sync_report: dict[str, Any] | None = None
        # Every function's variables together (what the operator tools and ``relay`` commands need),
        # and each function's own Settings, once the resources exist.
        self.environment: dict[str, str] = {}
        self.settings: Settings | None = None
        self.function_settings: dict[str, Settings] = {}
        self._local_mode: dict[str, str] = {}
        self._exit = contextlib.ExitStack()

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Tear down in reverse start order."""
        self._exit.close()
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        sync = self._launch_sync()
        moto = MotoServer()
        moto.start()
        self._exit.callback(moto.stop)

        parameters = {"EventBridgeIntegrationId": self.fixtures.eventbridge_integration or ""}
        parameters.update({**self.parameters, "Stage": STAGE})
        self.template = load_template(self.template_path, parameters=parameters)
        self.resources = create_resources(self.template, moto.url, PREFIX)
        self._configure_functions(self.template, moto.url)

        self.fixtures = self._start_receivers(self.fixtures)

        self.genesys = FakeGenesys(self.fixtures)
        self.genesys.start()
        self._exit.callback(self.genesys.stop)
        # Config sync has been importing the Genesys SDK since the start; it runs once it has the settings.
        self._give_sync_its_settings(sync, {**self.environment, **self.genesys.settings_env()})
        self.stack_outputs = register_stack(self.resources, self.stack_name)
        self._finish_sync(sync)

        self.sqs = local_client("sqs", moto.url)
        self.eventbridge = LocalEventBridge(
            self.template,
            sqs=self.sqs,
            settings=self.function_settings,
            retry_delays=self.eventbridge_retry_delays,
        )
        self._exit.callback(self.eventbridge.stop)

        self.api = ApiAdapter(
            self.template,
            self.api_port,
            settings=self.function_settings,
            endpoints={PUT_EVENTS_PATH: self.eventbridge.handle_http},
        )
        self.api_url = self.api.start()
        self._exit.callback(self.api.stop)

        if self.environment.get("FIRST_HOP_QUEUE_URL") and FIRST_HOP_DISPATCHER in self.template.resources:
            self.dispatcher, self.poller = self._start_consumer(self.template, FIRST_HOP_DISPATCHER)
            self.requeue_dispatcher, self.requeue_poller = self._start_consumer(self.template, DISPATCHER)
        else:
            self.dispatcher, self.poller = self._start_consumer(self.template, DISPATCHER)
        if SLOW_DISPATCHER in self.template.resources:
            self.slow_dispatcher, self.slow_poller = self._start_consumer(
                self.template, SLOW_DISPATCHER, workers=True
            )
        if ORDERED_DISPATCHER in self.template.resources:
            self.ordered_dispatcher, self.ordered_poller = self._start_consumer(
                self.template, ORDERED_DISPATCHER
            )
        # Runs first at stop: every poller is told to stop before any is waited for, as each may be
        # in a long poll of its own.
        self._exit.callback(self._tell_pollers_to_stop)

    def _tell_pollers_to_stop(self) -> None:
        for poller in self.pollers:
            poller.stop_receiving()

    def stop_pollers(self) -> None:
        """Every poller stops receiving (all told first: each may be in a long poll of its own), then
        waits for its invocations in flight: what ``pending()`` shows afterwards stays in the queues.
        ``stop()`` does this first anyway; `relay local serve` does it early, to report what is left."""
        self._tell_pollers_to_stop()
        for poller in self.pollers:
            poller.stop()

    def _start_consumer(
        self, template: Template, logical_id: str, *, workers: bool = False
    ) -> tuple[LocalFunction, SqsPoller]:
        """A dispatcher function (in this process, or in warm worker processes when ``workers`` or
        ``dispatcher_workers``) and its SQS poller."""
        source = SqsEventSource.from_template(template, logical_id)
        dispatcher: LocalFunction
        if workers or self.dispatcher_workers:
            dispatcher = self._workers(template, logical_id, source)
        else:
            dispatcher = LocalFunction.from_template(
                template, logical_id, settings=self.function_settings[logical_id]
            )
        return dispatcher, self._poll(source, dispatcher)

    # --- steps -----------------------------------------------------------------------------------
    def _workers(self, template: Template, logical_id: str, source: SqsEventSource) -> WorkerFunction:
        """The function in warm worker processes, at most its event source's maximum concurrency."""
        workers = WorkerFunction.from_template(
            template,
            logical_id,
            max_workers=source.maximum_concurrency,
            output=self.function_output,
            environment=self._function_environment(template, logical_id),
        )
        self._exit.callback(workers.close)
        return workers

    def _poll(self, source: SqsEventSource, function: LocalFunction) -> SqsPoller:
        poller = SqsPoller(source, function, self.sqs)
        poller.start()
        self._exit.callback(poller.stop)
        return poller

    def _start_receivers(self, fixtures: Fixtures) -> Fixtures:
        """Start a receiver per ``http://127.0.0.1:0/...`` target; return the fixtures with URLs rewritten."""
        doc = fixtures.to_json()
        for integration, raw_integration in zip(fixtures.integrations, doc["integrations"], strict=True):
            for target, raw_target in zip(integration.targets, raw_integration["targets"], strict=True):
                if not wants_demo_receiver(target.url):
                    continue
                # The receiver serves this one target, so its secrets hold for every path: keyed by the
                # URL's path, a path the request line carries percent-encoded (a space, "ü") matched
                # none, and its deliveries went unverified, undecrypted and counted lost.
                receiver = Receiver(
                    signing_secrets={"*": [target.signing_secret]} if target.signing_secret else None,
                    encryption_secrets={"*": [target.encryption_key]} if target.encryption_key else None,
                    keep_requests=self.keep_received,
                )
                base = receiver.start()
                self._exit.callback(receiver.stop)
                url = with_port(target.url, urlsplit(base).port or 0)
                raw_target["url"] = url
                self.receivers[target.id] = DemoReceiver(
                    integration.id, target.id, target.name, url, receiver
                )
        return Fixtures.model_validate(doc)

    def _configure_functions(self, template: Template, endpoint_url: str) -> None:
        self._local_mode = local_mode_environment(endpoint_url)
        self.function_settings = {
            logical_id: load_settings(self._function_environment(template, logical_id))
            for logical_id in template.resources_of_type("AWS::Serverless::Function")
        }
        self.environment = {
            **deployment_environment(template),
            **self._local_mode,
            **self.extra_environment,
        }
        self.settings = load_settings(self.environment)

    def _function_environment(self, template: Template, logical_id: str) -> dict[str, str]:
        """The function's template environment, the local-mode settings, then the caller's overrides."""
        return {**template.function(logical_id).environment, **self._local_mode, **self.extra_environment}

    def _launch_sync(self) -> subprocess.Popen[str]:
        """One config-sync run, in its own process as the scheduled function runs in its own container,
        started before the stack so that it imports the Genesys SDK meanwhile (relay.local.sync_process).

        It is ``relay targets sync`` (relay.wiring.config_sync.run_config_sync) with the environment
        ``_give_sync_its_settings`` sends; running it apart keeps the Genesys SDK (seconds to import,
        220 MB, watchdog threads) out of the stack's process, as the intake and the dispatcher never
        load it in AWS either.
        """
        process = subprocess.Popen(
            [sys.executable, "-m", "relay.local.sync_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._exit.callback(_kill_if_running, process)  # a start that fails before the sync ends
        return process

    @staticmethod
    def _give_sync_its_settings(process: subprocess.Popen[str], environment: dict[str, str]) -> None:
        assert process.stdin is not None
        try:
            process.stdin.write(json.dumps(environment) + "\n")
            process.stdin.flush()
        except OSError:
            pass  # it has already exited: _finish_sync reports how
        # stdin stays open until communicate() closes it

    def _finish_sync(self, process: subprocess.Popen[str]) -> None:
        """Wait for the config sync and check it took every target the fixtures did not disable."""
        try:
            stdout, stderr = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            raise LocalStackError("config sync did not finish within 180 s") from None
        report = _last_json_line(stdout)
        rejected = report.get("rejected", []) if report else []
        # A fixtures target with "enabled": false is disabled in the fake Genesys, and sync refuses to
        # store a disabled config (docs/config-sync.md): expected, and that target receives nothing.
        disabled = {t.id for i in self.fixtures.integrations for t in i.targets if not t.enabled}
        unexpected = [r for r in rejected if not (r.get("kind") == "target" and r.get("id") in disabled)]
        expected_exit = ExitCode.ATTENTION if rejected else ExitCode.OK
        if report is not None and unexpected and process.returncode == expected_exit:
            reasons = "; ".join(f"{r.get('kind')} {r.get('id')}: {r.get('reason')}" for r in unexpected)
            raise FixturesRejected(f"config sync refused {reasons}")
        if report is None or process.returncode != expected_exit:
            detail = stderr.strip().splitlines()[-1:] or ["no output"]
            raise LocalStackError(f"config sync failed (exit {process.returncode}): {detail}")
        self.sync_report = report

    # --- what the stack serves -------------------------------------------------------------------
    @property
    def pollers(self) -> list[SqsPoller]:
        """Every running event source: the fast lane's (the first hop's and the DeliveryQueue's), the
        slow lane's, the ordered lane's."""
        lanes = (self.poller, self.requeue_poller, self.slow_poller, self.ordered_poller)
        return [p for p in lanes if p is not None]

    def warm_up_dispatchers(self, *, slow_lane: bool = False) -> None:
        """Start every container the fast lane's dispatcher may run (and the slow lane's, if asked)
        when they run in worker processes, and invoke each once with an empty batch: their cold starts
        happen now, not in front of the first events, as under steady traffic in AWS. `relay local
        serve` does this before it says ready; benchmarks before their clock."""
        for function in (self.dispatcher, self.slow_dispatcher if slow_lane else None):
            if isinstance(function, WorkerFunction):
                function.warm_up({"Records": []})

    def deliveries_pending(self) -> bool:
        """True while a delivery queue holds a message (visible, in flight or delayed) or a dispatcher
        runs an invocation: what waiting for the stack to settle waits on."""
        return any(any(counts.values()) for counts in self.pending().values())

    def pending(self) -> dict[str, dict[str, int]]:
        """Per delivery queue (by name): the invocations running on it and its messages visible, in
        flight and delayed. What a run that did not settle reports."""
        found: dict[str, dict[str, int]] = {}
        for poller in self.pollers:
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=poller.source.queue_url, AttributeNames=list(_PENDING_ATTRIBUTES)
            )["Attributes"]
            found[poller.source.queue_url.rsplit("/", 1)[-1]] = {
                "invocations": poller.stats().in_flight,
                **{label: int(attributes.get(name, 0)) for name, label in _PENDING_ATTRIBUTES.items()},
            }
        return found

    def wait_settled(self, timeout_seconds: float, give_up: threading.Event | None = None) -> bool:
        """Until ``deliveries_pending`` is false at three looks in a row, half a second apart (True), or
        ``timeout_seconds`` pass or ``give_up`` is set (False): a single quiet look can fall between a
        receive and its invocation."""
        give_up = give_up or threading.Event()
        deadline = time.monotonic() + timeout_seconds
        quiet = 0
        while time.monotonic() < deadline and not give_up.is_set():
            quiet = 0 if self.deliveries_pending() else quiet + 1
            if quiet >= 3:
                return True
            give_up.wait(0.5)  # the interval between looks at the queues, not a synchronisation
        return False

    def webhook_url(self, integration_id: str) -> str:
        return f"{self.api_url}/webhooks/{integration_id}"

    @property
    def put_events_url(self) -> str:
        return f"{self.api_url}{PUT_EVENTS_PATH}"

    def describe(self) -> dict[str, Any]:
        """Where everything listens (no secrets): the ``serve`` ready line."""
        return {
            "api": self.api_url,
            "webhooks": {i.id: self.webhook_url(i.id) for i in self.fixtures.integrations},
            "eventbridge": self._describe_eventbridge(),
            "receivers": receivers_by_name(self.receivers.values()),
            "aws_endpoint": self.resources.endpoint_url if self.resources else None,
            "stack_name": self.stack_name,
            "genesys_api": self.genesys.base_url if self.genesys else None,
        }

    def _describe_eventbridge(self) -> dict[str, Any] | None:
        if self.eventbridge is None or not self.eventbridge.rules:
            return None
        rule = self.eventbridge.rules[0]
        return {
            "put_events": self.put_events_url,
            "event_bus": rule.event_bus,
            "integration": self.fixtures.eventbridge_integration,
            "on_failure_queue": rule.invoke_config.on_failure_queue_url,
            "rule_dead_letter_queue": rule.dead_letter_queue_url,
        }


def receivers_by_name(receivers: Iterable[DemoReceiver]) -> dict[str, str]:
    """Each receiver's URL (masked) under its target's name; a name several targets share (Genesys allows it)
    gets each one's target id appended, ``dup (0a0a...)``, so that every receiver shows."""
    receivers = list(receivers)
    shared = Counter(r.target_name for r in receivers)
    return {  # the ready line carries no secrets: a token in a URL's query is masked, as targets list does
        r.target_name if shared[r.target_name] == 1 else f"{r.target_name} ({r.target_id})": masked_url(r.url)
        for r in receivers
    }


def _kill_if_running(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    # Only the port changes: credentials in it stay, for config sync to refuse as anywhere else.
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo + '@' if userinfo else ''}{parts.hostname}:{port}"))


def targets_by_integration(fixtures: Fixtures) -> dict[str, list[FixtureTarget]]:
    """The enabled targets each integration delivers to."""
    return {i.id: [t for t in i.targets if t.enabled] for i in fixtures.integrations}
