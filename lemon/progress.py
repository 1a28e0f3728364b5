"""When :func:`lemon.expand` shows a progress bar.

By default a bar appears for long expansions only, whatever stderr is: tqdm's own default
(``disable=None``) hides it when stderr is not a terminal, which left a 1B expansion silent
for ten minutes in a log. Work is counted in elements written, not tensors, so one huge
embedding moves the bar as much as it costs.
"""
from __future__ import annotations

import math
import os

AUTO_THRESHOLD = 50_000_000  # elements written, in total: below this an expansion takes seconds
ENVIRONMENT_VARIABLE = "LEMON_PROGRESS"  # "0" turns the default bar off, "1" on
_OFF, _ON = ("0", "false", "no", "off"), ("1", "true", "yes", "on")


def check_progress(progress) -> bool | None:
    """``progress`` must be True, False or None (automatic)."""
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True (always show a bar), False (never) or None (automatic: "
                        f"expansions writing more than {AUTO_THRESHOLD:,} elements), got {progress!r}")
    return progress


def show_progress(progress: bool | None, elements: int, environ=None) -> bool:
    """Whether an expansion that writes ``elements`` elements shows a bar. An explicit
    ``progress`` wins; with None, ``LEMON_PROGRESS`` decides if set, else the size does."""
    if progress is not None:
        return progress
    setting = (os.environ if environ is None else environ).get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if setting in _OFF:
        return False
    if setting in _ON:
        return True
    return elements > AUTO_THRESHOLD


def elements_written(plan) -> int:
    """Elements of every tensor an expansion writes (tied tensors once)."""
    return sum(math.prod(tensor.shape) for tensor in plan.tensors.values())
