"""``--stack-name NAME`` on every operator command: the table, queue and bucket names, and config sync's
Genesys settings, come from the deployed stack's outputs (CloudFormation DescribeStacks) instead of
environment variables.

Each command adds the option by taking ``STACK_OPTION`` as an argparse parent; ``relay.cli.run`` runs
the command inside ``stack_settings(args)``, where ``get_settings()`` returns the environment's settings
with the stack's names in place (outputs win over the variables they replace). Without the option
nothing changes: the environment variables work as before. Locally, ``relay local serve`` registers
its resources' names as the stack ``relay-local`` in moto.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from relay.cli.exit_codes import UsageError

# The stack outputs an operator command reads, and the setting each one stands for.
OUTPUT_SETTINGS = {
    "TargetsTableName": "targets_table",
    "BreakerTableName": "breaker_table",
    "IdempotencyTableName": "idempotency_table",
    "DeliveryQueueUrl": "delivery_queue_url",
    "DeadLetterQueueUrl": "dead_letter_queue_url",
    "OrderedDeliveryQueueUrl": "ordered_queue_url",
    "OrderedDeadLetterQueueUrl": "ordered_dead_letter_queue_url",
    # Not FirstHopQueueUrl: the stack has it whatever its IntakeDeduplication, and FIRST_HOP_QUEUE_URL is
    # what makes an intake send there (and write no idempotency record): `relay dlq redrive --queue
    # eventbridge` runs the intake in-process, and on a stack deployed with `table` would have skipped
    # the IdempotencyTable. `relay dlq redrive --queue first-hop` reads the output itself.
    "FirstHopDeadLetterQueueUrl": "first_hop_dead_letter_queue_url",
    "IntakeFailureQueueUrl": "intake_failure_queue_url",
    "EventBridgeDeadLetterQueueUrl": "eventbridge_dead_letter_queue_url",
    "EventBridgeIntegrationId": "eventbridge_integration_id",
    "AuditBucketName": "audit_bucket",
    "SecretsPrefix": "secrets_prefix",
    # The URL policy's ports: without it a terminal sync or check judged a stack allowing 8443 by the
    # shell's default (443), refusing targets the deployed functions store and deliver to.
    "AllowedTargetPorts": "allowed_target_ports",
    # What config sync reads from Genesys Cloud: `relay targets sync` runs as the function does.
    "ConfigSyncGenesysRegion": "genesys_region",
    "ConfigSyncCredentialsSecretName": "genesys_credentials_secret",
    "ConfigSyncOpenMessagingIntegrationIds": "genesys_open_messaging_integration_ids",
    "ConfigSyncWebhookIntegrationIds": "genesys_webhook_integration_ids",
}
# Outputs the template leaves out when their parameter is empty (a Condition), each with an output that
# always comes with it: a stack that has the second and not the first was deployed with none, and the
# shell's variable must not fill in (a GENESYS_WEBHOOK_INTEGRATION_IDS left from dev synced dev's
# webhooks into prod's table).
NONE_WHEN_LEFT_OUT = {
    "EventBridgeIntegrationId": "EventBridgeDeadLetterQueueUrl",
    "ConfigSyncOpenMessagingIntegrationIds": "ConfigSyncGenesysRegion",
    "ConfigSyncWebhookIntegrationIds": "ConfigSyncGenesysRegion",
}
OUTPUTS = "stack_outputs"  # the namespace attribute holding the stack's outputs, once read


def _parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--stack-name",
        metavar="NAME",
        help="read table, queue and bucket names (and config sync's Genesys settings) from this deployed "
        "stack's outputs "
        "(default: the environment variables TARGETS_TABLE, BREAKER_TABLE, DELIVERY_QUEUE_URL, ...)",
    )
    return parent


STACK_OPTION = _parent()


@contextmanager
def stack_settings(args: argparse.Namespace) -> Iterator[None]:
    """Run the command with the named stack's resource names as its settings (if a stack is named)."""
    name = getattr(args, "stack_name", None)
    if not name:
        yield
        return
    from relay.errors import ConfigurationError
    from relay.settings import get_settings, settings_scope, with_values
    from relay.wiring.operator import outputs_of

    base = get_settings()
    outputs = outputs_of(base, name)
    setattr(args, OUTPUTS, outputs)
    named = {field: outputs[key] for key, field in OUTPUT_SETTINGS.items() if outputs.get(key)}
    named |= {
        OUTPUT_SETTINGS[key]: ""
        for key, companion in NONE_WHEN_LEFT_OUT.items()
        if not outputs.get(key) and outputs.get(companion)
    }
    try:
        settings = with_values(base, named)
    except ConfigurationError as exc:
        raise ConfigurationError(f"the stack {name}'s outputs: {exc}") from None
    with settings_scope(settings):
        yield


def stack_output(args: Any, key: str, *, why: str) -> str:
    """One output of the stack ``--stack-name`` named (for what no setting holds, e.g. Athena's names)."""
    from relay.errors import UnknownStack

    outputs = getattr(args, OUTPUTS, None)
    if outputs is None:
        raise UsageError(f"{why} needs --stack-name (its output {key})")
    if not outputs.get(key):
        raise UnknownStack(f"the stack {args.stack_name} has no output {key} ({why})")
    return str(outputs[key])
