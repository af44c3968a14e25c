"""Differentiable single-process simulation of ASTRA on N ranks, for training.

Every block attends once, over the full-precision keys of all tokens and the
quantized keys of the tokens that are sent, with a mask that lets a query see

    full-precision keys of its own rank's tokens (and its own class-token copy),
    quantized keys of other ranks' tokens,
    and, for causal models, only earlier positions.

This is the same function as :meth:`astra.AstraEngine.simulate` (local full
precision, remote through codes) written as one masked attention, so autograd
runs through it; NAVQ noise and the straight-through estimator live in
:class:`~astra_lab.train.quantizer.BlockQuantizer`. What is quantized is the
quantizers' ``quantize``: the attention inputs (remote keys/values projected
from them) or the keys before rotation and the values themselves. Models with
rotary positions rotate every query and key, full precision or quantized, at
its token's position.

Class tokens: "distributed" keeps a copy per rank that is never sent, and
averages the copies' final states (Distributed Class Tokens); "single" keeps
one class token on rank 0, sent (quantized) to the others like any token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from astra import block as B
from astra.models.base import ModelAdapter
from astra.partition import Layout

from .quantizer import BlockQuantizer

CLASS_TOKEN_MODES = ("distributed", "single")


@dataclass
class SimOut:
    outputs: torch.Tensor  # LM logits (B, T, V), class logits (B, C) or hidden states (B, T, D)
    commit: torch.Tensor  # sum over blocks of the quantizers' commitment terms


def _token_ranks(layout: Layout) -> torch.Tensor:
    return torch.cat([torch.full((layout.size(r),), r) for r in range(layout.world_size)])


def simulate(adapter: ModelAdapter, quantizers: list[BlockQuantizer] | None, inputs: torch.Tensor, world_size: int, *,
             noise: float = 0.0, class_token: str = "distributed", valid: torch.Tensor | None = None) -> SimOut:
    """ASTRA's outputs for ``inputs`` split over ``world_size`` simulated ranks.

    quantizers: one per block, or None for the unquantized model (the
    "original" baseline with the same arithmetic). valid: (B, T) bool, False at
    padding tokens (never attended to).
    """
    if class_token not in CLASS_TOKEN_MODES:
        raise ValueError(f"class_token must be one of {CLASS_TOKEN_MODES}, got {class_token!r}")
    blocks = adapter.blocks
    if quantizers is not None and len(quantizers) != len(blocks):
        raise ValueError(f"{len(quantizers)} quantizers for {len(blocks)} blocks")
    kinds = {q.quantize for q in quantizers or []}
    if len(kinds) > 1:
        raise ValueError(f"the quantizers disagree on what they quantize: {sorted(kinds)}")
    quantize = kinds.pop() if kinds else "input"
    t = adapter.num_tokens(inputs)
    rotation = adapter.rotary(torch.arange(t))
    if rotation is not None and adapter.class_tokens:
        raise ValueError("rotary positions with class tokens are not supported")
    layout = Layout(t, world_size, adapter.causal)  # equal chunks: AstraEngine(partition="even")
    h = adapter.embed(inputs, 0, t)
    batch, device = h.shape[0], h.device
    ranks = _token_ranks(layout).to(device)
    positions = torch.arange(t, device=device)
    is_cls = torch.zeros(t, dtype=torch.bool, device=device)
    n_cls = 0
    if adapter.class_tokens:
        copies = world_size if class_token == "distributed" else 1
        cls = adapter.class_token(batch).to(h.dtype)
        h = torch.cat([cls.expand(batch, copies, -1), h], dim=1)
        ranks = torch.cat([torch.arange(copies, device=device), ranks])
        positions = torch.cat([torch.full((copies,), -1, device=device), positions])
        is_cls = torch.cat([torch.ones(copies, dtype=torch.bool, device=device), is_cls])
        n_cls = copies
    sent = ~is_cls if class_token == "distributed" else torch.ones_like(is_cls)
    token_ok = torch.ones(batch, h.shape[1], dtype=torch.bool, device=device)
    if valid is not None:
        token_ok[:, n_cls:] = valid.to(device)

    same = ranks[:, None] == ranks[None, :]
    order = positions[None, :] <= positions[:, None] if adapter.causal else torch.ones_like(same)
    mask = torch.cat([same & order, (~same & order)[:, sent]], dim=1)  # (S, S + M)
    key_ok = torch.cat([token_ok, token_ok[:, sent]], dim=1)  # (B, S + M)
    # padding queries keep every key so that their (ignored) rows stay finite
    mask = mask.unsqueeze(0) & (key_ok[:, None, :] | ~token_ok[:, :, None])
    mask = mask.unsqueeze(1)  # (B, 1, S, S + M)

    commit = h.new_zeros(())
    for i, bw in enumerate(blocks):
        z = B.attention_input(bw, h)
        q, k, v = B.project(bw, z)
        remote = (z if quantize == "input" else B.kv_features(k, v))[:, sent]
        if quantizers is not None:
            quant = quantizers[i](remote.reshape(-1, remote.shape[-1]), noise)
            remote = quant.remote.reshape(remote.shape)
            commit = commit + quant.commit
        rk, rv = B.project_kv(bw, remote) if quantize == "input" else B.split_kv_features(remote, bw.kv_heads)
        q, k, rk = B.rotate(q, rotation), B.rotate(k, rotation), B.rotate(rk, rotation)  # every token is sent
        rep = bw.heads // bw.kv_heads
        keys = torch.cat([k, rk], dim=2).repeat_interleave(rep, dim=1)
        values = torch.cat([v, rv], dim=2).repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        h = B.residual(bw, h, out)

    if adapter.class_tokens:
        pooled = h[:, :n_cls].mean(1)
        return SimOut(adapter.class_outputs(pooled), commit)
    return SimOut(adapter.token_outputs(h), commit)
