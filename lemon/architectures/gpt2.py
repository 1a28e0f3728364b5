"""GPT-2: pre-LayerNorm, learned positions, fused q/k/v in a Conv1D, tied embeddings."""
from .base import Family, conv1d, flatten, layer_norm, linear, matrix

FAMILY = Family(
    name="gpt2",
    description="GPT-2 (pre-LN, fused c_attn Conv1D, tied embeddings)",
    model_types=("gpt2",),
    norm="layernorm",
    post_norm=False,
    layer_pattern=r"(?:^|\.)h\.(\d+)\.",
    layer_params=flatten({
        "ln_1": layer_norm(),
        "attn.c_attn": conv1d("qkv", "stream_in"),
        "attn.c_proj": conv1d("stream", "heads_in", tag="writer"),
        "ln_2": layer_norm(),
        "mlp.c_fc": conv1d("ffn", "stream_in"),
        "mlp.c_proj": conv1d("stream", "ffn_in", tag="writer"),
    }),
    global_params=flatten({
        "wte.weight": matrix("keep", "stream"),
        "wpe.weight": matrix("keep", "stream"),
        "ln_f": layer_norm(tag="final_norm"),
        "lm_head.weight": matrix("keep", "stream_in"),
        # GPT2DoubleHeadsModel: one logit per choice, from the final norm's output at its token,
        # beside the LM head tied to the embeddings
        "multiple_choice_head.summary": linear("keep", "stream_in", tag="final_reader"),
    }),
    config_fields={"hidden_size": "n_embd", "intermediate_size": "n_inner",
                   "num_attention_heads": "n_head", "num_key_value_heads": None,
                   "num_hidden_layers": "n_layer"},
    eps_field="layer_norm_epsilon",
    inverse_layer_scaling="scale_attn_by_inverse_layer_idx",
)
