"""bench/starts.py's mid-size handler: the trivial handler after a stdlib import.

The module-level import (some 60 more modules, no network needed) makes the
function zygote bigger, which is what a fork on the request path pays for.
"""

import decimal  # noqa: F401
import email.parser  # noqa: F401
import http.client  # noqa: F401
import json  # noqa: F401
import xml.etree.ElementTree  # noqa: F401


def handler(event, context=None):
    return {"echo": event}
