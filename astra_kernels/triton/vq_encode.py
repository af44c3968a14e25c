"""Fused nearest-codeword search (vq_encode) in Triton.

Per (row tile, group) program: scores ||e||^2 - 2 x.e for BLOCK_K codewords at
a time on tensor cores (fp32 accumulation), running (min, argmin) across
tiles, so no (N, K) matrix is ever written. Follows the contract of
:func:`astra_kernels.reference.vq_encode` exactly (ties, NaN/Inf rules).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks
from .configs import device_guard, encode_config, interpreted, pow2_divisor

FLT_MAX = tl.constexpr(3.4028234663852886e38)  # largest finite fp32


@triton.jit
def _dot_acc(a, b, acc, POSITION_FREE: tl.constexpr):
    """acc + a @ b for a (M, D), b (D, K) fp32 tiles.

    POSITION_FREE: an elementwise product summed over D in one fixed order, so
    equal columns of b give bit-equal results wherever they sit. The interpreter
    needs it: numpy's matmul may round a column differently by its position in
    the tile, and a later duplicate codeword could then beat the first.
    """
    if POSITION_FREE:
        return acc + tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _vq_encode_kernel(
    X, E, E_SQ, CODES, SQDIST,
    N, K, Dg, G,
    stride_xn, stride_xd,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr, UPCAST: tl.constexpr, DG_ALIGN: tl.constexpr,
    POSITION_FREE: tl.constexpr,
):
    """Nearest codeword of group g for BLOCK_N rows.

    X: (N, G*Dg), any strides; E: (G, K, Dg) contiguous; E_SQ: (G, K) fp32 ||e||^2.
    CODES: (N, G) int32, SQDIST: (N, G) fp32, both contiguous.
    Grid: (cdiv(N, BLOCK_N), G).
    SINGLE_CHUNK: Dg <= BLOCK_D, the x tile is loaded once; else the dot
    accumulates over BLOCK_D-wide feature chunks. UPCAST: fp32 operands (bf16
    under the interpreter, which cannot do bf16 arithmetic). DG_ALIGN: a power
    of two dividing Dg. POSITION_FREE: see _dot_acc (set under the interpreter).
    """
    # Same value; written so the compiler knows the alignment (vector loads, cp.async pipelining).
    Dg = (Dg // DG_ALIGN) * DG_ALIGN
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)

    # int64 offsets: N * stride_xn, Dg * stride_xd and G * K * Dg may exceed 2**31 elements.
    x_rows = X + rows.to(tl.int64)[:, None] * stride_xn  # (BLOCK_N, 1)
    x_col0 = g * Dg  # first feature of group g
    e_group = E + g.to(tl.int64) * K * Dg
    e_ptrs = e_group + offs_k[None, :] * Dg + offs_d[:, None]  # (BLOCK_D, BLOCK_K) tile of e^T
    e_sq_ptrs = E_SQ + g * K + offs_k

    if SINGLE_CHUNK:
        x_mask = row_ok[:, None] & (offs_d < Dg)[None, :]
        x = tl.load(x_rows + (x_col0 + offs_d).to(tl.int64)[None, :] * stride_xd, mask=x_mask, other=0.0)
        if UPCAST:
            x = x.to(tl.float32)

    best_val = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        col_ok = (k0 + offs_k) < K
        dots = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        if SINGLE_CHUNK:
            e = tl.load(e_ptrs, mask=(offs_d < Dg)[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:
                e = e.to(tl.float32)
            dots = _dot_acc(x, e, dots, POSITION_FREE)
        else:
            for d0 in range(0, Dg, BLOCK_D):
                feats = d0 + offs_d
                d_ok = feats < Dg
                xc = tl.load(x_rows + (x_col0 + feats).to(tl.int64)[None, :] * stride_xd,
                             mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                ec = tl.load(e_ptrs + d0, mask=d_ok[:, None] & col_ok[None, :], other=0.0)
                if UPCAST:
                    xc = xc.to(tl.float32)
                    ec = ec.to(tl.float32)
                dots = _dot_acc(xc, ec, dots, POSITION_FREE)
        # Columns >= K read ||e||^2 = NaN, which the NaN rule below turns into +inf.
        e_sq = tl.load(e_sq_ptrs, mask=col_ok, other=float("nan"))
        scores = e_sq[None, :] - 2.0 * dots
        # The reference's torch.nan_to_num(nan=inf): NaN loses to everything, +-inf clamp to +-FLT_MAX.
        scores = tl.where(scores != scores, float("inf"), tl.minimum(tl.maximum(scores, -FLT_MAX), FLT_MAX))
        tile_val, tile_idx = tl.min(scores, axis=1, return_indices=True, return_indices_tie_break_left=True)
        # Strict < keeps the earlier tile on ties: the lowest index wins overall.
        better = tile_val < best_val
        best_val = tl.where(better, tile_val, best_val)
        best_idx = tl.where(better, tile_idx + k0, best_idx)
        e_ptrs += BLOCK_K * Dg
        e_sq_ptrs += BLOCK_K

    # Rule 2: a group with a non-finite squared norm gets code 0.
    if SINGLE_CHUNK:
        xf = x.to(tl.float32)
        x_sq = tl.sum(xf * xf, axis=1)
    else:
        x_sq_parts = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for d0 in range(0, Dg, BLOCK_D):
            feats = d0 + offs_d
            xc = tl.load(x_rows + (x_col0 + feats).to(tl.int64)[None, :] * stride_xd,
                         mask=row_ok[:, None] & (feats < Dg)[None, :], other=0.0).to(tl.float32)
            x_sq_parts += xc * xc
        x_sq = tl.sum(x_sq_parts, axis=1)
    codes = tl.where(x_sq < float("inf"), best_idx, 0)

    # Rule 3: sqdist computed directly against the chosen codeword (no cancellation).
    chosen_ptrs = e_group + codes[:, None] * Dg + offs_d[None, :]  # (BLOCK_N, BLOCK_D)
    if SINGLE_CHUNK:
        chosen = tl.load(chosen_ptrs, mask=x_mask, other=0.0).to(tl.float32)
        diff = xf - chosen
        sqdist = tl.sum(diff * diff, axis=1)
    else:
        sq_parts = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for d0 in range(0, Dg, BLOCK_D):
            feats = d0 + offs_d
            mask = row_ok[:, None] & (feats < Dg)[None, :]
            xc = tl.load(x_rows + (x_col0 + feats).to(tl.int64)[None, :] * stride_xd, mask=mask, other=0.0)
            chosen = tl.load(chosen_ptrs + d0, mask=mask, other=0.0)
            diff = xc.to(tl.float32) - chosen.to(tl.float32)
            sq_parts += diff * diff
        sqdist = tl.sum(sq_parts, axis=1)

    out = rows.to(tl.int64) * G + g
    tl.store(CODES + out, codes, mask=row_ok)
    tl.store(SQDIST + out, sqdist, mask=row_ok)


def vq_encode(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D) any strides, codebooks (G, K, Dg) -> codes (N, G) int32, sqdist (N, G) fp32."""
    _checks.encode_op(x, codebooks)
    n = x.shape[0]
    g, k, dg = codebooks.shape
    cb = codebooks.contiguous()  # G*K*Dg elements: small next to the N*K*D encode work
    e_sq = cb.float().square().sum(-1)  # (G, K) fp32, once per call
    on_numpy = interpreted(_vq_encode_kernel)
    upcast = x.dtype == torch.bfloat16 and on_numpy
    cfg = encode_config(n, k, dg, torch.float32 if upcast else x.dtype, x.device)
    codes = torch.empty((n, g), dtype=torch.int32, device=x.device)
    sqdist = torch.empty((n, g), dtype=torch.float32, device=x.device)
    with device_guard(x.device):
        _vq_encode_kernel[(triton.cdiv(n, cfg.block_n), g)](
            x, cb, e_sq, codes, sqdist,
            n, k, dg, g,
            x.stride(0), x.stride(1),
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
            SINGLE_CHUNK=cfg.single_chunk, UPCAST=upcast, DG_ALIGN=pow2_divisor(dg),
            POSITION_FREE=on_numpy, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return codes, sqdist
