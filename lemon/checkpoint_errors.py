"""How work on checkpoint directories stops: refusals (before any byte is written, or, for a
destination taken during the run, with the finished work kept), a full disk, a termination signal."""
from __future__ import annotations

import signal


class CheckpointError(ValueError):
    """A checkpoint lemon refuses, or a destination it will not write to; the message names the
    file or field and the fix. Raised before any byte is written (but :class:`DestinationTaken`)."""


class DestinationTaken(CheckpointError):
    """The destination appeared while the expansion was written, and overwrite was not asked for:
    it is left as it is, and the finished expansion is kept in the temporary directory named."""


class DiskFullError(OSError):
    """The disk filled up while the output was written (the temporary directory is removed by
    then); ``strerror`` says which file, the space needed and the space that was free."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while :func:`expand_checkpoint` wrote (the temporary directory is
    removed by the time it propagates). A BaseException, as KeyboardInterrupt: a stop, not an error."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
