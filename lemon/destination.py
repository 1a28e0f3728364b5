"""The destination of an expanded checkpoint, and writing it so that nothing is lost.

Missing folders above the destination are made (and removed again if the run stops).
The output is written into a temporary directory beside the destination and renamed into place
at the end, so an interrupted run leaves no partial checkpoint under the destination, and a
replaced one is removed only once the new one is complete. Ctrl-C, SIGTERM and SIGHUP remove the
temporary directory; one left by a killed run (SIGKILL, a crash) is marked with its writer's pid
and host and removed by the next run to the same destination. A destination that appears while
the run writes is never replaced without ``overwrite``.
"""
from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from .checkpoint_errors import CheckpointError, DestinationTaken, Terminated

WRITER = ".lemon-writer.json"  # in a temporary directory while it is written: who writes it (pid, host)
TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def check_destination(source: Path, destination: Path, overwrite: bool) -> None:
    """The destination must be neither the source nor inside it (nor contain it), and empty or
    absent unless ``overwrite``."""
    src, dst = source.resolve(), destination.resolve()
    if dst == src or src in dst.parents:
        raise CheckpointError(f"the destination {destination} is {'the source' if dst == src else 'inside the source'} "
                              f"{source}: write the expansion to a directory outside the source checkpoint")
    if dst in src.parents:
        raise CheckpointError(f"the destination {destination} contains the source {source}: replacing it would "
                              "delete the source; choose another destination")
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"the destination {destination} is a file: pass a directory path")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise CheckpointError(f"the destination {destination} is not empty: pass overwrite=True to "
                              "replace it once the new checkpoint is complete, or choose a new directory")
    existing = nearest_existing(dst.parent)  # missing folders above it are made, as save_pretrained does
    if not existing.is_dir():
        raise CheckpointError(f"{existing} is a file, so the destination {destination} cannot be made under it: "
                              "choose another destination")


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: what the missing folders would be made in."""
    return next(p for p in (path, *path.parents) if p.exists())


@contextmanager
def written_beside(destination: Path, overwrite: bool, say):
    """A new temporary directory beside ``destination`` to write the checkpoint into; renamed to
    ``destination`` when the block ends, removed if it raises (or is stopped by a signal). Stale
    temporary directories of killed runs to the same destination are removed first."""
    _remove_stale_temporaries(destination, say)
    with _signals_raised():
        made = _make_parents(destination.parent)
        try:
            temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.lemon-", dir=destination.parent))
        except BaseException:
            _remove_if_empty(made)
            raise
        try:
            _mark_writer(temporary, destination)
            yield temporary
            (temporary / WRITER).unlink()  # the writer's mark stays out of the checkpoint
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o777 & ~umask)  # mkdtemp's 0700, made what a plain mkdir would give
            _commit(temporary, destination, overwrite)
        except DestinationTaken:
            raise  # the finished expansion stays where the message says
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            _remove_if_empty(made)  # folders this run made for the destination go with it
            raise


def _make_parents(directory: Path) -> list[Path]:
    """Make ``directory`` and the missing folders above it; the ones made, outermost first."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()][::-1]
    for folder in missing:
        folder.mkdir(exist_ok=True)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):  # innermost first; one that holds anything stays, and the ones above it
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def _signals_raised():
    """SIGTERM and SIGHUP (``kill``, a closed terminal) raised as :class:`Terminated` while the
    output is written, so the temporary directory is removed as after Ctrl-C (their default
    action ends the process on the spot). Only where they have that default action (``nohup``'s
    ignored SIGHUP stays ignored, an application's own handler stays), and only in the main thread,
    the one Python runs handlers in; the defaults come back after. A second signal is not raised
    again: it would cut the cleanup short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise Terminated(signum)

    caught = [number for number in TERMINATING if signal.getsignal(number) == signal.SIG_DFL]
    for number in caught:
        signal.signal(number, handler)
    try:
        yield
    finally:
        for number in caught:
            signal.signal(number, signal.SIG_DFL)


def _mark_writer(temporary: Path, destination: Path) -> None:
    """Record who writes ``temporary``, so that a later run can tell a killed run's leftovers
    (SIGKILL, a crash: no cleanup ran) from a run still writing."""
    mark = {"pid": os.getpid(), "host": socket.gethostname(), "destination": str(destination.resolve())}
    (temporary / WRITER).write_text(json.dumps(mark) + "\n")


def _remove_stale_temporaries(destination: Path, say) -> None:
    """Remove the temporary directories of ``destination`` whose writer is dead: its mark names
    this host and a pid no process has. One whose writer is alive, on another host, or unknown
    (no mark: a replaced checkpoint waiting to be removed, a finished expansion kept for the
    user) is left alone."""
    stale = []
    for item in destination.parent.glob(f".{glob.escape(destination.name)}.lemon-*"):
        try:
            mark = json.loads((item / WRITER).read_text())
            pid, host, target = int(mark["pid"]), mark["host"], mark["destination"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host == socket.gethostname() and target == str(destination.resolve()) and not _alive(pid):
            shutil.rmtree(item, ignore_errors=True)
            stale.append(f"{item.name} (pid {pid})")
    if stale:
        say(f"lemon: removed {len(stale)} temporary director{'y' if len(stale) == 1 else 'ies'} of {destination} "
            f"left by a killed run: {', '.join(stale)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _commit(temporary: Path, destination: Path, overwrite: bool) -> None:
    """Put the finished checkpoint in place. Without ``overwrite``, the rename itself refuses a
    destination that appeared while the run wrote (rename(2) replaces an empty directory only),
    so whatever is there is never touched; with it, a replaced one is removed only after the rename."""
    if not overwrite:
        try:
            os.rename(temporary, destination)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            raise DestinationTaken(
                f"the destination {destination} appeared while the expansion was written (another run or "
                f"program made it) and overwrite was not asked for: it was left as it is. The finished "
                f"expansion is kept in {temporary}: move it where you want it (mv {temporary} NEW_DIR), or "
                "rerun with overwrite=True to replace the destination") from None
        return
    if not destination.exists():
        os.rename(temporary, destination)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.lemon-old-", dir=destination.parent))
    os.rename(destination, old / destination.name)
    os.rename(temporary, destination)
    shutil.rmtree(old, ignore_errors=True)
