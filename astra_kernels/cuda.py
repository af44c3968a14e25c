"""CUDA backend: the compiled extension ``astra_kernels._C_cuda`` (csrc/cuda).

Implements the backend contract of :mod:`astra_kernels.reference` for CUDA
tensors; inputs arrive validated and flattened by :mod:`astra_kernels.ops`.
Kernels run on the current stream of the inputs' device, and every output is
a fresh tensor. Importing this module raises ImportError when the extension
was not built (CPU-only torch, no nvcc, or ``ASTRA_BUILD_CUDA=0``).
"""
from __future__ import annotations

import torch

try:
    from . import _C_cuda
except ImportError as exc:
    raise ImportError(
        "the CUDA backend needs the compiled extension astra_kernels._C_cuda, which could not be imported "
        f"({exc}); build it on a machine with a CUDA build of torch and nvcc: "
        "ASTRA_BUILD_CUDA=1 pip install --no-build-isolation -e ."
    ) from exc


def vq_encode(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D), codebooks (G, K, Dg) -> codes (N, G) int32, sqdist (N, G) float32."""
    codes, sqdist = _C_cuda.vq_encode(x, codebooks)
    return codes, sqdist


def vq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """codes (N, G) int32 in [0, K), codebooks (G, K, Dg) -> (N, G*Dg) in the codebooks' dtype."""
    return _C_cuda.vq_decode(codes, codebooks)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes (M,) int32 in [0, 2**bits) -> (ceil(M*bits/8),) uint8."""
    return _C_cuda.pack_codes(codes, bits)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """(ceil(count*bits/8),) uint8 -> (count,) int32."""
    return _C_cuda.unpack_codes(packed, bits, count)


def mixed_precision_attention(
    q: torch.Tensor,
    k_local: torch.Tensor,
    v_local: torch.Tensor,
    remote_codes: torch.Tensor,
    k_table: torch.Tensor,
    v_table: torch.Tensor,
    k_bias: torch.Tensor | None,
    v_bias: torch.Tensor | None,
    causal: bool,
    scale: float,
    strategy: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, Tq, d), k/v_local (B, Hkv, Tl, d) any strides, remote_codes (B, Tr, G) int32, tables
    (G, K, Hkv*d), biases (Hkv*d,) or None -> out (B, H, Tq, d) in q.dtype, lse (B, H, Tq) float32.

    float32/float16/bfloat16 and d <= 256 (the extension raises for float64).
    """
    out, lse = _C_cuda.mixed_precision_attention(
        q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias, causal, scale, strategy
    )
    return out, lse
