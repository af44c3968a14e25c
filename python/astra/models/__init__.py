"""Model adapters and builders: Hugging Face GPT-2 and ViT, and a tiny PyTorch model."""
from __future__ import annotations

import os

import torch

from .._optional import require
from .base import BlockWeights, ModelAdapter, Norm
from .tiny import TinyAdapter, TinyTransformer

# name -> (layers, dim, heads); GPT-2 sizes of the paper, ViT-S/B/L with patch 16.
GPT2_SIZES = {"small": (12, 768, 12), "medium": (24, 1024, 16), "large": (36, 1280, 20)}
VIT_SIZES = {"small": (12, 384, 6), "base": (12, 768, 12), "large": (24, 1024, 16)}
SIZE_ALIASES = {"gpt2": {"base": "small"}, "vit": {"medium": "large"}}


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
    raise TypeError(
        f"ASTRA cannot parallelize {name}: supported models are GPT2LMHeadModel, "
        "ViTForImageClassification, BertModel and astra.models.TinyTransformer"
    )


def describe(family: str, size: str, *, layers: int | None = None, checkpoint: str | None = None) -> tuple[int, int]:
    """(blocks, width D) of the model that :func:`build` would return, without building it."""
    if family not in ("gpt2", "vit"):
        raise ValueError(f"model must be 'gpt2' or 'vit', got {family!r}")
    if checkpoint is not None:
        import json

        path = os.path.join(checkpoint, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no config.json in checkpoint directory {checkpoint!r}")
        with open(path) as f:
            cfg = json.load(f)
        n_layer = cfg.get("n_layer", cfg.get("num_hidden_layers"))
        return n_layer, cfg.get("n_embd", cfg.get("hidden_size"))
    sizes = GPT2_SIZES if family == "gpt2" else VIT_SIZES
    size = SIZE_ALIASES[family].get(size, size)
    if size not in sizes:
        raise ValueError(f"unknown {family} size {size!r}; choose one of {', '.join(sizes)}")
    n_layer, dim, _ = sizes[size]
    if layers is not None and layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    return (layers or n_layer), dim


def build(family: str, size: str, *, tokens: int, layers: int | None = None, checkpoint: str | None = None,
          seed: int = 0, positions: int | None = None) -> torch.nn.Module:
    """A GPT-2 or ViT model: from a local checkpoint directory, or random weights from a config.

    ``tokens`` sets the sequence length (ViT image side = sqrt(tokens) * 16);
    GPT-2 gets max(1024, ``positions`` or ``tokens``) positions (room to
    generate after the prompt). Nothing is downloaded: HF_HUB_OFFLINE is forced on.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = require("transformers", extra="hf", purpose="building GPT-2 and ViT models")

    n_layer, dim = describe(family, size, layers=layers, checkpoint=checkpoint)
    if checkpoint is not None:
        if not os.path.isdir(checkpoint):
            raise FileNotFoundError(f"checkpoint directory {checkpoint!r} does not exist")
        cls = transformers.GPT2LMHeadModel if family == "gpt2" else transformers.ViTForImageClassification
        return cls.from_pretrained(checkpoint).eval()
    heads = dict((d, h) for _, d, h in (*GPT2_SIZES.values(), *VIT_SIZES.values()))[dim]
    torch.manual_seed(seed)
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


__all__ = ["BlockWeights", "ModelAdapter", "Norm", "TinyAdapter", "TinyTransformer", "adapt", "build", "describe", "example_inputs"]
