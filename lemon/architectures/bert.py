"""BERT: post-LayerNorm, learned positions and token types, MLM head tied to the embeddings;
sequence, token-span (QA) and next-sentence heads are plain linear maps of a hidden vector."""
from .base import Family, flatten, layer_norm, linear, matrix, vector

FAMILY = Family(
    name="bert",
    description="BERT (post-LN, MLM head tied to the word embeddings)",
    model_types=("bert",),
    norm="layernorm",
    post_norm=True,
    layer_pattern=r"(?:^|\.)encoder\.layer\.(\d+)\.",
    layer_params=flatten({
        "attention.self.query": linear("heads", "stream_in"),
        "attention.self.key": linear("kv", "stream_in"),
        "attention.self.value": linear("kv", "stream_in"),
        "attention.output.dense": linear("stream", "heads_in", tag="writer"),
        "attention.output.LayerNorm": layer_norm(tag="attn_norm"),
        "intermediate.dense": linear("ffn", "stream_in"),
        "output.dense": linear("stream", "ffn_in", tag="writer"),
        "output.LayerNorm": layer_norm(tag="ffn_norm"),
    }),
    global_params=flatten({
        "embeddings.word_embeddings.weight": matrix("keep", "stream"),
        "embeddings.position_embeddings.weight": matrix("keep", "stream"),
        "embeddings.token_type_embeddings.weight": matrix("keep", "stream"),
        "embeddings.LayerNorm": layer_norm(),
        "pooler.dense": linear("stream_zero", "stream_in"),
        "cls.predictions.transform.dense": linear("stream", "stream_in"),
        "cls.predictions.transform.LayerNorm": layer_norm(tag="final_norm"),
        "cls.predictions.decoder.weight": matrix("keep", "stream_in"),
        "cls.predictions.decoder.bias": vector("keep"),
        "cls.predictions.bias": vector("keep"),
        "cls.seq_relationship": linear("keep", "stream_in"),  # next-sentence head, reads the pooler
    }),
    eps_field="layer_norm_eps",
    notes=("Post-LN widening is lossless only for integer multiples of the hidden size "
           "(a non-multiple measured 3e-2 to 5e-2 relative error), so other widths are refused.",
           "Post-LN depth is exact up to the LayerNorm eps: an inserted layer re-normalizes an "
           "already normalized vector."),
)
