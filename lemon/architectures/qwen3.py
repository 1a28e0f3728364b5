"""Qwen3: Llama's layout (RMSNorm, RoPE, SwiGLU, grouped-query attention, fixed head_dim) plus an
RMSNorm over head_dim on every query and key head, with the same eps field as the stream norms.
The projections feeding those norms are scaled by eta so that they follow eps* (rules.py)."""
from .base import SIZE_NAMES, Family, linear, vector
from .llama import FAMILY as LLAMA

FAMILY = Family(
    name="qwen3",
    description="Qwen3 (Llama layout with per-head q/k RMSNorm)",
    model_types=("qwen3",),
    norm="rmsnorm",
    post_norm=False,
    layer_pattern=LLAMA.layer_pattern,
    layer_params={
        **LLAMA.layer_params,
        **{f"self_attn.q_proj.{leaf}": role for leaf, role in linear("heads", "stream_in", tag="normed").items()},
        **{f"self_attn.k_proj.{leaf}": role for leaf, role in linear("kv", "stream_in", tag="normed").items()},
        "self_attn.q_norm.weight": vector("keep"),  # over head_dim, shared by every head: unchanged
        "self_attn.k_norm.weight": vector("keep"),
    },
    global_params=LLAMA.global_params,
    config_fields={name: name for name in SIZE_NAMES},
    eps_field="rms_norm_eps",
    head_dim_field="head_dim",
)
