"""Checkpoint directories: expand a transformers checkpoint on disk by streaming, tensor by tensor.

The source is read where it lies (config.json and safetensors shards, memory-mapped), checked
against the model class its config names before anything is written, and planned exactly as
:func:`lemon.expand` plans the loaded model (the plan needs names and shapes only: it is made
on a model built on the meta device). Each source tensor is then read alone, expanded in row
blocks (``TensorPlan.restrict``: a block's noise is the whole tensor's) into reused buffers,
and streamed into the current output shard, whose header was written first
(:mod:`lemon.safetensors_stream`), by writer threads, with direct I/O where the filesystem
takes it (:mod:`lemon.output_stream`). Memory stays at about the largest source tensor plus
the blocks in flight, whatever the model's size; no module is ever materialized.

The output goes to a temporary directory beside the destination and is renamed into place at
the end (:mod:`lemon.destination`: nothing of the user's is lost, whatever stops the run).
"""
from __future__ import annotations

import datetime
import errno
import json
import math
import os
import re
import shutil
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint_errors import CheckpointError, DiskFullError
from .destination import check_destination, nearest_existing, written_beside
from .plan import SIXTEEN_BITS, execute
from .output_stream import OutputStream, direct_io_supported
from .safetensors_stream import FormatError, ShardLayout, TensorEntry, nbytes_of, parse_size, read_header
from .spec import check_source_and_expansion

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MANIFEST = "lemon_expansion.json"
BLOCK_BYTES = 64 * 2**20  # output bytes per executor call: large enough to run at memory speed
DISK_MARGIN = 1.02  # free space wanted beyond the output's size (the filesystem's own overhead)
# weight files (by extension; their indexes too, e.g. pytorch_model.bin.index.json): they hold the
# source's weights, in the source's sizes, so none is copied into the output, nor a folder holding one
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".h5", ".keras",
                             ".msgpack", ".onnx", ".npz", ".npy", ".tflite", ".pb", ".ot", ".pdparams", ".mlmodel"})
CAST_TO_16_BITS = ("dtype {dtype} rounds the source's {source} weights to 16 bits before the expansion: the output "
                   "matches the source to 16-bit precision only, and lemon verify, which compares it with the "
                   "source as stored, shows that rounding (GPT-2-small cast to bf16: 4.7e-3 relative on the "
                   "logits; cast after a x2 widening with noise, whose replicas round on their own: 2.4e-2)")
WOULD_REFUSE = "the real run would refuse: "  # a dry run's line for a destination it would not write
# native configs of such weights (Meta's and Mistral's), in the source's sizes: left out beside them
WEIGHT_CONFIGS = frozenset({"params.json"})
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class SourceCheckpoint:
    """A checked source directory: its config, the model class the config names, and where each
    tensor lies (file and byte range)."""

    path: Path
    config: object
    model_class: type
    tensors: dict[str, tuple[Path, TensorEntry]]  # by the model's parameter / buffer name
    stored: dict[str, str]  # model name -> the name in the file (transformers renames some on load)
    meta: torch.nn.Module  # the class built from the config on the meta device: names, shapes, ties
    ignored: list[str]  # stored tensors the class does not load (stale buffers): not read, not written
    shards: list[Path]  # the safetensors files read


def _model_class(config, path: Path) -> type:
    import transformers

    names = getattr(config, "architectures", None) or []
    for name in names:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
    if names:
        raise CheckpointError(f"{path / 'config.json'}: architectures {names} names no class of the installed "
                              f"transformers {transformers.__version__}: upgrade transformers, or set "
                              "\"architectures\" to the model class the weights belong to")
    candidates = _classes_of(getattr(config, "model_type", None))
    example = f'["{candidates[0]}"]' if candidates else '["LlamaForCausalLM"]'
    among = f" (for {config.model_type}: one of {', '.join(candidates)})" if len(candidates) > 1 else ""
    raise CheckpointError(f"{path / 'config.json'} has no \"architectures\" field, so the weights' model class is "
                          f"unknown: add the class they belong to, e.g. \"architectures\": {example}{among}, as "
                          "save_pretrained writes it")


def _classes_of(model_type: str | None) -> list[str]:
    """The common transformers classes of ``model_type``: its language-model or image-classification
    head first, its bare model last."""
    from transformers.models.auto import modeling_auto as auto

    names = []
    for mapping in (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                    auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, auto.MODEL_MAPPING_NAMES):
        name = mapping.get(model_type)
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names


def _refuse_pickles(path: Path, model_class: type) -> None:
    """No safetensors: refused, with the conversion command for pickled weights (loaded by the
    config's own class, so that a head such as lm_head is kept)."""
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in path.glob(pattern))
    if pickles:
        raise CheckpointError(
            f"{path} holds weights as {', '.join(pickles[:3])}: pickle files, which lemon never loads (loading "
            "one runs code from the file). Convert a checkpoint you trust to safetensors first, e.g. "
            f"python -c \"import transformers as t; t.{model_class.__name__}.from_pretrained('{path}', "
            f"use_safetensors=False).save_pretrained('{path}-safetensors')\", then expand that")
    raise CheckpointError(f"{path} has no {SINGLE} and no {INDEX}: lemon reads checkpoints as transformers' "
                          "save_pretrained writes them (safetensors, sharded or not)")


def _shards(path: Path, model_class: type) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files and, for a sharded checkpoint, its index's weight map."""
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise CheckpointError(f"{index} is not a valid index (a JSON object with a \"weight_map\" of tensor "
                                  "name -> shard file): the file is corrupt; re-save the checkpoint") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard {missing[0]}, which is not in {path}"
                                  + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
                                  + ": the checkpoint is incomplete; copy or download the missing shards")
        return [path / f for f in files], weight_map
    if (path / SINGLE).is_file():
        return [path / SINGLE], None
    _refuse_pickles(path, model_class)
    raise AssertionError("unreachable")


