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


@pytest.fixture
def setting(monkeypatch):
    """Sets LEMON_HUGE_PAGES (None: unset) for one test, the cached decision cleared around it."""
    def set_to(value):
        if value is None:
            monkeypatch.delenv("LEMON_HUGE_PAGES", raising=False)
        else:
            monkeypatch.setenv("LEMON_HUGE_PAGES", value)
        huge_pages._madvise.cache_clear()
    yield set_to
    monkeypatch.undo()
    huge_pages._madvise.cache_clear()


def test_a_large_output_is_advised_onto_huge_pages_where_the_kernel_takes_the_advice(setting):
    setting("1")  # asked for, also on a VM that reports free pages (where the default is off)
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


def test_lemon_huge_pages_0_turns_it_off(setting):
    setting("0")
    assert huge_pages._madvise() is None


def fake_devices(root, *devices):
    """A /sys/bus/virtio/devices of (device id, features) pairs."""
    for k, (device, features) in enumerate(devices):
        d = root / f"virtio{k}"
        d.mkdir(parents=True)
        (d / "device").write_text(f"0x{device:04x}\n")
        (d / "features").write_text(features + "\n")
    return str(root)


def test_free_page_reporting_is_read_off_the_virtio_balloon(tmp_path):
    reporting = "0110010100" + "0" * 54  # bits 1, 2, 5, 7, as a Firecracker balloon offers them
    no_reporting = "0110000100" + "0" * 54
    assert huge_pages.reports_free_pages(fake_devices(tmp_path / "a", (2, "1" * 64), (5, reporting)))
    assert not huge_pages.reports_free_pages(fake_devices(tmp_path / "b", (5, no_reporting)))
    assert not huge_pages.reports_free_pages(fake_devices(tmp_path / "c", (2, reporting)))  # a block device
    assert not huge_pages.reports_free_pages(fake_devices(tmp_path / "d", (5, "011")))  # too short to say
    assert not huge_pages.reports_free_pages(str(tmp_path / "none"))  # no virtio bus: bare metal, another VM


def test_free_page_reporting_turns_the_default_off_and_1_overrides_it(setting, monkeypatch):
    monkeypatch.setattr(huge_pages, "reports_free_pages", lambda devices=None: False)
    setting(None)
    without_reporting = huge_pages._madvise() is not None  # what this kernel's THP mode gives
    monkeypatch.setattr(huge_pages, "reports_free_pages", lambda devices=None: True)
    setting(None)
    assert huge_pages._madvise() is None
    out = huge_pages.empty((64, 2**18), torch.float32, torch.device("cpu"))
    assert out.shape == (64, 2**18)  # a plain allocation
    setting("1")
    assert (huge_pages._madvise() is not None) == without_reporting
