"""Fresh executor outputs on transparent huge pages (lemon.huge_pages): same values, fewer faults."""
from __future__ import annotations

import pytest
import torch

from lemon import huge_pages


def vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping that holds ``address`` (``hg``: advised MADV_HUGEPAGE)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, stop = (int(x, 16) for x in head.split("-"))
                inside = start <= address < stop
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_a_large_output_is_advised_onto_huge_pages_where_the_kernel_takes_the_advice():
    if huge_pages._madvise() is None:
        out = huge_pages.empty((3, 5), torch.float32, torch.device("cpu"))
        assert out.shape == (3, 5)  # a plain tensor: nothing asked of the kernel
        pytest.skip("this kernel does not make huge pages on request (THP not in madvise mode)")
    out = huge_pages.empty((64, 2**18), torch.float32, torch.device("cpu"))  # 64 MiB
    inside = -(-out.data_ptr() // huge_pages.HUGE_PAGE) * huge_pages.HUGE_PAGE
    # The advice is what lemon controls; whether the kernel then finds free 2 MiB pages at each
    # fault depends on the machine's memory, so the faults' page size is not asserted.
    assert "hg" in vm_flags(inside)
    out.fill_(1.5)
    assert bool((out == 1.5).all()) and out.is_contiguous()
    del out  # freed by PyTorch's allocator like any tensor


def test_small_and_non_cpu_outputs_are_plain_allocations():
    small = huge_pages.empty((7, 3), torch.bfloat16, torch.device("cpu"))
    meta = huge_pages.empty((1 << 20, 64), torch.float32, torch.device("meta"))
    assert small.dtype == torch.bfloat16 and small.shape == (7, 3) and meta.is_meta


def test_lemon_huge_pages_0_turns_it_off(monkeypatch):
    monkeypatch.setenv("LEMON_HUGE_PAGES", "0")
    huge_pages._madvise.cache_clear()
    try:
        assert huge_pages._madvise() is None
    finally:
        monkeypatch.delenv("LEMON_HUGE_PAGES")
        huge_pages._madvise.cache_clear()
