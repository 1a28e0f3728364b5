"""Small models of every supported family, built offline from configs, with all weights random.

The default init leaves norm gains at 1 and biases at 0, which would hide mistakes in the
rules for gains, biases and their scaling; every parameter is drawn at random instead.

Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter: the variable
must be set before the kernels are first imported, hence here.
"""
from __future__ import annotations

import os

import pytest
import torch
import transformers as T

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

T.logging.set_verbosity_error()

LLAMA_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64, vocab_size=97)


def _config_and_class(name: str):
    if name == "bert":
        return T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            vocab_size=97, max_position_embeddings=32), T.BertForMaskedLM
    if name == "bert_classifier":
        return T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            vocab_size=97, max_position_embeddings=32, num_labels=3), \
            T.BertForSequenceClassification
    if name == "bert_base":
        return T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            vocab_size=97, max_position_embeddings=32), T.BertModel
    if name in ("bert_pretraining", "bert_qa"):
        return T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            vocab_size=97, max_position_embeddings=32), \
            T.BertForPreTraining if name == "bert_pretraining" else T.BertForQuestionAnswering
    if name == "vit_mim":  # encoder_stride = patch size: the reconstruction has the image's size
        return T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=16, patch_size=4, encoder_stride=4), T.ViTForMaskedImageModeling
    if name in ("vit", "vit_base"):
        return (T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            image_size=16, patch_size=4, num_labels=5),
                T.ViTForImageClassification if name == "vit" else T.ViTModel)
    if name in ("gpt2", "gpt2_base", "gpt2_classifier", "gpt2_token_classifier"):
        cls = {"gpt2": T.GPT2LMHeadModel, "gpt2_base": T.GPT2Model,
               "gpt2_classifier": T.GPT2ForSequenceClassification,
               "gpt2_token_classifier": T.GPT2ForTokenClassification}[name]
        return T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=64, vocab_size=97, n_positions=32,
                            bos_token_id=0, eos_token_id=0, pad_token_id=0, num_labels=3), cls
    if name == "llama":
        return T.LlamaConfig(**LLAMA_SIZES), T.LlamaForCausalLM
    if name == "llama_tied":
        return T.LlamaConfig(**LLAMA_SIZES, tie_word_embeddings=True), T.LlamaForCausalLM
    if name == "llama_base":
        return T.LlamaConfig(**LLAMA_SIZES), T.LlamaModel
    if name == "llama_mha_bias":
        return T.LlamaConfig(**{**LLAMA_SIZES, "num_key_value_heads": 4}, attention_bias=True,
                             mlp_bias=True), T.LlamaForCausalLM
    if name == "llama_classifier":
        return T.LlamaConfig(**LLAMA_SIZES, num_labels=3, pad_token_id=0), T.LlamaForSequenceClassification
    if name == "llama_token_classifier":  # its score has a bias
        return T.LlamaConfig(**LLAMA_SIZES, num_labels=3), T.LlamaForTokenClassification
    if name == "mistral":
        return T.MistralConfig(**LLAMA_SIZES), T.MistralForCausalLM
    if name == "qwen2":
        return T.Qwen2Config(**LLAMA_SIZES), T.Qwen2ForCausalLM
    for family, (prefix, make_config) in NEWER_FAMILIES.items():  # <family>[_<variant>]
        if name == family or name.startswith(family + "_") and name[len(family) + 1:] in VARIANTS:
            variant = name[len(family) + 1:] if name != family else ""
            config = make_config(variant)
            suffix = VARIANTS.get(variant, "ForCausalLM")
            return config, getattr(T, CAUSAL.get(family, prefix + suffix) if suffix == "ForCausalLM" else prefix + suffix)
    raise KeyError(name)


# the families added after the first four: class-name prefix, config per variant
VARIANTS = {"base": "Model", "classifier": "ForSequenceClassification",
            "token_classifier": "ForTokenClassification", "qa": "ForQuestionAnswering",
            "sequential": "ForCausalLM", "projected": "ForCausalLM", "post_ln": "ForCausalLM"}
_HEADS = dict(pad_token_id=0, num_labels=3)
_GEMMA = dict(**LLAMA_SIZES, head_dim=8, query_pre_attn_scalar=8, sliding_window=4, **_HEADS)
NEWER_FAMILIES = {
    "gpt_neox": ("GPTNeoX", lambda v: T.GPTNeoXConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=97,
        max_position_embeddings=64, use_parallel_residual=v != "sequential", **_HEADS)),
    "opt": ("OPT", lambda v: T.OPTConfig(
        hidden_size=32, ffn_dim=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=97,
        max_position_embeddings=64, pad_token_id=1, num_labels=3,
        **{"projected": dict(word_embed_proj_dim=16),
           "post_ln": dict(word_embed_proj_dim=16, do_layer_norm_before=False)}.get(v, {}))),
    "phi3": ("Phi3", lambda v: T.Phi3Config(**LLAMA_SIZES, max_position_embeddings=64,
                                            original_max_position_embeddings=64, **_HEADS)),
    "qwen3": ("Qwen3", lambda v: T.Qwen3Config(**LLAMA_SIZES, head_dim=8, **_HEADS)),
    "olmo2": ("Olmo2", lambda v: T.Olmo2Config(**LLAMA_SIZES, **_HEADS)),
    "gemma2": ("Gemma2", lambda v: T.Gemma2Config(**_GEMMA)),
    # soft-capping of the final logits on as well
    "gemma3": ("Gemma3Text", lambda v: T.Gemma3TextConfig(**_GEMMA, final_logit_softcapping=30.0)),
}
CAUSAL = {"gemma3": "Gemma3ForCausalLM"}  # Gemma 3's text LM; its other text classes are Gemma3Text*



def make_model(name: str, seed: int = 0, dtype=torch.float32, cls=None):
    """The small model ``name`` (or another class, ``cls``, built from its config), every weight random."""
    config, default_cls = _config_and_class(name)
    cls = cls or default_cls
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1 and "norm" in pname.lower() and pname.endswith("weight"):
                p.uniform_(0.5, 1.5)  # norm gains
            else:
                p.normal_(0.0, 0.1)
    return model.to(dtype).eval()


@pytest.fixture
def model_factory():
    return make_model
