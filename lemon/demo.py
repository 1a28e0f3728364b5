"""`lemon demo`: the built-in default job. Small random models of every supported family are
expanded in width (a non-multiple where the family allows it), FFN, heads and depth at once,
then a GPT-2-small-shaped model (transformers' default init) is doubled in width and depth,
where toy models cannot show what goes wrong; every expanded model is checked against its
original on random inputs."""
from __future__ import annotations

import time


def demo_models(seed: int = 0):
    """(name, small model, expansion kwargs) for every supported family, built offline."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    common = dict(num_hidden_layers=3, num_attention_heads=4, intermediate_size=128)
    return [
        ("bert", T.BertForMaskedLM(T.BertConfig(hidden_size=64, vocab_size=500,
                                               max_position_embeddings=64, **common)),
         dict(hidden_size=128, intermediate_size=320, num_hidden_layers=5)),
        ("vit", T.ViTForImageClassification(T.ViTConfig(hidden_size=64, image_size=32, patch_size=8,
                                                        num_labels=10, **common)),
         dict(hidden_size=96, intermediate_size=200, num_hidden_layers=5)),
        ("gpt2", T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_inner=128,
                                                vocab_size=500, n_positions=64)),
         dict(hidden_size=96, intermediate_size=200, num_hidden_layers=5)),
        ("llama", T.LlamaForCausalLM(T.LlamaConfig(hidden_size=64, num_key_value_heads=2,
                                                   vocab_size=500, tie_word_embeddings=True, **common)),
         dict(hidden_size=96, num_key_value_heads=3, intermediate_size=200, num_hidden_layers=5)),
        ("qwen3", T.Qwen3ForCausalLM(T.Qwen3Config(hidden_size=64, num_key_value_heads=2, head_dim=16,
                                                   vocab_size=500, **common)),
         dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=3, intermediate_size=200,
              num_hidden_layers=5)),
        ("gemma2", T.Gemma2ForCausalLM(T.Gemma2Config(hidden_size=64, num_key_value_heads=2, head_dim=16,
                                                      query_pre_attn_scalar=16, sliding_window=8,
                                                      vocab_size=500, pad_token_id=0, **common)),
         dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=3, intermediate_size=200,
              num_hidden_layers=5)),
        ("gemma3", T.Gemma3ForCausalLM(T.Gemma3TextConfig(hidden_size=64, num_key_value_heads=2, head_dim=16,
                                                          query_pre_attn_scalar=16, sliding_window=8,
                                                          vocab_size=500, pad_token_id=0, **common)),
         dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=3, intermediate_size=200,
              num_hidden_layers=5)),
        ("olmo2", T.Olmo2ForCausalLM(T.Olmo2Config(hidden_size=64, num_key_value_heads=2, vocab_size=500,
                                                   pad_token_id=0, **common)),
         dict(hidden_size=96, num_attention_heads=8, num_key_value_heads=4, intermediate_size=200,
              num_hidden_layers=5)),  # q/k norms over all heads: every head copied twice
        ("phi3", T.Phi3ForCausalLM(T.Phi3Config(hidden_size=64, num_key_value_heads=2, vocab_size=500,
                                                pad_token_id=0, **common)),
         dict(hidden_size=96, num_key_value_heads=3, intermediate_size=200, num_hidden_layers=5)),
        ("neox", T.GPTNeoXForCausalLM(T.GPTNeoXConfig(hidden_size=64, vocab_size=500,
                                                      max_position_embeddings=64, **common)),
         dict(hidden_size=96, intermediate_size=200, num_hidden_layers=5)),
        ("opt", T.OPTForCausalLM(T.OPTConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                             ffn_dim=128, vocab_size=500, max_position_embeddings=64)),
         dict(hidden_size=128, intermediate_size=320, num_hidden_layers=5)),  # eps fixed: multiples only
        ("gpt2-s", T.GPT2LMHeadModel(T.GPT2Config(vocab_size=1000, n_positions=128)),  # 768, 12 layers
         dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=24)),
    ]


def run_demo(seed: int = 0) -> int:
    import logging

    from transformers.utils import logging as hf_logging

    from .cli import info
    from .model import expand
    from .verification import verify

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    print(info())
    print("lemon demo: expanding random models (small ones of each family, then a GPT-2-small shape), "
          "checking outputs on random inputs")
    print(f"{'family':<7} {'source -> target (hidden/ffn/heads/kv/layers)':<46} {'params':>17} "
          f"{'max|delta|':>10} {'relative':>9} {'time':>6}")
    worst = 0.0
    for name, small, sizes in demo_models(seed):
        small.eval()
        start = time.perf_counter()
        big = expand(small, seed=seed, progress=False, **sizes)
        elapsed = time.perf_counter() - start
        report = verify(small, big)
        worst = max(worst, report.output_relative)

        def shape(m):
            c = m.config
            return (f"{c.hidden_size}/{_ffn(m)}/{c.num_attention_heads}/"
                    f"{getattr(c, 'num_key_value_heads', None) or c.num_attention_heads}/{c.num_hidden_layers}")

        counts = f"{_count(small) / 1e6:.2f}M -> {_count(big) / 1e6:.2f}M"
        print(f"{name:<7} {shape(small) + ' -> ' + shape(big):<46} {counts:>17} "
              f"{report.output_max_abs:>10.2e} {report.output_relative:>9.2e} {elapsed:>5.2f}s")
    ok = worst <= 1e-5
    print(f"worst relative output difference {worst:.2e}: {'lossless' if ok else 'NOT lossless'} "
          f"within fp32 round-off (bound 1e-5)")
    return 0 if ok else 1


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _ffn(model) -> int:
    config = model.config
    return (getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
            or getattr(config, "ffn_dim", None) or 4 * config.hidden_size)
