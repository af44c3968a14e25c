"""Pure-torch reference implementations of every ASTRA kernel.

These are the ground truth in tests and the fallback backend when nothing is
compiled. They favour clarity over speed, but stay memory-bounded (row chunks)
so that they remain usable on real inputs. Each op checks the shapes, sizes,
codes and scale it relies on (:mod:`astra_kernels._checks`, the messages of
every backend), but not dtypes or devices: :mod:`astra_kernels.ops` validates
those. Shapes below use

    N  rows (tokens), D features, G groups, K codewords, Dg = D // G.
"""
from __future__ import annotations

import torch

from . import _checks

# Rows per chunk in vq_encode: bounds the (rows, K) distance block to ~64 MB.
_MAX_BLOCK_ELEMS = 1 << 24


def codebook_sqnorms(codebooks: torch.Tensor) -> torch.Tensor:
    """||e||^2 per codeword in fp32: (G, K, Dg) -> (G, K)."""
    cb = codebooks.float()
    return (cb * cb).sum(-1)


def vq_encode(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codeword per group.

    x: (N, D) in the codebooks' dtype; codebooks: (G, K, Dg).
    Returns codes (N, G) int32 and sqdist (N, G) float32.

    The contract every backend follows:
      1. scores s_k = ||e_k||^2 - 2 x_g.e_k, accumulated in fp32 from the
         inputs as stored; code = argmin_k s_k, the lowest index on ties;
      2. a group whose squared norm sum(x_g^2) is not finite (NaN/Inf in it)
         gets code 0;
      3. sqdist = sum_d (x_g[d] - e_code[d])^2 in fp32, computed directly (no
         cancellation), so it is >= 0, and NaN/Inf for the groups of rule 2.
    """
    _checks.encode_op(x, codebooks)
    n, _ = x.shape
    g, k, dg = codebooks.shape
    xg = x.float().reshape(n, g, dg).transpose(0, 1)  # (G, N, Dg)
    cb = codebooks.float()  # (G, K, Dg)
    e_sq = codebook_sqnorms(codebooks)  # (G, K)
    codes = torch.empty(g, n, dtype=torch.int64, device=x.device)
    rows = max(1, _MAX_BLOCK_ELEMS // max(1, g * k))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        # (G, rows, K) = ||e||^2 - 2 x.e
        scores = torch.baddbmm(e_sq.unsqueeze(1), xg[:, r0:r1], cb.transpose(1, 2), alpha=-2.0)
        # NaN scores would win torch.argmin; make them lose instead (rule 2 decides those rows).
        codes[:, r0:r1] = torch.nan_to_num(scores, nan=float("inf")).argmin(dim=-1)
    return _finish_codes(xg, cb, codes)


def _finish_codes(xg: torch.Tensor, cb: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rules 2 and 3 of :func:`vq_encode`: xg (G, N, Dg) and cb (G, K, Dg) in fp32, codes (G, N)
    -> codes (N, G) int32, sqdist (N, G) float32."""
    g, n, dg = xg.shape
    codes = codes.masked_fill(~torch.isfinite((xg * xg).sum(-1)), 0)
    chosen = torch.gather(cb, 1, codes.unsqueeze(-1).expand(g, n, dg))  # (G, N, Dg)
    sqdist = ((xg - chosen) ** 2).sum(-1)
    return codes.to(torch.int32).transpose(0, 1).contiguous(), sqdist.transpose(0, 1).contiguous()


INT8_LEVELS = 127.0
INT8_MIN_STEP = 2.0**-100  # keeps 1 / step finite for subnormal peaks


def int8_grid(v: torch.Tensor, peak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8-bit grid of vectors v (..., Dg) fp32 with per-vector peaks (...,): the step
    s = max(peak / 127, 2^-100) and v~ = round-half-even(v * fp32(1 / s)), each in fp32."""
    step = torch.clamp(peak / INT8_LEVELS, min=INT8_MIN_STEP)
    return step, torch.round(v * (1.0 / step).unsqueeze(-1))


def int8_estimates(xg: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """The int8-estimated scores of :func:`vq_encode_int8`, in float64: xg (G, N, Dg) and
    cb (G, K, Dg) fp32 -> (G, N, K); +inf for codewords that are not finite."""
    # (G, K) fp32, as the kernels keep them; summed in another order than their feature-by-feature
    # fused multiply-adds, so usability can differ within rounding of FLT_MAX
    norms = (cb * cb).sum(-1)
    usable = torch.isfinite(norms)
    cb = torch.where(usable.unsqueeze(-1), cb, 0.0)
    step_e, e_q = int8_grid(cb, cb.abs().amax(dim=(1, 2)).unsqueeze(-1))  # one grid per group
    xg = torch.where(torch.isfinite(xg), xg, 0.0)  # those groups' codes are overridden (rule 2)
    step_x, x_q = int8_grid(xg, xg.abs().amax(-1))  # one grid per row group
    alpha = (-2.0 * step_x) * step_e  # (G, N) fp32, as the kernels round it
    dots = torch.bmm(x_q.double(), e_q.double().transpose(1, 2))  # exact: small integers
    est = norms.double().unsqueeze(1) + alpha.double().unsqueeze(-1) * dots
    return est.masked_fill(~usable.unsqueeze(1), float("inf"))


def vq_encode_int8(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximately nearest codeword per group, by int8-estimated scores.

    x: (N, D); codebooks: (G, K, Dg). Returns codes (N, G) int32 and sqdist
    (N, G) float32, as :func:`vq_encode` but with rule 1 replaced by:

      1. a codeword is usable when its fp32 ||e||^2 is finite. Per group, the
         usable codewords are rounded to one 8-bit grid (:func:`int8_grid`, with
         the peak max |e| over them), and each row group x_g to its own grid;
         est_k = ||e_k||^2 + alpha * x~.e~_k with alpha = (-2 s_x) s_e in fp32
         (+inf when unusable); code = argmin_k est_k, the lowest index on ties.
         The true score of the chosen codeword exceeds the best one by at most
         2 s_x s_e (||x~||_1 + max_k ||e~_k||_1 + Dg / 2) (plus fp32 rounding).

    Rules 2 and 3 (non-finite groups get code 0; sqdist is the exact distance
    to the chosen codeword) are unchanged. Kernels evaluate est_k in fp32 with
    one fused multiply-add and this reference in float64, so the two can
    differ only where two estimates lie within fp32 rounding of each other.
    """
    _checks.encode_op(x, codebooks)
    n, _ = x.shape
    g, k, dg = codebooks.shape
    xg = x.float().reshape(n, g, dg).transpose(0, 1)  # (G, N, Dg)
    cb = codebooks.float()
    codes = torch.empty(g, n, dtype=torch.int64, device=x.device)
    rows = max(1, _MAX_BLOCK_ELEMS // max(1, g * k))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        codes[:, r0:r1] = int8_estimates(xg[:, r0:r1], cb).argmin(dim=-1)
    return _finish_codes(xg, cb, codes)


def vq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Codebook lookup: codes (N, G) int -> (N, G * Dg) in the codebooks' dtype.

    Differentiable with respect to ``codebooks`` (used by training).
    """
    _checks.decode_op(codes, codebooks)
    g, k, dg = codebooks.shape
    flat = codebooks.reshape(g * k, dg)
    offsets = torch.arange(g, device=codes.device, dtype=torch.int64) * k
    rows = codes.long() + offsets  # (N, G) rows of the flattened (G*K, Dg) table
    return flat[rows].reshape(codes.shape[0], g * dg)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit-pack non-negative codes < 2**bits into a little-endian bit stream.

    codes: (M,) integer. Code i occupies stream bits [i*bits, (i+1)*bits),
    least significant bit first; stream bit j is bit (j % 8) of byte j // 8.
    Returns (ceil(M * bits / 8),) uint8; unused high bits of the last byte are 0.
    """
    _checks.pack_op(codes, bits)
    m = codes.numel()
    nbytes = (m * bits + 7) // 8
    shifts = torch.arange(bits, device=codes.device, dtype=torch.int64)
    stream = ((codes.long().reshape(m, 1) >> shifts) & 1).reshape(-1)  # (M*bits,)
    stream = torch.nn.functional.pad(stream, (0, nbytes * 8 - stream.numel()))
    weights = 1 << torch.arange(8, device=codes.device, dtype=torch.int64)
    return (stream.reshape(nbytes, 8) * weights).sum(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: (ceil(count*bits/8),) uint8 -> (count,) int32. Any bytes are
    accepted (each code is < 2**bits); the unused high bits of the last byte are ignored."""
    _checks.unpack_op(packed, bits, count)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64)
    stream = ((packed.long().reshape(-1, 1) >> shifts) & 1).reshape(-1)[: count * bits]
    weights = 1 << torch.arange(bits, device=packed.device, dtype=torch.int64)
    return (stream.reshape(count, bits) * weights).sum(-1).to(torch.int32)


# --- mixed-precision attention -------------------------------------------------
#
# Shapes: q (B, H, Tq, d); k_local, v_local (B, Hkv, Tl, d); remote_codes
# (B, Tr, G); k_table, v_table (G, K, Hkv*d); biases (Hkv*d,). Query head h
# reads kv head h // (H // Hkv).


def project_codebooks(codebooks: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Projected codebooks: (G, K, Dg) x weight (Dout, G*Dg) -> table (G, K, Dout).

    table[g] = codebooks[g] @ weight[:, g*Dg:(g+1)*Dg].T, so that the projection
    of a decoded token is sum_g table[g, code_g]. A bias is folded into group 0
    (added exactly once per token). Computed in fp32 (fp64 for fp64 inputs) and
    returned in the weight's dtype.
    """
    g, k, dg = codebooks.shape
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    table = torch.stack([codebooks[i].to(acc) @ weight[:, i * dg : (i + 1) * dg].to(acc).T for i in range(g)])
    if bias is not None:
        table[0] += bias.to(acc)
    return table.to(weight.dtype)


def gather_tables(codes: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Remote projections from codes: (B, T, G) x (G, K, Dout) -> (B, T, Dout) = sum_g table[g, code_g] (+ bias)."""
    b, t, g = codes.shape
    k, dout = table.shape[1], table.shape[2]
    rows = codes.long() + torch.arange(g, device=codes.device) * k
    out = table.reshape(g * k, dout)[rows].sum(dim=2)
    return out if bias is None else out + bias


def rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """x (..., T, d) rotated by rotation (2, T, d/2) = (cos, sin) over the feature pairs (i, i + d/2)."""
    cos, sin = rotation[0], rotation[1]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


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
    """Attention of local queries over remote tokens (known by their codes) then local tokens.

    The remote segment precedes the local one and is always visible; with
    ``causal`` query i sees local key j iff j <= i + Tl - Tq. Scores are
    computed in fp32 (fp64 for fp64 inputs). Returns out (B, H, Tq, d) in q's
    dtype and lse (B, H, Tq) float32, the natural-log sum of exp of the scaled
    scores over visible keys; a query with no visible key gets out 0, lse -inf.

    formulation "tokens" materializes each remote token's K/V from the tables;
    "codewords" (G = 1 only) attends over the K projected codewords with a
    log(count) bias instead, which is equal in exact arithmetic.

    ``remote_rotation`` (2, Tr, d/2), tokens only: the cos and sin of remote
    token t's rotary angles; its key (head by head, bias included) is rotated
    in Hugging Face's half-split layout, pairs (i, i + d/2):
    k'[i] = k[i] cos - k[i + d/2] sin, k'[i + d/2] = k[i + d/2] cos + k[i] sin.
    The tables stay position-free; values are never rotated. Local keys
    arrive rotated already.
    """
    _checks.attention_op(q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias, scale, formulation,
                         remote_rotation)
    b, h, tq, d = q.shape
    hkv, tl = k_local.shape[1], k_local.shape[2]
    g, k = k_table.shape[0], k_table.shape[1]
    acc = _compute_dtype(q, k_local, v_local, k_table, v_table)
    if formulation == "codewords":
        # (B, K) token counts per codeword; log 0 = -inf masks unused codewords.
        counts = torch.zeros(b, k, dtype=acc, device=q.device)
        counts.scatter_add_(1, remote_codes[..., 0].long(), torch.ones(remote_codes.shape[:2], dtype=acc, device=q.device))
        k_rem = (k_table[0].to(acc) + (0 if k_bias is None else k_bias.to(acc))).expand(b, k, hkv * d)
        v_rem = (v_table[0].to(acc) + (0 if v_bias is None else v_bias.to(acc))).expand(b, k, hkv * d)
        rem_bias = counts.log()  # (B, K)
    else:
        k_rem = gather_tables(remote_codes, k_table.to(acc), None if k_bias is None else k_bias.to(acc))
        v_rem = gather_tables(remote_codes, v_table.to(acc), None if v_bias is None else v_bias.to(acc))
        rem_bias = torch.zeros(b, remote_codes.shape[1], dtype=acc, device=q.device)
    tr = k_rem.shape[1]
    k_rem = k_rem.reshape(b, tr, hkv, d).transpose(1, 2)  # (B, Hkv, Tr', d)
    if remote_rotation is not None:
        k_rem = rotate_pairs(k_rem, remote_rotation.to(acc))
    v_rem = v_rem.reshape(b, tr, hkv, d).transpose(1, 2)
    keys = torch.cat([k_rem, k_local.to(acc)], dim=2).repeat_interleave(h // hkv, dim=1)  # (B, H, Tr'+Tl, d)
    values = torch.cat([v_rem, v_local.to(acc)], dim=2).repeat_interleave(h // hkv, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.to(acc), keys) * scale
    bias = torch.cat([rem_bias, torch.zeros(b, tl, dtype=acc, device=q.device)], dim=1)  # (B, Tr'+Tl)
    # unused codewords (bias log 0) are no keys: -inf even where q . k is NaN, as kernels skip them
    scores = (scores + bias[:, None, None, :]).masked_fill(bias.isneginf()[:, None, None, :], float("-inf"))
    if causal and tl > 0:
        i = torch.arange(tq, device=q.device).unsqueeze(1)
        j = torch.arange(tl, device=q.device).unsqueeze(0)
        hidden = torch.cat([torch.zeros(tq, tr, dtype=torch.bool, device=q.device), j > i + tl - tq], dim=1)
        scores = scores.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, Tq); -inf for rows with no visible key
    probs = torch.exp(scores - lse.unsqueeze(-1).clamp_min(torch.finfo(acc).min))
    out = torch.einsum("bhqk,bhkd->bhqd", probs, values)
    return out.to(q.dtype), lse.float()


def attention_after(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prior_out: torch.Tensor,
                    prior_lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q (B, H, Tq, d) over k, v (B, Hkv, Tk, d) merged with a partial (prior_out
    (B, H, Tq, d), prior_lse (B, H, Tq) float32) over other keys: (out, lse) over both key sets."""
    _checks.attention_after_inputs(q, k, v, prior_out, prior_lse)
    b, hkv, _, d = k.shape
    codes, table = torch.zeros((b, 0, 1), dtype=torch.int32, device=q.device), q.new_zeros((1, 1, hkv * d))
    out, lse = mixed_precision_attention(q, k, v, codes, table, table, None, None, causal, scale, "tokens")
    return merge_attention(prior_out, prior_lse, out, lse)


def merge_attention(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two attention partials over disjoint key sets.

    out_* (B, H, T, d), lse_* (B, H, T) float32 -> (out, lse) as if one call had
    seen both key sets. Partials with lse -inf (no visible key) contribute nothing.
    """
    acc = _compute_dtype(out_a, out_b)
    lse = torch.logaddexp(lse_a, lse_b)
    safe = lse.clamp_min(torch.finfo(torch.float32).min)  # all -inf rows: weights exp(-inf) = 0
    wa = torch.exp(lse_a - safe).unsqueeze(-1).to(acc)
    wb = torch.exp(lse_b - safe).unsqueeze(-1).to(acc)
    out = (out_a.to(acc) * wa).addcmul_(out_b.to(acc), wb)  # one temporary: the merge runs every block
    return out.to(out_a.dtype), lse
