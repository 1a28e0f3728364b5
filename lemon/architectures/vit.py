"""ViT: pre-LayerNorm, patch-embedding convolution, CLS token, learned positions."""
from .base import Family, Role, flatten, layer_norm, linear, vector

FAMILY = Family(
    name="vit",
    description="ViT (pre-LN, patch-embedding conv, CLS token)",
    model_types=("vit",),
    norm="layernorm",
    post_norm=False,
    layer_pattern=r"(?:^|\.)layers\.(\d+)\.",
    layer_params=flatten({
        "layernorm_before": layer_norm(),
        "attention.q_proj": linear("heads", "stream_in"),
        "attention.k_proj": linear("kv", "stream_in"),
        "attention.v_proj": linear("kv", "stream_in"),
        "attention.o_proj": linear("stream", "heads_in", tag="writer"),
        "layernorm_after": layer_norm(),
        "mlp.fc1": linear("ffn", "stream_in"),
        "mlp.fc2": linear("stream", "ffn_in", tag="writer"),
    }),
    global_params=flatten({
        "embeddings.cls_token": Role(("keep", "stream"), split=2),
        "embeddings.mask_token": Role(("keep", "stream"), split=2),
        "embeddings.position_embeddings": Role(("keep", "stream"), split=2),
        # the conv kernel [hidden, channels, p, p] seen as [hidden, channels * p * p]
        "embeddings.patch_embeddings.projection.weight": Role(("stream", "keep"), split=1),
        "embeddings.patch_embeddings.projection.bias": vector("stream"),
        "layernorm": layer_norm(tag="final_norm"),
        # its width is its own config field (pooler_output_size), kept: the pooler output is unchanged
        "pooler.dense": linear("keep", "stream_in"),
        # masked image modeling: a 1x1 conv [out, hidden, 1, 1] on the patch tokens (then a
        # PixelShuffle) is a linear map of each hidden vector, seen as [out, hidden]
        "decoder.0.weight": Role(("keep", "stream_in"), split=1),
        "decoder.0.bias": vector("keep"),
    }),
    eps_field="layer_norm_eps",
    inputs="pixels",
)
