"""Codebook lookup (vq_decode) in Triton: a bandwidth-bound row gather."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks
from .configs import decode_config, device_guard, pow2_divisor

# Elements move as raw integers of the same width: bit-exact for every float
# dtype, also under the interpreter (which cannot do bf16 arithmetic).
_RAW_DTYPE = {4: torch.int32, 2: torch.int16}


@triton.jit
def _vq_decode_kernel(
    CODES, E, OUT,
    N, G, Dg,
    stride_eg, stride_ek, stride_ed,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ALIGN: tl.constexpr,
):
    """OUT[n, g*Dg:(g+1)*Dg] = E[g, CODES[n, g], :] for BLOCK_N rows of group g.

    CODES: (N, G) int32 contiguous, values in [0, K); E: (G, K, Dg) any strides;
    OUT: (N, G*Dg) contiguous, same element type as E.
    Grid: (cdiv(N, BLOCK_N), G). ALIGN: a power of two dividing Dg, stride_eg and stride_ek.
    """
    # Same values; written so the compiler knows the alignment (vector loads and stores).
    Dg = (Dg // ALIGN) * ALIGN
    stride_eg = (stride_eg // ALIGN) * ALIGN
    stride_ek = (stride_ek // ALIGN) * ALIGN
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    codes = tl.load(CODES + rows.to(tl.int64) * G + g, mask=row_ok, other=0)
    # int64 offsets: G*K*Dg and N*G*Dg may exceed 2**31 elements.
    src = E + g.to(tl.int64) * stride_eg + codes.to(tl.int64)[:, None] * stride_ek  # (BLOCK_N, 1)
    dst = OUT + rows.to(tl.int64)[:, None] * (G * Dg) + g * Dg  # (BLOCK_N, 1)
    for d0 in range(0, Dg, BLOCK_D):
        cols = d0 + offs_d
        mask = row_ok[:, None] & (cols < Dg)[None, :]
        vals = tl.load(src + cols.to(tl.int64)[None, :] * stride_ed, mask=mask)
        tl.store(dst + cols[None, :], vals, mask=mask)


def vq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """codes (N, G) int32 in [0, K), codebooks (G, K, Dg) any strides -> (N, G*Dg) in codebooks.dtype."""
    _checks.decode_op(codes, codebooks)
    n, g = codes.shape
    dg = codebooks.shape[2]
    raw = _RAW_DTYPE[codebooks.element_size()]
    out = torch.empty((n, g * dg), dtype=codebooks.dtype, device=codebooks.device)
    src = codebooks.view(raw)
    cfg = decode_config(n, dg)
    with device_guard(codebooks.device):
        _vq_decode_kernel[(triton.cdiv(n, cfg.block_n), g)](
            codes, src, out.view(raw),
            n, g, dg,
            src.stride(0), src.stride(1), src.stride(2),
            BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d,
            ALIGN=pow2_divisor(dg, src.stride(0), src.stride(1)), num_warps=cfg.num_warps,
        )
    return out
