"""GPT-NeoX and Pythia: pre-LayerNorm, parallel residual (attention and MLP both read the layer's
input; sequential where use_parallel_residual is False), q/k/v fused and interleaved per head,
partial rotary embeddings (a fraction of the fixed head dimension: untouched by widening)."""
from .base import Family, flatten, layer_norm, linear, matrix

FAMILY = Family(
    name="gpt_neox",
    description="GPT-NeoX / Pythia (parallel residual, q/k/v fused per head, partial rotary)",
    model_types=("gpt_neox",),
    norm="layernorm",
    post_norm=False,
    layer_pattern=r"(?:^|\.)layers\.(\d+)\.",
    layer_params=flatten({
        "input_layernorm": layer_norm(),
        "attention.query_key_value": linear("qkv_heads", "stream_in"),
        "attention.dense": linear("stream", "heads_in", tag="writer"),
        "post_attention_layernorm": layer_norm(),
        "mlp.dense_h_to_4h": linear("ffn", "stream_in"),
        "mlp.dense_4h_to_h": linear("stream", "ffn_in", tag="writer"),
    }),
    global_params=flatten({
        "embed_in.weight": matrix("keep", "stream"),
        "final_layer_norm": layer_norm(tag="final_norm"),
        "lm_head.weight": matrix("keep", "stream_in"),
    }),
    eps_field="layer_norm_eps",
)
