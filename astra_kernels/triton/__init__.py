"""Triton backend of the ASTRA VQ ops: the primary GPU path.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (set
before this package is imported). Implements the contract of
:mod:`astra_kernels.reference` over inputs validated by :mod:`astra_kernels.ops`, checking
shapes, codes and scale again itself (:mod:`astra_kernels._checks`):

    vq_encode(x (N, D), codebooks (G, K, Dg)) -> codes (N, G) int32, sqdist (N, G) fp32
    vq_decode(codes (N, G) int32, codebooks (G, K, Dg)) -> (N, G*Dg) in codebooks.dtype
    pack_codes(codes (M,) int32, bits) -> (cdiv(M*bits, 8),) uint8
    unpack_codes(packed uint8, bits, count) -> (count,) int32
    mixed_precision_attention(q (B, H, Tq, d), k_local, v_local (B, Hkv, Tl, d), remote_codes (B, Tr, G) int32,
        k_table, v_table (G, K, Hkv*d), k_bias, v_bias, causal, scale, formulation,
        remote_rotation None or (2, Tr, d/2) (cos, sin), tokens only: remote keys rotated in the kernel)
        -> out (B, H, Tq, d) in q.dtype, lse (B, H, Tq) fp32   (fp16/bf16/fp32; not fp64)
"""
try:
    import triton  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "the ASTRA Triton backend needs the 'triton' package (>= 3.6); install it with "
        "`pip install 'triton>=3.6'` or the 'triton' extra of astra-inference"
    ) from exc

from .mp_attention import mixed_precision_attention
from .pack_codes import pack_codes, unpack_codes
from .vq_decode import vq_decode
from .vq_encode import vq_encode

__all__ = ["mixed_precision_attention", "pack_codes", "unpack_codes", "vq_decode", "vq_encode"]
