"""Wire format of codes in Triton: pack_codes / unpack_codes.

Stream layout (see :mod:`astra_kernels.ops`): code i occupies stream bits
[i*bits, (i+1)*bits), least significant bit first; stream bit j is bit j % 8
of byte j // 8; the last byte is zero-padded. Each output byte gathers the
codes that overlap it, each output code gathers the <= 3 bytes it spans, so
no two programs write the same byte and no atomics are needed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks
from .configs import PACK_BLOCK, SMALL_WARPS, device_guard


@triton.jit
def _pack_codes_kernel(CODES, PACKED, M, NBYTES, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """PACKED[j] = stream bits [8j, 8j + 8) of the codes.

    CODES: (M,) int32 in [0, 2**BITS); PACKED: (NBYTES,) uint8, NBYTES = cdiv(M*BITS, 8).
    Grid: (cdiv(NBYTES, BLOCK),).
    """
    # An 8-bit window overlaps at most cdiv(7, BITS) + 1 consecutive codes.
    SPAN: tl.constexpr = (BITS + 6) // BITS + 1
    byte = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    byte_ok = byte < NBYTES
    first_bit = byte * 8
    first_code = first_bit // BITS
    acc = tl.zeros([BLOCK], dtype=tl.int64)
    for t in tl.static_range(SPAN):
        code_idx = first_code + t
        # Where the code's bit 0 lands relative to the byte's bit 0: in (-BITS, 8) when it overlaps.
        shift = code_idx * BITS - first_bit
        ok = byte_ok & (code_idx < M) & (shift < 8)
        code = tl.load(CODES + code_idx, mask=ok, other=0).to(tl.int64)
        acc |= tl.where(shift >= 0, code << tl.maximum(shift, 0), code >> tl.maximum(-shift, 0))
    tl.store(PACKED + byte, (acc & 0xFF).to(tl.uint8), mask=byte_ok)


@triton.jit
def _unpack_codes_kernel(PACKED, CODES, COUNT, NBYTES, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """CODES[i] = stream bits [i*BITS, (i+1)*BITS) of PACKED.

    PACKED: (NBYTES,) uint8; CODES: (COUNT,) int32.
    Grid: (cdiv(COUNT, BLOCK),).
    """
    # A code starting at bit offset <= 7 of its first byte spans cdiv(BITS + 7, 8) <= 3 bytes.
    SPAN: tl.constexpr = (BITS + 14) // 8
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    idx_ok = idx < COUNT
    first_bit = idx * BITS
    first_byte = first_bit // 8
    word = tl.zeros([BLOCK], dtype=tl.int64)
    for t in tl.static_range(SPAN):
        ok = idx_ok & (first_byte + t < NBYTES)
        word |= tl.load(PACKED + first_byte + t, mask=ok, other=0).to(tl.int64) << (8 * t)
    code = (word >> (first_bit % 8)) & ((1 << BITS) - 1)
    tl.store(CODES + idx, code.to(tl.int32), mask=idx_ok)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes (M,) int32 in [0, 2**bits) -> (cdiv(M*bits, 8),) uint8."""
    _checks.pack_op(codes, bits)
    m = codes.numel()
    nbytes = (m * bits + 7) // 8
    packed = torch.empty((nbytes,), dtype=torch.uint8, device=codes.device)
    with device_guard(codes.device):
        _pack_codes_kernel[(triton.cdiv(nbytes, PACK_BLOCK),)](
            codes, packed, m, nbytes, BITS=bits, BLOCK=PACK_BLOCK, num_warps=SMALL_WARPS,
        )
    return packed


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """packed (cdiv(count*bits, 8),) uint8 -> (count,) int32."""
    _checks.unpack_op(packed, bits, count)
    codes = torch.empty((count,), dtype=torch.int32, device=packed.device)
    with device_guard(packed.device):
        _unpack_codes_kernel[(triton.cdiv(count, PACK_BLOCK),)](
            packed, codes, count, packed.numel(), BITS=bits, BLOCK=PACK_BLOCK, num_warps=SMALL_WARPS,
        )
    return codes
