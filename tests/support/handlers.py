"""One way to load a function's handler: functions/<name>/<name>_handler.py, as Lambda imports it.

Lambda puts the function's code directory (/var/task) first on sys.path and imports the module the
``Handler`` setting names; template.yaml names ``<name>_handler.lambda_handler`` with CodeUri
functions/<name>/ for every function (tests/unit/test_template.py checks that the file exists).
Standard library only: the import probes use this in bare interpreters.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from support import ROOT

FUNCTIONS = ROOT / "functions"
HANDLER_FUNCTION = "lambda_handler"

Handler = Callable[[dict[str, Any], Any], Any]
# What the ``function_handler`` fixture (tests/conftest.py) gives: functions/<name>'s handler by name.
LoadHandler = Callable[[str], Handler]


def load_handler(name: str) -> Handler:
    """``lambda_handler`` of functions/<name>/<name>_handler.py, imported as a new container imports it:
    the code directory first on sys.path, the module run afresh (its init code included)."""
    code_dir = FUNCTIONS / name
    module_name = f"{name}_handler"
    if not (code_dir / f"{module_name}.py").is_file():
        raise FileNotFoundError(f"no handler for function {name!r}: {code_dir / module_name}.py is missing")
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    sys.modules.pop(module_name, None)  # a new container: nothing kept from an earlier load
    module = importlib.import_module(module_name)
    handler: Handler = getattr(module, HANDLER_FUNCTION)
    return handler
