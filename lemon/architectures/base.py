"""What a model-family adapter is: a table of parameter-name patterns -> roles.

A *role* names, for each axis of a parameter's 2-D view (see :mod:`lemon.plan`),
which index space it lives in; :mod:`lemon.rules` turns (role, sizes) into a plan.

Axis kinds:
  keep         untouched (vocabulary, positions, token types, labels, patch pixels)
  stream       the residual stream as written by a layer or embedding (family's form)
  stream_zero  a hidden-size vector in V_zero form (norm biases, pooler outputs)
  norm         a norm's gain: circular, scaled by eta
  stream_in    fan-in from a V_zero hidden vector: column blocks split the weight
  heads / heads_in   query-head elements, produced / consumed (split)
  kv           key/value-head elements
  qkv          fused [q; k; v] (GPT-2's c_attn, Phi-3's qkv_proj)
  qkv_heads    fused q/k/v interleaved per head: [q_0; k_0; v_0; q_1; ...] (GPT-NeoX)
  ffn / ffn_in MLP neurons, produced / consumed (split)
  ffn_pair     two neuron maps stacked: [gate; up] (Phi-3's gate_up_proj)

Tags say what else a parameter is, where a rule depends on it:
  writer      writes into the residual stream (zeroed with cancelling noise in inserted layers)
  normed      a query / key projection whose output an RMSNorm normalizes with the stream norms'
              eps (Qwen3, OLMo 2): its rows are scaled by eta to follow eps* (see rules.py)
  sublayer_norm  a norm on a sublayer's output before the residual add (OLMo 2, Gemma): zero
              gain in inserted layers, whose writers then stay copies (see rules.py)
  embedding   the token embedding, where the model multiplies it by sqrt(hidden_size) (Gemma)
  attn_norm / ffn_norm   post-norm layer norms LN_A / LN_F (moved around by post-norm depth)
  final_norm  the norm before a tied output head (scaled by 1/k)
  final_reader  another head reading that norm's output (GPT-2's multiple-choice head): scaled
              by the inverse, so it sees what it saw before
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

SIZE_NAMES = ("hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "num_hidden_layers")
AXIS_KINDS = ("keep", "stream", "stream_zero", "norm", "stream_in", "heads", "heads_in",
              "kv", "qkv", "qkv_heads", "ffn", "ffn_in", "ffn_pair")
SPLIT_KINDS = ("stream_in", "heads_in", "ffn_in")
TAGS = ("", "writer", "attn_norm", "ffn_norm", "final_norm", "final_reader", "normed", "sublayer_norm",
        "embedding")


@dataclass(frozen=True)
class Role:
    axes: tuple[str, str]
    split: int = 1  # leading stored dims that form view axis 0
    tag: str = ""
    offset: float = 0.0  # the parameter stores value - offset (Gemma's (1 + w) gains: 1.0)

    def __post_init__(self):
        assert all(a in AXIS_KINDS for a in self.axes), self.axes
        assert sum(a in SPLIT_KINDS for a in self.axes) <= 1, "one split axis at most"
        assert self.tag in TAGS, self.tag


def matrix(rows: str, cols: str, tag: str = "") -> Role:
    return Role((rows, cols), 1, tag)


def vector(kind: str, tag: str = "", offset: float = 0.0) -> Role:
    return Role(("keep", kind), 0, tag, offset)


def layer_norm(tag: str = "") -> dict[str, Role]:
    """A LayerNorm's gain and bias (input V_avg, output V_zero)."""
    return {"weight": vector("norm", tag), "bias": vector("stream_zero", tag)}


def linear(rows: str, cols: str, tag: str = "", bias: bool = True) -> dict[str, Role]:
    """An nn.Linear (weight [out, in]) and its bias along the output axis."""
    roles = {"weight": matrix(rows, cols, tag)}
    if bias:
        roles["bias"] = vector(rows, tag)
    return roles


def conv1d(rows: str, cols: str, tag: str = "") -> dict[str, Role]:
    """GPT-2's Conv1D stores the weight as [in, out]: a Linear's rows are its columns."""
    return {"weight": matrix(cols, rows, tag), "bias": vector(rows, tag)}


def flatten(prefixes: dict[str, dict[str, Role] | Role]) -> dict[str, Role]:
    out = {}
    for prefix, roles in prefixes.items():
        if isinstance(roles, Role):
            out[prefix] = roles
        else:
            out.update({f"{prefix}.{leaf}": role for leaf, role in roles.items()})
    return out


