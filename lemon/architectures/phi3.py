"""Phi-3: RMSNorm, RoPE, grouped-query attention, with q/k/v fused in one projection ([q; k; v])
and the SwiGLU gate and up projections fused in another ([gate; up], halves through one neuron map)."""
from .base import SIZE_NAMES, Family, flatten, linear, vector
from .llama import FAMILY as LLAMA

FAMILY = Family(
    name="phi3",
    description="Phi-3 (RMSNorm, fused qkv_proj and gate_up_proj, grouped-query attention)",
    model_types=("phi3",),
    norm="rmsnorm",
    post_norm=False,
    layer_pattern=r"(?:^|\.)layers\.(\d+)\.",
    layer_params=flatten({
        "input_layernorm.weight": vector("norm"),
        "self_attn.qkv_proj": linear("qkv", "stream_in"),
        "self_attn.o_proj": linear("stream", "heads_in", tag="writer"),
        "post_attention_layernorm.weight": vector("norm"),
        "mlp.gate_up_proj": linear("ffn_pair", "stream_in"),
        "mlp.down_proj": linear("stream", "ffn_in", tag="writer"),
    }),
    global_params=LLAMA.global_params,
    config_fields={name: name for name in SIZE_NAMES},
    eps_field="rms_norm_eps",
)
