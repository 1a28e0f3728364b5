"""Expand a transformers model: build the target without initializing it, fill it tensor by tensor."""
from __future__ import annotations

import copy
import sys
import warnings

import torch
from tqdm.auto import tqdm

from . import maps
from .architectures import find_family
from .backends import executor
from .plan import ExpansionPlan, execute
from .progress import check_progress, elements_written, show_progress
from .caller import stacklevel_outside_lemon
from .rules import SIXTEEN_BIT_ROUNDING, plan_expansion


def expand_plan(model: torch.nn.Module, *, hidden_size: int | None = None,
                intermediate_size: int | None = None, num_attention_heads: int | None = None,
                num_key_value_heads: int | None = None, num_hidden_layers: int | None = None,
                layer_positions: list[int] | None = None, seed: int = 0,
                noise_std: float | None = None, backend: str = "auto",
                progress: bool | None = None) -> ExpansionPlan:
    """The plan :func:`expand` would carry out, without moving a byte: target sizes and config,
    and per target parameter which source rows and columns it comes from
    (``plan[name].axes``), which elements are new (``plan[name].new_mask()``), which layers
    are inserted; ``plan.manifest()`` is the JSON-able summary. The same arguments as
    :func:`expand`; ``backend`` and ``progress`` change nothing in a plan (every backend writes
    its bits), so a call to ``expand`` can be turned into one to ``expand_plan`` as it is."""
    return plan_expansion(model, hidden_size=hidden_size, intermediate_size=intermediate_size,
                          num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                          num_hidden_layers=num_hidden_layers, layer_positions=layer_positions, seed=seed,
                          noise_std=noise_std)


def expand(model: torch.nn.Module, *, hidden_size: int | None = None,
           intermediate_size: int | None = None, num_attention_heads: int | None = None,
           num_key_value_heads: int | None = None, num_hidden_layers: int | None = None,
           layer_positions: list[int] | None = None, seed: int = 0,
           noise_std: float | None = None, backend: str = "auto",
           progress: bool | None = None) -> torch.nn.Module:
    """A larger model of the same class that computes the same function as ``model``.

    Sizes left as None stay as they are (the number of heads follows ``hidden_size``, head
    dimension fixed). ``layer_positions`` are the target indices of new layers (default:
    spread evenly). ``noise_std`` is the symmetry-breaking scale (None: the config's
    ``initializer_range``; 0: plain copies). ``seed`` (an integer in [0, 2**64)) keys the
    counter-based noise, so the same call gives bit-identical weights. At least one size must
    grow, and the target config must pass its class's own validation (``config.validate()``).
    ``model`` is left untouched; the result has the source's dtype, device and train/eval modes
    (module by module), and its ``config`` has the new sizes. Each tensor is expanded on its own
    device (a model split across devices stays split); a model on the meta device gives the
    target's shapes on the meta device.

    Noise goes only where the function leaves freedom: replicas of a weight that is summed
    (fan-in columns, fan-out of copied heads and neurons) get zero-sum noise, weights that read
    a known zero get fresh noise, inserted layers get cancelling output weights. Key/value
    projections are not summed, so more KV heads alone have no freedom: the new KV heads are
    exact copies. That is no lasting symmetry: each copy serves different query heads, so
    their gradients differ from the first step.

    ``progress``: True always shows a bar (on stderr), False never; None shows one for
    expansions that write more than 50M elements, unless the environment variable
    ``LEMON_PROGRESS`` is set (``0`` off, ``1`` on).
    """
    check_progress(progress)
    plan = plan_expansion(model, hidden_size=hidden_size, intermediate_size=intermediate_size,
                          num_attention_heads=num_attention_heads,
                          num_key_value_heads=num_key_value_heads,
                          num_hidden_layers=num_hidden_layers, layer_positions=layer_positions,
                          seed=seed, noise_std=noise_std)
    return build(model, plan, backend=backend, progress=progress)


