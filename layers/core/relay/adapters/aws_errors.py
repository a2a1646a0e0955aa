"""What an AWS call can fail with, for every adapter that turns those failures into relay.errors.

botocore raises three unrelated kinds: ClientError (AWS answered with an error of its own),
BotoCoreError (the connection, the timeout, the SDK) and ResponseParserError (an answer that is not
AWS's: an HTML page from a proxy, a captive portal or a server that is not AWS). The last is neither
of the others, so an adapter catching only those two let it escape as a bug. Adapters catch these
tuples, never the classes one by one.
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

# Failures that are not an answer from AWS: the dependency is unavailable, whatever the call.
NO_AWS_ANSWER: tuple[type[Exception], ...] = (BotoCoreError, ResponseParserError)
# Every failure of an AWS call.
AWS_ERRORS: tuple[type[Exception], ...] = (ClientError, *NO_AWS_ANSWER)
