"""``python -m lemon``: the same command as ``lemon``."""
import sys

from .cli import main

sys.exit(main())
