"""The operator commands' adapters over the audit bucket, Athena and CloudFormation (relay deliveries,
relay targets enable|disable, --stack-name), built from a Settings like every other object graph
(see relay.wiring)."""

from __future__ import annotations

from relay.adapters.archive import S3EventArchive
from relay.adapters.athena import AthenaQueries
from relay.adapters.audit import S3AuditReader, S3AuditSink
from relay.adapters.cloudformation import stack_outputs
from relay.adapters.identity import caller_identity
from relay.settings import Settings
from relay.wiring import aws_clients


def audit_reader(settings: Settings) -> S3AuditReader:
    return S3AuditReader(aws_clients(settings).client("s3"), settings.need("audit_bucket"))


def audit_sink(settings: Settings) -> S3AuditSink:
    """Where an operator action's audit record goes."""
    return S3AuditSink(aws_clients(settings).client("s3"), settings.need("audit_bucket"))


def event_archive(settings: Settings) -> S3EventArchive:
    return S3EventArchive(aws_clients(settings).client("s3"), settings.need("audit_bucket"))


def athena_queries(settings: Settings) -> AthenaQueries:
    return AthenaQueries(aws_clients(settings).client("athena"))


def actor(settings: Settings) -> str:
    """Who runs this command, for the audit record of what it changes."""
    return caller_identity(aws_clients(settings).client("sts"))


def outputs_of(settings: Settings, stack_name: str) -> dict[str, str]:
    """The outputs of the stack ``--stack-name`` names (UnknownStack if there is none)."""
    return stack_outputs(aws_clients(settings).client("cloudformation"), stack_name)
