"""Fresh CPU outputs: their pages mapped in before the executor writes them.

An expansion writes every byte of a fresh output of up to many GB. With 4 KiB pages the kernel
takes a page fault per 4 KiB on first touch (a clone of the output pays the same), which on the
2-core VM cost as much as the expansion's own arithmetic. Two things make that cheaper:

* **Pre-faulting on all threads.** With lemon's C++ extension built, a large new output is
  mapped in with ``MADV_POPULATE_WRITE`` (Linux 5.14+) in 256 KiB blocks on torch's threads
  (``csrc/cpu/populate.cpp``): one call per block instead of a trap per page. GPT-2-small ->
  1024/4096 on the 2-core VM of 2026-12-07: 0.26-0.27 -> 0.24-0.25 s (medians of six runs,
  three alternating rounds; the clone of its output 0.17 s). ``LEMON_PREFAULT=0`` turns it off;
  where the kernel refuses, the output faults on first touch as before.
* **Huge pages on request.** Where the kernel makes huge pages on request
  (``/sys/kernel/mm/transparent_hugepage/enabled`` set to ``madvise``, the common default),
  marking a new allocation ``MADV_HUGEPAGE`` before anything touches it makes those faults 2 MiB
  each: 512 times fewer. Elsewhere (``always``: already so; ``never``, not Linux) this does
  nothing, and ``LEMON_HUGE_PAGES=0`` turns it off: where memory is fragmented, a kernel whose
  THP ``defrag`` setting compacts memory on such faults can make them slower instead (an earlier
  measurement on this project's VM saw that).

  Not on a VM whose balloon reports free pages to the host (virtio's free-page reporting): the
  guest hands free 2 MiB blocks back, the host drops their memory, and a huge-page fault is
  served from exactly such blocks, so each one waits for the host to map memory in again, while
  4 KiB faults mostly reuse pages the guest freed recently. On such a VM (2-core, 2026-12-07) the
  first expansion in a fresh process took 2.0-2.7 s on huge pages against 0.66-0.78 s without
  (GPT-2 -> 1024/4096), 4.8-6.2 s against 1.0-1.4 s (Llama 1024 -> 2048, bf16). There the
  default is off; ``LEMON_HUGE_PAGES=1`` asks for huge pages anyway.

The memory still comes from PyTorch's allocator and is freed by it; only the kernel's paging of
it changes.
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


VIRTIO_DEVICES = "/sys/bus/virtio/devices"
VIRTIO_ID_BALLOON = 5
VIRTIO_BALLOON_F_REPORTING = 5  # the feature bit: free-page reporting


def reports_free_pages(devices: str = VIRTIO_DEVICES) -> bool:
    """Whether a virtio balloon here has free-page reporting on (its ``features`` file: one
    character per feature bit, as negotiated with the host)."""
    try:
        names = os.listdir(devices)
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(devices, name, "device")) as f:
                device = int(f.read().strip(), 16)
            with open(os.path.join(devices, name, "features")) as f:
                features = f.read().strip()
        except (OSError, ValueError):
            continue
        if (device == VIRTIO_ID_BALLOON and len(features) > VIRTIO_BALLOON_F_REPORTING
                and features[VIRTIO_BALLOON_F_REPORTING] == "1"):
            return True
    return False


@functools.cache
def _madvise():
    """libc's madvise where asking helps (Linux, THP in ``madvise`` mode, no free-page reporting
    unless ``LEMON_HUGE_PAGES=1``), else None."""
    setting = os.environ.get("LEMON_HUGE_PAGES")
    if not sys.platform.startswith("linux") or setting == "0":
        return None
    if setting != "1" and reports_free_pages():
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


def _populate():
    """The extension's pre-faulting function where it is built and not turned off, else None."""
    if os.environ.get("LEMON_PREFAULT") == "0":
        return None
    from . import native  # here, not at the top: native imports the module that imports this one
    return native.extension().populate if native.built() else None


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty``; for a large CPU tensor, on huge pages where the kernel gives them on
    request, and mapped in on all threads where lemon's extension can."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if out.device.type != "cpu" or out.nbytes < SMALLEST:
        return out
    madvise = _madvise()
    if madvise is not None:
        start = -(-out.data_ptr() // HUGE_PAGE) * HUGE_PAGE  # the whole huge pages inside it
        stop = (out.data_ptr() + out.nbytes) // HUGE_PAGE * HUGE_PAGE
        if stop > start:
            madvise(start, stop - start, MADV_HUGEPAGE)  # a hint: a refusal changes nothing
    populate = _populate()
    if populate is not None:
        populate(out)  # False where the kernel cannot: the writes then fault the pages in
    return out
