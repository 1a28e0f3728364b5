"""Fresh executor outputs (lemon.fresh_outputs): on huge pages where asked, mapped in before the writes."""
from __future__ import annotations

import mmap
import resource

import pytest
import torch

from lemon import fresh_outputs, native

PAGE = 4096


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
        fresh_outputs._madvise.cache_clear()
    yield set_to
    monkeypatch.undo()
    fresh_outputs._madvise.cache_clear()


def test_a_large_output_is_advised_onto_huge_pages_where_the_kernel_takes_the_advice(setting):
    setting("1")  # asked for, also on a VM that reports free pages (where the default is off)
    if fresh_outputs._madvise() is None:
        out = fresh_outputs.empty((3, 5), torch.float32, torch.device("cpu"))
        assert out.shape == (3, 5)  # a plain tensor: nothing asked of the kernel
        pytest.skip("this kernel does not make huge pages on request (THP not in madvise mode)")
    out = fresh_outputs.empty((64, 2**18), torch.float32, torch.device("cpu"))  # 64 MiB
    inside = -(-out.data_ptr() // fresh_outputs.HUGE_PAGE) * fresh_outputs.HUGE_PAGE
    # The advice is what lemon controls; whether the kernel then finds free 2 MiB pages at each
    # fault depends on the machine's memory, so the faults' page size is not asserted.
    assert "hg" in vm_flags(inside)
    out.fill_(1.5)
    assert bool((out == 1.5).all()) and out.is_contiguous()
    del out  # freed by PyTorch's allocator like any tensor


def test_small_and_non_cpu_outputs_are_plain_allocations():
    small = fresh_outputs.empty((7, 3), torch.bfloat16, torch.device("cpu"))
    meta = fresh_outputs.empty((1 << 20, 64), torch.float32, torch.device("meta"))
    assert small.dtype == torch.bfloat16 and small.shape == (7, 3) and meta.is_meta


def test_lemon_huge_pages_0_turns_it_off(setting):
    setting("0")
    assert fresh_outputs._madvise() is None


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
    assert fresh_outputs.reports_free_pages(fake_devices(tmp_path / "a", (2, "1" * 64), (5, reporting)))
    assert not fresh_outputs.reports_free_pages(fake_devices(tmp_path / "b", (5, no_reporting)))
    assert not fresh_outputs.reports_free_pages(fake_devices(tmp_path / "c", (2, reporting)))  # a block device
    assert not fresh_outputs.reports_free_pages(fake_devices(tmp_path / "d", (5, "011")))  # too short to say
    assert not fresh_outputs.reports_free_pages(str(tmp_path / "none"))  # no virtio bus: bare metal, another VM


def test_free_page_reporting_turns_the_default_off_and_1_overrides_it(setting, monkeypatch):
    monkeypatch.setattr(fresh_outputs, "reports_free_pages", lambda devices=None: False)
    setting(None)
    without_reporting = fresh_outputs._madvise() is not None  # what this kernel's THP mode gives
    monkeypatch.setattr(fresh_outputs, "reports_free_pages", lambda devices=None: True)
    setting(None)
    assert fresh_outputs._madvise() is None
    out = fresh_outputs.empty((64, 2**18), torch.float32, torch.device("cpu"))
    assert out.shape == (64, 2**18)  # a plain allocation
    setting("1")
    assert (fresh_outputs._madvise() is not None) == without_reporting


# ---------------------------------------------------------------- pre-faulting (csrc/cpu/populate.cpp)

def minor_faults_while(fn) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.fixture
def prefault(monkeypatch):
    """Sets LEMON_PREFAULT for one test; without huge pages, so that every first touch of a
    4 KiB page is a fault that can be counted."""
    monkeypatch.setenv("LEMON_HUGE_PAGES", "0")
    fresh_outputs._madvise.cache_clear()
    yield lambda value: monkeypatch.setenv("LEMON_PREFAULT", value)
    monkeypatch.undo()
    fresh_outputs._madvise.cache_clear()


def fresh_mapping(nbytes: int):
    """A float32 tensor on a new anonymous mapping: no page of it is mapped in yet, whatever the
    allocator holds (glibc serves even 48 MiB from warm heap memory once its threshold has risen)."""
    mapping = mmap.mmap(-1, nbytes)
    return mapping, torch.frombuffer(mapping, dtype=torch.float32)


@pytest.mark.parametrize("threads", [1, 2])
def test_populate_maps_in_the_pages_before_anything_writes_them(threads):
    assert native.built(), native.extension()
    nbytes = 48 * 2**20 + 3 * PAGE
    mapping, plain = fresh_mapping(nbytes)
    faults_plain = minor_faults_while(lambda: plain.fill_(0.5))
    assert faults_plain > nbytes // PAGE // 2  # the measure: unpopulated, first writes fault
    del plain
    mapping.close()
    mapping, out = fresh_mapping(nbytes)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if not native.extension().populate(out[1:]):  # the kernel's answer (pre-5.14: no)
            pytest.skip("this kernel has no MADV_POPULATE_WRITE: outputs fault on first touch")
        faults = minor_faults_while(lambda: out.fill_(1.5))
    finally:
        torch.set_num_threads(previous)
    assert faults < nbytes // PAGE // 50, faults  # out[1:] starts mid-page: its first page faults
    assert bool((out == 1.5).all())
    del out
    mapping.close()


def test_large_fresh_cpu_outputs_are_populated_unless_turned_off(prefault, monkeypatch):
    populated = []
    monkeypatch.setattr(native.extension(), "populate", lambda t: populated.append(t.nbytes) or True,
                        raising=False)
    prefault("1")
    big = fresh_outputs.empty((1025, 1031), torch.float32, torch.device("cpu"))  # > 4 MiB
    fresh_outputs.empty((7, 3), torch.float32, torch.device("cpu"))
    fresh_outputs.empty((1 << 20, 64), torch.float32, torch.device("meta"))
    assert populated == [big.nbytes]
    prefault("0")
    fresh_outputs.empty((1025, 1031), torch.float32, torch.device("cpu"))
    assert populated == [big.nbytes]


def test_pre_faulting_changes_no_value_and_leaves_edges_and_small_tensors_alone(prefault):
    prefault("1")
    source = torch.randn(3001, 1031)  # the bytes around an unaligned tensor's whole pages
    out = fresh_outputs.empty(source.shape, source.dtype, source.device)
    out.copy_(source)
    big = torch.randn(4099, 1027)
    before = big.clone()
    view = big[1:]  # starts mid-page: only its whole pages are mapped, and written memory keeps its values
    assert native.extension().populate(view) in (True, False)
    assert torch.equal(big, before) and torch.equal(out, source)
    small = fresh_outputs.empty((5, 7), torch.float16, torch.device("cpu"))
    assert small.shape == (5, 7) and small.dtype == torch.float16
    with pytest.raises(RuntimeError, match="contiguous CPU tensor"):
        native.extension().populate(big.t())
