"""moto's server on loopback, standing in for AWS, with the template's resources created in it.

The server runs as a child process (its own interpreter, so it does not compete with the relay for
the GIL) bound to 127.0.0.1. ``create_resources`` walks template.yaml and creates each queue (with
its redrive policy), table (keys, TTL) and bucket under a name prefix, then records their physical
ids so ``Template.resolve`` can evaluate ``!Ref`` and ``!GetAtt`` the way CloudFormation would.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from botocore.config import Config

from relay.adapters.aws import new_client
from relay.local.template import FunctionSpec, PhysicalResource, Template

REGION = "us-east-1"
# Settings a function tunes to its own timeout (relay.settings), never the deployment's.
FUNCTION_AWS_CALL_BOUNDS = frozenset(
    {"AWS_CONNECT_TIMEOUT_SECONDS", "AWS_READ_TIMEOUT_SECONDS", "AWS_MAX_ATTEMPTS"}
)
SLOW_QUEUE = "SlowDeliveryQueue"
# Dummy credentials: moto accepts anything, and real AWS must never be reached from local mode.
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# The child asks Linux to SIGKILL it when its parent dies, even by SIGKILL, so a killed
# ``relay local serve`` leaves no moto server behind. Done in the child itself (prctl survives exec),
# not with preexec_fn, which is unsafe once the parent has threads.
# moto's server handles requests on threads and checks a DynamoDB condition apart from the write it
# guards, so two racing conditional writes can both succeed (2 of 8 did, in 3 of 20 rounds); DynamoDB
# applies each atomically. The child serialises DynamoDB requests (they never wait on anything, unlike
# SQS long polls) so that the breaker's and the rate limits' conditional writes race as in AWS.
# FIFO queues' receives are moto's scan put right (relay.local.moto_fifo), so that a message group
# comes out in order, as from SQS.
_MOTO_CHILD = (
    "import ctypes, runpy, signal, sys, threading\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG; moto keeps nothing to flush\n"
    "from moto.moto_server.werkzeug_app import DomainDispatcherApplication as App\n"
    "_dynamodb, _call = threading.Lock(), App.__call__\n"
    "def _serialised(self, environ, start_response):\n"
    "    if not environ.get('HTTP_X_AMZ_TARGET', '').startswith('DynamoDB_'):\n"
    "        return _call(self, environ, start_response)\n"
    "    with _dynamodb:\n"
    "        return _call(self, environ, start_response)\n"
    "App.__call__ = _serialised\n"
    "if sys.argv.pop(1) == 'fifo-as-sqs':\n"
    "    from relay.local.moto_fifo import install\n"
    "    install()\n"
    "sys.argv = ['moto_server', *sys.argv[1:]]\n"
    "runpy.run_module('moto.server', run_name='__main__')\n"
)


class MotoServer:
    """``moto_server`` in a child process on 127.0.0.1; a context manager."""

    def __init__(self, port: int | None = None, *, fifo_as_sqs: bool = True) -> None:
        """``fifo_as_sqs=False``: moto's own FIFO receives (relay.local.moto_fifo), for the test that
        shows what they get wrong."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._fifo = "fifo-as-sqs" if fifo_as_sqs else "fifo-as-moto"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> str:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _MOTO_CHILD, self._fifo, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Out of the terminal's process group: Ctrl-C on `relay local serve` reaches the stack, which
            # stops its pollers before moto. It still dies with the stack (PR_SET_PDEATHSIG, above).
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=1):
                    return self.url
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.url} within {timeout} s")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        # Killed, not terminated: moto keeps nothing to flush, and its SIGTERM shutdown (the server
        # loop's poll, then unloading moto) took about a second of every stack's stop.
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalResources:
    endpoint_url: str
    prefix: str
    template: Template
    delivery_queue_url: str
    dead_letter_queue_url: str
    slow_delivery_queue_url: str | None  # the slow lane's queue (None: a template without one)
    targets_table: str
    breaker_table: str
    idempotency_table: str
    audit_bucket: str
    env: dict[str, str] = field(default_factory=dict)
    # The ordered lane's FIFO queues ("" when the template has none).
    ordered_queue_url: str = ""
    ordered_dead_letter_queue_url: str = ""
    # The intake's FIFO first hop and its FIFO dead-letter queue ("" when the template has none).
    first_hop_queue_url: str = ""
    first_hop_dead_letter_queue_url: str = ""

    def function(self, logical_id: str) -> FunctionSpec:
        return self.template.function(logical_id)


