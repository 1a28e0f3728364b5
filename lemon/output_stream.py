"""The output side of checkpoint streaming: expanded blocks into shard files, written on writer
threads while the next blocks are made, with direct I/O where the filesystem takes it.

Why direct I/O (``O_DIRECT``): a write into the page cache is a memory copy done by the kernel
on the writing core, as costly as the expansion itself (7.1 GB: ~2 s of system time on one
core, against ~1.8 core-seconds for the C++ executor), and it leaves gigabytes of dirty pages
that still have to reach the disk after the command ends. Writing straight from lemon's
buffers to the device costs almost no CPU (0.25 s of system time for the same 7.1 GB), so the
expansion gets both cores while the disk works, the output is on the disk when the command
returns, and a checkpoint larger than RAM does not push everything else out of the page cache.

Direct I/O wants whole 4 KiB blocks, from 4 KiB-aligned memory, at 4 KiB-aligned file offsets,
while a safetensors file is a byte stream with tensors at arbitrary offsets. So each block is
made *in place* at the offset it will have on disk: the executor writes the bytes that go at
file position ``p`` to buffer offset ``p mod 4096``, the bytes before them (the previous block's
unwritten tail, under 4 KiB) are copied in front, and the whole 4 KiB blocks go to the disk.
The file's last partial block is written padded, and the file truncated to its size. Where the
filesystem refuses ``O_DIRECT`` (a probe write tells), the same code runs with an alignment of
one byte: ordinary writes through the page cache.
"""
from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .safetensors_stream import ShardLayout

ALIGN = 4096  # what O_DIRECT asks of offsets, lengths and addresses on common disks and filesystems
BUFFERS = 4  # blocks in flight: one being made, up to three being written
WRITERS = 2  # concurrent writes: a second request in flight keeps the device busy between them


def _aligned_bytes(nbytes: int, pin: bool = False) -> torch.Tensor:
    """A uint8 CPU tensor of ``nbytes`` starting at an ALIGN-aligned address."""
    raw = torch.empty(nbytes + ALIGN, dtype=torch.uint8)
    if pin:
        raw = raw.pin_memory()
    shift = -raw.data_ptr() % ALIGN
    return raw[shift:shift + nbytes]


