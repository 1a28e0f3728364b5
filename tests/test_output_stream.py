"""The output stream of checkpoint expansion (lemon.output_stream): shard files made block by
block, with direct I/O (4 KiB-aligned writes, a carried tail, a padded and truncated end) or
through the page cache. Both must give exactly the bytes the plain ShardWriter gives."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lemon import checkpoint as ckpt
from lemon import output_stream
from lemon.checkpoint import CheckpointError, OutputTensor, expand_checkpoint
from lemon.output_stream import ALIGN, OutputStream, direct_io_supported
from lemon.plan import execute
from lemon.safetensors_stream import ShardLayout, ShardWriter

from test_checkpoint import SIZES, digest, save

DIRECT = direct_io_supported(Path(__file__).parent)  # pytest's tmp_path is on the same disk on CI


def awkward_tensors(seed: int) -> dict[str, torch.Tensor]:
    """Mixed dtypes and odd byte counts, so tensors start at every offset modulo 4096 and modulo
    their own element size; an empty one; one larger than the stream's buffers."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(25):
        kind = i % 5
        n = int(torch.randint(1, 3000, (1,), generator=g))
        if kind == 0:
            out[f"t{i}"] = torch.randn(n, generator=g)
        elif kind == 1:
            out[f"t{i}"] = torch.randn(n, generator=g).to(torch.bfloat16)
        elif kind == 2:
            out[f"t{i}"] = torch.randint(0, 255, (n,), generator=g, dtype=torch.uint8)
        elif kind == 3:
            out[f"t{i}"] = torch.randn(n, 3, generator=g).to(torch.float16)
        else:
            out[f"t{i}"] = torch.randint(-9, 9, (n,), generator=g, dtype=torch.int64)
    out["empty"] = torch.empty(0, 5)
    out["large"] = torch.randn(9000, generator=g)  # 36 KB: several blocks of every stream below
    return out


def written_plainly(tensors: dict[str, torch.Tensor], directory: Path) -> tuple[list, bytes]:
    """The tensors' (name, dtype, shape) entries, and the file the plain ShardWriter makes of them."""
    entries = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    plain = ShardWriter(directory / "plain.safetensors", entries)
    for name, t in tensors.items():
        if t.numel():  # an empty tensor has no bytes to stream
            plain.write(name, t)
    plain.close()
    return entries, (directory / "plain.safetensors").read_bytes()


@pytest.mark.parametrize("direct", [False, True] if DIRECT else [False])
@pytest.mark.parametrize("capacity,piece", [(1000, 700), (ALIGN * 3, 5000), (100_000, 1 << 30)])
def test_the_stream_writes_the_bytes_the_plain_writer_writes(direct, capacity, piece, tmp_path):
    tensors = awkward_tensors(capacity)
    entries, want = written_plainly(tensors, tmp_path)

    stream = OutputStream(capacity, torch.device("cpu"), direct)
    for copy in ("a", "b"):  # two files in a row: the second starts fresh at offset 0
        stream.open(tmp_path / f"{copy}.safetensors", ShardLayout(entries))
        for name, t in tensors.items():
            flat = t.contiguous().view(-1).view(torch.uint8)
            for start in range(0, flat.numel(), min(piece, capacity)):
                part = flat[start:start + min(piece, capacity)]
                region = stream.buffer(part.numel())
                region.fill_(0xA5)  # poisoned: bytes the stream failed to carry would show
                region.copy_(part)
                stream.submit(name, part.numel())
        stream.close_file()
    stream.close()
    assert (tmp_path / "a.safetensors").read_bytes() == want
    assert (tmp_path / "b.safetensors").read_bytes() == want


@pytest.mark.parametrize("direct", [False, True] if DIRECT else [False])
def test_blocks_made_in_device_buffers_are_staged_through_host_buffers(direct, tmp_path):
    """The --device cuda layout (blocks made in device memory, copied to pinned host buffers that
    are written), with CPU tensors standing in for the device's: the same bytes."""
    tensors = awkward_tensors(7)
    entries, want = written_plainly(tensors, tmp_path)
    stream = OutputStream(5000, torch.device("cpu"), direct)
    stream.buffers = [torch.full_like(b, 0xA5) for b in stream.staging]  # "device" buffers apart from staging
    stream.open(tmp_path / "x.safetensors", ShardLayout(entries))
    for name, t in tensors.items():
        stream.put(name, t)
    stream.close_file()
    stream.close()
    assert (tmp_path / "x.safetensors").read_bytes() == want


