"""A quantizer with its codebooks prepared once, for encoding many batches.

:func:`astra_kernels.vq_encode` and :func:`astra_kernels.vq_encode_int8`
prepare the codebooks (SIMD panels, norms, 8-bit grids) on every call, work
proportional to the codebook that a small batch does not amortise (figures:
benchmarks/RESULTS.md). A runtime that encodes every block of every forward
with fixed codebooks keeps a :class:`VqEncoder` per block instead.
"""
from __future__ import annotations

import torch

from . import _checks, backends, ops


class VqEncoder:
    """``encoder(x)`` equals ``vq_encode(x, codebooks)`` (``int8=True``: ``vq_encode_int8``).

    The C++ CPU backend keeps an fp32 copy of the codebooks and their packed
    form; changing ``codebooks`` afterwards does not change the encoder. Other
    backends call the op each time (nothing to prepare there).

    Args:
        codebooks: (G, K, Dg) float32/float16/bfloat16.
        int8: choose codes by int8-estimated scores (:func:`astra_kernels.vq_encode_int8`).
        backend: as the ops' ``backend`` (None: fastest for the codebooks' device).
    """

    def __init__(self, codebooks: torch.Tensor, *, int8: bool = False, backend: str | None = None):
        self.groups, self.codebook_size, self.width = _checks.codebooks(codebooks)
        self.int8 = bool(int8)
        op = "vq_encode_int8" if self.int8 else "vq_encode"
        self.backend = backends.resolve(backend, codebooks.device, op)
        self.codebooks = codebooks
        self._prepared = None
        if self.backend == "cpu":
            self._prepared = backends.get("cpu").VqEncoder(codebooks.detach(), not self.int8)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., G*Dg) -> codes (..., G) int32, sqdist (..., G) float32, for inference (no
        gradient: the ops give a differentiable commitment loss)."""
        if self._prepared is None or torch.compiler.is_compiling():  # the prepared C++ object is opaque to tracing
            encode = ops.vq_encode_int8 if self.int8 else ops.vq_encode
            return encode(x.detach(), self.codebooks.detach(), backend=self.backend)
        _checks.vq_input(x, self.codebooks, self.groups, self.width)
        lead = x.shape[:-1]
        codes, sqdist = self._prepared.encode(x.detach().reshape(-1, self.groups * self.width))
        return codes.reshape(*lead, self.groups), sqdist.reshape(*lead, self.groups)
