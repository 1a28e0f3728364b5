"""What the user asks for, resolved against the source model and validated before any work."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from .architectures import SIZE_NAMES, Family, find_family
from .maps import gqa_feasible


@dataclass(frozen=True)
class Sizes:
    """The five sizes lemon grows, plus the head dimension it keeps fixed."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    head_dim: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def read_sizes(family: Family, config, intermediate_from_weights: int) -> Sizes:
    """Sizes from the config; the FFN width from the weights (GPT-2 leaves n_inner None)."""
    fields = family.config_fields
    hidden = getattr(config, fields["hidden_size"])
    heads = getattr(config, fields["num_attention_heads"])
    kv_field = fields["num_key_value_heads"]
    kv_heads = (getattr(config, kv_field, None) if kv_field else None) or heads
    head_dim = (getattr(config, family.head_dim_field, None) if family.head_dim_field else None)
    return Sizes(hidden_size=hidden, intermediate_size=intermediate_from_weights,
                 num_attention_heads=heads, num_key_value_heads=kv_heads,
                 num_hidden_layers=getattr(config, fields["num_hidden_layers"]),
                 head_dim=head_dim or hidden // heads)


def model_sizes(model) -> Sizes:
    """The sizes of a transformers model of a supported family (the FFN width from its weights)."""
    family = find_family(model.config)
    for name, param in model.named_parameters(remove_duplicate=False):
        try:
            role, _ = family.role(name)
        except KeyError:
            continue  # plan_expansion refuses unknown parameters; here they just carry no size
        for axis, kind in enumerate(role.axes):
            if kind in ("ffn", "ffn_in"):
                return read_sizes(family, model.config, param.shape[0 if axis == 0 else role.split])
    return read_sizes(family, model.config, 0)


# config fields an expansion never changes: the inputs a model takes and where it reads them
KEPT_FIELDS = ("vocab_size", "type_vocab_size", "max_position_embeddings", "image_size", "patch_size", "num_channels")


def check_source_and_expansion(small, big, call: str = "lemon.verify(small, big)") -> None:
    """``small`` must be the source and ``big`` its expansion, at least as large in every size
    (catches swapped arguments; equal sizes, e.g. a reloaded copy, are fine). ``call``: how the
    user called it, for the message."""
    kinds = [getattr(model.config, "model_type", None) for model in (small, big)]
    if kinds[0] != kinds[1]:
        raise ValueError(f"the two models are of different kinds (model_type {kinds[0]!r} and {kinds[1]!r}), so "
                         f"the second cannot be an expansion of the first: call {call} with a source model "
                         "and its own expansion")
    fixed = [f"{name} {getattr(small.config, name)} and {getattr(big.config, name)}" for name in KEPT_FIELDS
             if getattr(small.config, name, None) != getattr(big.config, name, None)]
    if fixed:
        raise ValueError(f"the two models differ in what an expansion keeps ({', '.join(fixed)}), so the second "
                         f"cannot be an expansion of the first: call {call} with a source model and its own expansion")
    a, b = model_sizes(small), model_sizes(big)
    smaller = [f"{n} {getattr(b, n)} < {getattr(a, n)}" for n in SIZE_NAMES if getattr(b, n) < getattr(a, n)]
    if smaller:
        raise ValueError(f"the first argument must be the source (smaller) model and the second its expansion, "
                         f"but the second is smaller ({', '.join(smaller)}): call {call} with the model "
                         "you expanded first")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy ints too


SEED_LIMIT = 2**64  # the noise key reads 64 bits of the seed (lemon.noise.tensor_key)


def check_seed(seed) -> int:
    """``seed`` as a Python int: an integer (numpy integers too) in [0, 2**64)."""
    if not _is_int(seed):
        hint = _as_int_hint(seed)
        raise TypeError(f"seed must be an integer (a Python int or numpy integer), got {seed!r} of type "
                        f"{type(seed).__name__}: pass e.g. seed={hint if hint is not None else 0}")
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed={seed} is outside [0, 2**64): the noise key reads 64 bits of the seed, so "
                         f"it would silently equal seed={int(seed) % SEED_LIMIT}; choose a seed in [0, 2**64)")
    return int(seed)


