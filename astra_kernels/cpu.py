"""C++ CPU backend: thin adapter over the compiled extension ``astra_kernels._C``.

The extension normalises dtypes and strides itself (x may be fp16/bf16 or
strided; it is converted to fp32 once), so these functions only forward.
Kernels and their contract: ``csrc/core`` (torch-free), ``csrc/cpu`` (ATen),
:mod:`astra_kernels.reference` (semantics).

Set ``ASTRA_CPU_SIMD=generic|avx2|avx512|avx512_vnni`` before the first call
to cap the SIMD kernels (e.g. ``generic`` to test the portable path, ``avx2``
for the AVX2 int8 kernels, or ``avx512`` to encode without the int8 prefilter);
:func:`capabilities` reports what runs.
"""
from __future__ import annotations

try:
    from . import _C
except ImportError as exc:  # registry reports this message as the reason
    raise ImportError(
        "the C++ CPU extension astra_kernels._C is not built or failed to load "
        f"({exc}); build it with `pip install --no-build-isolation -e .`"
    ) from exc


def capabilities() -> dict:
    """{'simd': kernels in use, 'simd_detected': best supported, 'encode_gemm_min_width': Dg,
    'int8_estimate': 'avx512_vnni', 'avx2' or 'portable' (the vq_encode_int8 kernels),
    'int8_estimate_faster': whether they are faster than the exact vq_encode}."""
    return dict(_C.capabilities())


# The extension's functions take exactly the backend contract's arguments
# (astra_kernels.reference): bind them directly.
vq_encode = _C.vq_encode
vq_encode_int8 = _C.vq_encode_int8
VqEncoder = _C.VqEncoder  # prepared codebooks: VqEncoder(codebooks, exact).encode(x)
vq_decode = _C.vq_decode
pack_codes = _C.pack_codes
unpack_codes = _C.unpack_codes
mixed_precision_attention = _C.mixed_precision_attention  # fp64 and fp32 native, fp16/bf16 via fp32
attention_after = _C.attention_after  # token-major output
merge_attention = _C.merge_attention  # token-major output