def expand_(model: torch.nn.Module, *, hidden_size: int | None = None,
            intermediate_size: int | None = None, num_attention_heads: int | None = None,
            num_key_value_heads: int | None = None, num_hidden_layers: int | None = None,
            layer_positions: list[int] | None = None, seed: int = 0,
            noise_std: float | None = None, backend: str = "auto",
            progress: bool | None = None) -> torch.nn.Module:
    """:func:`expand` in place: ``model`` itself becomes the expanded model (the same object, its
    modules and config replaced), bit for bit what :func:`expand` returns.

    It works tensor by tensor: each source tensor's expansions are made, then its storage is
    released, so the peak is the final model plus the largest source tensor (plus the plan's
    index vectors), which lets a model that fills most of a GPU be widened on it. Everything
    is validated before the first tensor moves; a failure after that (running out of memory)
    leaves the model unusable, so keep a copy or use :func:`expand` if you need the original.
    Hooks registered on the old submodules do not carry over."""
    check_progress(progress)
    plan = plan_expansion(model, hidden_size=hidden_size, intermediate_size=intermediate_size,
                          num_attention_heads=num_attention_heads,
                          num_key_value_heads=num_key_value_heads,
                          num_hidden_layers=num_hidden_layers, layer_positions=layer_positions,
                          seed=seed, noise_std=noise_std)
    target = build(model, plan, backend=backend, progress=progress, consume=True)
    for registry in ("_parameters", "_buffers", "_modules"):  # the object stays, its contents change
        own = getattr(model, registry)
        own.clear()
        own.update(getattr(target, registry))
    model._non_persistent_buffers_set = target._non_persistent_buffers_set
    model.config = target.config
    model.lemon_layers, model.lemon_layer_maps = target.lemon_layers, target.lemon_layer_maps
    return model


