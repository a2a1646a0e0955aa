"""relay: receive Genesys Cloud webhook events and deliver them to downstream HTTPS endpoints.

Layering (dependencies point down only):

    functions/*_handler.py   thin Lambda handlers: powertools decorators and one call into relay.wiring
    relay.wiring             each function's object graph, built from a Settings (the one place)
    relay.adapters           the edges: AWS clients, DynamoDB stores, SQS, S3, Secrets Manager, HTTP,
                             Genesys SDK; each takes its client and settings in its constructor
    relay.logic              what the relay does: intake, dispatch, breaker, DLQ, config sync
    relay.ports              the Protocols logic needs from the outside world
    relay.models, relay.settings, relay.errors, relay.observability
                             the bottom: import nothing above them

relay.testing (in-memory fakes of the ports), relay.local and relay.cli are the developer/operator
side (fakes, local stack, console command); no Lambda handler imports them and CoreLayer ships none.
"""

__version__ = "0.1.0"
