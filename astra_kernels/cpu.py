"""C++ CPU backend: thin adapter over the compiled extension ``astra_kernels._C``.

The extension normalises dtypes and strides itself (x may be fp16/bf16 or
strided; it is converted to fp32 once), so these functions only forward.
Kernels and their contract: ``csrc/core`` (torch-free), ``csrc/cpu`` (ATen),
:mod:`astra_kernels.reference` (semantics).

Set ``ASTRA_CPU_SIMD=generic|avx2|avx512`` before the first call to cap the
SIMD kernels (e.g. to test the portable path); :func:`capabilities` reports
what runs.
"""
from __future__ import annotations

import torch

try:
    from . import _C
except ImportError as exc:  # registry reports this message as the reason
    raise ImportError(
        "the C++ CPU extension astra_kernels._C is not built or failed to load "
        f"({exc}); build it with `pip install --no-build-isolation -e .`"
    ) from exc


def capabilities() -> dict:
    """{'simd': kernels in use, 'simd_detected': best supported, 'encode_gemm_min_width': Dg}."""
    return dict(_C.capabilities())


def vq_encode(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D), codebooks (G, K, Dg) -> codes (N, G) int32, sqdist (N, G) float32."""
    return _C.vq_encode(x, codebooks)


def vq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """codes (N, G) int32 -> (N, G*Dg) in codebooks.dtype."""
    return _C.vq_decode(codes, codebooks)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes (M,) int32 in [0, 2**bits) -> (ceil(M*bits/8),) uint8."""
    return _C.pack_codes(codes, bits)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """(ceil(count*bits/8),) uint8 -> (count,) int32."""
    return _C.unpack_codes(packed, bits, count)


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

    float64 and float32 are computed natively, float16/bfloat16 in float32.
    """
    return _C.mixed_precision_attention(
        q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias, causal, scale, strategy
    )
