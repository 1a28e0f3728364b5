"""Gemma 2 and Gemma 3 (text): RMSNorm with a (1 + w) gain (stored as w: plans with offset 1),
token embeddings multiplied by sqrt(hidden_size) inside the model, a GELU-tanh gated MLP,
sandwich norms (a norm before each sublayer and one on its output before the residual add),
logit soft-capping (a function of logits and scores, which stay as they were), a fixed head_dim
with query_pre_attn_scalar, and sliding-window layers alternating with global ones (the per-layer
``layer_types`` list is rewritten so that an inserted layer has the type of the layer it copies).
The embedding scale lives in a buffer that follows the target's hidden size. Gemma 3 adds an
RMSNorm over head_dim on every query and key head."""
from dataclasses import replace

from .base import SIZE_NAMES, Family, flatten, linear, matrix, vector


def _layers(qk_norms: bool) -> dict:
    q_tag = "normed" if qk_norms else ""
    roles = {
        "input_layernorm.weight": vector("norm", offset=1.0),
        "self_attn.q_proj": linear("heads", "stream_in", tag=q_tag),
        "self_attn.k_proj": linear("kv", "stream_in", tag=q_tag),
        "self_attn.v_proj": linear("kv", "stream_in"),
        "self_attn.o_proj": linear("stream", "heads_in", tag="writer"),
        "post_attention_layernorm.weight": vector("norm", tag="sublayer_norm", offset=1.0),
        "pre_feedforward_layernorm.weight": vector("norm", offset=1.0),
        "mlp.gate_proj": linear("ffn", "stream_in"),
        "mlp.up_proj": linear("ffn", "stream_in"),
        "mlp.down_proj": linear("stream", "ffn_in", tag="writer"),
        "post_feedforward_layernorm.weight": vector("norm", tag="sublayer_norm", offset=1.0),
    }
    if qk_norms:  # over head_dim, shared by every head: copied as they are
        roles.update({"self_attn.q_norm.weight": vector("keep"), "self_attn.k_norm.weight": vector("keep")})
    return flatten(roles)


GLOBAL = flatten({
    "embed_tokens.weight": matrix("keep", "stream", tag="embedding"),
    "norm.weight": vector("norm", tag="final_norm", offset=1.0),
    "lm_head.weight": matrix("keep", "stream_in"),
})

# the embedding module keeps its scale in a (non-persistent) buffer: the target's is sqrt(D_T)
CONFIG_BUFFERS = {"embed_tokens.embed_scale": lambda config: config.hidden_size ** 0.5}

GEMMA2 = Family(
    name="gemma2",
    description="Gemma 2 ((1 + w) RMSNorm gains, scaled embeddings, sandwich norms, soft-capping)",
    model_types=("gemma2",),
    norm="rmsnorm",
    post_norm=False,
    layer_pattern=r"(?:^|\.)layers\.(\d+)\.",
    layer_params=_layers(qk_norms=False),
    global_params=GLOBAL,
    config_fields={name: name for name in SIZE_NAMES},
    eps_field="rms_norm_eps",
    head_dim_field="head_dim",
    embeddings_scaled_by_sqrt_hidden=True,
    config_buffers=CONFIG_BUFFERS,
)

GEMMA3 = replace(GEMMA2, name="gemma3", description="Gemma 3 text (Gemma 2's layout plus per-head q/k RMSNorm)",
                 model_types=("gemma3_text",), layer_params=_layers(qk_norms=True))
