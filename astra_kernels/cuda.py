"""CUDA backend: the compiled extension ``astra_kernels._C_cuda`` (kernels in ``csrc/cuda``
behind a torch-free C ABI, ATen glue in ``csrc/cuda_ops``).

Implements the backend contract of :mod:`astra_kernels.reference` for CUDA
tensors; inputs arrive validated and flattened by :mod:`astra_kernels.ops`, and the extension
checks shapes, codes, scale and remote rotation again (``csrc/ops_common/input_checks.h``, the
same messages).
Kernels run on the current stream of the inputs' device, and every output is
a fresh tensor. Importing this module raises ImportError when the extension
was not built (CPU-only torch, no nvcc, or ``ASTRA_BUILD_CUDA=0``).
"""
from __future__ import annotations

try:
    from . import _C_cuda
except ImportError as exc:
    raise ImportError(
        "the CUDA backend needs the compiled extension astra_kernels._C_cuda, which could not be imported "
        f"({exc}); build it on a machine with a CUDA build of torch and nvcc: "
        "ASTRA_BUILD_CUDA=1 pip install --no-build-isolation -e ."
    ) from exc


# The extension's functions take exactly the backend contract's arguments
# (astra_kernels.reference): bind them directly.
vq_encode = _C_cuda.vq_encode
vq_decode = _C_cuda.vq_decode
pack_codes = _C_cuda.pack_codes
unpack_codes = _C_cuda.unpack_codes
# fp32/fp16/bf16, d <= 256 (raises for fp64); remote_rotation (2, Tr, d/2) or None, read in fp32, rotates the
# remote keys inside the kernel (never written out rotated)
mixed_precision_attention = _C_cuda.mixed_precision_attention