def _as_int_hint(value) -> int | None:
    """The integer a mistyped seed most likely meant ("7", 7.0), for the error message."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and 0 <= number < SEED_LIMIT else None


def check_noise_std(noise_std) -> float | None:
    """``noise_std`` as a float (None stays None: the config's initializer_range)."""
    if noise_std is None:
        return None
    if not isinstance(noise_std, numbers.Real) or isinstance(noise_std, bool):
        raise TypeError(f"noise_std must be a real number such as 0.02 (0 turns symmetry breaking off, "
                        f"None uses the config's initializer_range), got {noise_std!r} of type "
                        f"{type(noise_std).__name__}")
    value = float(noise_std)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"noise_std must be a finite number >= 0 (0 turns symmetry breaking off, None uses "
                         f"the config's initializer_range), got {noise_std!r}")
    return value


def check_layer_positions(layer_positions) -> list | None:
    """``layer_positions`` as a list (its values are checked against the sizes in :func:`resolve`)."""
    if layer_positions is None:
        return None
    if _is_int(layer_positions):
        raise TypeError(f"layer_positions must be a list of target-layer indices, got the single integer "
                        f"{layer_positions!r}: pass a list such as [{int(layer_positions)}]")
    if isinstance(layer_positions, (str, bytes)):
        raise TypeError(f"layer_positions must be a list of target-layer indices, got the string "
                        f"{layer_positions!r}: pass a list of integers such as [2]")
    try:
        return list(layer_positions)
    except TypeError:
        raise TypeError(f"layer_positions must be a list of target-layer indices, got {layer_positions!r} "
                        f"of type {type(layer_positions).__name__}: pass a list such as [2]") from None


def require_growth(family: Family, source: Sizes, requested: dict, layer_positions) -> None:
    """Refuse a request that changes nothing: it would only copy the model, noise-free. The
    message names the sizes this family has (GPT-2 has no KV-head count to grow)."""
    if layer_positions or any(v is not None and v != getattr(source, k) for k, v in requested.items()):
        return
    names = [name for name in requested if family.config_fields.get(name, name) is not None]
    current = ", ".join(f"{name}={getattr(source, name)}" for name in names)
    raise ValueError(f"nothing to expand: every size is None or equal to the source's. Pass at least one "
                     f"larger size among the keywords {', '.join(names)}; the source has {current}")


