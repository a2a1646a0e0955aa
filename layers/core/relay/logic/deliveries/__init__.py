"""Find what happened to a delivery, and send an event again (``relay deliveries``; see
docs/operations-replay.md).

timeline   the audit lines naming an event, delivery or conversation id, in time order
lookup     the archived events an id names, merged across archive objects
replay     plan a replay (refusing what cannot be replayed) and queue it through the normal path
operator   the audit record of an operator's action (a replay, a target enabled or disabled)
"""
