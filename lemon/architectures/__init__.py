"""The supported model families: the one list the code, its errors and the README use."""
from __future__ import annotations

from .base import SIZE_NAMES, Family, Role
from .bert import FAMILY as BERT
from .gemma import GEMMA2, GEMMA3
from .gpt2 import FAMILY as GPT2
from .gpt_neox import FAMILY as GPT_NEOX
from .llama import FAMILY as LLAMA
from .olmo2 import FAMILY as OLMO2
from .opt import FAMILY as OPT
from .phi3 import FAMILY as PHI3
from .qwen3 import FAMILY as QWEN3
from .vit import FAMILY as VIT

FAMILIES: tuple[Family, ...] = (BERT, VIT, GPT2, LLAMA, QWEN3, GEMMA2, GEMMA3, OLMO2, GPT_NEOX, OPT, PHI3)


def supported() -> str:
    return "; ".join(f"{f.description} [model_type {', '.join(f.model_types)}]" for f in FAMILIES)


def find_family(config) -> Family:
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family.for_config(config)
    raise ValueError(f"lemon cannot expand model_type {model_type!r}: no adapter for it. "
                     f"Supported: {supported()}. A new family is a table in lemon/architectures/.")


__all__ = ["FAMILIES", "Family", "Role", "SIZE_NAMES", "find_family", "supported"]
