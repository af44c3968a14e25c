"""Public ops: validate, pick a backend, flatten, call the registered op
(``torch.ops.astra.*``, :mod:`astra_kernels._library`) with that backend.

Every function accepts ``backend=None`` (the fastest backend available for
the inputs' device, see :func:`astra_kernels.available_backends`) or one of
``"reference"``, ``"cpu"``, ``"triton"``, ``"cuda"``. Semantics are identical
on every backend.

Wire format of :func:`pack_codes`: codes are flattened in C order and written
as a little-endian bit stream, ``bits`` bits each, least significant bit
first; stream bit j is bit ``j % 8`` of byte ``j // 8``; the last byte is
zero-padded. The stream is exactly ``ceil(numel * bits / 8)`` bytes.
"""
from __future__ import annotations

import math

import torch

from . import _checks, _library, backends, cost_model


def code_bits(codebook_size: int) -> int:
    """Bits per code on the wire: ceil(log2 K), at least 1."""
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int):
        raise TypeError(f"codebook_size must be an int, got {type(codebook_size).__name__}")
    if codebook_size < 2:
        raise ValueError(f"codebook_size must be at least 2, got {codebook_size}")
    return (codebook_size - 1).bit_length()


def packed_size(num_codes: int, bits: int) -> int:
    """Bytes of the packed stream for ``num_codes`` codes of ``bits`` bits."""
    return (num_codes * bits + 7) // 8


def vq_encode(x: torch.Tensor, codebooks: torch.Tensor, *, backend: str | None = None):
    """Grouped nearest-codeword quantization.

    Args:
        x: (..., D) float32/float16/bfloat16. Group g is ``x[..., g*Dg:(g+1)*Dg]``.
        codebooks: (G, K, Dg) with Dg = D // G, same dtype and device as ``x``.

    Returns:
        codes: (..., G) int32, index of the nearest codeword by squared L2
        distance, lowest index on ties.
        sqdist: (..., G) float32, the squared distance to that codeword (>= 0).
        Differentiable with respect to ``x`` and ``codebooks`` (the code held
        fixed), so ``sqdist.mean()`` is a commitment loss.

    A group containing NaN or Inf (non-finite squared norm) gets code 0 and a
    non-finite sqdist on every backend; check ``sqdist.isfinite()`` to detect
    it. See :func:`astra_kernels.reference.vq_encode` for the exact contract.
    """
    return _encode("vq_encode", x, codebooks, backend)


def vq_encode_int8(x: torch.Tensor, codebooks: torch.Tensor, *, backend: str | None = None):
    """:func:`vq_encode` with each code chosen by int8 estimates of the scores: an
    approximately nearest codeword, faster on CPUs with AVX-512 VNNI (8-bit dot
    products; figures in benchmarks/RESULTS.md).

    Same arguments, outputs and rules for non-finite groups; sqdist is the
    exact distance to the chosen codeword. The chosen codeword's true score
    exceeds the best one by at most the rounding bound of
    :func:`astra_kernels.reference.vq_encode_int8`, the contract (how many
    codes differ from the nearest ones on real activations, and what that does
    to a model's outputs: benchmarks/RESULTS.md). The C++ CPU backend runs it
    with AVX-512 VNNI or AVX2 kernels, or bit-identical portable code (the same
    codes on every CPU; where it is faster than :func:`vq_encode`:
    :func:`int8_estimate_native`); other devices run the reference.
    """
    return _encode("vq_encode_int8", x, codebooks, backend)


def int8_estimate_native(device: torch.device | str) -> bool:
    """Whether :func:`vq_encode_int8` runs kernels faster than :func:`vq_encode` on ``device``: the C++
    CPU backend on a CPU with AVX-512 VNNI. Its AVX2 kernels give the same codes at about the exact
    search's speed, so there (and on other devices) exact encoding costs no more."""
    device = torch.device(device)
    if device.type != "cpu" or backends.resolve(None, device, "vq_encode_int8") != "cpu":
        return False
    return bool(backends.get("cpu").capabilities()["int8_estimate_faster"])


