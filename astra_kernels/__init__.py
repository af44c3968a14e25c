"""ASTRA kernels: grouped vector quantization, bit-packed codes and
mixed-precision attention (full-precision local keys, codebook-lookup remote
keys), with pure-torch, C++ CPU, Triton and CUDA backends.

    >>> import torch, astra_kernels as ak
    >>> x, cb = torch.randn(4, 8), torch.randn(2, 16, 4)      # D=8, G=2, K=16
    >>> codes, sqdist = ak.vq_encode(x, cb)                    # (4, 2) int32, (4, 2) fp32
    >>> wire = ak.pack_codes(codes, ak.code_bits(16))          # 4 bytes
    >>> x_hat = ak.vq_decode(ak.unpack_codes(wire, 4, codes.shape), cb)

The public API is what this module exports (``__all__``); the submodules are
internal.

Ops (validated, any leading shape, ``backend=None`` or one of ``BACKENDS``):
    vq_encode, vq_encode_int8, VqEncoder, vq_decode, code_bits, pack_codes,
    packed_size, unpack_codes, mixed_precision_attention, attention,
    merge_attention, project_codebooks. Each kernel is also a torch.library op,
    ``torch.ops.astra.<name>(..., backend=None)`` over flattened inputs, which
    runs on the inputs' device (the fastest backend there) unless ``backend``
    names one.

Backends:
    BACKENDS                        the names: "reference", "cpu", "triton", "cuda"
    available_backends(device)      the backends that run on a device, fastest first
    resolve_backend(b, device, op)  the backend an op runs on: b (checked), or the fastest
    BackendUnavailable              raised when a named backend cannot run, with the reason
    int8_estimate_native(device)    whether vq_encode_int8 runs SIMD kernels on a device
    skips_unused_codewords(b)       whether a backend's codewords attention skips absent codes

Cost model (how to attend remote tokens known only by their codes):
    RemoteShape                     the sizes of one remote-attention call
    remote_plan(shape, budget)      the cheapest formulation whose tables fit the budget
    TABLE_BUDGET_BYTES              the default per-layer budget of the projected K/V tables
    MATERIALIZED                    the formulations that build remote keys/values as ordinary tokens
    gather_table_dtype(dtype)       the dtype the ``gather`` formulation keeps its tables in
"""
from .backends import NAMES as BACKENDS
from .backends import BackendUnavailable, available_backends
from .backends import resolve as resolve_backend
from .cost_model import (
    MATERIALIZED,
    TABLE_BUDGET_BYTES,
    RemoteShape,
    gather_table_dtype,
    remote_plan,
    skips_unused_codewords,
)
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
    "BACKENDS",
    "MATERIALIZED",
    "TABLE_BUDGET_BYTES",
    "BackendUnavailable",
    "RemoteShape",
    "VqEncoder",
    "attention",
    "available_backends",
    "code_bits",
    "gather_table_dtype",
    "int8_estimate_native",
    "merge_attention",
    "mixed_precision_attention",
    "pack_codes",
    "packed_size",
    "project_codebooks",
    "remote_plan",
    "resolve_backend",
    "skips_unused_codewords",
    "unpack_codes",
    "vq_decode",
    "vq_encode",
    "vq_encode_int8",
]
__version__ = "0.1.0"