class StoredNames:
    """Tensor names on disk and in the module. transformers 5 renames some parameters when it
    loads a checkpoint and back when it saves one (ViT's ``encoder.layer.N.attention.attention.query``
    is ``layers.N.attention.q_proj`` in the module); lemon plans in module names and reads and
    writes files in saved names, through transformers' own tables. Only renamings are followed:
    a checkpoint that needs tensors split or merged on load is refused by name."""

    def __init__(self, meta_model: torch.nn.Module):
        self.model = meta_model
        self.state = meta_model.state_dict(keep_vars=True)
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import WeightRenaming

            transforms = get_model_conversion_mapping(meta_model)
        except ImportError:  # a transformers without conversion tables: names are as they are
            transforms = []
        self.saves_as_named: bool | None = None  # whether save_pretrained keeps every module name (asked once)
        self.renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        self.converters = [t for t in transforms if not isinstance(t, WeightRenaming)]

    def to_model(self, stored: str) -> str | None:
        """The module name of a tensor saved as ``stored`` (None: it would need a conversion)."""
        name = stored
        if self.renamings or self.converters:
            from transformers.core_model_loading import rename_source_key

            name, converted = rename_source_key(stored, self.renamings, self.converters)
            if converted is not None and any(converted in getattr(c, "source_patterns", ()) for c in self.converters):
                return None
        return self._with_base_prefix(name)

    def _with_base_prefix(self, name: str) -> str:
        """``name`` with the class's ``base_model_prefix`` added or removed where that names one of
        its tensors: a checkpoint of the base model (GPT-2 on the Hub: ``h.0.attn.c_attn.weight``)
        read into a head model (``transformer.h.0...``), or the other way round, as transformers'
        loading does (``core_model_loading.rename_source_key``)."""
        prefix = self.model.base_model_prefix
        if not prefix:
            return name
        if name.startswith(prefix + ".") and name[len(prefix) + 1:] in self.state:
            return name[len(prefix) + 1:]
        if f"{prefix}.{name}" in self.state:
            return f"{prefix}.{name}"
        return name

    def to_stored(self, name: str) -> str:
        """The name save_pretrained gives the module's tensor ``name``."""
        if not self.renamings and not self.converters:
            return name
        from transformers.core_model_loading import revert_weight_conversion

        if self.saves_as_named is None:  # transformers hands back the very dict when saving renames nothing
            empty: dict = {}
            self.saves_as_named = revert_weight_conversion(self.model, empty) is empty
        if self.saves_as_named:
            return name
        saved = list(revert_weight_conversion(self.model, {name: self.state[name]}))
        if len(saved) != 1:
            raise CheckpointError(f"transformers saves {name} as {saved}: lemon writes renamed tensors only")
        return saved[0]


def open_checkpoint(path: str | os.PathLike) -> SourceCheckpoint:
    """Read and check a checkpoint directory (config.json + safetensors): every shard complete
    and well-formed, the index consistent with the shards, and the tensors exactly those (names
    and shapes) of the model class built from the config. Raises CheckpointError otherwise."""
    from transformers import AutoConfig

    from .architectures import find_family
    from .rules import _tie_groups, empty_model

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory: pass a checkpoint directory (config.json + "
                              "*.safetensors), as save_pretrained writes it")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json: lemon needs the model's config next to its weights")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as error:  # noqa: BLE001  (transformers raises many kinds for a bad config)
        raise CheckpointError(f"{path / 'config.json'}: transformers cannot read it ({error}); fix or re-save "
                              "the config") from None
    try:
        find_family(config)
    except ValueError as error:
        raise CheckpointError(f"{path / 'config.json'}: {error}") from None
    model_class = _model_class(config, path)

    files, weight_map = _shards(path, model_class)
    tensors: dict[str, tuple[Path, TensorEntry]] = {}
    for file in files:
        try:
            entries, _ = read_header(file)
        except FormatError as error:
            raise CheckpointError(f"{error}; re-save or re-download this shard") from None
        for name, entry in entries.items():
            if name in tensors:
                raise CheckpointError(f"tensor {name} is in both {tensors[name][0].name} and {file.name}: the "
                                      "checkpoint is inconsistent; re-save it")
            tensors[name] = (file, entry)
    if weight_map is not None:
        for name, file in weight_map.items():
            if name not in tensors or tensors[name][0].name != file:
                where = (f"is in {tensors[name][0].name}" if name in tensors else
                         f"is in none of the shards the index names ({_names(files)})")
                raise CheckpointError(f"{path / INDEX} puts tensor {name} in {file}, but it {where}: the index "
                                      "does not match the shards; re-save the checkpoint")
        unlisted = sorted(set(tensors) - set(weight_map))
        if unlisted:
            raise CheckpointError(f"{path / INDEX} does not list tensor {unlisted[0]} of "
                                  f"{tensors[unlisted[0]][0].name}: the index does not match the shards")

    meta = empty_model(model_class, config)
    expected = {name: tuple(t.shape) for name, t in meta.state_dict(keep_vars=True).items()}
    cls = model_class.__name__
    names = StoredNames(meta)
    by_model, stored = {}, {}
    for saved, located in tensors.items():
        name = names.to_model(saved)
        if name is None:
            raise CheckpointError(f"{located[0]}: tensor {saved} has to be converted (split or merged) by "
                                  f"transformers on load, which lemon does not stream: load the checkpoint with "
                                  f"from_pretrained and use lemon.expand")
        by_model[name], stored[name] = located, saved
    tensors = by_model
    ignored = []  # stored names, neither read nor written
    for name in sorted(_ignored_on_load(meta, set(tensors) - set(expected))):
        del tensors[name]
        ignored.append(stored.pop(name))
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise CheckpointError(f"{tensors[unknown[0]][0]} holds tensor {stored[unknown[0]]}"
                              + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                              + f", which a {cls} built from config.json does not have: the weights do not "
                              "match the config (or use parameter names this transformers does not know: load "
                              "and re-save the checkpoint with it)")
    for group in _tie_groups(meta):
        if not any(name in tensors for name in group):
            raise CheckpointError(f"{path} has no tensor {group[0]}, which a {cls} built from config.json needs: "
                                  "the checkpoint is incomplete or belongs to another model class")
    for name, (file, entry) in tensors.items():
        if entry.shape != expected[name]:
            raise CheckpointError(f"{file}: tensor {stored[name]} has shape {list(entry.shape)}, but config.json "
                                  f"makes it {list(expected[name])}: the weights do not match the config")
    return SourceCheckpoint(path, config, model_class, tensors, stored, meta, ignored, files)


