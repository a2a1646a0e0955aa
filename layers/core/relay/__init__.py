"""relay: receive Genesys Cloud webhook events and deliver them to downstream HTTPS endpoints.

Layering (dependencies point down only):

    functions/*_handler.py   thin Lambda handlers: powertools wiring and one call into logic
    relay.logic              what the relay does: intake, dispatch, breaker, config sync
    relay.adapters           the edges: AWS clients, DynamoDB stores, Secrets Manager, HTTP, Genesys SDK
    relay.models, relay.settings, relay.errors, relay.observability
                             the bottom: import nothing above them

relay.local and relay.cli are the developer/operator side (local stack, console command); no Lambda
handler imports them.
"""

__version__ = "0.1.0"
