"""A small pre-LN Transformer in plain PyTorch, for tests and examples.

``TinyTransformer`` is either a causal language model (logits per token) or,
with ``num_classes``, an encoder classifier with a class token. It supports
grouped-query attention (``kv_heads`` < ``heads``), which the Hugging Face
models used elsewhere do not exercise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BlockWeights, ModelAdapter, Norm


class TinyBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, mlp_ratio: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim)
        self.out = nn.Linear(heads * self.head_dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(
            [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1
        )
        q = q.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, t, self.kv_heads, self.head_dim).transpose(1, 2).repeat_interleave(self.heads // self.kv_heads, 1)
        v = v.reshape(b, t, self.kv_heads, self.head_dim).transpose(1, 2).repeat_interleave(self.heads // self.kv_heads, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, -1))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """ids (B, T) -> logits (B, T, vocab), or (B, num_classes) with ``num_classes``."""

    def __init__(self, vocab: int = 256, dim: int = 64, heads: int = 4, kv_heads: int | None = None, layers: int = 2,
                 max_len: int = 512, num_classes: int | None = None, mlp_ratio: int = 4):
        super().__init__()
        kv_heads = kv_heads or heads
        if dim % heads or heads % kv_heads:
            raise ValueError(f"dim={dim} must divide by heads={heads}, and heads by kv_heads={kv_heads}")
        self.causal = num_classes is None
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(max_len + 1, dim))
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim)) if num_classes else None
        self.blocks = nn.ModuleList(TinyBlock(dim, heads, kv_heads, mlp_ratio) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes or vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.tok(ids) + self.pos[1 : t + 1]
        if self.cls is not None:
            x = torch.cat([(self.cls + self.pos[:1]).expand(ids.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x, self.causal)
        x = self.ln_f(x)
        return self.head(x[:, 0] if self.cls is not None else x)


class TinyAdapter(ModelAdapter):
    def __init__(self, model: TinyTransformer):
        super().__init__(model)
        self.causal = model.causal
        self.class_tokens = 0 if model.cls is None else 1
        self._blocks = [
            BlockWeights(
                norm1=Norm(b.ln1.weight, b.ln1.bias, b.ln1.eps),
                w_qkv=b.qkv.weight,
                b_qkv=b.qkv.bias,
                w_out=b.out.weight,
                b_out=b.out.bias,
                norm2=Norm(b.ln2.weight, b.ln2.bias, b.ln2.eps),
                w_fc1=b.fc1.weight,
                b_fc1=b.fc1.bias,
                w_fc2=b.fc2.weight,
                b_fc2=b.fc2.bias,
                act=F.gelu,
                heads=b.heads,
                kv_heads=b.kv_heads,
                head_dim=b.head_dim,
            )
            for b in model.blocks
        ]
        self._ln_f = Norm(model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)

    @property
    def blocks(self) -> list[BlockWeights]:
        return self._blocks

    def num_tokens(self, inputs: torch.Tensor) -> int:
        return inputs.shape[1]

    def embed(self, inputs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return self.embed_tokens(inputs[:, start:stop], start)

    def check_positions(self, stop: int) -> None:
        if stop + 1 > self.model.pos.shape[0]:
            raise ValueError(f"{stop} positions exceed the model's max_len={self.model.pos.shape[0] - 1}")

    def embed_tokens(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        stop = start + ids.shape[1]
        self.check_positions(stop)
        return self.model.tok(ids) + self.model.pos[1 + start : 1 + stop]

    def class_token(self, batch: int) -> torch.Tensor:
        if self.model.cls is None:
            raise TypeError("this TinyTransformer is a language model without a class token")
        return (self.model.cls + self.model.pos[:1]).expand(batch, -1, -1)

    def token_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.head(self._ln_f(hidden))

    def token_outputs_slice(self, hidden: torch.Tensor, part: int, parts: int) -> torch.Tensor:
        head = self.model.head
        return F.linear(self._ln_f(hidden), head.weight.tensor_split(parts)[part], head.bias.tensor_split(parts)[part])

    def class_outputs(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.head(self._ln_f(pooled))

    def reference_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)