def _ignored_on_load(meta: torch.nn.Module, unexpected: set[str]) -> set[str]:
    """The stored tensors (module names) that are no persistent state of the model class and that
    from_pretrained drops without a word (transformers 5's rule for old checkpoints, restated here
    on its public class attributes rather than called through a private method): the class's
    non-persistent buffers (rebuilt from the config), what its ``_keys_to_ignore_on_load_unexpected``
    patterns name (e.g. GPT-2's stale causal masks ``h.N.attn.bias``), and the ``position_ids`` and
    ``rotary_emb.inv_freq`` buffers that older versions saved, wherever the class still has such
    a buffer."""
    buffers = [name for name, _ in meta.named_buffers(remove_duplicate=False)]
    non_persistent = set(buffers) - set(meta.state_dict(keep_vars=True))
    patterns = set(getattr(meta, "_keys_to_ignore_on_load_unexpected", None) or ())
    if any(name.endswith("rotary_emb.inv_freq") for name in buffers):
        patterns.add(r"rotary_emb\.inv_freq")
    if any(name.endswith("position_ids") for name in buffers):
        patterns.add(r"(^|\.)position_ids$")
    ignored = re.compile("|".join(f"(?:{pattern})" for pattern in patterns)) if patterns else None
    return {name for name in unexpected
            if name in non_persistent or (ignored is not None and ignored.search(name) is not None)}


@dataclass(frozen=True)
class OutputTensor:
    name: str  # in the module
    stored: str  # in the file (what save_pretrained would call it)
    dtype: torch.dtype
    shape: tuple[int, ...]
    source: str  # the source tensor it is made from (module name)
    plan: object | None  # its TensorPlan; None: a buffer, copied

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.dtype, self.shape)


def _output_tensors(checkpoint: SourceCheckpoint, plan, dtype) -> list[OutputTensor]:
    """What the output holds, in the target model's order: each planned tensor once (tied aliases
    left out, as save_pretrained does) and the source's saved buffers, moved with their layers."""
    from .architectures import find_family
    from .model import _source_name
    from .rules import _tie_groups

    present = {}  # a plan's source name -> the name of its tie group that the checkpoint holds
    for group in _tie_groups(checkpoint.meta):
        stored = next(name for name in group if name in checkpoint.tensors)
        present.update({name: stored for name in group})
    family = find_family(checkpoint.config)
    target = plan.meta_target()
    names = StoredNames(target)
    params = {name for name, _ in target.named_parameters(remove_duplicate=False)}
    out = []
    for name, meta_tensor in target.state_dict(keep_vars=True).items():
        if name in params:
            if name not in plan.tensors:  # a tied alias: the owner is saved
                continue
            tensor_plan = plan.tensors[name]
            source = present[tensor_plan.source]
        else:
            source = _source_name(family, plan.layers, name)
            if source not in checkpoint.tensors:  # buffers the source did not save are rebuilt on load
                continue
            if checkpoint.tensors[source][1].shape != tuple(meta_tensor.shape):
                raise CheckpointError(f"buffer {name} of the expanded model has shape {list(meta_tensor.shape)}, "
                                      f"but the source's {source} is {list(checkpoint.tensors[source][1].shape)}")
            tensor_plan = None
        stored = checkpoint.tensors[source][1].dtype
        this_dtype = dtype if dtype is not None and stored.is_floating_point else stored
        shape = tensor_plan.shape if tensor_plan is not None else checkpoint.tensors[source][1].shape
        out.append(OutputTensor(name, names.to_stored(name), this_dtype, tuple(shape), source, tensor_plan))
    return out