def _check_int(name: str, value) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _multiples_near(value: int, step: int, at_least: int) -> str:
    """The multiple of ``step`` at or below ``value`` (raised to ``at_least``) and the next one."""
    lower = max(value // step * step, -(-at_least // step) * step)
    return f"{lower} or {lower + step}"


def _fitting_kv_heads(source: Sizes, heads: int, at_least: int) -> int:
    """The fewest KV heads, ``at_least`` (what the user asked for) or more, that ``heads`` query
    heads can take from the source losslessly (heads itself, multi-head attention, always can).
    Offering fewer than asked would offer what the user is moving away from."""
    return next(kv for kv in range(max(at_least, source.num_key_value_heads), heads + 1)
                if heads % kv == 0 and gqa_feasible(source.num_attention_heads, source.num_key_value_heads, heads, kv))


def resolve(family: Family, source: Sizes, requested: dict, layer_positions) -> tuple[Sizes, list[int] | None]:
    """Target sizes for the requested ones (None = derived or unchanged). Raises ValueError
    naming the problem and the fix for anything that cannot be expanded losslessly."""
    req = {k: (None if v is None else _check_int(k, v)) for k, v in requested.items()}
    for name, value in req.items():
        if value is not None and value < getattr(source, name):
            raise ValueError(f"{name}={value} is smaller than the source's {getattr(source, name)}: "
                             f"lemon only grows models; ask for at least {getattr(source, name)}")

    hd = source.head_dim
    hidden = req["hidden_size"] or source.hidden_size
    coupled = source.num_attention_heads * hd == source.hidden_size
    decouplable = family.head_dim_field is not None
    heads = req["num_attention_heads"]
    if coupled and not (decouplable and heads is not None):
        # head_dim stays fixed and the family's heads tile the hidden size
        if hidden % hd:
            raise ValueError(
                f"hidden_size={hidden} cannot be split into heads of the fixed head dimension {hd}: "
                f"choose a multiple of {hd} (e.g. {_multiples_near(hidden, hd, source.hidden_size)})"
                + (f", or pass num_attention_heads as well ({family.name} keeps {family.head_dim_field} in its "
                   f"config, so heads need not tile the hidden size)" if decouplable else ""))
        if heads is not None and heads * hd != hidden:
            raise ValueError(
                f"num_attention_heads={heads} with head dimension {hd} gives {heads * hd}, "
                f"not hidden_size={hidden}: use num_attention_heads={hidden // hd} "
                f"or hidden_size={heads * hd}")
        heads = hidden // hd
    heads = heads or source.num_attention_heads
    if family.eps_field is None and hidden % source.hidden_size:
        raise ValueError(
            f"{family.name}'s norm eps is fixed in transformers' code (no config field), and widening "
            f"{source.hidden_size} -> {hidden} (not a multiple) needs it scaled by eta^2 to stay lossless; "
            f"choose hidden_size={_multiples_near(hidden, source.hidden_size, 2 * source.hidden_size)}")
    if family.post_norm and hidden % source.hidden_size:
        raise ValueError(
            f"{family.name} is post-LayerNorm: widening {source.hidden_size} -> {hidden} is lossless only "
            f"for integer multiples (a non-multiple changes the function by ~3e-2); "
            f"choose hidden_size={_multiples_near(hidden, source.hidden_size, 2 * source.hidden_size)}")

    kv = req["num_key_value_heads"]
    if not family.has_gqa:
        if kv is not None and kv != heads:
            raise ValueError(f"{family.name} has no grouped-query attention: num_key_value_heads must "
                             f"equal num_attention_heads ({heads}); leave it out")
        kv = heads
    elif kv is None:
        group = source.num_attention_heads // source.num_key_value_heads
        if source.num_key_value_heads == source.num_attention_heads:
            kv = heads  # multi-head attention stays multi-head
        elif heads % source.num_key_value_heads == 0:
            kv = source.num_key_value_heads
        elif heads % group == 0:
            kv = heads // group
        else:
            raise ValueError(f"num_attention_heads={heads} is a multiple of neither the source's "
                             f"{source.num_key_value_heads} KV heads nor its group size {group}: "
                             f"pass num_key_value_heads (a divisor of {heads})")
    if heads % kv:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}: "
                         f"choose a divisor of {heads}")
    if kv < source.num_key_value_heads:
        raise ValueError(f"num_key_value_heads={kv} is smaller than the source's "
                         f"{source.num_key_value_heads}: lemon only grows models")
    if not gqa_feasible(source.num_attention_heads, source.num_key_value_heads, heads, kv):
        need = source.num_key_value_heads * math.ceil(
            (source.num_attention_heads // source.num_key_value_heads) / (heads // kv))
        raise ValueError(
            f"{source.num_attention_heads} heads / {source.num_key_value_heads} KV heads cannot become "
            f"{heads} / {kv} losslessly: every new query head must attend with a copy of its own KV head, "
            f"which needs num_key_value_heads >= {need} here (KV_T >= KV_S * ceil(g_S / g_T)) and a divisor of "
            f"{heads}: use num_key_value_heads={_fitting_kv_heads(source, heads, kv)}")

    layers = req["num_hidden_layers"]
    if layer_positions is not None:
        layer_positions = [int(p) if _is_int(p) else p for p in layer_positions]
        if layers is None:
            layers = source.num_hidden_layers + len(layer_positions)
        new = layers - source.num_hidden_layers
        if (len(layer_positions) != new or len(set(layer_positions)) != new
                or any(not _is_int(p) or not 1 <= p < layers
                       for p in layer_positions)):
            raise ValueError(
                f"layer_positions must list {new} distinct target-layer indices in [1, {layers}) "
                f"(a new layer follows an existing one), got {layer_positions}")
        layer_positions = sorted(layer_positions)
    layers = layers or source.num_hidden_layers

    target = Sizes(hidden_size=hidden, intermediate_size=req["intermediate_size"] or source.intermediate_size,
                   num_attention_heads=heads, num_key_value_heads=kv, num_hidden_layers=layers,
                   head_dim=hd)
    return target, layer_positions