# Task heads: linear maps of a hidden vector (the last layer's output, or BERT's pooler's) to a
# task's outputs, named alike in transformers' classes of every family. A family's own table
# wins where it names the same parameter. No class has one of these beside an output head tied
# to the embeddings (whose final norm carries 1/k: a head beside it is a "final_reader").
TASK_HEADS = flatten({
    "score": linear("keep", "stream_in"),  # sequence classification (no bias), token classification (bias)
    "classifier": linear("keep", "stream_in"),  # token, sequence, image and multiple-choice classification
    "qa_outputs": linear("keep", "stream_in"),  # question answering: start and end logits per token
})


@dataclass(frozen=True)
class Family:
    """A model family as data: how its names, sizes and norms look."""

    name: str
    description: str
    model_types: tuple[str, ...]  # transformers config.model_type values
    norm: str  # "layernorm" | "rmsnorm"
    post_norm: bool
    layer_pattern: str  # regex; group 1 is the layer index, the rest of the name follows
    layer_params: dict[str, Role]
    global_params: dict[str, Role]
    eps_field: str | None  # None: the norms' eps is fixed in the code, so eps* = eta^2 eps is impossible
    # size name -> config attribute; a family without grouped-query attention maps KV heads to None
    config_fields: dict[str, str | None] = field(default_factory=lambda: {
        **{name: name for name in SIZE_NAMES}, "num_key_value_heads": None})
    head_dim_field: str | None = None  # config attribute that decouples head_dim from hidden_size
    inputs: str = "tokens"  # "tokens" | "pixels": what a random test input is
    # config flag that divides layer l's attention scores by l + 1 (GPT-2); see rules.query_scale
    inverse_layer_scaling: str | None = None
    notes: tuple[str, ...] = field(default=())
    # what depends on the config (see for_config): post-norm where this flag is False (OPT's
    # do_layer_norm_before), global roles that replace the table's, config fields that follow
    # the hidden size when the source has them equal to it
    # "all": q and k are RMS-normalized over all their heads at once (OLMo 2), which stays exact
    # only if every source head is copied equally often
    qk_norm_over: str | None = None
    # the model multiplies the token embeddings by sqrt(hidden_size) (Gemma): see rules.py
    embeddings_scaled_by_sqrt_hidden: bool = False
    # buffers whose value follows the config, not the source (Gemma 3's embed_scale): name suffix ->
    # the value for a config; every other buffer is copied from the source
    config_buffers: dict[str, Callable[[object], float]] = field(default_factory=dict)
    pre_norm_flag: str | None = None
    config_roles: Callable[[object], dict[str, Role]] | None = None
    follows_hidden: tuple[str, ...] = ()

    def for_config(self, config) -> "Family":
        """The family as this config builds it."""
        changes: dict = {}
        if self.pre_norm_flag is not None:
            changes["post_norm"] = not getattr(config, self.pre_norm_flag, True)
        if self.config_roles is not None:
            changes["global_params"] = {**self.global_params, **self.config_roles(config)}
        return replace(self, **changes) if changes else self

    @property
    def stream_form(self) -> str:
        # RMSNorm is not lossless on a V_avg stream (the residue shifts the mean square): V_zero.
        return "zero" if self.norm == "rmsnorm" else "avg"

    @property
    def has_sublayer_norms(self) -> bool:
        return any(role.tag == "sublayer_norm" for role in self.layer_params.values())

    @cached_property
    def global_roles(self) -> dict[str, Role]:
        """The roles of parameters outside the layers: the family's table, then the task heads."""
        return {**self.global_params, **{k: v for k, v in TASK_HEADS.items() if k not in self.global_params}}

    @property
    def has_gqa(self) -> bool:
        return self.config_fields.get("num_key_value_heads") is not None

    def match_layer(self, name: str) -> re.Match | None:
        return re.search(self.layer_pattern, name)

    def in_layer(self, name: str, layer: int) -> str:
        """``name`` of a per-layer parameter or buffer, moved to layer ``layer``."""
        match = self.match_layer(name)
        return name[: match.start(1)] + str(layer) + name[match.end(1):] if match else name

    def role(self, name: str) -> tuple[Role, int | None]:
        """(role, layer index or None) of a parameter name; KeyError if unknown."""
        match = self.match_layer(name)
        if match:
            rest = name[match.end():]
            if rest in self.layer_params:
                return self.layer_params[rest], int(match.group(1))
        else:
            for pattern, role in self.global_roles.items():
                if name == pattern or name.endswith("." + pattern):
                    return role, None
        raise KeyError(name)
