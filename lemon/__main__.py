"""``python -m lemon``: the same command as ``lemon``."""
from .cli import entry

entry()
