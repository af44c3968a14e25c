"""Mixed-precision attention in Triton: one fused FA2-style forward.

Each program owns BLOCK_M rows of one (batch, kv head): the rows are (query,
head) pairs, row r = query r // GROUP of query head kv_head * GROUP + r % GROUP,
so the GROUP = H // Hkv query heads that read one kv head share every K/V
tile (remote rows are gathered once for all of them). One online-softmax
state (m_i, l_i, acc) in fp32, in the exp2 domain with the scale folded in,
runs over up to two segments, in the contract's key order:

  remote  "codewords": the K projected codewords, each with a log(count) bias
          (-inf for unused codewords), or "tokens": each remote token's K/V is
          the sum of its G table rows, gathered tile by tile (never written
          to global memory); with ``remote_rotation`` each key is rotated at
          its token's position (RoPE over the pairs (i, i + d/2)) in
          registers: gathered as its two halves, rotated in fp32 and scored
          as q_lo . k'_lo + q_hi . k'_hi (values are not rotated);
  local   the full-precision keys, causal mask only on the diagonal band.

Follows :func:`astra_kernels.reference.mixed_precision_attention`.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import _checks
from .configs import attention_config, device_guard, interpreted

LOG2E = math.log2(math.e)
LN2 = tl.constexpr(math.log(2.0))

# Remote segment kinds (constexpr REMOTE).
_NO_REMOTE, _TOKENS, _CODEWORDS = 0, 1, 2


@triton.jit
def _row_mask(ok, offs_d, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr):
    """(BLOCK, BLOCK_D) load mask: rows where ``ok``, columns < HEAD_DIM (no column mask when unpadded)."""
    if EVEN_D:
        return ok[:, None]
    else:
        return ok[:, None] & (offs_d < HEAD_DIM)[None, :]


@triton.jit
def _load_keys(ptrs, ok, offs_d, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr, MASK_ROWS: tl.constexpr):
    """(BLOCK_N, BLOCK_D) tile; rows masked by ``ok`` only if MASK_ROWS (tail or band tiles), zeros outside."""
    if MASK_ROWS:
        return tl.load(ptrs, mask=_row_mask(ok, offs_d, HEAD_DIM, EVEN_D), other=0.0)
    elif EVEN_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)


@triton.jit
def _load_query(ptrs, row_ok, offs_d, WIDTH: tl.constexpr, EVEN_D: tl.constexpr, UPCAST: tl.constexpr):
    """(BLOCK_M, BLOCK_D) query tile of WIDTH columns (zeros outside), fp32 if UPCAST."""
    q = tl.load(ptrs, mask=_row_mask(row_ok, offs_d, WIDTH, EVEN_D), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    return q


@triton.jit
def _dot_operands(x, DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr):
    """fp32 rows -> (hi, lo) dot operands with hi + lo ~= x to ~16 bits (lo unused unless SPLIT)."""
    hi = x.to(DOT_DTYPE)
    if SPLIT:
        lo = (x - hi.to(tl.float32)).to(DOT_DTYPE)
    else:
        lo = hi
    return hi, lo


@triton.jit
def _scores(q, k_hi, k_lo, qk_scale, SPLIT: tl.constexpr):
    """(BLOCK_M, BLOCK_N) fp32 scores in log2 units: q . k * scale * log2(e)."""
    s = tl.dot(q, tl.trans(k_hi), input_precision="ieee")
    if SPLIT:
        s = tl.dot(q, tl.trans(k_lo), s, input_precision="ieee")
    return s * qk_scale


@triton.jit
def _rotated_scores(q_a, q_b, a_hi, a_lo, b_hi, b_lo, qk_scale, SPLIT: tl.constexpr):
    """(BLOCK_M, BLOCK_N) fp32 log2-unit scores of keys given as halves a, b: (q_a . a + q_b . b) * scale * log2(e)."""
    s = tl.dot(q_a, tl.trans(a_hi), input_precision="ieee")
    if SPLIT:
        s = tl.dot(q_a, tl.trans(a_lo), s, input_precision="ieee")
    s = tl.dot(q_b, tl.trans(b_hi), s, input_precision="ieee")
    if SPLIT:
        s = tl.dot(q_b, tl.trans(b_lo), s, input_precision="ieee")
    return s * qk_scale


@triton.jit
def _softmax_step(s, v_hi, v_lo, m_i, l_i, acc, SPLIT: tl.constexpr):
    """Fold one tile of scores s (BLOCK_M, BLOCK_N; -inf where hidden) and its values into (m_i, l_i, acc)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # Rows that have seen no visible key yet keep m = -inf; shift them by 0 so exp2 gives 0, not NaN.
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_ref)
    p = tl.math.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    p = p.to(v_hi.dtype)
    acc = tl.dot(p, v_hi, acc, input_precision="ieee")
    if SPLIT:
        acc = tl.dot(p, v_lo, acc, input_precision="ieee")
    return m_new, l_i, acc


