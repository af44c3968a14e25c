"""Model adapters and builders: Hugging Face GPT-2, ViT, BERT and the decoder LLMs (Llama, Mistral, Qwen2,
Qwen3), and a tiny PyTorch model."""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import torch

from .._optional import require
from .base import BlockWeights, ModelAdapter, Norm
from .tiny import TinyAdapter, TinyTransformer

# name -> (layers, dim, heads); GPT-2 sizes of the paper, ViT-S/B/L with patch 16.
GPT2_SIZES = {"small": (12, 768, 12), "medium": (24, 1024, 16), "large": (36, 1280, 20)}
VIT_SIZES = {"small": (12, 384, 6), "base": (12, 768, 12), "large": (24, 1024, 16)}
SIZE_ALIASES = {"gpt2": {"base": "small"}, "vit": {"medium": "large"}}

# Decoder LLM shapes: the config.json fields of published checkpoints (random weights are drawn in them).
LLM_SIZES: dict[str, dict[str, dict]] = {
    "llama": {
        # HuggingFaceTB/SmolLM2-135M config.json
        "smollm2-135m": dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                             intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                             rms_norm_eps=1e-5, max_position_embeddings=8192),
        # meta-llama/Llama-3.2-1B config.json
        "llama-3.2-1b": dict(num_hidden_layers=16, hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                             head_dim=64, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                             rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                                                    high_freq_factor=4.0,
                                                                    original_max_position_embeddings=8192),
                             rms_norm_eps=1e-5, max_position_embeddings=131072),
    },
    "mistral": {
        # Mistral-7B-v0.1 (mistralai/Mistral-7B-v0.1 config.json: 32 layers, D 4096, 32 heads / 8 kv, FFN 14336)
        # scaled down to 8 layers of D 512; its vocabulary, sliding window, rope_theta, GQA ratio and untied head
        "mistral-tiny": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
                             intermediate_size=1792, vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0,
                             sliding_window=4096, rms_norm_eps=1e-5, max_position_embeddings=32768),
    },
    "qwen2": {
        # Qwen/Qwen2.5-0.5B config.json (q/k/v biases are part of Qwen2's architecture)
        "qwen2.5-0.5b": dict(num_hidden_layers=24, hidden_size=896, num_attention_heads=14, num_key_value_heads=2,
                             intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                             rms_norm_eps=1e-6, max_position_embeddings=32768, use_sliding_window=False),
    },
    "qwen3": {
        # Qwen/Qwen3-0.6B config.json
        "qwen3-0.6b": dict(num_hidden_layers=28, hidden_size=1024, num_attention_heads=16, num_key_value_heads=8,
                           head_dim=128, intermediate_size=3072, vocab_size=151936, tie_word_embeddings=True,
                           rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=40960),
    },
}
# family -> Hugging Face (config class, model class) names
LLM_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
               "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}
FAMILIES = ("gpt2", "vit", *LLM_SIZES)
DEFAULT_SIZES = {"gpt2": "small", "vit": "base", "llama": "smollm2-135m", "mistral": "mistral-tiny",
                 "qwen2": "qwen2.5-0.5b", "qwen3": "qwen3-0.6b"}


def sizes(family: str) -> list[str]:
    """The named sizes of a model family."""
    return list(GPT2_SIZES if family == "gpt2" else VIT_SIZES if family == "vit" else LLM_SIZES[family])


def adapt(model: torch.nn.Module) -> ModelAdapter:
    """The adapter for a supported model (unmodified Hugging Face or TinyTransformer)."""
    if isinstance(model, ModelAdapter):
        return model
    if isinstance(model, TinyTransformer):
        return TinyAdapter(model)
    name = type(model).__name__
    if name == "GPT2LMHeadModel":
        from .gpt2 import GPT2Adapter

        return GPT2Adapter(model)
    if name == "ViTForImageClassification":
        from .vit import ViTAdapter

        return ViTAdapter(model)
    if name == "BertModel":
        from .bert import BertAdapter

        return BertAdapter(model)
    from .decoder import SUPPORTED, DecoderAdapter

    if name in SUPPORTED:
        return DecoderAdapter(model)
    raise TypeError(
        f"ASTRA cannot parallelize {name}: supported models are GPT2LMHeadModel, ViTForImageClassification, "
        f"BertModel, {', '.join(SUPPORTED)} and astra.models.TinyTransformer"
    )


class ModelShape(NamedTuple):
    blocks: int
    dim: int  # D
    kv_dim: int  # Hkv*d


