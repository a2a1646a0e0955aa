"""The local stack's own log: a worker that died, a run past its timeout, a failed SQS call, a request
the API adapter could not parse.

Its own powertools Logger, outside the functions' "relay" logger hierarchy: an in-process function's
invocation leaves its Lambda context appended to that logger (``inject_lambda_context``), and a child of
it would print another function's name and request id on these lines.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

LOCAL_STACK_SERVICE = "relay-local-stack"
log = Logger(service=LOCAL_STACK_SERVICE)