def local_client(service: str, endpoint_url: str, config: Config | None = None) -> Any:
    """A client for moto's server at ``endpoint_url``, with dummy credentials (``config``: its own
    timeouts and retries, instead of two tries)."""
    return new_client(
        service,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        region_name=REGION,
        endpoint_url=endpoint_url,
        config=config or Config(retries={"max_attempts": 2}),
    )


def create_resources(template: Template, endpoint_url: str, prefix: str) -> LocalResources:
    """Create the template's queues, tables and buckets in moto; return their names and the functions' env."""
    template.pseudo["AWS::StackName"] = prefix
    _create_queues(template, endpoint_url, prefix)
    _create_tables(template, endpoint_url, prefix)
    _create_buckets(template, endpoint_url, prefix)
    env = function_environment(template, endpoint_url)
    return LocalResources(
        endpoint_url=endpoint_url,
        prefix=prefix,
        template=template,
        delivery_queue_url=template.ref("DeliveryQueue"),
        dead_letter_queue_url=template.ref("DeadLetterQueue"),
        slow_delivery_queue_url=template.ref(SLOW_QUEUE) if SLOW_QUEUE in template.resources else None,
        targets_table=template.ref("TargetsTable"),
        breaker_table=template.ref("BreakerTable"),
        idempotency_table=template.ref("IdempotencyTable"),
        audit_bucket=template.ref("AuditBucket"),
        env=env,
        ordered_queue_url=_ref_if_any(template, "OrderedDeliveryQueue"),
        ordered_dead_letter_queue_url=_ref_if_any(template, "OrderedDeadLetterQueue"),
        first_hop_queue_url=_ref_if_any(template, "FirstHopQueue"),
        first_hop_dead_letter_queue_url=_ref_if_any(template, "FirstHopDeadLetterQueue"),
    )


def _ref_if_any(template: Template, logical_id: str) -> str:
    return template.ref(logical_id) if logical_id in template.resources else ""


def function_environment(template: Template, endpoint_url: str) -> dict[str, str]:
    """The deployment's environment (``deployment_environment``) plus local-mode settings."""
    return {**deployment_environment(template), **local_mode_environment(endpoint_url)}


def deployment_environment(template: Template) -> dict[str, str]:
    """The union of the functions' environments (they agree on shared names): what the operator tools,
    the tests and the benchmarks see as the deployment's settings.

    The slow lane's and the first hop's dispatchers are left out: their ``DELIVERY_QUEUE_URL`` (their own
    queue), ``DISPATCH_LANE`` and ``FIRST_HOP`` describe their lane, not the deployment; the intake and
    the fast lane name the DeliveryQueue. So are the AWS call bounds (``FUNCTION_AWS_CALL_BOUNDS``):
    each function sets its own to fit its timeout, and an operator tool, which no Lambda timeout
    limits, runs on the defaults locally as it does against AWS (its long polls need a read timeout
    longer than their wait)."""
    env: dict[str, str] = {}
    for logical_id in template.resources_of_type("AWS::Serverless::Function"):
        environment = template.function(logical_id).environment
        if environment.get("DISPATCH_LANE", "fast") != "fast" or environment.get("FIRST_HOP") == "true":
            continue
        for name, value in environment.items():
            if name in FUNCTION_AWS_CALL_BOUNDS:
                continue
            if value or name not in env:
                env[name] = value
    return env


def local_mode_environment(endpoint_url: str) -> dict[str, str]:
    """What every function gets locally on top of its template environment: moto's endpoint, dummy
    credentials, the region, the stage, and loopback targets allowed."""
    return {
        **LOCAL_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "RELAY_STAGE": "local",
        "RELAY_ALLOW_LOOPBACK_TARGETS": "true",
    }