def _encode(op: str, x: torch.Tensor, codebooks: torch.Tensor, backend: str | None):
    g, _, dg = _checks.codebooks(codebooks)
    _checks.vq_input(x, codebooks, g, dg)
    name = backends.resolve(backend, x.device, op)
    lead = x.shape[:-1]
    flat = x.reshape(-1, g * dg)
    if flat.shape[0] == 0:
        return (x.new_empty((*lead, g), dtype=torch.int32), x.new_empty((*lead, g), dtype=torch.float32))
    codes, sqdist = getattr(_library, op)(flat, codebooks, backend=name)
    return codes.reshape(*lead, g), sqdist.reshape(*lead, g)


def vq_decode(codes: torch.Tensor, codebooks: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Codebook lookup: codes (..., G) in [0, K) -> (..., G*Dg) in the codebooks' dtype.

    Differentiable with respect to ``codebooks``.
    """
    g, _, dg = _checks.codebooks(codebooks)
    _checks.codes_input("codes", codes)
    if codes.dim() < 1 or codes.shape[-1] != g:
        raise ValueError(f"codes must have shape (..., G={g}), got {tuple(codes.shape)}")
    _checks.same_device(codes=codes, codebooks=codebooks)
    name = backends.resolve(backend, codes.device, "vq_decode")
    lead = codes.shape[:-1]
    flat = _checks.as_int32_codes(codes.reshape(-1, g)).contiguous()  # the op checks the range
    if flat.shape[0] == 0:
        return codebooks.new_empty((*lead, g * dg))
    return _library.vq_decode(flat, codebooks, backend=name).reshape(*lead, g * dg)


def pack_codes(codes: torch.Tensor, bits: int, *, backend: str | None = None) -> torch.Tensor:
    """Bit-pack integer codes in [0, 2**bits) into the wire format (module docstring).

    Returns a 1-D uint8 tensor of exactly ``ceil(codes.numel() * bits / 8)`` bytes.
    """
    _checks.codes_input("codes", codes)
    bits = _checks.bits(bits)
    name = backends.resolve(backend, codes.device, "pack_codes")
    flat = _checks.as_int32_codes(codes.reshape(-1)).contiguous()  # the op checks the range
    if flat.numel() == 0:
        return codes.new_empty((0,), dtype=torch.uint8)
    return _library.pack_codes(flat, bits, backend=name)


def unpack_codes(packed: torch.Tensor, bits: int, shape, *, backend: str | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: returns int32 codes of ``shape``."""
    _checks.tensor("packed", packed)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {packed.dtype}")
    if packed.dim() != 1:
        raise ValueError(f"packed must be 1-D, got shape {tuple(packed.shape)}")
    bits = _checks.bits(bits)
    dims = _checks.shape(shape)
    count = math.prod(dims)
    expected = packed_size(count, bits)
    if packed.numel() != expected:
        raise ValueError(
            f"packed has {packed.numel()} bytes but {count} codes of {bits} bits need exactly {expected}"
        )
    name = backends.resolve(backend, packed.device, "unpack_codes")
    if count == 0:
        return packed.new_empty(dims, dtype=torch.int32)
    return _library.unpack_codes(packed.contiguous(), bits, count, backend=name).reshape(dims)


def mixed_precision_attention(
    q: torch.Tensor,
    k_local: torch.Tensor,
    v_local: torch.Tensor,
    remote_codes: torch.Tensor,
    k_table: torch.Tensor,
    v_table: torch.Tensor,
    *,
    k_bias: torch.Tensor | None = None,
    v_bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    formulation: str | None = None,
    remote_rotation: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention from local queries to full-precision local keys and to remote
    tokens known only by their VQ codes (Mixed-Precision Attention).

    Args:
        q: (B, H, Tq, d) queries.
        k_local, v_local: (B, Hkv, Tl, d), H % Hkv == 0 (grouped-query heads:
            query head h reads kv head h // (H // Hkv)).
        remote_codes: (B, Tr, G) integer codes in [0, K).
        k_table, v_table: (G, K, Hkv*d) projected codebooks
            (:func:`project_codebooks`). Remote token t's key is
            sum_g k_table[g, remote_codes[b, t, g]] (+ k_bias), viewed as (Hkv, d).
        k_bias, v_bias: optional (Hkv*d,), added once per remote token.
        causal: mask the local segment only, queries aligned to the end of the
            local keys (query i sees local key j iff j <= i + Tl - Tq); remote
            tokens precede the local chunk and are always visible.
        scale: score scale, default d ** -0.5.
        formulation: "tokens", "codewords" (G = 1 only) or None to let the
            cost model choose (:func:`astra_kernels.cost_model.attention_formulation`).
        remote_rotation: optional (2, Tr, d/2) float, the cos and sin of each
            remote token's rotary angles (RoPE at the token's global position):
            its key is rotated inside the kernel, in Hugging Face's half-split
            layout (:func:`astra_kernels.reference.mixed_precision_attention`).
            Needs the tokens formulation (the default with a rotation) and an
            even d; values are not rotated, local keys arrive rotated.

    Returns:
        out (B, H, Tq, d) in q's dtype and lse (B, H, Tq) float32, the natural
        log of the sum of exp of the scaled scores over visible keys. A query
        with no visible key gets out 0 and lse -inf. Either segment may be
        empty (Tr = 0 or Tl = 0). Differentiable (backward through the reference).
    """
    sizes = _checks.attention_inputs(q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias)
    scale = _checks.attention_scale(scale, sizes["head_dim"])
    name = backends.resolve(backend, q.device, "mixed_precision_attention")
    if formulation is None and remote_rotation is not None:
        formulation = "tokens"  # a codeword's tokens sit at different positions
    elif formulation is None:
        formulation = cost_model.attention_formulation(
            cost_model.RemoteShape(
                batch=sizes["batch"], heads=sizes["heads"], kv_heads=sizes["kv_heads"], head_dim=sizes["head_dim"],
                queries=sizes["queries"], remote=sizes["remote"], groups=sizes["groups"],
                codebook_size=sizes["codebook_size"], model_dim=k_table.shape[2],
                skips_unused=cost_model.skips_unused_codewords(name),
            )
        )
    elif formulation not in ("tokens", "codewords"):
        raise ValueError(f"formulation must be 'tokens', 'codewords' or None, got {formulation!r}")
    if formulation == "codewords" and sizes["groups"] != 1:
        raise ValueError(f"the codewords formulation needs G = 1 (one codebook), got G={sizes['groups']}")
    codes = _checks.as_int32_codes(remote_codes).contiguous()  # the op checks the range
    if remote_rotation is not None:
        _checks.rotation_input(remote_rotation, q, sizes["remote"], sizes["head_dim"], formulation)
        remote_rotation = remote_rotation.contiguous()
    return _library.mixed_precision_attention(
        q, k_local, v_local, codes, k_table, v_table, k_bias, v_bias, bool(causal), float(scale), formulation,
        remote_rotation, backend=name,
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-precision attention that also returns the LSE: q (B, H, Tq, d),
    k, v (B, Hkv, Tk, d) -> out (B, H, Tq, d), lse (B, H, Tq) float32.

    :func:`mixed_precision_attention` without a remote segment (same kernels,
    same causal alignment); the partial to merge with a remote one.

    ``prior``: (out (B, H, Tq, d), lse (B, H, Tq) float32), a partial over other
    keys; the result covers both key sets, as :func:`merge_attention` of the
    two, stored token-major like it. Backends with ``attention_after`` (the C++
    CPU backend) start their online softmax from the prior, one pass; the others
    attend, then merge.
    """
    _checks.tensor("q", q)
    _checks.tensor("k", k)
    if k.dim() != 4:
        raise ValueError(f"k must have shape (B, Hkv, Tk, d), got {tuple(k.shape)}")
    if prior is not None:
        return _attention_after(q, k, v, prior, causal, scale, backend)
    no_codes, unused_table = _no_remote_segment(q, k)
    return mixed_precision_attention(
        q, k, v, no_codes, unused_table, unused_table, causal=causal, scale=scale, formulation="tokens", backend=backend
    )


def _no_remote_segment(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (B, 0, 1) int32, table (1, 1, Hkv*d)): mixed_precision_attention's remote arguments when
    only local keys k (B, Hkv, Tk, d) are attended; the table is never read."""
    b, hkv, _, d = k.shape
    return torch.zeros((b, 0, 1), dtype=torch.int32, device=q.device), q.new_zeros((1, 1, hkv * d))


def _attention_after(q, k, v, prior, causal, scale, backend):
    if not isinstance(prior, (tuple, list)) or len(prior) != 2:
        raise TypeError("prior must be a tuple (out, lse)")
    prior_out, prior_lse = prior
    _checks.attention_after_inputs(q, k, v, prior_out, prior_lse)
    scale = _checks.attention_scale(scale, q.shape[3])
    name = backends.resolve(backend, q.device, "mixed_precision_attention")
    if not hasattr(backends.get(name), "attention_after"):  # e.g. Triton: its attention, then the merge
        return merge_attention(prior_out, prior_lse, *attention(q, k, v, causal=causal, scale=scale, backend=name))
    return _library.attention_after(q, k, v, prior_out, prior_lse, bool(causal), scale, backend=name)


def project_codebooks(codebooks: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Projected codebooks for :func:`mixed_precision_attention`, computed once per layer.

    codebooks (G, K, Dg), weight (Dout, G*Dg) as in ``nn.Linear``, bias (Dout,)
    -> table (G, K, Dout) with table[g] = codebooks[g] @ weight[:, g*Dg:(g+1)*Dg].T.
    The bias is folded into group 0, so sum_g table[g, code_g] includes it once.
    Pure torch (one batched GEMM), computed in fp32 (fp64 for fp64 weights); the
    result is in the weight's dtype.
    """
    g, k, dg = _checks.codebooks(codebooks)
    _checks.tensor("weight", weight)
    if weight.dim() != 2 or weight.shape[1] != g * dg:
        raise ValueError(f"weight must have shape (Dout, G*D/G={g * dg}), got {tuple(weight.shape)}")
    if bias is not None:
        _checks.tensor("bias", bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        _checks.same_device(codebooks=codebooks, weight=weight, bias=bias)
    else:
        _checks.same_device(codebooks=codebooks, weight=weight)
    dout = weight.shape[0]
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    table = torch.bmm(codebooks.to(acc), weight.to(acc).reshape(dout, g, dg).permute(1, 2, 0))  # (G, K, Dout)
    if bias is not None:
        table[0] += bias.to(acc)
    return table.to(weight.dtype)


def merge_attention(out_a, lse_a, out_b, lse_b, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two attention partials over disjoint key sets (e.g. local, then remote).

    out_* (B, H, T, d) of one dtype, lse_* (B, H, T) float32 -> (out, lse) equal
    to one call over the union of the keys. ``out`` is stored token-major
    ((B, T, H, d) memory, a (B, H, T, d) view), so that
    ``out.transpose(1, 2).reshape(B, T, H * d)`` needs no copy. Differentiable.
    """
    for name, t in (("out_a", out_a), ("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)):
        _checks.tensor(name, t)
    if out_a.shape != out_b.shape or out_a.dim() != 4:
        raise ValueError(f"out_a and out_b must share a (B, H, T, d) shape, got {tuple(out_a.shape)} and {tuple(out_b.shape)}")
    if out_a.dtype != out_b.dtype or not out_a.is_floating_point():
        raise TypeError(f"out_a and out_b must share one floating dtype, got {out_a.dtype} and {out_b.dtype}")
    if lse_a.shape != out_a.shape[:3] or lse_b.shape != out_a.shape[:3]:
        raise ValueError(f"lse_a and lse_b must have shape {tuple(out_a.shape[:3])}")
    if lse_a.dtype != torch.float32 or lse_b.dtype != torch.float32:
        raise TypeError(f"lse_a and lse_b must be float32, got {lse_a.dtype} and {lse_b.dtype}")
    _checks.same_device(out_a=out_a, lse_a=lse_a, out_b=out_b, lse_b=lse_b)
    name = backends.resolve(backend, out_a.device, "merge_attention")
    return _library.merge_attention(out_a, lse_a, out_b, lse_b, backend=name)