@triton.jit
def _mp_attention_fwd_kernel(
    Q, KL, VL, CODES, KT, VT, KB, VB, LOG2_COUNTS, ROT, OUT, LSE,
    H, Tq, Tl, Tr, G, K, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ktg, stride_ktk, stride_ktc,
    stride_vtg, stride_vtk, stride_vtc,
    stride_rc, stride_rt, stride_ri,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr, REMOTE: tl.constexpr, ROTATE: tl.constexpr, SUM_ROWS: tl.constexpr, SPLIT: tl.constexpr,
    HAS_K_BIAS: tl.constexpr, HAS_V_BIAS: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr,
):
    """out, lse of BLOCK_M (query, head) rows of one (batch, kv head).

    Q: (B, H, Tq, HEAD_DIM); KL, VL: (B, Hkv, Tl, HEAD_DIM); any strides.
    CODES: (B, Tr, G) int32 contiguous. KT, VT: (G, K, Hkv*HEAD_DIM) tables;
    KB, VB: (Hkv*HEAD_DIM,) contiguous biases (read only if HAS_*_BIAS).
    LOG2_COUNTS: (B, K) fp32 log2 of the token count per codeword (-inf for 0),
    read only if REMOTE == codewords. ROT: (2, Tr, HEAD_DIM / 2) float (cos,
    sin) of each remote token's angles, any strides, read only if ROTATE.
    OUT: (B, H, Tq, HEAD_DIM) contiguous in Q's dtype; LSE: (B, H, Tq) fp32
    contiguous. Grid: (cdiv(Tq * GROUP, BLOCK_M), B * Hkv), GROUP = H // Hkv.

    REMOTE: 0 none, 1 tokens, 2 codewords. ROTATE (tokens only): remote keys
    are rotated over the pairs (i, i + HEAD_DIM / 2), loaded as two halves of
    BLOCK_H (>= 16, a legal dot dim) columns. SUM_ROWS: remote K/V rows are
    fp32 sums (G > 1 or a bias) rather than single table rows. SPLIT: such sums
    feed 16-bit dots as hi + lo parts (two dots), so the remote K/V keep ~16
    significant bits like the fp32 reference's; rotated keys, fp32 whatever G,
    always do in 16-bit dots. UPCAST: dots in fp32 (fp32 inputs, or bf16
    under the interpreter, which cannot do bf16 arithmetic).
    """
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    HALF: tl.constexpr = HEAD_DIM // 2
    EVEN_H: tl.constexpr = BLOCK_H == HALF
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    hkv = H // GROUP
    b = (pid_bh // hkv).to(tl.int64)
    kvh = (pid_bh % hkv).to(tl.int64)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < Tq * GROUP
    query = rows // GROUP
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    # int64 offsets throughout: B*H*Tq*d and G*K*Hkv*d may exceed 2**31 elements.
    q_rows = b * stride_qb + (kvh * GROUP + rows % GROUP) * stride_qh + query.to(tl.int64) * stride_qm
    if ROTATE:
        # The remote segment scores by halves; the whole q tile is loaded for the local one, after it.
        offs_h = tl.arange(0, BLOCK_H)
        q_a = _load_query(Q + q_rows[:, None] + offs_h[None, :] * stride_qd, row_ok, offs_h, HALF, EVEN_H, UPCAST)
        q_b = _load_query(Q + q_rows[:, None] + (HALF + offs_h)[None, :] * stride_qd, row_ok, offs_h, HALF, EVEN_H,
                          UPCAST)
        dot_dtype = q_a.dtype
    else:
        q = _load_query(Q + q_rows[:, None] + offs_d[None, :] * stride_qd, row_ok, offs_d, HEAD_DIM, EVEN_D, UPCAST)
        dot_dtype = q.dtype

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if REMOTE != 0:
        kt_cols = (kvh * HEAD_DIM + offs_d).to(tl.int64) * stride_ktc  # this kv head's columns (unrotated)
        vt_cols = (kvh * HEAD_DIM + offs_d).to(tl.int64) * stride_vtc
        d_ok = offs_d < HEAD_DIM
        if ROTATE:
            ka_cols = (kvh * HEAD_DIM + offs_h).to(tl.int64) * stride_ktc  # key columns [0, d/2) ...
            kb_cols = (kvh * HEAD_DIM + HALF + offs_h).to(tl.int64) * stride_ktc  # ... and [d/2, d)
            if HAS_K_BIAS:
                h_ok = offs_h < HALF
                ka_bias = tl.load(KB + kvh * HEAD_DIM + offs_h, mask=h_ok, other=0.0).to(tl.float32)
                kb_bias = tl.load(KB + kvh * HEAD_DIM + HALF + offs_h, mask=h_ok, other=0.0).to(tl.float32)
        elif HAS_K_BIAS:
            k_bias = tl.load(KB + kvh * HEAD_DIM + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        if HAS_V_BIAS:
            v_bias = tl.load(VB + kvh * HEAD_DIM + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        # codewords: K table rows, one tile per step; tokens: Tr remote tokens.
        n_keys = K if REMOTE == 2 else Tr
        codes_b = CODES + b * Tr * G
        for n0 in range(0, n_keys, BLOCK_N):
            cols = n0 + offs_n
            col_ok = cols < n_keys
            if REMOTE == 2:
                # The tail reads row K-1 (hidden by s_bias), so remote loads need no row mask.
                row = tl.minimum(cols, K - 1).to(tl.int64)
                k_rows = row[:, None] * stride_ktk
                v_rows = row[:, None] * stride_vtk
                # log2(count) weighs codeword j by its number of tokens; -inf hides unused ones and the tail.
                s_bias = tl.load(LOG2_COUNTS + b * K + cols, mask=col_ok, other=float("-inf"))
            else:
                # The tail reads code 0's rows (hidden by s_bias), so remote loads need no row mask.
                code = tl.load(codes_b + cols.to(tl.int64) * G, mask=col_ok, other=0).to(tl.int64)
                k_rows = code[:, None] * stride_ktk
                v_rows = code[:, None] * stride_vtk
                s_bias = tl.where(col_ok, 0.0, float("-inf"))
            if ROTATE:
                k_a = _load_keys(KT + k_rows + ka_cols[None, :], col_ok, offs_h, HALF, EVEN_H, False).to(tl.float32)
                k_b = _load_keys(KT + k_rows + kb_cols[None, :], col_ok, offs_h, HALF, EVEN_H, False).to(tl.float32)
                v_sum = _load_keys(VT + v_rows + vt_cols[None, :], col_ok, offs_d, HEAD_DIM, EVEN_D, False)
                if SUM_ROWS:
                    v_sum = v_sum.to(tl.float32)
                    for g in range(1, G):
                        code = tl.load(codes_b + cols.to(tl.int64) * G + g, mask=col_ok, other=0).to(tl.int64)
                        kt_g = KT + g * stride_ktg + code[:, None] * stride_ktk
                        k_a += _load_keys(kt_g + ka_cols[None, :], col_ok, offs_h, HALF, EVEN_H, False).to(tl.float32)
                        k_b += _load_keys(kt_g + kb_cols[None, :], col_ok, offs_h, HALF, EVEN_H, False).to(tl.float32)
                        v_g = _load_keys(VT + g * stride_vtg + code[:, None] * stride_vtk + vt_cols[None, :],
                                         col_ok, offs_d, HEAD_DIM, EVEN_D, False)
                        v_sum += v_g.to(tl.float32)
                    if HAS_K_BIAS:
                        k_a += ka_bias[None, :]
                        k_b += kb_bias[None, :]
                    if HAS_V_BIAS:
                        v_sum += v_bias[None, :]
                    v_hi, v_lo = _dot_operands(v_sum, dot_dtype, SPLIT)
                else:
                    v_hi = v_sum.to(dot_dtype)
                    v_lo = v_hi
                # (cos, sin) of each tile token's pairs; the tail's are 0 (its scores are hidden by s_bias).
                rot = ROT + cols.to(tl.int64)[:, None] * stride_rt + offs_h[None, :] * stride_ri
                cos = _load_keys(rot, col_ok, offs_h, HALF, EVEN_H, True).to(tl.float32)
                sin = _load_keys(rot + stride_rc, col_ok, offs_h, HALF, EVEN_H, True).to(tl.float32)
                # Rotated keys are fp32 whatever G: 16-bit dots take them as hi + lo parts.
                a_hi, a_lo = _dot_operands(k_a * cos - k_b * sin, dot_dtype, not UPCAST)
                b_hi, b_lo = _dot_operands(k_b * cos + k_a * sin, dot_dtype, not UPCAST)
                s = _rotated_scores(q_a, q_b, a_hi, a_lo, b_hi, b_lo, qk_scale, not UPCAST) + s_bias[None, :]
            else:
                if SUM_ROWS:
                    k_sum = _load_keys(KT + k_rows + kt_cols[None, :], col_ok, offs_d, HEAD_DIM, EVEN_D, False)
                    v_sum = _load_keys(VT + v_rows + vt_cols[None, :], col_ok, offs_d, HEAD_DIM, EVEN_D, False)
                    k_sum = k_sum.to(tl.float32)
                    v_sum = v_sum.to(tl.float32)
                    if REMOTE == 1:
                        for g in range(1, G):
                            code = tl.load(codes_b + cols.to(tl.int64) * G + g, mask=col_ok, other=0).to(tl.int64)
                            k_g = _load_keys(KT + g * stride_ktg + code[:, None] * stride_ktk + kt_cols[None, :],
                                             col_ok, offs_d, HEAD_DIM, EVEN_D, False)
                            v_g = _load_keys(VT + g * stride_vtg + code[:, None] * stride_vtk + vt_cols[None, :],
                                             col_ok, offs_d, HEAD_DIM, EVEN_D, False)
                            k_sum += k_g.to(tl.float32)
                            v_sum += v_g.to(tl.float32)
                    if HAS_K_BIAS:
                        k_sum += k_bias[None, :]
                    if HAS_V_BIAS:
                        v_sum += v_bias[None, :]
                    k_hi, k_lo = _dot_operands(k_sum, dot_dtype, SPLIT)
                    v_hi, v_lo = _dot_operands(v_sum, dot_dtype, SPLIT)
                else:
                    k_hi = _load_keys(KT + k_rows + kt_cols[None, :], col_ok, offs_d, HEAD_DIM, EVEN_D, False)
                    v_hi = _load_keys(VT + v_rows + vt_cols[None, :], col_ok, offs_d, HEAD_DIM, EVEN_D, False)
                    k_hi = k_hi.to(dot_dtype)
                    v_hi = v_hi.to(dot_dtype)
                    k_lo = k_hi
                    v_lo = v_hi
                s = _scores(q, k_hi, k_lo, qk_scale, SPLIT) + s_bias[None, :]
            m_i, l_i, acc = _softmax_step(s, v_hi, v_lo, m_i, l_i, acc, SPLIT)

    if ROTATE:
        q = _load_query(Q + q_rows[:, None] + offs_d[None, :] * stride_qd, row_ok, offs_d, HEAD_DIM, EVEN_D, UPCAST)

    # Local segment. Query i sees local key j iff j <= i + Tl - Tq (causal): keys below
    # first_query + shift + 1 are visible to every row of this tile (no mask but the tail's),
    # keys from last_query + shift + 1 on are visible to none.
    k_base = KL + b * stride_kb + kvh * stride_kh + offs_d[None, :] * stride_kd
    v_base = VL + b * stride_vb + kvh * stride_vh + offs_d[None, :] * stride_vd
    full_end = (Tl // BLOCK_N) * BLOCK_N
    band_end = Tl
    if CAUSAL:
        first_query = (pid_m * BLOCK_M) // GROUP
        last_query = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // GROUP, Tq - 1)
        all_see = tl.maximum(first_query + Tl - Tq + 1, 0)
        full_end = tl.minimum(full_end, (all_see // BLOCK_N) * BLOCK_N)
        band_end = tl.minimum(tl.maximum(last_query + Tl - Tq + 1, 0), Tl)
    for n0 in range(0, full_end, BLOCK_N):
        cols = (n0 + offs_n).to(tl.int64)[:, None]
        k = _load_keys(k_base + cols * stride_kn, offs_n, offs_d, HEAD_DIM, EVEN_D, False).to(dot_dtype)
        v = _load_keys(v_base + cols * stride_vn, offs_n, offs_d, HEAD_DIM, EVEN_D, False).to(dot_dtype)
        s = _scores(q, k, k, qk_scale, False)
        m_i, l_i, acc = _softmax_step(s, v, v, m_i, l_i, acc, False)
    for n0 in range(full_end, band_end, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < Tl
        k = _load_keys(k_base + cols.to(tl.int64)[:, None] * stride_kn, col_ok, offs_d, HEAD_DIM, EVEN_D, True)
        v = _load_keys(v_base + cols.to(tl.int64)[:, None] * stride_vn, col_ok, offs_d, HEAD_DIM, EVEN_D, True)
        k = k.to(dot_dtype)
        v = v.to(dot_dtype)
        visible = col_ok[None, :]
        if CAUSAL:
            visible = visible & (cols[None, :] <= query[:, None] + (Tl - Tq))
        s = tl.where(visible, _scores(q, k, k, qk_scale, False), float("-inf"))
        m_i, l_i, acc = _softmax_step(s, v, v, m_i, l_i, acc, False)

    # Epilogue: a row with no visible key has l_i = 0 and m_i = -inf: out 0, lse -inf.
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
    # Row indices recomputed here rather than kept live through the loops (register pressure).
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < Tq * GROUP
    out_rows = (b * H + kvh * GROUP + rows % GROUP) * Tq + rows // GROUP
    o_ptrs = OUT + out_rows[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=_row_mask(row_ok, offs_d, HEAD_DIM, EVEN_D))
    tl.store(LSE + out_rows, lse, mask=row_ok)


def _log2_counts(codes: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K) fp32 log2 of the number of remote tokens per codeword (exact integer counts; -inf for 0).

    codes: (B, Tr, 1). Integer scatter_add: exact, and allowed under torch.use_deterministic_algorithms.
    """
    first = codes[..., 0]
    counts = torch.zeros((codes.shape[0], k), dtype=torch.int32, device=codes.device)
    counts.scatter_add_(1, first.long(), torch.ones_like(first))
    return counts.float().log2()


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
    formulation: str,
    remote_rotation: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, Tq, d), k/v_local (B, Hkv, Tl, d), remote_codes (B, Tr, G) int32, tables (G, K, Hkv*d),
    remote_rotation None or (2, Tr, d/2) (cos, sin; tokens only) -> out (B, H, Tq, d) in q.dtype,
    lse (B, H, Tq) fp32. fp16/bf16/fp32 only."""
    _checks.attention_op(q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias, scale, formulation,
                         remote_rotation)
    if q.dtype == torch.float64:
        raise TypeError("the Triton mixed_precision_attention runs float32/float16/bfloat16; "
                        "use the 'reference' or 'cpu' backend for float64")
    b, h, tq, d = q.shape
    hkv, tl_len = k_local.shape[1], k_local.shape[2]
    tr, g = remote_codes.shape[1], remote_codes.shape[2]
    k = k_table.shape[1]
    remote = _NO_REMOTE if tr == 0 else (_CODEWORDS if formulation == "codewords" else _TOKENS)
    rotate = remote == _TOKENS and remote_rotation is not None
    upcast = q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and interpreted(_mp_attention_fwd_kernel))
    sum_rows = remote != _NO_REMOTE and ((remote == _TOKENS and g > 1) or k_bias is not None or v_bias is not None)
    group = h // hkv
    remote_keys = {_NO_REMOTE: 0, _TOKENS: tr, _CODEWORDS: k}[remote]
    cfg = attention_config(tq * group, max(remote_keys, tl_len), d, torch.float32 if upcast else q.dtype, q.device,
                           summed_rows=sum_rows, rotary=rotate)

    out = torch.empty((b, h, tq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, tq), dtype=torch.float32, device=q.device)
    log2_counts = _log2_counts(remote_codes, k) if remote == _CODEWORDS else lse  # lse: never read
    k_bias_arg = k_bias.contiguous() if k_bias is not None else lse  # never read without HAS_K_BIAS
    v_bias_arg = v_bias.contiguous() if v_bias is not None else lse
    rotation_arg = remote_rotation if rotate else lse  # never read without ROTATE
    rotation_strides = remote_rotation.stride() if rotate else (0, 0, 0)
    if out.numel() == 0:
        return out, lse
    with device_guard(q.device):
        _mp_attention_fwd_kernel[(triton.cdiv(tq * group, cfg.block_m), b * hkv)](
            q, k_local, v_local, remote_codes, k_table, v_table, k_bias_arg, v_bias_arg, log2_counts, rotation_arg,
            out, lse, h, tq, tl_len, tr, g, k, scale * LOG2E,
            *q.stride(), *k_local.stride(), *v_local.stride(), *k_table.stride(), *v_table.stride(), *rotation_strides,
            GROUP=group, HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d,
            BLOCK_H=cfg.block_half, REMOTE=remote, ROTATE=rotate, SUM_ROWS=sum_rows, SPLIT=sum_rows and not upcast,
            HAS_K_BIAS=k_bias is not None, HAS_V_BIAS=v_bias is not None, CAUSAL=bool(causal) and tl_len > 0,
            UPCAST=upcast, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return out, lse
