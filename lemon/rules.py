"""LEMON's rules: from a parameter's role and the sizes to a :class:`~lemon.plan.TensorPlan`.

Why each rule is lossless, with D_S -> D_T hidden, k = D_T // D_S, r = D_T % D_S,
eta = sqrt(k D_S / D_T):

* The residual stream is carried as V_avg(x) (LayerNorm families) or V_zero(x)
  (RMSNorm families): embeddings are expanded along the feature axis, and every
  stream writer (attention out-projection, MLP down-projection, their biases)
  gets rows in the same form, so the stream stays in that form layer after layer.
* A norm sees k copies of x plus r entries equal to mean(x) (LayerNorm: they
  normalize to exactly 0) or to 0 (RMSNorm). Its statistics change only through
  the count: the variance / mean square becomes eta^2 times the original, so
  gain* = eta [gain; ...; gain; free] and eps* = eta^2 eps reproduce the output
  as V_zero; the bias is V_zero(bias). (V_avg is *not* lossless under RMSNorm.)
* A fan-in weight reading a V_zero vector sees k copies of its input: its k
  column blocks must sum to W (W/k each, plus zero-sum noise) and its r residue
  columns multiply zeros (free: fresh noise).
* Units (heads, MLP neurons) are copied; a copied unit computes the same
  activation as its source, so its fan-out columns are split among its replicas
  (1/n each plus zero-sum noise). Attention heads keep head_dim; under GQA the
  query and KV head maps are chosen together (see :func:`lemon.maps.attention_heads`).
* A tied output head reads the V_zero final norm output and so sums k copies:
  the final norm's gain and bias are scaled by 1/k instead of splitting the head.
* Query / key norms (Qwen3 per head, OLMo 2 over all heads) are RMSNorms that share one eps
  config field with the stream norms, which must become eta^2 eps. RMSNorm is scale-equivariant,
  norm(c q; c^2 eps) = norm(q; eps), so the projections feeding them get their rows scaled by
  eta and the q/k norms compute exactly what they did. A per-head norm sees a copied head as
  it was; a norm over all heads sees the same mean square only if every head is copied equally
  often, which plan_expansion requires of such families (inserted layers aside: see below).
* Gemma multiplies the token embeddings by sqrt(hidden_size) inside the model, so the target
  would multiply them by sqrt(D_T): the embedding's stream columns are scaled by
  sqrt(D_S / D_T) to keep x* = V_zero(sqrt(D_S) e). A head tied to that embedding reads it
  scaled too, so the final norm carries sqrt(D_T / D_S) besides the 1/k. Gemma's norm gains
  are stored as w in (1 + w): their plans have ``offset`` 1 (lemon.plan), so every scale
  acts on the gain 1 + w itself.
* An inserted layer (depth) copies its predecessor with its stream writers set to
  cancel-zero (zero-sum noise on zero): it adds exactly 0 to the stream and is
  trainable. Its units use twin maps so that cancelling pairs exist.
  Where a norm sits between a writer and the residual add (OLMo 2's norms after each
  sublayer, tag ``sublayer_norm``) cancel-zero is not enough: the pairs cancel up to the
  matmul's summation round-off, and the norm divides that residue by sqrt(eps), ~1e3 at
  eps 1e-6. There the inserted layer's writers stay plain copies and the sublayer norms'
  gains are 0: the layer adds exactly 0, the gains get the normalized sublayer output as
  their gradient and move at the first step, and the copied units' writers differ by their
  noise, so replicas diverge once the gains do.
  Post-norm (BERT): the copied layer's LN_F becomes identity-affine and moves to
  the end of the inserted run; the inserted layer's LN_A is identity-affine. Exact
  up to the LayerNorm eps (an inserted layer re-normalizes a normalized vector).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from . import maps
from .architectures import Family, Role, find_family
from .architectures.base import SPLIT_KINDS
from .noise import tensor_key
from .plan import ONE, SIXTEEN_BITS, ZERO, Axis, ExpansionPlan, TensorPlan
from .serial import one_thread
from .spec import (Sizes, _multiples_near, check_layer_positions, check_noise_std, check_seed, model_sizes,
                   require_growth, resolve)

SPLIT_OF = {"stream_in": "stream_zero", "heads_in": "heads", "ffn_in": "ffn"}


@dataclass(frozen=True)
class UnitMaps:
    """Element maps of the units inside one layer."""

    heads: torch.Tensor
    kv: torch.Tensor
    ffn: torch.Tensor
    qkv_heads: torch.Tensor  # per head its q, k and v rows together (GPT-NeoX's fused projection)
    query_units: torch.Tensor  # per target query head, its source head
    kv_units: torch.Tensor

    @classmethod
    def build(cls, source: Sizes, target: Sizes, twins: bool) -> "UnitMaps":
        q_units, kv_units = maps.attention_heads(
            source.num_attention_heads, source.num_key_value_heads,
            target.num_attention_heads, target.num_key_value_heads, twins=twins)
        n_ffn, t_ffn = source.intermediate_size, target.intermediate_size
        period = maps.twin_period(n_ffn, t_ffn) if twins else n_ffn
        return cls(heads=maps.blocks(q_units, source.head_dim),
                   kv=maps.blocks(kv_units, source.head_dim),
                   ffn=maps.circular(t_ffn, period),
                   qkv_heads=maps.blocks(q_units, 3 * source.head_dim), query_units=q_units, kv_units=kv_units)


@dataclass(frozen=True)
class Rules:
    """Everything the rules need to plan any one parameter."""

    family: Family
    source: Sizes
    target: Sizes
    tied_head: bool
    seed: int
    noise_std: float
    _axes: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def eta(self) -> float:
        return maps.eta(self.source.hidden_size, self.target.hidden_size)

    @property
    def k(self) -> int:
        return self.target.hidden_size // self.source.hidden_size

    @property
    def final_norm_factor(self) -> float:
        """The final norm's scale under a tied output head: the head reads the k stream copies
        with the embeddings' weights, unsplit, so the norm's output carries 1/k (and, where the
        model scales its embeddings by sqrt(hidden_size), the change of that factor)."""
        factor = 1.0 / self.k
        if self.family.embeddings_scaled_by_sqrt_hidden:
            factor /= math.sqrt(self.source.hidden_size / self.target.hidden_size)
        return factor

    def index(self, kind: str, length: int, units: UnitMaps) -> torch.Tensor:
        d_s, d_t = self.source.hidden_size, self.target.hidden_size
        if kind == "keep":
            return torch.arange(length)
        if kind == "stream":
            return maps.stream(d_s, d_t, self.family.stream_form)
        if kind == "stream_zero":
            return maps.stream(d_s, d_t, "zero")
        if kind == "norm":
            return maps.stream(d_s, d_t, "circ")
        if kind == "qkv":
            q_width = self.source.num_attention_heads * self.source.head_dim
            kv_width = self.source.num_key_value_heads * self.source.head_dim
            return torch.cat([units.heads, q_width + units.kv, q_width + kv_width + units.kv])
        if kind == "ffn_pair":  # [gate; up]: both halves through the same neuron map
            return torch.cat([units.ffn, self.source.intermediate_size + units.ffn])
        return {"heads": units.heads, "kv": units.kv, "ffn": units.ffn, "qkv_heads": units.qkv_heads}[kind]

    def axis(self, kind: str, length: int, units: UnitMaps) -> Axis:
        """The axis of this kind and length: one object for every layer's tensors (what executors
        derive from it is then derived once, see :meth:`Axis.derived`)."""
        key = (kind, length, id(units))
        if key not in self._axes:
            self._axes[key] = (self._make_axis(kind, length, units), units)  # units kept: its id stays its own
        return self._axes[key][0]

    def _make_axis(self, kind: str, length: int, units: UnitMaps) -> Axis:
        if kind in SPLIT_KINDS:
            index = self.index(SPLIT_OF[kind], length, units)
            return Axis(index, maps.split_scale(index))
        index = self.index(kind, length, units)
        if kind == "norm":
            return Axis(index, torch.full((index.numel(),), self.eta, dtype=torch.float64))
        return Axis(index)

    def query_rows(self, kind: str, length: int) -> torch.Tensor | None:
        """Which target indices of an axis of this kind are query-projection outputs (None: no
        axis of this kind holds any)."""
        index, hd = torch.arange(length), self.target.head_dim
        if kind == "heads":
            return index >= 0
        if kind == "qkv":
            return index < self.target.num_attention_heads * hd
        if kind == "qkv_heads":
            return index % (3 * hd) < hd
        return None

    def plan(self, name: str, source_name: str, source_shape: tuple[int, ...], role: Role,
             units: UnitMaps, inserted: bool = False, identity_norm: bool = False,
             query_scale: float = 1.0) -> TensorPlan:
        view = (math.prod(source_shape[: role.split]), math.prod(source_shape[role.split:]))
        axes = [self.axis(kind, view[a], units) for a, kind in enumerate(role.axes)]
        if query_scale != 1.0:  # the query rows, in q_proj or the q section of a fused q/k/v
            for a, kind in enumerate(role.axes):
                rows = self.query_rows(kind, len(axes[a]))
                if rows is not None:
                    axes[a] = _scaled(axes[a], torch.where(rows, query_scale, 1.0).to(torch.float64))
        if role.tag == "normed" and self.eta != 1.0:  # q/k norms keep their output under eps*
            axes[0] = _scaled(axes[0], self.eta)
        if identity_norm:  # post-norm depth: gain 1, bias 0
            axes[1] = Axis(torch.full_like(axes[1].source, ONE if role.axes[1] == "norm" else ZERO))
        sqrt_ratio = math.sqrt(self.source.hidden_size / self.target.hidden_size)
        if role.tag == "final_norm" and self.tied_head:
            axes[1] = _scaled(axes[1], self.final_norm_factor)
        if role.tag == "final_reader" and self.tied_head and role.axes[1] == "stream_in":  # given back
            axes[1] = _scaled(axes[1], 1.0 / self.final_norm_factor)
        if role.tag == "embedding" and self.family.embeddings_scaled_by_sqrt_hidden and sqrt_ratio != 1.0:
            axes[1] = _scaled(axes[1], sqrt_ratio)
        if inserted and role.tag == "sublayer_norm":  # gain 0: the inserted sublayer adds exactly 0
            axes[1] = Axis(torch.full_like(axes[1].source, ZERO))
        if inserted and role.tag == "writer" and not self.family.has_sublayer_norms:
            # cancel-zero: the base is 0, the noise sums to 0
            axes[0] = _scaled(axes[0], 0.0)
        split_axes = [a for a, kind in enumerate(role.axes) if kind in SPLIT_KINDS]
        return TensorPlan(
            name=name, source=source_name, source_shape=tuple(source_shape),
            shape=_target_shape(source_shape, role.split, tuple(len(a) for a in axes)),
            split=role.split, axes=tuple(axes),
            noise_axis=split_axes[0] if split_axes else None,
            noise_std=self.noise_std if split_axes else 0.0,
            noise_key=tensor_key(self.seed, name), inserted=inserted, offset=role.offset)


def _scaled(axis: Axis, factor: float | torch.Tensor) -> Axis:
    scale = axis.scale if axis.scale is not None else torch.ones(len(axis), dtype=torch.float64)
    return Axis(axis.source, scale * factor)


def _target_shape(source_shape, split: int, view: tuple[int, int]) -> tuple[int, ...]:
    """The stored shape whose view is ``view``: the one non-unit dim of a grown axis grows."""
    shape = list(source_shape)
    for axis, dims in ((0, range(split)), (1, range(split, len(shape)))):
        if math.prod(shape[d] for d in dims) == view[axis]:
            continue
        grown = [d for d in dims if shape[d] != 1] or [dims[-1]]
        if len(grown) != 1:
            raise ValueError(f"cannot grow axis {axis} of a tensor of shape {tuple(source_shape)}")
        shape[grown[0]] = view[axis]
    return tuple(shape)


def _tie_groups(model: torch.nn.Module) -> list[list[str]]:
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    return list(by_id.values())


def target_config(family: Family, config, source: Sizes, target: Sizes, layers):
    """The source config with the new sizes, eps* = eta^2 eps, and per-layer lists remapped."""
    cfg = copy.deepcopy(config)
    for size_name, attribute in family.config_fields.items():
        if attribute:
            setattr(cfg, attribute, getattr(target, size_name))
    if family.head_dim_field:  # RoPE and the attention scale read it: keep it explicit
        setattr(cfg, family.head_dim_field, target.head_dim)
    if family.eps_field is not None:  # without one, spec.resolve allowed integer multiples only (eta = 1)
        eps = getattr(config, family.eps_field)
        setattr(cfg, family.eps_field, eps * maps.eta(source.hidden_size, target.hidden_size) ** 2)
    for name in family.follows_hidden:  # e.g. OPT's word-embedding width: no projection stays none
        if getattr(config, name, None) == source.hidden_size:
            setattr(cfg, name, target.hidden_size)
    if target.num_hidden_layers != source.num_hidden_layers:
        for key in list(config.to_dict()):
            value = getattr(config, key, None)
            if isinstance(value, (list, tuple)) and len(value) == source.num_hidden_layers:
                setattr(cfg, key, type(value)(value[s] for s, _ in layers))
    return cfg


# what rounding each new weight to 16 bits costs, and how to keep exactness
SIXTEEN_BIT_ROUNDING = ("16-bit weights: this expansion writes values that 16 bits cannot hold exactly (replicas "
                        "with symmetry-breaking noise, each rounded on its own so that the zero-sum noise no longer "
                        "cancels; weights scaled by factors other than powers of two, as non-multiple widths need), "
                        "so the expanded model matches to 16-bit precision only (GPT-2-small x2 in bf16: 2.4e-2 "
                        "relative on the logits with noise, 7.7e-7 without). To stay exact, expand a float32 copy "
                        "(model.float(); lemon expand --dtype float32): mixed-precision training keeps fp32 weights "
                        "anyway.")


def inexact_in_16_bits(tensors) -> bool:
    """Whether 16-bit outputs of these plans lose exactness (SIXTEEN_BIT_ROUNDING): noisy or
    scaled copies do; plain copies, power-of-two scales and inserted layers do not."""
    return any(plan.inexact_in_16_bits for plan in tensors)


@one_thread()  # bookkeeping on small tensors: see lemon/serial.py
def plan_expansion(model: torch.nn.Module, *, hidden_size=None, intermediate_size=None,
                   num_attention_heads=None, num_key_value_heads=None, num_hidden_layers=None,
                   layer_positions=None, seed: int = 0, noise_std: float | None = None) -> ExpansionPlan:
    """The plan of an expansion: validated sizes, the new config and one plan per parameter.
    Nothing is allocated or written. See :func:`lemon.expand` for the arguments."""
    seed = check_seed(seed)
    noise_std = check_noise_std(noise_std)
    layer_positions = check_layer_positions(layer_positions)
    check_not_wrapped(model)
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no .config: lemon expands transformers models "
                         "(PreTrainedModel subclasses) whose config gives their sizes")
    family = find_family(config)
    params = dict(model.named_parameters(remove_duplicate=False))
    roles = {}
    for name in params:
        try:
            roles[name] = family.role(name)
        except KeyError:
            raise ValueError(f"{type(model).__name__} has a parameter {name!r} that the {family.name} "
                             f"adapter has no role for, so lemon cannot expand it losslessly. "
                             f"Add its pattern to lemon/architectures/{family.name}.py") from None

    source = model_sizes(model)
    requested = {"hidden_size": hidden_size, "intermediate_size": intermediate_size,
                 "num_attention_heads": num_attention_heads, "num_key_value_heads": num_key_value_heads,
                 "num_hidden_layers": num_hidden_layers}
    require_growth(family, source, requested, layer_positions)
    target, layer_positions = resolve(family, source, requested, layer_positions)
    if noise_std is None:
        noise_std = float(getattr(config, "initializer_range", 0.02))

    # tied parameters are one tensor: plan it once, from the role that produces it (the embedding)
    tied: dict[str, str] = {}
    tied_head = False
    for group in _tie_groups(model):
        if len(group) < 2:
            continue
        producers = [n for n in group if not any(k in SPLIT_KINDS for k in roles[n][0].axes)]
        owner = (producers or group)[0]
        tied_head |= len(producers) < len(group)
        tied.update({n: owner for n in group if n != owner})

    if tied_head and target.hidden_size != source.hidden_size and not any(
            role.tag == "final_norm" for role, _ in roles.values()):
        raise ValueError(f"{type(model).__name__}'s output head is tied to the embeddings and reads the last "
                         "layer's output with no final norm between them: a norm is where the 1/k that the k "
                         "stream copies need is put (without it the logits come out multiplied by k), so widening "
                         "this model cannot be lossless. Keep hidden_size, or untie the head")
    layers = maps.layers(source.num_hidden_layers, target.num_hidden_layers, layer_positions)
    new_config = target_config(family, config, source, target, layers)
    check_config_accepts(new_config, source, target)
    rules = Rules(family, source, target, tied_head, seed, noise_std)
    regular, twins = UnitMaps.build(source, target, False), UnitMaps.build(source, target, True)
    if family.qk_norm_over == "all":
        check_uniform_heads(family, source, target, regular)
    sources_of: dict[int, list[int]] = {}
    for t, (s, _) in enumerate(layers):
        sources_of.setdefault(s, []).append(t)

    tensors: dict[str, TensorPlan] = {}
    for name, (role, layer) in roles.items():
        if name in tied:  # tied tensors (embeddings, heads) live outside the layers: same name
            continue
        if layer is None:
            targets = [(name, False, False)]
        else:
            targets = []
            for t in sources_of[layer]:
                inserted = layers[t][1]
                next_inserted = t + 1 < len(layers) and layers[t + 1][1]
                identity = family.post_norm and (
                    (role.tag == "attn_norm" and inserted) or (role.tag == "ffn_norm" and next_inserted))
                targets.append((family.in_layer(name, t), inserted, identity))
        for new_name, inserted, identity in targets:
            tensors[new_name] = rules.plan(new_name, name, tuple(params[name].shape), role,
                                           twins if inserted else regular, inserted, identity,
                                           query_scale(family, config, layer, new_name))

    skeleton = check_target_parameters(model, new_config, tensors, tied)
    notes = list(family.notes)
    if any(p.dtype in SIXTEEN_BITS for p in params.values()) and inexact_in_16_bits(tensors.values()):
        notes.append(SIXTEEN_BIT_ROUNDING)
    return ExpansionPlan(
        family=family.name, source_sizes=source.as_dict(), target_sizes=target.as_dict(),
        config=new_config, tensors=tensors,
        tied=tied, layers=layers, seed=seed, noise_std=noise_std, notes=notes,
        skeleton=(skeleton, type(model)))


# wrappers that hold the model as a submodule and run it: (attribute, what the wrapper is)
WRAPPERS = (("_orig_mod", "torch.compile's wrapper"), ("module", "a data-parallel wrapper"))


def check_not_wrapped(model: torch.nn.Module) -> None:
    """lemon rebuilds the model from its class and config, so it needs the model itself: a
    wrapper (torch.compile's forwards ``.config`` to the model inside it) would be rebuilt as the
    wrapper's class, which cannot be made from a config."""
    inner_modules = getattr(model, "_modules", {})
    for attribute, what in WRAPPERS:
        inner = inner_modules.get(attribute)
        if inner is not None and getattr(inner, "config", None) is not None and not hasattr(type(model), "config_class"):
            raise ValueError(f"{type(model).__name__} is {what} around a {type(inner).__name__}: lemon expands the "
                             f"model itself, so pass model.{attribute} (and wrap or compile the expanded model "
                             "again if you want)")


def check_uniform_heads(family: Family, source: Sizes, target: Sizes, units: UnitMaps) -> None:
    """A norm over all query (key) heads at once sees the source's mean square only if every
    source head has the same number of copies."""
    for what, unit_map, n_source, n_target, size_field in (
            ("query", units.query_units, source.num_attention_heads, target.num_attention_heads,
             "num_attention_heads"),
            ("key/value", units.kv_units, source.num_key_value_heads, target.num_key_value_heads,
             "num_key_value_heads")):
        counts = torch.bincount(unit_map, minlength=n_source)
        if bool((counts != counts[0]).any()):
            raise ValueError(
                f"{family.name} RMS-normalizes its {what} vectors over all heads at once, so every source head "
                f"must be copied equally often for the norm to see the same mean square; {n_source} -> {n_target} "
                f"{what} heads copies some heads {int(counts.max())} times and others {int(counts.min())}: "
                f"choose {size_field} as a multiple of {n_source} (and keep the query heads per KV head, or change "
                f"them by a factor that keeps the copies even)")


def query_scale(family: Family, config, source_layer: int | None, target_name: str) -> float:
    """GPT-2's ``scale_attn_by_inverse_layer_idx`` divides layer l's attention scores by l + 1, so
    a layer that moves from index s to t would see them divided by t + 1 instead: its query
    rows are multiplied by (t + 1) / (s + 1) to keep every score as it was."""
    flag = family.inverse_layer_scaling
    if source_layer is None or not (flag and getattr(config, flag, False)):
        return 1.0
    target_layer = int(family.match_layer(target_name).group(1))
    return (target_layer + 1) / (source_layer + 1)


def check_config_accepts(config, source: Sizes, target: Sizes) -> None:
    """The target config must pass its class's own validation: lemon could build some models
    transformers refuses (head_dim decoupled from hidden_size / heads), but then
    ``save_pretrained`` and ``from_pretrained`` of the result would fail."""
    validate = getattr(config, "validate", None)
    if validate is None:  # configs before huggingface_hub's strict dataclasses
        return
    try:
        validate()
    except Exception as err:  # noqa: BLE001  (any refusal: the validators raise what they like)
        reason = str(err.__cause__ or err).strip()
        changed = ", ".join(f"{name}={value}" for name, value in target.as_dict().items()
                            if value != getattr(source, name)) or "the source's sizes"
        heads, hidden = target.num_attention_heads, target.hidden_size
        if hidden % heads:
            fix = (f"choose hidden_size as a multiple of num_attention_heads={heads} "
                   f"(e.g. {_multiples_near(hidden, heads, source.hidden_size)}) or a num_attention_heads "
                   f"that divides hidden_size={hidden}")
        else:
            fix = "choose sizes it accepts"
        raise ValueError(f"transformers' {type(config).__name__} refuses the target sizes ({changed}): "
                         f"{reason} lemon could build the weights, but the model could not be saved or "
                         f"reloaded: {fix}") from err


def empty_model(cls, config) -> torch.nn.Module:
    """A ``cls`` built from ``config`` on the meta device, its init functions skipped: names and
    shapes only, no memory (a random init of the large model would cost more than the expansion,
    and even on meta tensors the init ops run through Python decompositions)."""
    from transformers.initialization import no_init_weights

    with torch.device("meta"):
        with no_init_weights():
            model = cls(config)
        model.init_weights()  # what no_init_weights skipped; on the meta device it only ties weights
    return model


def check_target_parameters(model: torch.nn.Module, config, tensors: dict[str, TensorPlan],
                            tied: dict[str, str]) -> torch.nn.Module:
    """lemon rebuilds the model from its config: the plan must make exactly the parameters, with
    the shapes, that the class creates from the target config. A parameter the user attached
    by hand (or one whose name only ends like a known one) has no place in the rebuilt model.
    Returns the target built on the meta device for the check (the plan keeps it)."""
    cls = type(model).__name__
    skeleton = empty_model(type(model), config)
    expected = {n: tuple(p.shape) for n, p in skeleton.named_parameters(remove_duplicate=False)}
    planned = {**{n: plan.shape for n, plan in tensors.items()},
               **{alias: tensors[owner].shape for alias, owner in tied.items() if owner in tensors}}
    extra = sorted(set(planned) - set(expected))
    if extra:
        raise ValueError(f"{cls} has parameters that a {cls} built from its config does not create: "
                         f"{_names(extra)}. lemon rebuilds the model from its config, so parameters that the "
                         f"class does not create from the config cannot be expanded: remove them before "
                         f"expanding (and expand them yourself), or make them part of the class")
    missing = sorted(set(expected) - set(planned))
    if missing:
        raise ValueError(f"a {cls} built from the target config has parameters that the source model lacks: "
                         f"{_names(missing)}; lemon can only fill parameters it can derive from the source's. "
                         f"Expand a model whose parameters match what {cls} creates from its config")
    wrong = [f"{n} (plan {planned[n]}, {cls} {expected[n]})" for n in sorted(planned) if planned[n] != expected[n]]
    if wrong:
        raise ValueError(f"the target {cls} expects other shapes than lemon plans for {_names(wrong)}: its "
                         f"config has fields that do not follow the sizes lemon grows. Report this with the "
                         f"model's config")
    return skeleton


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
