"""The arithmetic of one ASTRA block on one rank, in four phases.

    encode   z = attention input of the local tokens; codes = VQ(z)      (then: post the exchange)
    project  q, k, v of the local tokens                                 (overlaps the exchange)
    local    the attention partial over the local keys, only when the    (overlaps the exchange)
             remote formulation builds remote keys as ordinary tokens
    finish   attention over the remote tokens (from their codes, after the wait) and the local
             keys (full precision), output projection, MLP

With one group the codes are tiny (log2 K bits per token), the QKV projection
alone hides their transfer, and the fused kernels attend both segments in one
call. With many groups (G times the bits) the local partial hides the rest,
at the price of a log-sum-exp merge (folded into the remote pass on CPU). The
distributed runtime and the single-process simulation call exactly these
functions, in the same order and with the same shapes, so the simulation is
an exact oracle for the distributed run.
"""
from __future__ import annotations

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


def project(block: BlockWeights, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z (B, T, D) -> q (B, H, T, d), k and v (B, Hkv, T, d)."""
    hd, kvd = block.heads * block.head_dim, block.kv_heads * block.head_dim
    q, k, v = F.linear(z, block.w_qkv, block.b_qkv).split([hd, kvd, kvd], dim=-1)
    return split_heads(q, block.heads), split_heads(k, block.kv_heads), split_heads(v, block.kv_heads)


def local(block: BlockWeights, z: torch.Tensor, causal: bool, backend: str | None) -> torch.Tensor:
    """Full-precision attention among the tokens of ``z`` only (no remote segment): (B, H, T, d)."""
    q, k, v = project(block, z)
    return ak.attention(q, k, v, causal=causal, backend=backend)[0]


def local_partial(plan: RemotePlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, remote: int, causal: bool,
                  backend: str | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The attention partial (out (B, H, T, d), lse (B, H, T)) over the local keys, when the plan
    attends ``remote`` tokens apart from them; None when one fused call covers both segments."""
    if not plan.materializes(q.shape[0], q.shape[2], remote, backend):
        return None
    return ak.attention(q, k, v, causal=causal, backend=backend)


def attend(plan: RemotePlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, remote_codes: torch.Tensor | None,
           causal: bool, backend: str | None, local: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Attention of the local queries over the remote tokens (if any) then the local keys: (B, H, T, d).
    ``local``: the :func:`local_partial`, if there is one."""
    if remote_codes is None or remote_codes.shape[1] == 0:
        return ak.attention(q, k, v, causal=causal, backend=backend)[0]
    return plan.attend(q, k, v, remote_codes, causal, backend, local)


def residual(block: BlockWeights, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Attention output (B, H, T, d) -> output projection, residuals, norms and MLP: the block's output."""
    a = F.linear(merge_heads(attn), block.w_out, block.b_out)
    if block.norm_first:
        h = h + a
        return h + block.mlp(block.norm2(h))
    h = block.norm1(h + a)
    return block.norm2(h + block.mlp(h))
