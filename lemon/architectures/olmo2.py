"""OLMo 2: RMSNorm after each sublayer (on its output, before the residual add) instead of
before it, and RMSNorm over the full query and key projections (all heads at once), with the
stream norms' eps. A post-sublayer norm reads the writer's V_zero output, so it is an ordinary
norm; the q/k norms are exact when the projections are scaled by eta (eps*) and every head is
copied equally often (rules.py)."""
from .base import SIZE_NAMES, Family, flatten, linear, vector
from .llama import FAMILY as LLAMA

FAMILY = Family(
    name="olmo2",
    description="OLMo 2 (norms after each sublayer, q/k RMSNorm over all heads)",
    model_types=("olmo2",),
    norm="rmsnorm",
    post_norm=False,  # its norms follow the sublayers but precede the residual add: the stream is never normalized
    layer_pattern=r"(?:^|\.)layers\.(\d+)\.",
    layer_params=flatten({
        "self_attn.q_proj": linear("heads", "stream_in", tag="normed"),
        "self_attn.k_proj": linear("kv", "stream_in", tag="normed"),
        "self_attn.v_proj": linear("kv", "stream_in"),
        "self_attn.q_norm.weight": vector("heads"),  # over every head's elements: copied with its head
        "self_attn.k_norm.weight": vector("kv"),
        "self_attn.o_proj": linear("stream", "heads_in", tag="writer"),
        "post_attention_layernorm.weight": vector("norm", tag="sublayer_norm"),
        "mlp.gate_proj": linear("ffn", "stream_in"),
        "mlp.up_proj": linear("ffn", "stream_in"),
        "mlp.down_proj": linear("stream", "ffn_in", tag="writer"),
        "post_feedforward_layernorm.weight": vector("norm", tag="sublayer_norm"),
    }),
    global_params=LLAMA.global_params,
    config_fields={name: name for name in SIZE_NAMES},
    eps_field="rms_norm_eps",
    head_dim_field="head_dim",
    qk_norm_over="all",
    notes=("OLMo 2 normalizes q and k over all heads at once: heads and KV heads grow by multiples that "
           "copy every head equally often.",),
)