def _shard(tensors: list[OutputTensor], max_bytes: int) -> list[list[OutputTensor]]:
    """Consecutive groups of at most ``max_bytes`` (a larger tensor alone), as transformers shards."""
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def _shard_names(count: int) -> list[str]:
    return [SINGLE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _is_weights(file: Path) -> bool:
    return not WEIGHT_SUFFIXES.isdisjoint(file.suffixes)  # .suffixes: an index (x.bin.index.json) too


def _small_files(checkpoint: SourceCheckpoint) -> tuple[list[Path], list[Path]]:
    """What is copied as it is (tokenizer, generation config, README, ``.gitattributes``, folders
    of such files), and what is left out: weight files other than lemon's input, whole folders
    holding any (e.g. Meta's ``original/consolidated.00.pth`` + ``params.json``: the small model in
    another layout, which would contradict the expanded one beside it), and hidden folders
    (``.git/``, the Hub's ``.cache/``: version control and download records of the source's files)."""
    copied, left_out = [], []
    for item in sorted(checkpoint.path.iterdir()):
        if item.name in ("config.json", INDEX, MANIFEST) or item in checkpoint.shards:
            continue  # what lemon reads and writes anew
        if item.name.startswith(".") and item.is_dir():
            left_out.append(item)
            continue
        broken = [f for f in ([item, *item.rglob("*")] if item.is_dir() else [item]) if f.is_symlink() and not f.exists()]
        if broken:  # refused now, not found by the copy once the weights are written
            raise CheckpointError(f"{broken[0]} is a symbolic link to {os.readlink(broken[0])}, which does not exist: "
                                  "fix or remove the link in the source checkpoint")
        weights = any(_is_weights(f) for f in item.rglob("*") if f.is_file()) if item.is_dir() else _is_weights(item)
        (left_out if weights else copied).append(item)
    if any(item.is_file() for item in left_out):  # weights in another layout beside: their native config goes too
        configs = [item for item in copied if item.name in WEIGHT_CONFIGS]
        copied = [item for item in copied if item not in configs]
        left_out = sorted(left_out + configs)
    return copied, left_out


def _left_out_text(checkpoint: SourceCheckpoint, left_out: list[Path]) -> str | None:
    """One line naming what of the source is not carried into the output, and why."""
    parts = []
    hidden = [p for p in left_out if p.name.startswith(".")]
    weights = [p for p in left_out if p not in hidden]
    if weights:
        parts.append(", ".join(p.name + ("/" if p.is_dir() else "") for p in weights) + " (the source's weights in "
                     "another format or layout, in the source's sizes: they would not match the expanded model)")
    if hidden:
        parts.append(", ".join(p.name + "/" for p in hidden) + " (hidden folders: version control or download "
                     "records of the source's files)")
    if checkpoint.ignored:
        parts.append(f"{len(checkpoint.ignored)} stored tensor(s) that {checkpoint.model_class.__name__} does not "
                     f"load ({', '.join(checkpoint.ignored[:3])}{', ...' if len(checkpoint.ignored) > 3 else ''}: "
                     "buffers older transformers saved, which this one makes from the config or no longer has)")
    return f"lemon: left out of the output: {'; '.join(parts)}" if parts else None


def _bytes(count: int) -> str:
    """A size to three significant figures, in the unit that keeps it readable (a dry run's
    21.2 MB free is not "0.0 GB")."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.{max(0, 2 - int(math.log10(value)))}f} {unit}"
    return f"{count} B"


def _size_of(item: Path) -> int:
    if item.is_dir():
        return sum(f.stat().st_size for f in item.rglob("*") if f.is_file())
    return item.stat().st_size


@dataclass
class ExpansionResult:
    """What :func:`expand_checkpoint` did (or, for a dry run, would do)."""

    destination: Path
    manifest: dict
    tensors: int
    output_bytes: int
    shards: int
    seconds: float
    dry_run: bool
    direct_io: bool | None  # whether the shards were written with O_DIRECT (None: a dry run)
    refusal: str | None = None  # a dry run's: why the real run would refuse (None: it would run)

    def summary(self) -> str:
        size, gb = _bytes(self.output_bytes), self.output_bytes / 1e9
        if self.dry_run:
            return (f"lemon: dry run: would write {self.tensors} tensors, {size} in {self.shards} shard(s) "
                    f"to {self.destination}")
        return (f"lemon: wrote {self.tensors} tensors, {size} in {self.shards} shard(s) to {self.destination} "
                f"in {self.seconds:.1f} s ({gb / max(self.seconds, 1e-9):.2f} GB/s, "
                f"{'direct I/O: on the disk now' if self.direct_io else 'through the page cache'})")


def _parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not one lemon writes: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def expand_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, *,
                      hidden_size: int | None = None, intermediate_size: int | None = None,
                      num_attention_heads: int | None = None, num_key_value_heads: int | None = None,
                      num_hidden_layers: int | None = None, layer_positions: list[int] | None = None,
                      seed: int = 0, noise_std: float | None = None, backend: str = "auto",
                      device: str = "cpu", dtype: str | torch.dtype | None = None,
                      max_shard_size: str | int = "5GB", overwrite: bool = False, dry_run: bool = False,
                      progress: bool | None = None, block_bytes: int = BLOCK_BYTES,
                      direct_io: bool | None = None, log=None) -> ExpansionResult:
    """Expand the checkpoint directory ``source`` into ``destination``: sharded safetensors with
    an index, the new config.json, the source's other files (tokenizer, generation config, ...)
    and a manifest, ``lemon_expansion.json``. The weights equal, tensor for tensor,
    :func:`lemon.expand` of the loaded source with the same arguments (``dtype``: the source's
    floating tensors cast to it first, as ``from_pretrained(..., dtype=)`` would). Everything is
    checked before any byte is written; see the module docstring for how it streams.
    ``direct_io``: write the shards with O_DIRECT, past the page cache (None: where the
    destination's filesystem accepts it; see :mod:`lemon.output_stream`). ``log``: where the
    plan summary and the final line go (default: stderr)."""
    from . import __version__
    from .backends import executor
    from .rules import SIXTEEN_BIT_ROUNDING, inexact_in_16_bits, plan_expansion

    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    # absolute and normalized: `.` or `out/..` has a name and a parent to put the temporary beside
    source, destination = Path(source), Path(os.path.abspath(destination))
    dtype = _parse_dtype(dtype)
    try:
        max_bytes = parse_size(max_shard_size)
    except ValueError as error:
        raise CheckpointError(f"max_shard_size: {error}") from None
    checkpoint = open_checkpoint(source)
    plan = plan_expansion(checkpoint.meta, hidden_size=hidden_size, intermediate_size=intermediate_size,
                          num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                          num_hidden_layers=num_hidden_layers, layer_positions=layer_positions, seed=seed,
                          noise_std=noise_std)
    refusal = None  # a dry run writes nothing: it says what the real run would refuse instead
    try:
        check_destination(source, destination, overwrite)
    except CheckpointError as error:
        if not dry_run:
            raise
        refusal = str(error)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("device cuda: this torch sees no CUDA GPU; use device cpu")
    run = executor(backend, device)
    tensors = _output_tensors(checkpoint, plan, dtype)
    shards = _shard(tensors, max_bytes)
    names = _shard_names(len(shards))
    output_bytes = sum(t.nbytes for t in tensors)
    small, left_out = _small_files(checkpoint)
    needed = int((output_bytes + sum(_size_of(f) for f in small)) * DISK_MARGIN)
    free = shutil.disk_usage(nearest_existing(destination.parent)).free
    if free < needed:
        too_little = CheckpointError(f"{destination.parent} has {_bytes(free)} free, the expanded checkpoint needs "
                                     f"{_bytes(needed)}: free some space or choose another destination")
        if not dry_run:
            raise too_little
        refusal = refusal or str(too_little)
    if SIXTEEN_BIT_ROUNDING not in plan.notes and inexact_in_16_bits(
            t.plan for t in tensors if t.plan is not None and t.dtype in SIXTEEN_BITS):
        plan.notes.append(SIXTEEN_BIT_ROUNDING)  # planned on the meta model, in fp32: the output's dtype decides
        say(f"lemon: note: {SIXTEEN_BIT_ROUNDING}")
    narrowed = sorted({str(entry.dtype).removeprefix("torch.") for _, entry in checkpoint.tensors.values()
                       if entry.dtype.is_floating_point and entry.dtype.itemsize > 2}) if dtype in SIXTEEN_BITS else []
    if narrowed:  # the user's choice, but what verify will show: said before the work
        plan.notes.append(CAST_TO_16_BITS.format(dtype=str(dtype).removeprefix("torch."), source=", ".join(narrowed)))
        say(f"lemon: note: {plan.notes[-1]}")
    manifest = _manifest(plan, checkpoint, tensors, names, shards, dtype, __version__,
                         _earlier_layer_maps(checkpoint, plan.layers, say))
    note = _left_out_text(checkpoint, left_out)
    if note is not None:
        say(note)
    if dry_run:
        say(_dry_run_text(plan, checkpoint, tensors, shards, run, device, block_bytes, free, needed, refusal))
        return ExpansionResult(destination, manifest, len(tensors), output_bytes, len(shards), 0.0, True, None,
                               refusal)

    start = time.perf_counter()
    try:
        with written_beside(destination, overwrite, say) as temporary:
            direct = direct_io is not False and direct_io_supported(temporary)
            if direct_io and not direct:
                raise CheckpointError(f"the filesystem of {destination.parent} does not take direct I/O (O_DIRECT): "
                                      "leave out direct_io=True to write through the page cache")
            _write_weights(checkpoint, tensors, shards, names, temporary, run, device, block_bytes, progress,
                           output_bytes, direct)
            _write_other_files(temporary, plan, dtype, tensors, shards, names, small, manifest)
    except OSError as error:
        if error.errno in DISK_FULL:
            raise _disk_full(error, destination, needed, free) from None
        raise
    result = ExpansionResult(destination, manifest, len(tensors), output_bytes, len(shards),
                             time.perf_counter() - start, False, direct)
    say(result.summary())
    return result


def _write_other_files(temporary: Path, plan, dtype, tensors, shards, names, small, manifest) -> None:
    """Everything of the output but the weights: the index, config.json, the copied small files,
    the manifest."""
    if len(shards) > 1:
        weight_map = {t.stored: name for shard, name in zip(shards, names) for t in shard}
        index = {"metadata": {"total_parameters": sum(math.prod(t.shape) for t in tensors if t.plan is not None),
                              "total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        (temporary / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = plan.config
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(temporary)
    for item in small:
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, temporary / item.name)
    (temporary / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _disk_full(error: OSError, destination: Path, needed: int, free: int) -> DiskFullError:
    """The disk-full error as one line: the file being written, the space needed and free."""
    what = Path(error.filename).name if error.filename else "the output"
    return DiskFullError(error.errno, f"the disk of {destination.parent} filled up while writing {what} "
                                      f"({error.strerror}): the expanded checkpoint needs {_bytes(needed)}, and "
                                      f"{_bytes(free)} was free when the run started (something else has used "
                                      "space since); the temporary directory was removed: free some space or "
                                      "choose another destination")


class SourceReader:
    """Source tensors straight from the memory-mapped shards, without a copy when no cast is
    asked for. A tensor's pages are dropped from this process once it is released (they stay
    in the page cache), so the resident memory holds one source tensor at a time."""

    def __init__(self, checkpoint: SourceCheckpoint):
        self.checkpoint = checkpoint
        self.maps: dict[Path, tuple[object, int]] = {}  # shard -> (mmap, offset of its data section)
        self.held: list[tuple[object, int, int]] = []  # mapped ranges in use: (mmap, start, stop)

    def _mapping(self, file: Path) -> tuple[object, int]:
        """The shard's memory map (made on first use) and where its data section starts."""
        import mmap

        if file not in self.maps:
            with open(file, "rb") as f:
                header = int.from_bytes(f.read(8), "little")
                self.maps[file] = (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), 8 + header)
        return self.maps[file]

    def read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        import warnings

        file, entry = self.checkpoint.tensors[name]
        mapped, data = self._mapping(file)
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=entry.dtype).to(dtype)
        with warnings.catch_warnings():  # read-only memory: lemon never writes to a source tensor
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.frombuffer(mapped, dtype=torch.uint8, count=entry.nbytes, offset=data + entry.start)
        self.held.append((mapped, data + entry.start, data + entry.stop))
        return raw.view(entry.dtype).view(entry.shape).to(dtype)

    def release(self) -> None:
        """Drop the pages of every tensor read so far from this process."""
        import mmap

        for mapped, start, stop in self.held:
            page = mmap.PAGESIZE
            first = start - start % page
            if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                mapped.madvise(mmap.MADV_DONTNEED, first, stop - first)
        self.held.clear()

    def close(self) -> None:
        self.held.clear()
        for mapped, _ in self.maps.values():
            try:
                mapped.close()
            except BufferError:  # a tensor still points into it: the mapping goes with that tensor
                pass
        self.maps.clear()


