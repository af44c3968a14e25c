"""Decoding after a distributed prefill.

ASTRA distributes only the prefill (the prompt). The last rank holds the last
prompt token, so it continues alone: its KV cache is its own full-precision
keys/values plus the remote tokens' keys/values rebuilt from their codes
(keys rotated at their positions), preallocated for the prompt and every
generated token, and decoding needs no further exchange. The prefill computes
logits of the last position only.

:func:`generate_simulated` runs the same decoding after the single-process
simulation of the prefill (:meth:`AstraEngine.simulate`): the same cache, the
same logits, so the same tokens, greedy or sampled with the same seed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

import astra_kernels as ak

from . import block as B
from .engine import AstraEngine, KVCache


@dataclass(frozen=True)
class Sampling:
    """How each next token is chosen from the logits: greedy (``temperature`` 0) or sampled from the softmax of
    logits / temperature, restricted to the ``top_k`` most likely tokens (0: all) and then to the smallest set
    whose probability reaches ``top_p``; a torch.Generator seeded with ``seed`` makes the draws reproducible."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no limit), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def next_tokens(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """logits (B, V) -> the chosen tokens (B, 1)."""
    if sampling.temperature == 0:
        return logits.argmax(-1, keepdim=True)
    scores = logits.float() / sampling.temperature
    if 0 < sampling.top_k < scores.shape[-1]:
        kth = scores.topk(sampling.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        # drop a token when the more likely ones already reach top_p (the most likely one always stays)
        drop = (probs.cumsum(-1) - probs) >= sampling.top_p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, new) generated token ids
    prefill_s: float  # this rank's prefill time
    first_token_s: float  # time to first token (prefill + first next-token choice)
    decode_tokens_per_s: float  # further tokens per second (batch counted once)


@torch.no_grad()
def _step(engine: AstraEngine, cache: KVCache, token: torch.Tensor, position: int) -> torch.Tensor:
    """One decoding forward of ``token`` (B, 1) at ``position`` over the cache: the next logits (B, V)."""
    adapter = engine.adapter
    h = adapter.embed_tokens(token, position)
    rotation = adapter.rotary(torch.tensor([position]))  # once per step, for every block
    for i, bw in enumerate(adapter.blocks):
        q, k, v = B.project(bw, B.attention_input(bw, h))
        keys, values = cache.write(i, position, B.rotate(k, rotation), v)
        # the one query is the last position: every cached key is visible
        o, _ = ak.attention(B.rotate(q, rotation), keys, values, backend=engine.backend)
        h = B.residual(bw, h, o)
    return adapter.token_outputs(h)[:, -1]


@torch.no_grad()
def decode(engine: AstraEngine, cache: KVCache, logits: torch.Tensor, position: int, steps: int,
           sampling: Sampling = Sampling(), on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """``steps`` tokens (B, steps): the first chosen from ``logits`` (B, V) of the prompt's last position, each
    further one from a forward of the previous token at ``position``, ``position + 1``, ... over ``cache``
    (which holds positions [0, position)). ``on_token`` receives each token (B, 1) as it is chosen."""
    generator = torch.Generator(device=logits.device).manual_seed(sampling.seed)
    out = []
    for step in range(steps):
        if step:
            logits = _step(engine, cache, out[-1], position + step - 1)
        out.append(next_tokens(logits, sampling, generator))
        if on_token is not None:
            on_token(out[-1])
    return torch.cat(out, dim=1)


def _check(engine: AstraEngine, inputs: torch.Tensor, steps: int) -> int:
    """The prompt length, after checking that ``steps`` tokens can follow it."""
    if not engine.causal:
        raise TypeError("generate needs a causal language model")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    prompt = engine.adapter.num_tokens(inputs)
    engine.adapter.check_positions(prompt + steps - 1)  # before any rank starts
    return prompt


def generate(engine: AstraEngine, inputs: torch.Tensor, transport, steps: int, sampling: Sampling = Sampling(),
             on_token: Callable[[torch.Tensor], None] | None = None) -> Generation | None:
    """Distributed prefill on every rank, then ``steps`` tokens on the last rank (``on_token``: see :func:`decode`).

    Returns the generation on the last rank and None on the others.
    """
    prompt = _check(engine, inputs, steps)
    last = transport.rank == transport.world_size - 1
    cache = KVCache(prompt + steps - 1) if last else None
    start = time.perf_counter()
    logits = engine.run_rank(inputs, transport, cache=cache, logits_to_keep=1 if last else 0)
    prefill = time.perf_counter() - start
    if not last:
        return None
    first: list[float] = []

    def emitted(token: torch.Tensor) -> None:
        if not first:
            first.append(time.perf_counter())
        if on_token is not None:
            on_token(token)

    tokens = decode(engine, cache, logits[:, -1], prompt, steps, sampling, emitted)
    rate = (steps - 1) / (time.perf_counter() - first[0]) if steps > 1 else float("nan")
    return Generation(tokens, prefill, first[0] - start, rate)


def generate_simulated(engine: AstraEngine, inputs: torch.Tensor, world_size: int, steps: int,
                       sampling: Sampling = Sampling()) -> torch.Tensor:
    """The tokens (B, steps) that :func:`generate` over ``world_size`` ranks gives, from the simulated prefill."""
    prompt = _check(engine, inputs, steps)
    cache = KVCache(prompt + steps - 1)
    logits = engine.simulate(inputs, world_size, cache=cache, logits_to_keep=1)[-1]
    return decode(engine, cache, logits[:, -1], prompt, steps, sampling)
