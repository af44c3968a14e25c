"""Collectives built on the Transport's point-to-point exchange.

Megatron-style tensor parallelism needs an all-reduce; this is the ring
algorithm (reduce-scatter then all-gather, N - 1 steps each), which puts
2 (N - 1) / N of the tensor on each rank's link: the volume that NCCL and
gloo's ring all-reduce move.
"""
from __future__ import annotations

import torch

from astra.transport import Transport


def ring_allreduce(x: torch.Tensor, transport: Transport, tag: str) -> torch.Tensor:
    """Sum of ``x`` over all ranks (every rank gets the result); x is any float tensor."""
    n, r = transport.world_size, transport.rank
    if n == 1:
        return x
    flat = x.contiguous().reshape(-1).clone()
    chunks = list(flat.tensor_split(n))
    right, left = (r + 1) % n, (r - 1) % n

    def nbytes(idx: int) -> int:
        return chunks[idx].numel() * chunks[idx].element_size()

    # every step's receive is posted up front, so each neighbour's chunk can flow as soon as it is sent
    for s in range(n - 1):
        transport.prepost({left: nbytes((r - s - 1) % n)}, f"{tag}/rs{s}")
        transport.prepost({left: nbytes((r - s) % n)}, f"{tag}/ag{s}")

    def step(send_idx: int, recv_idx: int, name: str) -> torch.Tensor:
        payload = chunks[send_idx].contiguous().view(torch.uint8)
        got = transport.exchange(payload, [right], {left: nbytes(recv_idx)}, f"{tag}/{name}").wait()[left]
        return got.view(flat.dtype)

    for s in range(n - 1):  # reduce-scatter: chunk (r - s - 1) accumulates along the ring
        recv_idx = (r - s - 1) % n
        chunks[recv_idx].add_(step((r - s) % n, recv_idx, f"rs{s}"))
    for s in range(n - 1):  # all-gather of the reduced chunks
        recv_idx = (r - s) % n
        chunks[recv_idx].copy_(step((r - s + 1) % n, recv_idx, f"ag{s}"))
    return flat.reshape(x.shape)
