"""ASTRA kernels: grouped vector quantization, bit-packed codes and
mixed-precision attention (full-precision local keys, codebook-lookup remote
keys), with pure-torch, C++ CPU, Triton and CUDA backends.

    >>> import torch, astra_kernels as ak
    >>> x, cb = torch.randn(4, 8), torch.randn(2, 16, 4)      # D=8, G=2, K=16
    >>> codes, sqdist = ak.vq_encode(x, cb)                    # (4, 2) int32, (4, 2) fp32
    >>> wire = ak.pack_codes(codes, ak.code_bits(16))          # 4 bytes
    >>> x_hat = ak.vq_decode(ak.unpack_codes(wire, 4, codes.shape), cb)
"""
from .backends import BackendUnavailable, available_backends
from .encoder import VqEncoder
from .ops import (
    attention,
    code_bits,
    int8_estimate_native,
    merge_attention,
    mixed_precision_attention,
    pack_codes,
    packed_size,
    project_codebooks,
    unpack_codes,
    vq_decode,
    vq_encode,
    vq_encode_int8,
)

__all__ = [
    "BackendUnavailable",
    "VqEncoder",
    "attention",
    "available_backends",
    "code_bits",
    "int8_estimate_native",
    "merge_attention",
    "mixed_precision_attention",
    "pack_codes",
    "packed_size",
    "project_codebooks",
    "unpack_codes",
    "vq_decode",
    "vq_encode",
    "vq_encode_int8",
]
__version__ = "0.1.0"
