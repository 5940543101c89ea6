"""The rule every model (and pool) name follows.

A name is a URL path segment, a Serve application and deployment name, and a Kubernetes
label value, so the rule is the narrowest of those: lowercase, digits, ``.``, ``_``, ``-``.
"""

from __future__ import annotations

import re
from typing import Final

MODEL_NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]*$"
# A Kubernetes label value (and DNS label) holds at most 63 characters.
MAX_MODEL_NAME_CHARS: Final = 63
# Use with ``fullmatch``: the pattern alone, its length checked where names are made.
MODEL_NAME: Final = re.compile(MODEL_NAME_PATTERN)
