"""What the relay does: intake, dispatch, circuit breaker, config sync. Handlers call in here."""
