"""Where the user's code called lemon: warnings point at that line, not at lemon's insides."""
from __future__ import annotations

import sys

_PACKAGE = __name__.partition(".")[0]


def stacklevel_outside_lemon() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function name the first
    frame outside the lemon package, however deep in lemon that function is called."""
    frame = sys._getframe(1)  # the function about to warn: stacklevel 1
    level = 1
    while frame is not None and _in_lemon(frame):
        frame = frame.f_back
        level += 1
    return level


def _in_lemon(frame) -> bool:
    module = frame.f_globals.get("__name__", "")
    return module == _PACKAGE or module.startswith(_PACKAGE + ".")