def build(model: torch.nn.Module, plan: ExpansionPlan, backend: str = "auto",
          progress: bool | None = None, consume: bool = False) -> torch.nn.Module:
    """Carry out ``plan`` on ``model``'s weights into a new model of the same class. With
    ``consume``, each source parameter's storage is released once its last expansion is made
    (what :func:`expand_` needs); ``model`` is unusable afterwards."""
    sources = dict(model.named_parameters(remove_duplicate=False))
    devices = {source.device for source in sources.values()}
    if len(devices) > 1 and any(device.type == "meta" for device in devices):
        meta = [name for name, source in sources.items() if source.device.type == "meta"]
        raise ValueError(f"{len(meta)} of {type(model).__name__}'s parameters are on the meta device (not loaded, "
                         f"or offloaded), e.g. {meta[0]}, and the others hold values: lemon would expand them to "
                         "shapes without values. Load every weight (no offloading), or build the whole model on "
                         "the meta device to look at the expanded shapes")
    if SIXTEEN_BIT_ROUNDING in plan.notes:
        warnings.warn(f"lemon: {SIXTEEN_BIT_ROUNDING}", stacklevel=stacklevel_outside_lemon())
    runs = {device: executor(backend, device) for device in devices}  # a model split across devices: one each
    target = plan.meta_target()
    modules = dict(target.named_modules(remove_duplicate=False))  # owner lookups: one walk, not one per tensor

    # plan_expansion checked names and shapes against this class in both directions
    meta_params = dict(target.named_parameters(remove_duplicate=False))
    aliases: dict[int, list[str]] = {}  # tied names share one meta Parameter, hence one result
    for name, meta in meta_params.items():
        aliases.setdefault(id(meta), []).append(name)
    # source by source, in the model's order: a source is done once its last expansion is made
    rank = {name: i for i, name in enumerate(sources)}
    order = sorted(plan.tensors.items(), key=lambda item: rank[item[1].source])
    last_use = {tensor_plan.source: name for name, tensor_plan in order}
    total = elements_written(plan)
    terminal = getattr(sys.stderr, "isatty", lambda: False)()
    # in a log (stderr not a terminal) every refresh stays in the file: refresh rarely there
    with tqdm(total=total, desc="lemon: expanding", unit="el", unit_scale=True, file=sys.stderr,
              disable=not show_progress(progress, total),
              mininterval=0.1 if terminal else 10.0) as bar:
        for name, tensor_plan in order:
            source = sources[tensor_plan.source]
            meta = meta_params[name]
            with torch.no_grad():
                param = torch.nn.Parameter(execute(runs[source.device], tensor_plan, source.detach()),
                                           requires_grad=source.requires_grad)
            for alias in aliases[id(meta)]:
                _set(modules, alias, param)
            if consume and last_use[tensor_plan.source] == name:
                source.data = torch.empty(0, dtype=source.dtype, device=source.device)
            bar.update(param.numel())

    family = find_family(model.config)
    source_buffers = dict(model.named_buffers(remove_duplicate=False))
    for name, meta in target.named_buffers(remove_duplicate=False):
        source_name = _source_name(family, plan.layers, name)
        buffer = source_buffers.get(source_name)
        if buffer is None or buffer.shape != meta.shape:
            raise RuntimeError(f"cannot fill buffer {name} of the expanded model from the source "
                               f"({source_name}: {None if buffer is None else tuple(buffer.shape)})")
        rebuilt = next((value for suffix, value in family.config_buffers.items() if name.endswith(suffix)), None)
        if rebuilt is not None:  # what the target's own config makes it (e.g. sqrt(hidden_size))
            buffer = torch.full_like(buffer, rebuilt(plan.config))
        _set(modules, name, buffer.clone(), buffer=True)
    _copy_modes(model, modules, family, plan.layers)
    if getattr(model, "generation_config", None) is not None:  # the user's (e.g. several EOS ids), not the default
        target.generation_config = copy.deepcopy(model.generation_config)
    # lets lemon.verify line up layers after custom positions, with this model's source or, after
    # expansions in a row, with an earlier one (lemon_layer_maps: nearest source first)
    earlier = getattr(model, "lemon_layer_maps", None) or []
    target.lemon_layers = plan.layers
    target.lemon_layer_maps = [plan.layers] + [maps.compose_layers(m, plan.layers) for m in earlier]
    return target


def _source_name(family, layers: list[tuple[int, bool]], name: str) -> str:
    """The source name of a target parameter, buffer or module: the same, except that a name
    inside target layer t moves to the source layer t was made from."""
    match = family.match_layer(name + ".")  # a layer's own module name has no trailing dot
    return family.in_layer(name + ".", layers[int(match.group(1))][0])[:-1] if match else name


# what a module holds besides its tensors and config, set by the user at run time: train/eval,
# and transformers' activation checkpointing (its flag and the checkpoint function, per module)
RUNTIME_STATE = ("training", "gradient_checkpointing", "_gradient_checkpointing_func")


def _copy_modes(model: torch.nn.Module, modules: dict[str, torch.nn.Module], family, layers) -> None:
    """Each target submodule (``modules``: by name) takes the run-time state of its source
    submodule (a user may keep dropout off in part of a model, or checkpoint activations to
    train within memory); modules of an inserted layer take the copied layer's."""
    source_modules = dict(model.named_modules(remove_duplicate=False))
    for name, module in modules.items():
        source = source_modules.get(_source_name(family, layers, name), model)
        for attribute in RUNTIME_STATE:  # plain attributes: no Module.__setattr__ bookkeeping needed
            if attribute in source.__dict__:
                module.__dict__[attribute] = source.__dict__[attribute]


def _set(modules: dict[str, torch.nn.Module], name: str, value: torch.Tensor, buffer: bool = False) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = modules[owner_name]  # the root is named ""
    if buffer:
        owner._buffers[leaf] = value
    else:
        setattr(owner, leaf, value)
