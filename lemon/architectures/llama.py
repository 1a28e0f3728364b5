"""Llama and its close relatives (Mistral, Qwen2): RMSNorm, RoPE, SwiGLU, grouped-query attention."""
from .base import SIZE_NAMES, Family, flatten, linear, matrix, vector

FAMILY = Family(
    name="llama",
    description="Llama / Mistral / Qwen2 (RMSNorm, RoPE, SwiGLU, grouped-query attention)",
    model_types=("llama", "mistral", "qwen2"),
    norm="rmsnorm",
    post_norm=False,
    layer_pattern=r"(?:^|\.)layers\.(\d+)\.",
    layer_params=flatten({
        "input_layernorm.weight": vector("norm"),
        "self_attn.q_proj": linear("heads", "stream_in"),
        "self_attn.k_proj": linear("kv", "stream_in"),
        "self_attn.v_proj": linear("kv", "stream_in"),
        "self_attn.o_proj": linear("stream", "heads_in", tag="writer"),
        "post_attention_layernorm.weight": vector("norm"),
        # SwiGLU: gate and up go through the same neuron map, so replicas have equal pre-activations
        "mlp.gate_proj": linear("ffn", "stream_in"),
        "mlp.up_proj": linear("ffn", "stream_in"),
        "mlp.down_proj": linear("stream", "ffn_in", tag="writer"),
    }),
    global_params=flatten({
        "embed_tokens.weight": matrix("keep", "stream"),
        "norm.weight": vector("norm", tag="final_norm"),
        "lm_head.weight": matrix("keep", "stream_in"),
    }),
    config_fields={name: name for name in SIZE_NAMES},
    eps_field="rms_norm_eps",
    head_dim_field="head_dim",
)
