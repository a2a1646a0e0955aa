"""In-memory stand-ins for the relay's ports, for tests, benchmarks and tooling.

Developer side, like relay.local and relay.cli: the CoreLayer build leaves it out (layers/core/Makefile)
and no handler imports it. Each fake keeps the contract of the port it stands in for (relay.ports),
including the semantics that matter (conditional writes, idempotency claims), and records what was
asked of it so a test can assert on it.
"""
