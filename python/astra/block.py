"""The arithmetic of one ASTRA block on one rank, in four phases.

    encode   the quantized vectors of the local tokens (the attention input z,
             or their keys and values: see :mod:`astra.codebooks`); codes = VQ(them)
             (then: post the exchange)
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

Rotary positions (RoPE): what is quantized is position-free (the attention
input, or the keys before rotation). Queries and local keys are rotated at
their global positions (:func:`rotate`); remote keys are rebuilt from their
codes and rotated at theirs by the :class:`~astra.remote.RemotePlan`; values
are never rotated. A ``rotation`` is the (cos, sin) pair, each (T, d), of the
positions concerned (:meth:`astra.models.ModelAdapter.rotary`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

import astra_kernels as ak

from .models.base import BlockWeights

if TYPE_CHECKING:
    from .remote import RemotePlan

Rotation = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (T, d)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads*d) -> (B, heads, T, d)."""
    b, t, width = x.shape
    return x.reshape(b, t, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) -> (B, T, H*d)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def attention_input(block: BlockWeights, h: torch.Tensor) -> torch.Tensor:
    """The tensor that is quantized and projected to Q/K/V: norm1(h) (pre-LN) or h (post-LN)."""
    return block.norm1(h) if block.norm_first else h


def project(block: BlockWeights, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z (B, T, D) -> q (B, H, T, d), k and v (B, Hkv, T, d); q and k after the per-head norms, not rotated."""
    hd, kvd = block.heads * block.head_dim, block.kv_dim
    q, k, v = F.linear(z, block.w_qkv, block.b_qkv).split([hd, kvd, kvd], dim=-1)
    q, k = split_heads(q, block.heads), split_heads(k, block.kv_heads)
    if block.q_norm is not None:
        q = block.q_norm(q)
    return q, key_norm(block, k), split_heads(v, block.kv_heads)


def key_norm(block: BlockWeights, k: torch.Tensor) -> torch.Tensor:
    """Keys (B, Hkv, T, d) after the block's per-head key norm (Qwen3's k_norm), if it has one."""
    return k if block.k_norm is None else block.k_norm(k)


def project_kv(block: BlockWeights, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (after the per-head norm, not rotated) and values (B, Hkv, T, d) of attention inputs x (B, T, D)."""
    k, v = F.linear(x, block.w_kv, block.b_kv).split(block.kv_dim, dim=-1)
    return key_norm(block, split_heads(k, block.kv_heads)), split_heads(v, block.kv_heads)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the halves of the last dimension (Hugging Face's RoPE layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate(x: torch.Tensor, rotation: Rotation | None) -> torch.Tensor:
    """Queries or keys (B, heads, T, d) rotated at the positions of ``rotation`` (cos, sin (T, d)), as
    Hugging Face's ``apply_rotary_pos_emb`` computes it; ``x`` itself without a rotation."""
    if rotation is None:
        return x
    cos, sin = rotation
    return (x * cos) + (rotate_half(x) * sin)


def kv_features(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Keys and values (B, Hkv, T, d) -> what ``quantize="kv"`` encodes: (B, T, 2*Hkv*d), keys first."""
    return torch.cat([merge_heads(k), merge_heads(v)], dim=-1)


def split_kv_features(x: torch.Tensor, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`kv_features`: (B, T, 2*Hkv*d) -> k, v (B, Hkv, T, d)."""
    k, v = x.chunk(2, dim=-1)
    return split_heads(k, kv_heads), split_heads(v, kv_heads)


def local_partial(plan: RemotePlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, remote: int, causal: bool,
                  backend: str | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The attention partial (out (B, H, T, d), lse (B, H, T)) over the local keys, when the plan
    attends ``remote`` tokens apart from them; None when one fused call covers both segments."""
    if not plan.materializes(q.shape[0], q.shape[2], remote, backend):
        return None
    return ak.attention(q, k, v, causal=causal, backend=backend)


def attend(plan: RemotePlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, remote_codes: torch.Tensor | None,
           causal: bool, backend: str | None, local: tuple[torch.Tensor, torch.Tensor] | None = None,
           rotation: Rotation | None = None,
           remote_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Attention of the local queries over the remote tokens (if any) then the local keys: (B, H, T, d).
    q and k are rotated already; ``local``, ``rotation`` (the remote tokens') and ``remote_kv``: as
    :meth:`RemotePlan.attend` takes them."""
    if remote_codes is None or remote_codes.shape[1] == 0:
        return ak.attention(q, k, v, causal=causal, backend=backend)[0]
    return plan.attend(q, k, v, remote_codes, causal, backend, local, rotation, remote_kv)


def residual(block: BlockWeights, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Attention output (B, H, T, d) -> output projection, residuals, norms and MLP: the block's output."""
    a = F.linear(merge_heads(attn), block.w_out, block.b_out)
    if block.norm_first:
        h = h + a
        return h + block.mlp(block.norm2(h))
    h = block.norm1(h + a)
    return block.norm2(h + block.mlp(h))