def _write_weights(checkpoint: SourceCheckpoint, tensors, shards, names, directory: Path, run, device,
                   block_bytes: int, progress, output_bytes: int, direct: bool) -> None:
    from .progress import show_progress

    largest_row = max((t.nbytes // max(t.plan.view_shape[0], 1) for t in tensors if t.plan is not None), default=0)
    elements = sum(math.prod(t.shape) for t in tensors)  # what decides whether a bar shows, as in expand
    terminal = getattr(sys.stderr, "isatty", lambda: False)()
    with ExitStack() as stack, tqdm(total=output_bytes, desc="lemon: expanding", unit="B", unit_scale=True,
                                    file=sys.stderr, disable=not show_progress(progress, elements),
                                    mininterval=0.1 if terminal else 10.0) as bar:
        reader = SourceReader(checkpoint)
        stack.callback(reader.close)
        stream = OutputStream(max(block_bytes, largest_row), device, direct)
        stack.callback(stream.close)
        done = 0
        cached: tuple[tuple[str, torch.dtype], torch.Tensor] | None = None  # consecutive reuse (depth copies)
        for shard, name in zip(shards, names):
            stream.open(directory / name, ShardLayout([(t.stored, t.dtype, t.shape) for t in shard]))
            try:
                for tensor in shard:
                    key = (tensor.source, tensor.dtype)
                    if cached is None or cached[0] != key:
                        cached = None  # the previous source is freed before the next is read
                        reader.release()  # (the blocks in flight are the stream's buffers: nothing to wait for)
                        cached = (key, reader.read(tensor.source, tensor.dtype).to(device))
                    source = cached[1]
                    if tensor.plan is None:
                        stream.put(tensor.stored, source)
                    else:
                        _stream_tensor(tensor, source, run, stream)
                    done += 1
                    bar.update(tensor.nbytes)
                    bar.set_postfix_str(f"{done}/{len(tensors)} tensors", refresh=False)
                stream.close_file()
            except BaseException:
                stream.abort_file()
                raise


def _stream_tensor(tensor: OutputTensor, source: torch.Tensor, run, stream: OutputStream) -> None:
    """The tensor's view rows in blocks of at most the stream's capacity, each made where it is
    written from (through a scratch block when the file offset does not suit the dtype)."""
    plan = tensor.plan
    rows, cols = plan.view_shape
    if rows * cols == 0:
        return
    itemsize = nbytes_of(tensor.dtype, (1,))
    per_block = max(1, stream.capacity // (cols * itemsize))
    in_place = stream.aligned_for(itemsize)
    scratch = None if in_place else torch.empty(min(rows, per_block), cols, dtype=tensor.dtype, device=source.device)
    for r0 in range(0, rows, per_block):
        r1 = min(rows, r0 + per_block)
        if in_place:
            n = (r1 - r0) * cols * itemsize
            out = stream.buffer(n).view(tensor.dtype).view(r1 - r0, cols)
            execute(run, plan.restrict(0, r0, r1), source, out)
            stream.submit(tensor.stored, n)
        else:
            execute(run, plan.restrict(0, r0, r1), source, scratch[:r1 - r0])
            stream.put(tensor.stored, scratch[:r1 - r0])


def _ranges(mask: torch.Tensor) -> list[list[int]]:
    """[start, stop) runs of True in a 1-D bool tensor."""
    if not bool(mask.any()):
        return []
    padded = torch.cat([torch.tensor([False]), mask, torch.tensor([False])]).to(torch.int8)
    edges = torch.nonzero(padded[1:] - padded[:-1]).flatten().tolist()
    return [[edges[i], edges[i + 1]] for i in range(0, len(edges), 2)]


def _manifest(plan, checkpoint: SourceCheckpoint, tensors, names, shards, dtype, version: str,
              earlier: list[dict]) -> dict:
    """lemon_expansion.json: what was expanded how, and which elements of each tensor are new
    (an element of the 2-D view [rows, columns] is new when its row or its column is; every
    element of an inserted layer is)."""
    record = {}
    shard_of = {t.name: name for shard, name in zip(shards, names) for t in shard}
    for tensor in tensors:
        if tensor.plan is None:
            record[tensor.name] = {"source": tensor.source, "shape": list(tensor.shape), "copied_buffer": True,
                                   "stored_as": tensor.stored, "file": shard_of[tensor.name]}
            continue
        p = tensor.plan
        new_rows, new_cols = (axis.is_new() for axis in p.axes)
        rows, cols = p.view_shape
        kept = 0 if p.inserted else int((~new_rows).sum()) * int((~new_cols).sum())
        record[tensor.name] = {
            "source": tensor.source, "shape": list(p.shape), "source_shape": list(p.source_shape),
            "dtype": str(tensor.dtype).removeprefix("torch."), "stored_as": tensor.stored,
            "file": shard_of[tensor.name],
            "view": [rows, cols], "inserted": p.inserted, "elements": rows * cols, "new_elements": rows * cols - kept,
            "new_rows": [[0, rows]] if p.inserted else _ranges(new_rows), "new_columns": _ranges(new_cols),
        }
    return {
        "lemon_version": version, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": str(checkpoint.path.resolve()), "model_class": checkpoint.model_class.__name__,
        "family": plan.family, "source_sizes": plan.source_sizes, "target_sizes": plan.target_sizes,
        "seed": plan.seed, "noise_std": plan.noise_std,
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "layers": [{"target_layer": t, "source_layer": s, "inserted": inserted}
                   for t, (s, inserted) in enumerate(plan.layers)],
        "earlier_layer_maps": earlier,
        "tied": plan.tied, "notes": plan.notes,
        "new_elements_rule": "a view element [row, column] is new when its row or its column is in the ranges",
        "tensors": record,
    }


def _layer_maps_in(manifest: dict) -> list[tuple[str, list[tuple[int, bool]]]]:
    """(source checkpoint, layer map) of every step a manifest records, its own first. Raises
    KeyError or TypeError for a manifest without readable maps."""
    steps = [{"source": manifest.get("source"), "layers": manifest["layers"]}] + list(
        manifest.get("earlier_layer_maps", []))
    return [(str(step["source"]), [(entry["source_layer"], entry["inserted"]) for entry in step["layers"]])
            for step in steps]


def _earlier_layer_maps(checkpoint: SourceCheckpoint, layers, say) -> list[dict]:
    """When the source is itself an expansion (it has a manifest), the maps from the new layers
    to the models it was expanded from, nearest first: `lemon verify` with any of them as the
    source then lines up the right layers. A source manifest that is unreadable or does not
    describe the source's layers (edited, or copied from elsewhere) is left out, with a line."""
    from .maps import compose_layers

    try:
        before = read_manifest(checkpoint.path)
        if before is None:
            return []
        n_source = checkpoint.config.num_hidden_layers
        maps = _layer_maps_in(before)
        if any(len(m) != n_source or any(s < 0 for s, _ in m) for _, m in maps):
            raise ValueError
        return [{"source": source, "layers": [
            {"target_layer": t, "source_layer": s, "inserted": inserted}
            for t, (s, inserted) in enumerate(compose_layers(m, layers))]} for source, m in maps]
    except (CheckpointError, KeyError, TypeError, ValueError, IndexError):
        say(f"lemon: {checkpoint.path / MANIFEST} does not describe this checkpoint's "
            f"{checkpoint.config.num_hidden_layers} layers (edited or copied?): the new manifest leaves out the "
            "maps to the checkpoints before it")
        return []


def _names(files: list[Path], most: int = 3) -> str:
    return ", ".join(f.name for f in files[:most]) + (f" and {len(files) - most} more" if len(files) > most else "")


def _dry_run_text(plan, checkpoint, tensors, shards, run, device, block_bytes: int, free: int, needed: int,
                  refusal: str | None = None) -> str:
    """The plan's summary, the output's size, and a time estimate from one block of a real tensor."""
    sizes = plan.sizes_text(changed_only=True)
    inserted = torch.tensor([ins for _, ins in plan.layers], dtype=torch.bool)
    runs = ", ".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in _ranges(inserted))  # 1-12, 14-25, ...
    output = sum(t.nbytes for t in tensors)
    source_bytes = sum(e.nbytes for _, e in checkpoint.tensors.values())
    lines = [f"lemon: dry run of {checkpoint.path} ({checkpoint.model_class.__name__}, {plan.family}): {sizes}",
             f"  layers: {len(plan.layers)} ({f'{int(inserted.sum())} inserted at {runs}' if runs else 'none inserted'})",
             f"  {len(tensors)} tensors, {_bytes(source_bytes)} -> {_bytes(output)} in {len(shards)} shard(s); "
             f"{_bytes(free)} free at the destination, {_bytes(needed)} needed"]
    sample = max((t for t in tensors if t.plan is not None), key=lambda t: t.nbytes, default=None)
    if sample is not None:
        reader = SourceReader(checkpoint)
        source = reader.read(sample.source, sample.dtype).to(device=device, copy=True)
        reader.close()
        rows, cols = sample.plan.view_shape
        itemsize = nbytes_of(sample.dtype, (1,))
        block = max(1, min(rows, block_bytes // max(cols * itemsize, 1)))
        out = torch.empty(block, cols, dtype=sample.dtype, device=device)
        execute(run, sample.plan.restrict(0, 0, block), source, out)  # warm-up
        start = time.perf_counter()
        execute(run, sample.plan.restrict(0, 0, block), source, out)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = out.numel() * itemsize / max(time.perf_counter() - start, 1e-9)
        lines.append(f"  estimate: ~{output / rate:.1f} s of expansion ({rate / 1e9:.2f} GB/s, measured on a block of "
                     f"{sample.name}), plus reading {_bytes(source_bytes)} and writing {_bytes(output)}")
    if refusal is not None:
        lines.append(f"  {WOULD_REFUSE}{refusal}")
    lines.append("  nothing was written")
    return "\n".join(lines)


def read_manifest(path: Path) -> dict | None:
    file = Path(path) / MANIFEST
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{file} is not valid JSON: the manifest is corrupt (lemon expand writes it)") from None


def _verified_layer_map(manifest: dict | None, src: SourceCheckpoint, dst: SourceCheckpoint):
    """The manifest's map from the destination's layers to the source's: the map of the
    expansion, or after expansions in a row the one to this earlier checkpoint. None without a
    manifest (layers are then assumed spread evenly)."""
    from .maps import fitting_layer_map

    if manifest is None:
        return None
    n_source, n_target = src.config.num_hidden_layers, dst.config.num_hidden_layers
    try:
        steps = _layer_maps_in(manifest)
        found = fitting_layer_map([layer_map for _, layer_map in steps], n_source, n_target)
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{dst.path / MANIFEST} has no readable layer map (\"layers\": a list of "
                              "{\"source_layer\", \"inserted\"}): the manifest is corrupt; lemon expand writes it") from None
    if found is None:
        raise CheckpointError(f"{dst.path / MANIFEST} says {dst.path} was expanded from {steps[0][0]}"
                              + "".join(f", expanded from {source}" for source, _ in steps[1:])
                              + f", and none of their layer maps leads back to the {n_source} layers of {src.path}: "
                              "verify against the checkpoint it was expanded from")
    return found


def default_tolerance(checkpoint: SourceCheckpoint) -> float:
    """The relative output difference ``verify_checkpoint`` accepts for the expansion
    ``checkpoint``: fp32 round-off for fp32 weights; for 16-bit weights, the rounding of the scaled
    and noisy weights to 16 bits. The source's dtype does not matter: the expansion is computed in
    fp32 from the source's exact values (a bf16 source expanded to fp32 is fp32-exact)."""
    dtypes = {entry.dtype for _, entry in checkpoint.tensors.values() if entry.dtype.is_floating_point}
    return 1e-5 if dtypes <= {torch.float32, torch.float64} else 5e-2


def _inputs(checkpoint: SourceCheckpoint, token_ids: list[int] | None, image: str | None) -> tuple[dict | None, str]:
    from .architectures import find_family

    if token_ids is not None and image is not None:
        raise CheckpointError("pass token_ids= or image=, not both")
    vision = find_family(checkpoint.config).inputs == "pixels"
    if token_ids is not None and vision:
        raise CheckpointError(f"token_ids= are for text models; {checkpoint.path} is a vision model "
                              f"({checkpoint.model_class.__name__}): pass image= instead")
    if image is not None and not vision:
        raise CheckpointError(f"image= is for vision models; {checkpoint.path} is a text model "
                              f"({checkpoint.model_class.__name__}): pass token_ids= instead")
    if token_ids is not None:
        vocab = getattr(checkpoint.config, "vocab_size", None)
        bad = [i for i in token_ids if i < 0 or (vocab is not None and i >= vocab)]
        if not token_ids or bad:
            raise CheckpointError(f"token ids must be a non-empty list in [0, {vocab}); got {bad or token_ids}")
        return {"input_ids": torch.tensor([token_ids])}, f"the {len(token_ids)} token ids given"
    if image is not None:
        return {"pixel_values": _pixels(checkpoint.path, Path(image))}, f"the image {image}"
    return None, "random inputs"


def _pixels(source: Path, image: Path) -> torch.Tensor:
    """``image`` as the source checkpoint's image processor prepares it; each way this can fail
    is said with its own fix."""
    if not image.is_file():
        raise CheckpointError(f"the image {image} does not exist (or is not a file): pass the path of an image file")
    if not (source / "preprocessor_config.json").is_file():
        raise CheckpointError(f"{source} has no preprocessor_config.json, so how images are resized and normalized "
                              "for this model is unknown: save the model's image processor there "
                              "(processor.save_pretrained), or verify on random inputs (leave out the image)")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise CheckpointError("reading an image needs Pillow: pip install pillow") from None
    from transformers import AutoImageProcessor

    try:
        picture = Image.open(image).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise CheckpointError(f"cannot read {image} as an image ({error}): pass a PNG, JPEG or another "
                              "format Pillow reads") from None
    try:
        processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
        return processor(images=picture, return_tensors="pt")["pixel_values"]
    except Exception as error:  # noqa: BLE001  (whatever the processor's own checks raise)
        raise CheckpointError(f"{source}'s image processor could not prepare {image} ({type(error).__name__}: "
                              f"{error}): check preprocessor_config.json, or verify on random inputs") from None


@contextmanager
def _quiet_loading():
    """transformers' per-model "Loading weights" bars, off while verify loads its two models
    (they would stand between the command and its report), back as they were after."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def verify_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, *, tolerance: float | None = None,
                      token_ids: list[int] | None = None, image: str | None = None, log=None) -> tuple[object, float]:
    """Load both checkpoints (in fp32), run them on the same inputs (random by default, or the
    token ids or image given) and compare outputs and every source layer's hidden state, lined up
    through the destination's manifest. Prints the comparison; returns (report, tolerance): the
    check passed when ``report.output_relative <= tolerance``."""
    from .verification import random_inputs, verify

    say = log or print
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and 0 <= tolerance < math.inf):
        raise CheckpointError(f"tolerance={tolerance!r}: the tolerance must be 0 or more (a relative "
                              "output difference, e.g. 1e-5; 0 asks for equal outputs)")
    src, dst = open_checkpoint(source), open_checkpoint(destination)
    check_source_and_expansion(src.meta, dst.meta, call="lemon verify SRC_DIR DST_DIR")  # before loading weights
    if tolerance is None:
        tolerance = default_tolerance(dst)
    layers = _verified_layer_map(read_manifest(dst.path), src, dst)
    inputs, what = _inputs(src, token_ids, image)
    with _quiet_loading():
        small = src.model_class.from_pretrained(src.path, dtype=torch.float32, local_files_only=True)
        big = dst.model_class.from_pretrained(dst.path, dtype=torch.float32, local_files_only=True)
    if inputs is None:
        inputs = random_inputs(small)
    report = verify(small, big, inputs, layers)
    lines = [f"lemon verify: {src.path} ({src.model_class.__name__}, {small.config.num_hidden_layers} layers) vs "
             f"{dst.path} ({big.config.num_hidden_layers} layers); layers lined up by "
             f"{MANIFEST if layers else 'spreading them evenly (no ' + MANIFEST + ')'}; {what}; both run in fp32",
             f"  output {report.output_name}: max |delta| {report.output_max_abs:.3e}, mean |delta| "
             f"{report.output_mean_abs:.3e}, relative max {report.output_relative:.3e}"]
    lines += [f"  output {name}: relative max {value:.3e}" for name, value in report.outputs.items()
              if name != report.output_name]
    ends = {}
    for t, (s, _) in enumerate(layers or []):
        ends[s] = t
    for s, (worst, mean, relative) in enumerate(zip(report.layer_max_abs, report.layer_mean_abs,
                                                     report.layer_relative)):
        where = f" -> target layer {ends[s]}" if ends else ""
        lines.append(f"  hidden state after source layer {s}{where}: max |delta| {worst:.3e}, mean |delta| {mean:.3e}, "
                     f"relative max {relative:.3e}")
    verdict = "PASS" if report.output_relative <= tolerance else "FAIL"
    lines.append(f"  {verdict}: relative max output difference {report.output_relative:.3e} "
                 f"{'<=' if verdict == 'PASS' else '>'} tolerance {tolerance:.1e}")
    say("\n".join(lines))
    return report, tolerance
