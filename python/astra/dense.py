"""Full-precision, single-device forward with the runtime's own block math.

No quantization and no exchange: the whole sequence on one device. It is
what calibration runs to collect each block's quantized vectors, and the
single-device baseline that shares ASTRA's kernels.
"""
from __future__ import annotations

import torch

import astra_kernels as ak

from . import block as B
from .codebooks import check_quantize
from .models.base import ModelAdapter


@torch.no_grad()
def dense_forward(adapter: ModelAdapter, inputs: torch.Tensor, *, backend: str | None = None,
                  collect: list[list[torch.Tensor]] | None = None, quantize: str = "input") -> torch.Tensor:
    """Outputs of the unquantized model: LM logits (B, T, V) or class logits (B, C).

    With ``collect`` (one list per block), appends to ``collect[block]`` what
    ``quantize`` sends of the non-class tokens: the block's attention inputs
    (B, T, D), or its keys before rotation and values (B, T, 2*Hkv*d).
    """
    check_quantize(quantize)
    c = adapter.class_tokens
    t = adapter.num_tokens(inputs)
    h = adapter.embed(inputs, 0, t)
    if c:
        h = torch.cat([adapter.class_token(h.shape[0]).to(h.dtype), h], dim=1)
    rotation = adapter.rotary(torch.arange(t))
    for i, bw in enumerate(adapter.blocks):
        z = B.attention_input(bw, h)
        q, k, v = B.project(bw, z)
        if collect is not None:
            collect[i].append((z if quantize == "input" else B.kv_features(k, v))[:, c:])
        out = ak.attention(B.rotate(q, rotation), B.rotate(k, rotation), v, causal=adapter.causal, backend=backend)[0]
        h = B.residual(bw, h, out)
    return adapter.class_outputs(h[:, 0]) if c else adapter.token_outputs(h)
