"""Collectives built on the Transport's point-to-point exchange.

Megatron-style tensor parallelism needs an all-reduce; this is the ring
algorithm (reduce-scatter then all-gather, N - 1 steps each), which puts
2 (N - 1) / N of the tensor on each rank's link: the volume that NCCL and
gloo's ring all-reduce move.

``q80=True`` sends every chunk as distributed-llama's Q80 (8-bit
row-quantized) blocks instead of the tensor's own dtype: the receiver
dequantizes and adds in full precision. The reduced chunk's owner quantizes
it once and the all-gather forwards those bytes unchanged, so every rank ends
with the same (dequantized) sum.
"""
from __future__ import annotations

import torch

from astra.transport import Transport

Q80_BLOCK = 32  # values per block
_FP16_MAX = torch.finfo(torch.float16).max


def q80_bytes(numel: int) -> int:
    """Bytes of ``numel`` values in Q80: one fp16 scale and 32 int8 values per (zero-padded) block."""
    blocks = -(-numel // Q80_BLOCK)
    return blocks * (2 + Q80_BLOCK)


def q80_quantize(x: torch.Tensor) -> torch.Tensor:
    """Any float tensor -> Q80 bytes (1-D uint8, :func:`q80_bytes`): all blocks' fp16 scales, then their int8 values.

    A block's scale is max|x| / 127 rounded to fp16 (capped at fp16's largest finite value, where values then
    saturate at +-127 steps), its values round(x / scale); an all-zero block has scale 0 and values 0."""
    flat = x.detach().reshape(-1).float()
    pad = (-flat.numel()) % Q80_BLOCK
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, Q80_BLOCK)
    scale = (blocks.abs().amax(dim=1) / 127).clamp(max=_FP16_MAX)
    inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))  # distributed-llama: 1/d of the fp32 d
    values = (blocks * inverse[:, None]).round().clamp(-127, 127).to(torch.int8)
    return torch.cat([scale.to(torch.float16).view(torch.uint8), values.reshape(-1).view(torch.uint8)])


def q80_dequantize(data: torch.Tensor, numel: int) -> torch.Tensor:
    """Q80 bytes of ``numel`` values (:func:`q80_quantize`) -> float32 (numel,)."""
    blocks = -(-numel // Q80_BLOCK)
    scale = data[: 2 * blocks].view(torch.float16).float()
    values = data[2 * blocks:].view(torch.int8).reshape(blocks, Q80_BLOCK).float()
    return (values * scale[:, None]).reshape(-1)[:numel]


def ring_allreduce(x: torch.Tensor, transport: Transport, tag: str, q80: bool = False) -> torch.Tensor:
    """Sum of ``x`` over all ranks (every rank gets the result); x is any float tensor.

    ``q80``: every chunk travels in Q80 (:func:`q80_quantize`): the sum is then exact to within each
    quantization's rounding, and the same on every rank."""
    n, r = transport.world_size, transport.rank
    if n == 1:
        return x
    flat = x.contiguous().reshape(-1).clone()
    if q80:  # accumulate in fp32: the received partials are dequantized to it
        flat = flat.float()
    chunks = list(flat.tensor_split(n))
    right, left = (r + 1) % n, (r - 1) % n

    def nbytes(idx: int) -> int:
        return q80_bytes(chunks[idx].numel()) if q80 else chunks[idx].numel() * chunks[idx].element_size()

    # every step's receive is posted up front, so each neighbour's chunk can flow as soon as it is sent
    for s in range(n - 1):
        transport.prepost({left: nbytes((r - s - 1) % n)}, f"{tag}/rs{s}")
        transport.prepost({left: nbytes((r - s) % n)}, f"{tag}/ag{s}")

    def encode(idx: int) -> torch.Tensor:
        return q80_quantize(chunks[idx]) if q80 else chunks[idx].contiguous().view(torch.uint8)

    def decode(data: torch.Tensor, idx: int) -> torch.Tensor:
        return q80_dequantize(data, chunks[idx].numel()) if q80 else data.view(flat.dtype)

    def step(payload: torch.Tensor, recv_idx: int, name: str) -> torch.Tensor:
        return transport.exchange(payload, [right], {left: nbytes(recv_idx)}, f"{tag}/{name}").wait()[left]

    for s in range(n - 1):  # reduce-scatter: chunk (r - s - 1) accumulates along the ring
        recv_idx = (r - s - 1) % n
        chunks[recv_idx].add_(decode(step(encode((r - s) % n), recv_idx, f"rs{s}"), recv_idx))
    # all-gather of the reduced chunks: rank r's is chunk r + 1; the bytes received are passed on as they came
    owned = (r + 1) % n
    payload = encode(owned)
    if q80:
        chunks[owned].copy_(decode(payload, owned))
    for s in range(n - 1):
        recv_idx = (r - s) % n
        payload = step(payload, recv_idx, f"ag{s}")
        chunks[recv_idx].copy_(decode(payload, recv_idx))
    return flat.reshape(x.shape).to(x.dtype)
