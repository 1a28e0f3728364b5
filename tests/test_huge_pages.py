"""Fresh executor outputs on transparent huge pages (lemon.huge_pages): same values, fewer faults."""
from __future__ import annotations

import pytest
import torch

from lemon import huge_pages


def anon_huge_bytes() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    return 0


def test_a_large_output_is_backed_by_huge_pages_where_the_kernel_gives_them():
    if huge_pages._madvise() is None:
        out = huge_pages.empty((3, 5), torch.float32, torch.device("cpu"))
        assert out.shape == (3, 5)  # a plain tensor: nothing asked of the kernel
        pytest.skip("this kernel does not make huge pages on request (THP not in madvise mode)")
    before = anon_huge_bytes()
    out = huge_pages.empty((64, 2**18), torch.float32, torch.device("cpu"))  # 64 MiB
    out.fill_(1.5)  # first touch: faulted in 2 MiB at a time
    assert anon_huge_bytes() - before >= 16 * huge_pages.HUGE_PAGE
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
