"""Full-precision, single-device forward with the runtime's own block math.

No quantization and no exchange: the whole sequence on one device. It is
what calibration runs to collect each block's attention inputs, and the
single-device baseline that shares ASTRA's kernels.
"""
from __future__ import annotations

import torch

from . import block as B
from .models.base import ModelAdapter


@torch.no_grad()
def dense_forward(adapter: ModelAdapter, inputs: torch.Tensor, *, backend: str | None = None,
                  collect: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
    """Outputs of the unquantized model: LM logits (B, T, V) or class logits (B, C).

    With ``collect`` (one list per block), appends each block's attention
    input of the non-class tokens, (B, T, D), to ``collect[block]``.
    """
    c = adapter.class_tokens
    h = adapter.embed(inputs, 0, adapter.num_tokens(inputs))
    if c:
        h = torch.cat([adapter.class_token(h.shape[0]).to(h.dtype), h], dim=1)
    for i, bw in enumerate(adapter.blocks):
        z = B.attention_input(bw, h)
        if collect is not None:
            collect[i].append(z[:, c:])
        h = B.residual(bw, h, B.local(bw, z, adapter.causal, backend))
    return adapter.class_outputs(h[:, 0]) if c else adapter.token_outputs(h)
