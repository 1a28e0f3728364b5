"""Losslessness report: how far the expanded model's outputs are from the original's."""
from __future__ import annotations

import itertools
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from . import maps
from .architectures import find_family
from .plan import SIXTEEN_BITS
from .spec import check_source_and_expansion


@dataclass
class Report:
    """max |big - small| on the model's main output, relative to max |small|, and the same for
    each source layer's output (``layer_relative``). The main outputs are every floating tensor the model returns besides the loss
    and the per-layer tuples (logits; start/end logits; prediction and next-sentence logits; a
    reconstruction; a last hidden state mapped back to the source width); the report gives the
    worst of them (``output_name``) and each one's relative difference (``outputs``)."""

    output_max_abs: float
    output_scale: float
    layer_max_abs: list[float]
    output_name: str = "output"
    outputs: dict[str, float] = field(default_factory=dict)
    output_mean_abs: float = float("nan")  # mean |big - small| on the same output
    layer_mean_abs: list[float] = field(default_factory=list)
    layer_scale: list[float] = field(default_factory=list)  # max |small| of each source layer's output

    @property
    def layer_relative(self) -> list[float]:
        return [delta / max(scale, 1e-30) for delta, scale in zip(self.layer_max_abs, self.layer_scale)]

    @property
    def output_relative(self) -> float:
        return self.output_max_abs / max(self.output_scale, 1e-30)

    def __str__(self) -> str:
        layers = " ".join(f"{d:.1e}" for d in self.layer_relative)
        others = ", ".join(f"{n} {r:.1e}" for n, r in self.outputs.items() if n != self.output_name)
        return (f"{self.output_name} max |delta| {self.output_max_abs:.2e} (relative {self.output_relative:.2e}, "
                f"mean |delta| {self.output_mean_abs:.2e}, output scale {self.output_scale:.2e})"
                + (f"; other outputs (relative): {others}" if others else "") + f"; per layer (relative): {layers}")


def random_inputs(model: torch.nn.Module, batch: int = 2, length: int = 12, seed: int = 0) -> dict:
    """Random inputs of the kind the model's family takes (token ids or pixels)."""
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    if find_family(config).inputs == "pixels":
        shape = (batch, config.num_channels, config.image_size, config.image_size)
        return {"pixel_values": torch.randn(shape, generator=gen).to(device)}
    window = getattr(config, "sliding_window", None)
    if isinstance(window, int) and length <= window <= 256:  # past a short window, so that its mask is used too
        length = min(window + 4, getattr(config, "max_position_embeddings", None) or window + 4)
    task = type(model).__name__
    shape = (batch, length)
    if task.endswith("ForMultipleChoice"):  # token ids per choice: [batch, choices, length]
        shape = (batch, 2, length)
    elif task.endswith("ForSequenceClassification") and getattr(config, "pad_token_id", None) is None:
        shape = (1, length)  # it pools each sequence's last non-pad token: without a pad token, batches of one
    inputs = {"input_ids": torch.randint(0, config.vocab_size, shape, generator=gen)}
    if getattr(config, "type_vocab_size", 0) > 1:
        inputs["token_type_ids"] = torch.randint(0, config.type_vocab_size, shape, generator=gen)
    return {k: v.to(device) for k, v in inputs.items()}