def _checkpoint_shape(checkpoint: str) -> ModelShape:
    path = os.path.join(checkpoint, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config.json in checkpoint directory {checkpoint!r}")
    with open(path) as f:
        cfg = json.load(f)
    dim = cfg.get("n_embd", cfg.get("hidden_size"))
    heads = cfg.get("n_head", cfg.get("num_attention_heads"))
    head_dim = cfg.get("head_dim") or dim // heads
    return ModelShape(cfg.get("n_layer", cfg.get("num_hidden_layers")), dim,
                      (cfg.get("num_key_value_heads") or heads) * head_dim)


def describe(family: str, size: str, *, layers: int | None = None, checkpoint: str | None = None) -> ModelShape:
    """(blocks, width D, key width Hkv*d) of the model that :func:`build` would return, without building it."""
    if family not in FAMILIES:
        raise ValueError(f"model must be one of {', '.join(FAMILIES)}, got {family!r}")
    if checkpoint is not None:
        return _checkpoint_shape(checkpoint)
    if layers is not None and layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    if family in LLM_SIZES:
        if size not in LLM_SIZES[family]:
            raise ValueError(f"unknown {family} size {size!r}; choose one of {', '.join(LLM_SIZES[family])}")
        cfg = LLM_SIZES[family][size]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        return ModelShape(layers or cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_key_value_heads"] * head_dim)
    table = GPT2_SIZES if family == "gpt2" else VIT_SIZES
    size = SIZE_ALIASES[family].get(size, size)
    if size not in table:
        raise ValueError(f"unknown {family} size {size!r}; choose one of {', '.join(table)}")
    n_layer, dim, _ = table[size]
    return ModelShape(layers or n_layer, dim, dim)


def build(family: str, size: str, *, tokens: int, layers: int | None = None, checkpoint: str | None = None,
          seed: int = 0, positions: int | None = None) -> torch.nn.Module:
    """A model of ``family`` (:data:`FAMILIES`): from a local checkpoint directory, or random weights from a
    config (seeded: every process that builds it gets the same weights).

    ``tokens`` sets the sequence length (ViT image side = sqrt(tokens) * 16);
    GPT-2 gets max(1024, ``positions`` or ``tokens``) positions (room to
    generate after the prompt). Nothing is downloaded: HF_HUB_OFFLINE is forced on.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = require("transformers", extra="hf", purpose="building GPT-2 and ViT models")

    n_layer, dim, _ = describe(family, size, layers=layers, checkpoint=checkpoint)
    if checkpoint is not None:
        if not os.path.isdir(checkpoint):
            raise FileNotFoundError(f"checkpoint directory {checkpoint!r} does not exist")
        cls = {"gpt2": transformers.GPT2LMHeadModel, "vit": transformers.ViTForImageClassification}.get(
            family, transformers.AutoModelForCausalLM)
        return cls.from_pretrained(checkpoint).eval()
    torch.manual_seed(seed)
    if family in LLM_SIZES:
        config_name, model_name = LLM_CLASSES[family]
        cfg = getattr(transformers, config_name)(**{**LLM_SIZES[family][size], "num_hidden_layers": n_layer})
        return getattr(transformers, model_name)(cfg).eval()
    heads = dict((d, h) for _, d, h in (*GPT2_SIZES.values(), *VIT_SIZES.values()))[dim]
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=dim, n_head=heads, n_positions=max(1024, positions or tokens))
        return transformers.GPT2LMHeadModel(cfg).eval()
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"ViT needs a square number of patch tokens, got {tokens}")
    cfg = transformers.ViTConfig(
        hidden_size=dim, num_hidden_layers=n_layer, num_attention_heads=heads, intermediate_size=4 * dim,
        image_size=16 * side, patch_size=16, num_labels=1000,
    )
    return transformers.ViTForImageClassification(cfg).eval()


def example_inputs(model: torch.nn.Module, tokens: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Random inputs of the right kind: token ids for LMs, pixels for ViT."""
    gen = torch.Generator().manual_seed(seed)
    if type(model).__name__ == "ViTForImageClassification":
        side = int(round(tokens**0.5)) * model.config.patch_size
        return torch.randn(batch, model.config.num_channels, side, side, generator=gen)
    vocab = model.config.vocab_size if hasattr(model, "config") else model.tok.num_embeddings
    return torch.randint(0, vocab, (batch, tokens), generator=gen)


__all__ = ["DEFAULT_SIZES", "FAMILIES", "LLM_SIZES", "BlockWeights", "ModelAdapter", "ModelShape", "Norm", "TinyAdapter",
           "TinyTransformer", "adapt", "build", "describe", "example_inputs", "sizes"]