def _create_queues(template: Template, endpoint_url: str, prefix: str) -> None:
    sqs = local_client("sqs", endpoint_url)
    queues = template.resources_of_type("AWS::SQS::Queue")
    # Queues first, redrive policies second: a redrive policy names another queue's ARN.
    for logical_id in queues:
        props = template.resolve(template.properties(logical_id))
        # A FIFO queue is one from its creation, and its name ends in .fifo (CloudFormation adds it too).
        fifo = {key: _attribute(props[key]) for key in _FIFO_ATTRIBUTES if key in props}
        name = f"{prefix}-{logical_id}" + (".fifo" if props.get("FifoQueue") is True else "")
        url = sqs.create_queue(QueueName=name, Attributes=fifo)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        template.physical[logical_id] = PhysicalResource(
            url, {"Arn": arn, "QueueName": name, "QueueUrl": url}
        )
    for logical_id in queues:
        props = template.resolve(template.properties(logical_id))
        attributes = {
            key: json.dumps(value) if isinstance(value, dict) else str(value)
            for key, value in props.items()
            if key
            in (
                "VisibilityTimeout",
                "MessageRetentionPeriod",
                "DelaySeconds",
                "RedrivePolicy",
                "ReceiveMessageWaitTimeSeconds",
                "MaximumMessageSize",
            )
        }
        if attributes:
            sqs.set_queue_attributes(QueueUrl=template.ref(logical_id), Attributes=attributes)


_FIFO_ATTRIBUTES = ("FifoQueue", "DeduplicationScope", "FifoThroughputLimit", "ContentBasedDeduplication")


def _attribute(value: object) -> str:
    """A template property as SQS attribute text (booleans lower-case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _create_tables(template: Template, endpoint_url: str, prefix: str) -> None:
    dynamodb = local_client("dynamodb", endpoint_url)
    for logical_id in template.resources_of_type("AWS::DynamoDB::Table"):
        props = template.resolve(template.properties(logical_id))
        name = f"{prefix}-{logical_id}"
        dynamodb.create_table(
            TableName=name,
            KeySchema=props["KeySchema"],
            AttributeDefinitions=props["AttributeDefinitions"],
            BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"),
        )
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
        arn = f"arn:aws:dynamodb:{REGION}:123456789012:table/{name}"
        template.physical[logical_id] = PhysicalResource(name, {"Arn": arn})


def _create_buckets(template: Template, endpoint_url: str, prefix: str) -> None:
    s3 = local_client("s3", endpoint_url)
    for logical_id in template.resources_of_type("AWS::S3::Bucket"):
        name = f"{prefix}-{logical_id}".lower()
        s3.create_bucket(Bucket=name)
        # Versioning as the template has it: a deleted or expired claim check is then recoverable as a
        # noncurrent version locally too (docs/operations-dlq.md, claim-check-missing).
        versioning = template.properties(logical_id).get("VersioningConfiguration") or {}
        if versioning.get("Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        template.physical[logical_id] = PhysicalResource(name, {"Arn": f"arn:aws:s3:::{name}"})


def register_stack(resources: LocalResources, stack_name: str) -> dict[str, str]:
    """Register ``stack_name`` in moto's CloudFormation carrying the template's Outputs as the local
    resources resolve them, so ``relay ... --stack-name`` works against the local stack as against AWS.

    moto's CloudFormation cannot run the SAM template; a stack with one placeholder resource and
    literal outputs is enough for DescribeStacks. Outputs naming what is not emulated locally (the
    HTTP API, Athena, the dashboard) are left out. Returns the outputs registered.
    """
    outputs = resolved_outputs(resources.template)
    body = {
        "Resources": {"LocalStack": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    local_client("cloudformation", resources.endpoint_url).create_stack(
        StackName=stack_name, TemplateBody=json.dumps(body)
    )
    return outputs


def resolved_outputs(template: Template) -> dict[str, str]:
    """The template's Outputs that resolve to names of resources created locally."""
    outputs: dict[str, str] = {}
    for key, spec in template.document.get("Outputs", {}).items():
        if "Condition" in spec and not template.condition(spec["Condition"]):
            continue
        try:
            value = template.resolve(spec["Value"])
        except KeyError:  # a !GetAtt of a resource created locally without that attribute
            continue
        if isinstance(value, str) and "<not-provisioned-locally:" not in value:
            outputs[key] = value
    return outputs


def forget_cached_configuration() -> None:
    """Read the process environment again at the next ``get_settings()`` (tests that change it): the
    clients and caches relay.wiring built from the old Settings object are dropped with it."""
    from relay.settings import get_settings

    get_settings.cache_clear()