def _layer_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer layers in order: the modules whose names the family's layer
    pattern matches whole (``model.layers.3``, not its children)."""
    family = find_family(model.config)
    layers = {}
    for name, module in model.named_modules():
        match = family.match_layer(name + ".")
        if match is not None and match.end() == len(name) + 1:
            layers[int(match.group(1))] = module
    return [layers[i] for i in sorted(layers)]


@contextmanager
@torch.no_grad()
def _in_float32(model: torch.nn.Module, enabled: bool = True):
    """The model's 16-bit parameters and buffers in float32 for the block, then back in place:
    float32 holds every 16-bit value, so the round trip gives the same bits, and the parameter
    objects (ties, an optimizer's references) stay the same. Whatever stops it (out of memory
    halfway through the casts, Ctrl-C), what was cast is cast back."""
    cast = []
    try:
        if enabled:
            seen = set()
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                if tensor.dtype in SIXTEEN_BITS and id(tensor) not in seen:
                    seen.add(id(tensor))
                    dtype = tensor.dtype
                    tensor.data = tensor.data.float()
                    cast.append((tensor, dtype))
        yield model
    finally:
        for tensor, dtype in cast:
            tensor.data = tensor.data.to(dtype)


@torch.no_grad()
def _run(model, inputs):
    """The main outputs, and each layer's output (the residual stream it hands on). The layers'
    outputs are taken by hooks rather than from ``output_hidden_states``, whose last entry is
    the final norm's output, not the last layer's."""
    layer_outputs = []

    def keep(module, args, output):
        layer_outputs.append(output[0] if isinstance(output, tuple) else output)

    hooks = [layer.register_forward_hook(keep) for layer in _layer_modules(model)]
    was_training = model.training
    model.eval()
    try:
        out = model(**inputs)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    # the per-layer tuples (hidden states, attentions) and caches are not tensors: left out here
    main = {name: value for name, value in out.items()
            if name != "loss" and torch.is_tensor(value) and value.is_floating_point()}
    return main, layer_outputs


def _comparable(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor | None:
    """``big`` cut to ``small``'s shape where the shapes match, or differ only in a wider last
    axis (a hidden-width output: its first entries are the source's); None otherwise."""
    if small.shape == big.shape:
        return big
    if small.shape[:-1] == big.shape[:-1] and big.shape[-1] > small.shape[-1]:
        return big[..., : small.shape[-1]]
    return None


def verify(small: torch.nn.Module, big: torch.nn.Module, inputs: dict | None = None,
           layers: list[tuple[int, bool]] | None = None, upcast: bool = True) -> Report:
    """Run both models in eval mode on ``inputs`` (random ones by default) and compare.
    ``small`` is the source model, ``big`` its expansion (swapped arguments are refused).
    ``upcast``: 16-bit weights are run in float32 (cast for the run and cast back after, which
    is exact), as ``lemon verify`` loads checkpoints: the report then measures the expansion, not
    bf16 arithmetic (an exact bf16 expansion run in bf16 differs by ~1e-2). That takes twice the
    memory of each model while it runs; False runs them as stored.
    ``layers``: per layer of ``big``, its source layer (an index, or (source layer, inserted?) as
    in ``plan.layers``), to line up the hidden states
    (default: the one of ``big.lemon_layer_maps`` that leads back to ``small``: :func:`lemon.expand`
    sets the map to its source, ``big.lemon_layers``, and after expansions in a row the maps to
    the earlier models too; else layers spread evenly; a reloaded checkpoint's maps are in its
    ``lemon_expansion.json``).

    Hidden vectors of the big model carry the small one's in their first entries (every
    stream form starts with a copy of x), so each source layer's output is compared there with
    the output of the target layer that ends it.
    """
    check_source_and_expansion(small, big)
    inputs = inputs if inputs is not None else random_inputs(small)
    with _in_float32(small, enabled=upcast):
        small_out, small_hidden = _run(small, inputs)
    with _in_float32(big, enabled=upcast):
        big_out, big_hidden = _run(big, inputs)
    compared = {}  # name -> (max |delta|, scale, mean |delta|)
    for name, value in small_out.items():
        other = _comparable(value, big_out[name]) if name in big_out else None
        if other is not None:
            delta = (other.double() - value.double()).abs()
            compared[name] = (delta.max().item(), value.double().abs().max().item(), delta.mean().item())
    if not compared:
        raise ValueError(f"lemon.verify: no output of {type(big).__name__} matches the source's in shape "
                         f"(source outputs: {sorted(small_out)}); pass models of the same class")
    relative = {name: delta / max(scale, 1e-30) for name, (delta, scale, _) in compared.items()}
    worst = max(relative, key=relative.get)

    # the source layer s ends at the last target layer made from it (inserted ones follow it)
    big_layers = big.config.num_hidden_layers
    small_layers = small.config.num_hidden_layers
    ends = _layer_ends(big, small_layers, big_layers, layers)
    if len(small_hidden) != small_layers or len(big_hidden) != big_layers:
        raise ValueError(f"lemon.verify: {len(small_hidden)} and {len(big_hidden)} layers ran, but the configs "
                         f"have {small_layers} and {big_layers}: lemon.verify compares whole models")
    layer_deltas, layer_means, layer_scales = [], [], []
    d = small_hidden[0].shape[-1]
    for s in range(small_layers):
        a, b = small_hidden[s], big_hidden[ends[s]][..., :d]
        delta = (a.double() - b.double()).abs()
        layer_deltas.append(delta.max().item())
        layer_means.append(delta.mean().item())
        layer_scales.append(a.double().abs().max().item())
    max_abs, scale, mean_abs = compared[worst]
    return Report(max_abs, scale, layer_deltas, output_name=worst, outputs=relative, output_mean_abs=mean_abs,
                  layer_mean_abs=layer_means, layer_scale=layer_scales)


def _source_layer(entry) -> tuple[int, bool]:
    """One entry of a layer map: a source layer index, or (source layer, inserted?) as in
    ``plan.layers`` and the manifest's ``layers``."""
    if isinstance(entry, dict):  # the manifest's JSON form
        entry = (entry.get("source_layer"), entry.get("inserted", False))
    if isinstance(entry, (tuple, list)) and len(entry) == 2:
        source, inserted = entry
    else:
        source, inserted = entry, False
    if isinstance(source, bool) or not isinstance(source, numbers.Integral):
        raise ValueError(f"lemon.verify: layers must give, per layer of the big model, the source layer it was made "
                         f"from: an index, or a (source_layer, inserted) pair as in plan.layers; got {entry!r}")
    return int(source), bool(inserted)


def _layer_ends(big, small_layers: int, big_layers: int, plan_layers=None) -> list[int]:
    if plan_layers is not None:
        plan_layers = [_source_layer(entry) for entry in plan_layers]
        if len(plan_layers) != big_layers or sorted({s for s, _ in plan_layers}) != list(range(small_layers)):
            raise ValueError(f"lemon.verify: the layer map has {len(plan_layers)} layers from sources "
                             f"{sorted({s for s, _ in plan_layers})}, but the models have {big_layers} and "
                             f"{small_layers} layers: pass the map of this expansion")
    else:
        legacy = getattr(big, "lemon_layers", None)  # set by hand, or by an older lemon
        candidates = getattr(big, "lemon_layer_maps", None) or ([legacy] if legacy else [])
        plan_layers = maps.fitting_layer_map(candidates, small_layers, big_layers)
        if candidates and plan_layers is None:
            sources = sorted({len({s for s, _ in m}) for m in candidates})
            raise ValueError(f"lemon.verify: the big model's layer maps (big.lemon_layer_maps, set by lemon.expand) "
                             f"lead back to models of {' or '.join(map(str, sources))} layers, not the small "
                             f"model's {small_layers}: it was not expanded from this model. Verify it against "
                             "the model it was expanded from, or pass layers= (per big layer, its source layer)")
    if plan_layers is None:
        plan_layers = maps.layers(small_layers, big_layers, None)
    ends = {}
    for t, (s, _) in enumerate(plan_layers):
        ends[s] = t
    return [ends[s] for s in range(small_layers)]
