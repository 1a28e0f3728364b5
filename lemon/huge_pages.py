"""Fresh CPU outputs on transparent huge pages.

An expansion writes every byte of a fresh output of up to many GB. With 4 KiB pages the kernel
takes a page fault per 4 KiB on first touch (a clone of the output pays the same), which on the
2-core VM cost as much as the expansion's own arithmetic. Where the kernel makes huge pages on
request (``/sys/kernel/mm/transparent_hugepage/enabled`` set to ``madvise``, the common
default), marking a new allocation ``MADV_HUGEPAGE`` before anything touches it makes those
faults 2 MiB each: 512 times fewer. The memory still comes from PyTorch's allocator and is freed
by it; only the kernel's paging of it changes. Elsewhere (``always``: already so; ``never``, not
Linux) this does nothing, and ``LEMON_HUGE_PAGES=0`` turns it off: where memory is fragmented,
a kernel whose THP ``defrag`` setting compacts memory on such faults can make them slower
instead (an earlier measurement on this project's VM saw that).
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys

import torch

HUGE_PAGE = 2 * 2**20
SMALLEST = 2 * HUGE_PAGE  # below this an allocation may come from warm heap memory: nothing to gain
MADV_HUGEPAGE = 14


@functools.cache
def _madvise():
    """libc's madvise where asking helps (Linux, THP in ``madvise`` mode), else None."""
    if not sys.platform.startswith("linux") or os.environ.get("LEMON_HUGE_PAGES") == "0":
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[madvise]" not in f.read():
                return None
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty``, on huge pages where the kernel gives them on request (CPU, large)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    madvise = _madvise()
    if madvise is not None and out.device.type == "cpu" and out.nbytes >= SMALLEST:
        start = -(-out.data_ptr() // HUGE_PAGE) * HUGE_PAGE  # the whole huge pages inside it
        stop = (out.data_ptr() + out.nbytes) // HUGE_PAGE * HUGE_PAGE
        if stop > start:
            madvise(start, stop - start, MADV_HUGEPAGE)  # a hint: a refusal changes nothing
    return out
