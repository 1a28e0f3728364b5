"""The safetensors file format, read and written a tensor (or a block of one) at a time.

A safetensors file is an 8-byte little-endian header length, a JSON header (per tensor: dtype,
shape and its byte range ``data_offsets`` in the data section; ``__metadata__``: strings), then
the data section. The header has to be written before any data, and an expansion knows every
output tensor's name, dtype and shape before it computes a byte (the plan), so a shard's
header is written first and the tensors are streamed after it in the header's order: no shard
is ever held in memory. Reading validates the header against the file's size, so a truncated
or corrupt file is refused by name before anything is written.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own limit


class FormatError(ValueError):
    """A file that is not a complete, well-formed safetensors file."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # byte range in the data section
    stop: int

    @property
    def nbytes(self) -> int:
        return self.stop - self.start


def nbytes_of(dtype: torch.dtype, shape) -> int:
    return math.prod(shape) * torch.empty(0, dtype=dtype).element_size()


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """The tensors and the metadata of a safetensors file, checked against the file: every
    range inside the data section, sized by its dtype and shape, the ranges covering it
    without gaps or overlaps. Raises FormatError naming the file and what is wrong."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise FormatError(f"{path}: {size} bytes, too short for a safetensors file (truncated or not one)")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise FormatError(f"{path}: the header claims {length} bytes but the file has {size}: "
                              "truncated or not a safetensors file")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FormatError(f"{path}: the header is not valid JSON ({error}): the file is corrupt") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the header is not a JSON object: the file is corrupt")
    metadata = header.pop("__metadata__", None) or {}
    entries = {}
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, stop = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: tensor {name!r} has a malformed header entry {info!r} "
                              f"(dtypes lemon reads: {', '.join(DTYPES)})") from None
        if stop - start != nbytes_of(dtype, shape) or start < 0:
            raise FormatError(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) has byte range "
                              f"[{start}, {stop}), which does not fit its size: the file is corrupt")
        entries[name] = TensorEntry(name, dtype, shape, start, stop)
    data = size - 8 - length
    position = 0
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.stop)):
        if entry.start != position:
            raise FormatError(f"{path}: tensor {entry.name!r} starts at byte {entry.start} of the data, "
                              f"expected {position}: the file is corrupt")
        position = entry.stop
    if position != data:
        what = "truncated" if position > data else "has trailing bytes"
        raise FormatError(f"{path}: the header describes {position} bytes of tensor data, the file holds "
                          f"{data}: the file is {what}")
    return entries, metadata


class ShardLayout:
    """One safetensors file whose tensors are all known up front (name, dtype, shape): its header
    bytes, and the order the tensors' data must follow them in (checked as bytes arrive)."""

    def __init__(self, tensors: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
        self.order, self.sizes = [], []
        offset = 0
        for name, dtype, shape in tensors:
            n = nbytes_of(dtype, shape)
            header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            self.order.append(name)
            self.sizes.append(n)
            offset += n
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as the reference writer does
        self.header = len(text).to_bytes(8, "little") + text
        self.index, self.written = 0, 0  # the tensor being written, and its bytes so far
        self._skip_empty()

    def _skip_empty(self) -> None:
        while self.index < len(self.order) and self.sizes[self.index] == 0:  # nothing to stream
            self.index += 1

    def advance(self, name: str, nbytes: int, path: Path) -> None:
        """Account for the next ``nbytes`` of tensor ``name``; raises if they are out of order."""
        if self.index >= len(self.order) or self.order[self.index] != name:
            expected = self.order[self.index] if self.index < len(self.order) else "nothing"
            raise RuntimeError(f"{path}: got bytes of {name}, expected {expected}")
        self.written += nbytes
        if self.written > self.sizes[self.index]:
            raise RuntimeError(f"{path}: more bytes for {name} than its shape holds")
        if self.written == self.sizes[self.index]:
            self.index, self.written = self.index + 1, 0
            self._skip_empty()

    def check_complete(self, path: Path) -> None:
        if self.index != len(self.order):
            raise RuntimeError(f"{path}: closed before {self.order[self.index]} was written")


class ShardWriter:
    """A :class:`ShardLayout` written through an ordinary file, in as many pieces as the caller
    likes (lemon's own output goes through :mod:`lemon.output_stream`, which overlaps the
    writing with the expansion)."""

    def __init__(self, path: Path, tensors: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path, self.layout = path, ShardLayout(tensors, metadata)
        self.file = open(path, "xb")
        self.file.write(self.layout.header)

    def write(self, name: str, block: torch.Tensor) -> None:
        """The next bytes of tensor ``name`` (a contiguous CPU tensor: a whole tensor or rows of one)."""
        data = memoryview(block.contiguous().view(-1).view(torch.uint8).numpy())
        self.layout.advance(name, len(data), self.path)
        self.file.write(data)

    def abort(self) -> None:
        """Close the file, incomplete (the caller removes it)."""
        self.file.close()

    def close(self) -> None:
        self.file.close()
        self.layout.check_complete(self.path)


def parse_size(text: str | int) -> int:
    """Bytes from ``5GB``, ``500MB``, ``2GiB``, ``1000`` (decimal units as transformers reads them)."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    value = text.strip().upper()
    number = value.rstrip("KMGTIB")
    unit = value[len(number):]
    try:
        size = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(f"cannot read the size {text!r}: write e.g. 5GB, 500MB or 2GiB") from None
    if size < 1:
        raise ValueError(f"the size {text!r} must be at least one byte")
    return int(size)