def test_the_stream_checks_the_order_and_completeness_of_a_file(tmp_path):
    entries = [("a", torch.float32, (3,)), ("b", torch.float32, (2,))]
    stream = OutputStream(64, torch.device("cpu"), False)
    stream.open(tmp_path / "x.safetensors", ShardLayout(entries))
    with pytest.raises(RuntimeError, match="got bytes of b, expected a"):
        stream.put("b", torch.zeros(2))
    stream.put("a", torch.zeros(3))
    with pytest.raises(RuntimeError, match="closed before b was written"):
        stream.close_file()
    with pytest.raises(ValueError, match="does not fit"):
        stream.buffer(65)
    stream.close()


def plan_of(family: str, tmp_path: Path, **sizes):
    src = save(family, tmp_path / f"src-{family}")
    checkpoint = ckpt.open_checkpoint(src)
    from lemon.rules import plan_expansion

    return checkpoint, plan_expansion(checkpoint.meta, **sizes)


@pytest.mark.parametrize("direct", [False, True] if DIRECT else [False])
def test_a_tensor_at_an_offset_its_dtype_cannot_be_viewed_at_goes_through_a_scratch_block(direct, tmp_path):
    """safetensors packs tensors without padding: after 3 bytes an fp32 tensor starts unaligned."""
    checkpoint, plan = plan_of("llama", tmp_path, hidden_size=48, num_attention_heads=6)
    name = "model.layers.0.mlp.down_proj.weight"
    tensor_plan = plan.tensors[name]
    source = ckpt.SourceReader(checkpoint).read(tensor_plan.source, torch.float32)
    want = torch.full(tensor_plan.shape, float("nan"))
    from lemon.backends import executor

    run = executor("auto", torch.device("cpu"))
    execute(run, tensor_plan, source, want)
    out = OutputTensor(name, name, torch.float32, tuple(tensor_plan.shape), tensor_plan.source, tensor_plan)
    layout = ShardLayout([("pad", torch.uint8, (3,)), (name, torch.float32, tuple(tensor_plan.shape))])
    row_bytes = tensor_plan.view_shape[1] * 4
    stream = OutputStream(row_bytes * 5, torch.device("cpu"), direct)  # several blocks
    stream.open(tmp_path / "x.safetensors", layout)
    stream.put("pad", torch.tensor([1, 2, 3], dtype=torch.uint8))
    assert not stream.aligned_for(4) or not direct
    ckpt._stream_tensor(out, source, run, stream)
    stream.close_file()
    stream.close()
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "x.safetensors"))[name], want)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_direct_and_page_cache_writes_give_identical_checkpoints(family, tmp_path):
    if not DIRECT:
        pytest.skip("this filesystem takes no O_DIRECT: only the page-cache path runs here")
    src = save(family, tmp_path / "src")
    sizes = SIZES[family]
    for direct in (True, False):
        result = expand_checkpoint(src, tmp_path / f"dst-{direct}", **sizes, max_shard_size="20KB", block_bytes=3000,
                                   direct_io=direct, progress=False, log=lambda _: None)
        assert result.direct_io is direct and result.shards > 1
    one, other = digest(tmp_path / "dst-True"), digest(tmp_path / "dst-False")
    one.pop("lemon_expansion.json"), other.pop("lemon_expansion.json")  # its creation time differs
    assert one == other


def test_direct_io_is_probed_and_refused_by_name_when_forced(tmp_path, monkeypatch):
    src = save("llama", tmp_path / "src")
    monkeypatch.setattr(ckpt, "direct_io_supported", lambda directory: False)  # e.g. a filesystem without it
    result = expand_checkpoint(src, tmp_path / "auto", hidden_size=48, progress=False, log=lambda _: None)
    assert result.direct_io is False and "through the page cache" in result.summary()
    with pytest.raises(CheckpointError, match="does not take direct I/O.*leave out direct_io=True"):
        expand_checkpoint(src, tmp_path / "forced", hidden_size=48, direct_io=True, progress=False,
                          log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto", "src"]  # no temporary left


def test_the_probe_leaves_nothing_behind(tmp_path):
    before = set(tmp_path.iterdir())
    assert direct_io_supported(tmp_path) in (True, False)
    assert set(tmp_path.iterdir()) == before


def test_a_short_write_is_an_error_not_a_silent_gap(tmp_path, monkeypatch):
    monkeypatch.setattr(output_stream.os, "pwrite", lambda fd, data, offset: 0)  # a full disk may write nothing
    stream = OutputStream(ALIGN * 2, torch.device("cpu"), False)
    stream.open(tmp_path / "x.safetensors", ShardLayout([("a", torch.float32, (2048,))]))
    with pytest.raises(OSError, match="short write"):
        stream.put("a", torch.zeros(2048))
        stream.close_file()
    stream.abort_file()
    stream.close()
