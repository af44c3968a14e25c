"""The arithmetic of one ASTRA block on one rank, in three phases.

    encode   z = attention input of the local tokens; codes = VQ(z)      (then: post the exchange)
    local    q, k, v of local tokens; attention partial over them     (overlaps the exchange)
    finish   attention partial over remote tokens (from their codes), merge, output projection, MLP

The distributed runtime and the single-process simulation call exactly these
functions, in the same order and with the same shapes, so the simulation is
an exact oracle for the distributed run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import astra_kernels as ak

from .models.base import BlockWeights
from .remote import RemotePlan


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads*d) -> (B, heads, T, d)."""
    b, t, _ = x.shape
    return x.reshape(b, t, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) -> (B, T, H*d)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def attention_input(block: BlockWeights, h: torch.Tensor) -> torch.Tensor:
    """The tensor that is quantized and projected to Q/K/V: norm1(h) (pre-LN) or h (post-LN)."""
    return block.norm1(h) if block.norm_first else h


@dataclass
class LocalPartial:
    q: torch.Tensor  # (B, H, T, d)
    k: torch.Tensor  # (B, Hkv, T, d)
    v: torch.Tensor
    out: torch.Tensor  # (B, H, T, d)
    lse: torch.Tensor  # (B, H, T)


def encode(block: BlockWeights, codebook: torch.Tensor, h: torch.Tensor, class_tokens: int, backend: str | None):
    """h (B, C + T, D) -> z (B, C + T, D) and codes (B, T, G) of the T non-class tokens."""
    z = attention_input(block, h)
    codes, _ = ak.vq_encode(z[:, class_tokens:], codebook, backend=backend)
    return z, codes


def project(block: BlockWeights, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z (B, T, D) -> q (B, H, T, d), k and v (B, Hkv, T, d)."""
    hd, kvd = block.heads * block.head_dim, block.kv_heads * block.head_dim
    q, k, v = F.linear(z, block.w_qkv, block.b_qkv).split([hd, kvd, kvd], dim=-1)
    return split_heads(q, block.heads), split_heads(k, block.kv_heads), split_heads(v, block.kv_heads)


def local(block: BlockWeights, z: torch.Tensor, causal: bool, backend: str | None) -> LocalPartial:
    """Projections of the local tokens and their full-precision attention partial."""
    q, k, v = project(block, z)
    out, lse = ak.attention(q, k, v, causal=causal, backend=backend)
    return LocalPartial(q, k, v, out, lse)


def finish(block: BlockWeights, h: torch.Tensor, part: LocalPartial, plan: RemotePlan,
           remote_codes: torch.Tensor | None, backend: str | None) -> torch.Tensor:
    """Merge in the remote partial (if any remote tokens), then output projection and MLP."""
    out = part.out
    if remote_codes is not None and remote_codes.shape[1] > 0:
        r_out, r_lse = plan.attend(part.q, remote_codes, backend)
        out, _ = ak.merge_attention(out, part.lse, r_out, r_lse)
    return residual(block, h, out)


def residual(block: BlockWeights, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Attention output (B, H, T, d) -> output projection, residuals, norms and MLP: the block's output."""
    a = F.linear(merge_heads(attn), block.w_out, block.b_out)
    if block.norm_first:
        h = h + a
        return h + block.mlp(block.norm2(h))
    h = block.norm1(h + a)
    return block.norm2(h + block.mlp(h))
