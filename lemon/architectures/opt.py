"""OPT: learned positions (offset by 2 rows), pre-LayerNorm, or post-LayerNorm where
``do_layer_norm_before`` is False (OPT-350m), and, where the word embeddings are narrower than
the hidden size (``word_embed_proj_dim``), projections in and out of the stream around them.

The LayerNorms' eps is fixed in transformers' code (1e-5, no config field), so eps* = eta^2 eps
cannot be written: widths must grow by integer multiples (eta = 1)."""
from .base import Family, flatten, layer_norm, linear, matrix


def _projected(config) -> dict:
    """With project_in / project_out the word embeddings and the tied head live in their own
    width, which does not grow; the projections carry the stream."""
    if getattr(config, "word_embed_proj_dim", config.hidden_size) == config.hidden_size:
        return {}
    return {
        "embed_tokens.weight": matrix("keep", "keep"),
        "lm_head.weight": matrix("keep", "keep"),
        "project_in.weight": matrix("stream", "keep"),  # word width -> stream
        "project_out.weight": matrix("keep", "stream_in"),  # reads the final norm's output
    }


FAMILY = Family(
    name="opt",
    description="OPT (learned positions, pre- or post-LayerNorm, word-embedding projections)",
    model_types=("opt",),
    norm="layernorm",
    post_norm=False,  # for_config reads do_layer_norm_before
    layer_pattern=r"(?:^|\.)layers\.(\d+)\.",
    layer_params=flatten({
        "self_attn.q_proj": linear("heads", "stream_in"),
        "self_attn.k_proj": linear("kv", "stream_in"),
        "self_attn.v_proj": linear("kv", "stream_in"),
        "self_attn.out_proj": linear("stream", "heads_in", tag="writer"),
        "self_attn_layer_norm": layer_norm(tag="attn_norm"),
        "fc1": linear("ffn", "stream_in"),
        "fc2": linear("stream", "ffn_in", tag="writer"),
        "final_layer_norm": layer_norm(tag="ffn_norm"),
    }),
    global_params=flatten({
        "embed_tokens.weight": matrix("keep", "stream"),
        "embed_positions.weight": matrix("keep", "stream"),
        "final_layer_norm": layer_norm(tag="final_norm"),
        "lm_head.weight": matrix("keep", "stream_in"),
    }),
    config_fields={"hidden_size": "hidden_size", "intermediate_size": "ffn_dim",
                   "num_attention_heads": "num_attention_heads", "num_key_value_heads": None,
                   "num_hidden_layers": "num_hidden_layers"},
    eps_field=None,
    pre_norm_flag="do_layer_norm_before",
    config_roles=_projected,
    follows_hidden=("word_embed_proj_dim",),
    notes=("OPT's LayerNorm eps is fixed in code (no config field): widths grow by integer multiples only.",),
)