def direct_io_supported(directory: Path) -> bool:
    """Whether files in ``directory`` take aligned O_DIRECT writes (a probe file, removed)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = Path(directory) / ".lemon-direct-io-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        os.pwrite(fd, memoryview(_aligned_bytes(ALIGN).zero_().numpy()), 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


class OutputStream:
    """Shard files written one after another, each as its header then its tensors' bytes.

    The caller asks for :meth:`buffer` (where the next ``n`` bytes go, on the executor's
    device), fills it, and :meth:`submit`\\ s it; blocks are written by writer threads while the
    next ones are made. A failed write is raised at the next call, and no write starts after it.
    """

    def __init__(self, capacity: int, device: torch.device, direct: bool):
        self.align = ALIGN if direct else 1  # 1: ordinary writes through the page cache
        self.capacity = capacity  # the most bytes one block may hold
        size = capacity + 2 * ALIGN  # room for the carried tail in front and the padded end behind
        on_cpu = device.type == "cpu"
        self.staging = [_aligned_bytes(size, pin=not on_cpu) for _ in range(BUFFERS)]  # what is written
        self.buffers = self.staging if on_cpu else [torch.empty(size, dtype=torch.uint8, device=device)
                                                    for _ in range(BUFFERS)]
        self.pending: list[list] = [[] for _ in range(BUFFERS)]  # per buffer: its writes in flight
        self.turn = 0
        self.error: BaseException | None = None
        self.pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="lemon-writer")
        self.fd: int | None = None

    # ------------------------------------------------------------------ one shard file
    def open(self, path: Path, layout: ShardLayout) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(path, flags | (os.O_DIRECT if self.align > 1 else 0), 0o666)
        self.path, self.layout = path, layout
        self.position = 0  # bytes of the file handed over so far
        self.tail_at: tuple[int, int] | None = None  # (buffer, offset) of the unwritten bytes before position
        self.put(None, torch.frombuffer(bytearray(layout.header), dtype=torch.uint8))

    def aligned_for(self, itemsize: int) -> bool:
        """Whether the next block, made in place, starts at an address a dtype of ``itemsize``
        bytes can be viewed at (safetensors does not align tensors to their dtype)."""
        return self.position % self.align % itemsize == 0

    def buffer(self, nbytes: int) -> torch.Tensor:
        """Where the next ``nbytes`` of the file go: a uint8 tensor on the device (its previous
        block written by now; a failed write raises here)."""
        if nbytes > self.capacity:
            raise ValueError(f"a block of {nbytes} bytes does not fit the {self.capacity}-byte buffers")
        self._wait(self.turn)
        carried = self.position % self.align
        if carried:  # the previous block's unwritten tail goes in front: the block starts aligned
            source, at = self.tail_at
            self.staging[self.turn][:carried].copy_(self.staging[source][at:at + carried])
        return self.buffers[self.turn][carried:carried + nbytes]

    def submit(self, name: str | None, nbytes: int) -> None:
        """Hand over the ``nbytes`` just made in :meth:`buffer` as the next bytes of tensor ``name``
        (None: the header)."""
        if name is not None:
            self.layout.advance(name, nbytes, self.path)
        carried = self.position % self.align
        end = carried + nbytes
        if self.staging is not self.buffers:  # a GPU block: to pinned host memory first
            self.staging[self.turn][carried:end].copy_(self.buffers[self.turn][carried:end])
        whole = end - end % self.align
        if whole:
            self._write(self.turn, 0, whole, self.position - carried)
        self.tail_at = (self.turn, whole)
        self.position += nbytes
        self.turn = (self.turn + 1) % BUFFERS

    def put(self, name: str | None, data: torch.Tensor) -> None:
        """The next bytes of tensor ``name`` from a tensor made elsewhere (a copied buffer, the header)."""
        flat = data.contiguous().view(-1).view(torch.uint8)
        for start in range(0, flat.numel(), self.capacity):
            piece = flat[start:start + self.capacity]
            self.buffer(piece.numel()).copy_(piece)
            self.submit(name, piece.numel())

    def close_file(self) -> None:
        """Write what is left of the file, wait for every write of it, and close it."""
        carried = self.position % self.align
        if carried:  # the last partial block: padded with zeros to a whole one, the file cut after
            source, at = self.tail_at
            self.staging[source][at + carried:at + self.align].zero_()
            self._write(source, at, at + self.align, self.position - carried)
        self.drain()
        if carried:
            os.ftruncate(self.fd, self.position)
        os.close(self.fd)
        self.fd = None
        self.layout.check_complete(self.path)

    def abort_file(self) -> None:
        """Stop: wait for the writes in flight (their errors dropped) and close the file."""
        for futures in self.pending:
            for future in futures:
                future.exception()
            futures.clear()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # ------------------------------------------------------------------ the writer threads
    def _write(self, index: int, start: int, stop: int, offset: int) -> None:
        view = self.staging[index][start:stop]
        self.pending[index].append(self.pool.submit(self._write_block, self.fd, view, offset, self.path))

    def _write_block(self, fd: int, block: torch.Tensor, offset: int, path: Path) -> None:
        if self.error is not None:  # after a failed write nothing more is written
            return
        try:
            data = memoryview(block.numpy())
            while data:
                done = os.pwrite(fd, data, offset)
                if done <= 0 or done % self.align:
                    raise OSError(errno.ENOSPC, "short write (the disk is probably full)", str(path))
                data, offset = data[done:], offset + done
        except OSError as error:
            if error.filename is None:  # pwrite names no file: the caller's message should
                error.filename = str(path)
            self.error = error
        except BaseException as error:  # noqa: BLE001  (raised on the caller's thread)
            self.error = error

    def _wait(self, index: int) -> None:
        for future in self.pending[index]:
            future.result()
        self.pending[index].clear()
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        for index in range(BUFFERS):
            self._wait(index)

    def close(self) -> None:
        """Stop the writer threads (after :meth:`close_file` or :meth:`abort_file`)."""
        self.pool.shutdown(wait=True)
