"""Decoding after a distributed prefill.

ASTRA distributes only the prefill (the prompt). The last rank holds the last
prompt token, so it continues alone: its KV cache is its own full-precision
keys/values plus the remote tokens' keys/values rebuilt from their codes, and
decoding needs no further exchange.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

import astra_kernels as ak

from . import block as B
from .engine import AstraEngine, KVCache


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, new) generated token ids
    prefill_s: float  # this rank's prefill time
    first_token_s: float  # time to first token (prefill + first next-token choice)
    decode_tokens_per_s: float  # further tokens per second (batch counted once)


@torch.no_grad()
def decode(engine: AstraEngine, cache: KVCache, first: torch.Tensor, position: int, steps: int) -> torch.Tensor:
    """Greedy decoding: ``first`` (B, 1) is the token at ``position``; returns (B, steps) ids starting with it."""
    adapter = engine.adapter
    token, out = first, [first]
    for step in range(1, steps):
        h = adapter.embed_tokens(token, position + step - 1)
        for i, bw in enumerate(adapter.blocks):
            q, k, v = B.project(bw, B.attention_input(bw, h))
            cache.keys[i] = torch.cat([cache.keys[i], k], dim=2)
            cache.values[i] = torch.cat([cache.values[i], v], dim=2)
            o, _ = ak.attention(q, cache.keys[i], cache.values[i], causal=True, backend=engine.backend)
            h = B.residual(bw, h, o)
        token = adapter.token_outputs(h)[:, -1].argmax(-1, keepdim=True)
        out.append(token)
    return torch.cat(out, dim=1)


def generate(engine: AstraEngine, inputs: torch.Tensor, transport, steps: int) -> Generation | None:
    """Distributed prefill on every rank, then ``steps`` greedy tokens on the last rank.

    Returns the generation on the last rank and None on the others.
    """
    if not engine.causal:
        raise TypeError("generate needs a causal language model")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    last = transport.rank == transport.world_size - 1
    cache = KVCache() if last else None
    start = time.perf_counter()
    logits = engine.run_rank(inputs, transport, cache=cache)
    prefill = time.perf_counter() - start
    if not last:
        return None
    first = logits[:, -1].argmax(-1, keepdim=True)
    first_token = time.perf_counter() - start
    t0 = time.perf_counter()
    tokens = decode(engine, cache, first, engine.adapter.num_tokens(inputs), steps)
    rate = (steps - 1) / (time.perf_counter() - t0) if steps > 1 else float("nan")
    return Generation(tokens, prefill, first_token, rate)
