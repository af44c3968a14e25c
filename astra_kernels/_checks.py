"""Input validation shared by every public op and by the backends.

Every check raises ``TypeError`` (wrong kind of object or dtype) or
``ValueError`` (wrong shape, size or value) with a message that names the
argument and the problem. :mod:`astra_kernels.ops` runs the checks of its
arguments before any kernel; the backends run those of the registered ops'
arguments themselves (the reference through the ``*_op`` checks here, the
C++ and CUDA extensions through ``csrc/ops_common/input_checks.h``, with the
same messages), so that a direct ``torch.ops.astra.*`` call, or a compiled
graph, cannot index memory with a bad code.
"""
from __future__ import annotations

import math

import torch
from torch._subclasses.fake_tensor import is_fake

VQ_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CODE_DTYPES = (torch.int16, torch.int32, torch.int64, torch.uint8)
MAX_GROUPS = 64
MAX_CODEBOOK_SIZE = 65536
MAX_GROUP_WIDTH = 4096
MAX_BITS = 16


def tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def same_device(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; "
                "all inputs must be on the same device"
            )


def codebooks(cb) -> tuple[int, int, int]:
    """Validate (G, K, D/G) codebooks; returns (G, K, Dg)."""
    tensor("codebooks", cb)
    g, k, dg = codebook_shape(cb)
    if cb.dtype not in VQ_DTYPES:
        raise TypeError(f"codebooks must be float32, float16 or bfloat16, got {cb.dtype}")
    return g, k, dg


def codebook_shape(cb: torch.Tensor) -> tuple[int, int, int]:
    """(G, K, D/G) within the supported ranges, whatever the dtype; returns (G, K, Dg)."""
    if cb.dim() != 3:
        raise ValueError(f"codebooks must have shape (G, K, D/G), got {tuple(cb.shape)} (rank {cb.dim()})")
    g, k, dg = cb.shape
    if k == 0 or dg == 0 or g == 0:
        raise ValueError(f"codebooks is empty: shape (G={g}, K={k}, D/G={dg})")
    if not 1 <= g <= MAX_GROUPS:
        raise ValueError(f"number of groups G={g} is outside the supported range 1..{MAX_GROUPS}")
    if not 2 <= k <= MAX_CODEBOOK_SIZE:
        raise ValueError(f"codebook size K={k} is outside the supported range 2..{MAX_CODEBOOK_SIZE}")
    if not 1 <= dg <= MAX_GROUP_WIDTH:
        raise ValueError(f"group width D/G={dg} is outside the supported range 1..{MAX_GROUP_WIDTH}")
    return g, k, dg


def vq_input(x, cb: torch.Tensor, g: int, dg: int) -> None:
    tensor("x", x)
    if x.dim() < 1:
        raise ValueError("x must have shape (..., D) with at least one dimension, got a 0-d tensor")
    if x.dtype not in VQ_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dtype != cb.dtype:
        raise TypeError(f"x is {x.dtype} but codebooks are {cb.dtype}; they must have the same dtype")
    same_device(x=x, codebooks=cb)
    vq_width(x, g, dg)


def vq_width(x: torch.Tensor, g: int, dg: int) -> None:
    """x (..., D) has the codebooks' D = G * Dg features."""
    d = x.shape[-1]
    if d != g * dg:
        hint = "D is not divisible by G" if d % g else f"D/G={d // g} differs from codebooks.shape[2]={dg}"
        raise ValueError(
            f"x has D={d} features but codebooks (G={g}, K, D/G={dg}) cover G*D/G={g * dg} ({hint})"
        )


def codes_input(name: str, codes) -> None:
    tensor(name, codes)
    if codes.dtype not in CODE_DTYPES:
        raise TypeError(f"{name} must be an integer tensor (int16/int32/int64/uint8), got {codes.dtype}")


def codes_in_range(name: str, codes: torch.Tensor, upper: int, what: str) -> None:
    """All values in [0, upper); reads the tensor's min and max (one sync on GPU). Runs inside the ops'
    implementations, where a compiled graph still executes it (an opaque custom op)."""
    if codes.numel() == 0 or is_fake(codes):
        return  # fake tensors (tracing a graph, e.g. its backward) hold no values: the op checks them when it runs
    lo, hi = torch.aminmax(codes)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains {bad}, outside [0, {upper}) ({what})")


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def as_int32_codes(codes: torch.Tensor) -> torch.Tensor:
    """codes as int32 for the ops, saturating int64 values beyond int32 so that they stay out of range
    (the ops check the range; a wrapping cast could turn a bad code into a valid one)."""
    if codes.dtype == torch.int64:
        codes = codes.clamp(INT32_MIN, INT32_MAX)
    return codes.to(torch.int32)


def decode_op(codes: torch.Tensor, cb: torch.Tensor) -> None:
    """The vq_decode op's arguments: codes (N, G) of values in [0, K), codebooks (G, K, Dg)."""
    g, k, _ = codebook_shape(cb)
    if codes.dim() != 2 or codes.shape[1] != g:
        raise ValueError(f"codes must have shape (..., G={g}), got {tuple(codes.shape)}")
    codes_in_range("codes", codes, k, f"codebook size K={k}")


def encode_op(x: torch.Tensor, cb: torch.Tensor) -> None:
    """The vq_encode ops' arguments: x (N, G*Dg), codebooks (G, K, Dg)."""
    g, _, dg = codebook_shape(cb)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, D), got {tuple(x.shape)}")
    vq_width(x, g, dg)


def pack_op(codes: torch.Tensor, nbits: int) -> None:
    """The pack_codes op's arguments: codes (M,) of values in [0, 2**bits)."""
    bits(nbits)
    if codes.dim() != 1:
        raise ValueError(f"codes must be 1-D, got shape {tuple(codes.shape)}")
    codes_in_range("codes", codes, 1 << nbits, f"not representable in bits={nbits}")


def unpack_op(packed: torch.Tensor, nbits: int, count: int) -> None:
    """The unpack_codes op's arguments: packed (ceil(count*bits/8),) bytes."""
    bits(nbits)
    if packed.dim() != 1:
        raise ValueError(f"packed must be 1-D, got shape {tuple(packed.shape)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    expected = (count * nbits + 7) // 8
    if packed.numel() != expected:
        raise ValueError(f"packed has {packed.numel()} bytes but {count} codes of {nbits} bits need exactly {expected}")


def bits(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"bits must be an int, got {type(value).__name__}")
    if not 1 <= value <= MAX_BITS:
        raise ValueError(f"bits={value} is outside the supported range 1..{MAX_BITS}")
    return value


def shape(value) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in value)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {type(value).__name__}") from None
    if any(s < 0 for s in dims):
        raise ValueError(f"shape {dims} has a negative dimension")
    return dims


ATTN_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def attention_scale(scale, head_dim: int) -> float:
    """The score scale: default head_dim ** -0.5 (head_dim >= 1), else a positive finite number."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        # printf's %g, as the C++ checks print it
        raise ValueError(f"scale must be a positive finite number, got {float(scale):g}")
    return float(scale)


FORMULATIONS = ("tokens", "codewords")


def attention_op(q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias, scale, formulation,
                 remote_rotation=None) -> None:
    """The mixed_precision_attention op's arguments (those of :func:`attention_inputs`, then a
    formulation, its G, the scale, the codes' range and the remote rotation), in the order the C++
    checks take them."""
    sizes = attention_inputs(q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias)
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be 'tokens' or 'codewords', got {formulation!r}")
    if formulation == "codewords" and sizes["groups"] != 1:
        raise ValueError(f"the codewords formulation needs G = 1 (one codebook), got G={sizes['groups']}")
    attention_scale(scale, sizes["head_dim"])
    k = sizes["codebook_size"]
    codes_in_range("remote_codes", remote_codes, k, f"table size K={k}")
    if remote_rotation is not None:
        rotation_input(remote_rotation, q, sizes["remote"], sizes["head_dim"], formulation)


def rotation_input(rotation, q, remote: int, head_dim: int, formulation: str) -> None:
    """``remote_rotation`` (2, Tr, d/2): the cos and sin of each remote token's rotary angles (d even),
    for the tokens formulation (the codewords one attends a codeword once, whatever its tokens' positions)."""
    tensor("remote_rotation", rotation)
    if formulation == "codewords":
        raise ValueError("the codewords formulation attends each codeword once, so it cannot rotate remote keys "
                         "at their tokens' positions; use the tokens formulation with remote_rotation")
    if head_dim % 2:
        raise ValueError(f"remote_rotation needs an even head dim (RoPE rotates pairs of features), got d={head_dim}")
    if tuple(rotation.shape) != (2, remote, head_dim // 2):
        raise ValueError(f"remote_rotation must have shape (2, Tr={remote}, d/2={head_dim // 2}) (cos, sin), "
                         f"got {tuple(rotation.shape)}")
    if not rotation.dtype.is_floating_point:
        raise TypeError(f"remote_rotation must be a float tensor, got {rotation.dtype}")
    same_device(q=q, remote_rotation=rotation)


def attention_inputs(q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias) -> dict:
    """Validate mixed_precision_attention inputs; returns the sizes by name."""
    for name, t in (("q", q), ("k_local", k_local), ("v_local", v_local), ("k_table", k_table), ("v_table", v_table)):
        tensor(name, t)
        if t.dtype not in ATTN_DTYPES:
            raise TypeError(f"{name} must be float64/float32/float16/bfloat16, got {t.dtype}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} is {t.dtype} but q is {q.dtype}; all float inputs must share q's dtype")
    codes_input("remote_codes", remote_codes)
    if q.dim() != 4:
        raise ValueError(f"q must have shape (B, H, Tq, d), got {tuple(q.shape)}")
    if k_local.dim() != 4 or v_local.shape != k_local.shape:
        raise ValueError(
            f"k_local and v_local must both have shape (B, Hkv, Tl, d), got {tuple(k_local.shape)} and {tuple(v_local.shape)}"
        )
    b, h, tq, d = q.shape
    bk, hkv, tl, dk = k_local.shape
    if bk != b or dk != d:
        raise ValueError(f"k_local {tuple(k_local.shape)} does not match q {tuple(q.shape)} in batch or head dim")
    if hkv == 0 or h % hkv:
        raise ValueError(f"query heads H={h} must be a multiple of key/value heads Hkv={hkv}")
    if d == 0:
        raise ValueError("head dim d=0 must be at least 1")
    if remote_codes.dim() != 3 or remote_codes.shape[0] != b:
        raise ValueError(f"remote_codes must have shape (B={b}, Tr, G), got {tuple(remote_codes.shape)}")
    tr, g = remote_codes.shape[1], remote_codes.shape[2]
    if k_table.dim() != 3 or v_table.shape != k_table.shape:
        raise ValueError(
            f"k_table and v_table must both have shape (G, K, Hkv*d), got {tuple(k_table.shape)} and {tuple(v_table.shape)}"
        )
    gt, k, width = k_table.shape
    if gt != g:
        raise ValueError(f"remote_codes have G={g} groups but the tables have {gt}")
    if width != hkv * d:
        raise ValueError(f"tables have width {width} but Hkv*d = {hkv}*{d} = {hkv * d}")
    if k == 0:
        raise ValueError("the tables are empty (K=0)")
    for name, bias in (("k_bias", k_bias), ("v_bias", v_bias)):
        if bias is None:
            continue
        tensor(name, bias)
        if bias.shape != (width,):
            raise ValueError(f"{name} must have shape ({width},), got {tuple(bias.shape)}")
        if bias.dtype != q.dtype:
            raise TypeError(f"{name} is {bias.dtype} but q is {q.dtype}; all float inputs must share q's dtype")
    named = dict(q=q, k_local=k_local, v_local=v_local, remote_codes=remote_codes, k_table=k_table, v_table=v_table)
    named.update({n: t for n, t in (("k_bias", k_bias), ("v_bias", v_bias)) if t is not None})
    same_device(**named)
    return dict(batch=b, heads=h, kv_heads=hkv, head_dim=d, queries=tq, local=tl, remote=tr, groups=g, codebook_size=k)


def attention_after_inputs(q, k, v, prior_out, prior_lse) -> None:
    """Validate attention over q (B, H, Tq, d), k, v (B, Hkv, Tk, d) after a partial (prior_out
    (B, H, Tq, d) in q's dtype, prior_lse (B, H, Tq) float32)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("prior out", prior_out), ("prior lse", prior_lse)):
        tensor(name, t)
    if k.dim() != 4:
        raise ValueError(f"k must have shape (B, Hkv, Tk, d), got {tuple(k.shape)}")
    if q.dim() != 4 or prior_out.shape != q.shape or prior_out.dtype != q.dtype:
        raise ValueError(f"prior out must match q's shape {tuple(q.shape)} and dtype {q.dtype}, "
                         f"got {tuple(prior_out.shape)} {prior_out.dtype}")
    if prior_lse.shape != q.shape[:3] or prior_lse.dtype != torch.float32:
        raise ValueError(f"prior lse must be float32 of shape {tuple(q.shape[:3])}, "
                         f"got {tuple(prior_lse.shape)} {prior_lse.dtype}")
    if (v.shape != k.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] or k.shape[1] == 0
            or q.shape[1] % k.shape[1]):
        raise ValueError(f"k and v must have shape (B={q.shape[0]}, Hkv, Tk, d={q.shape[3]}) with H % Hkv == 0, "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[3] == 0:
        raise ValueError("head dim d=0 must be at least 1")
    same_device(q=q, k=k, v=v, prior_out=prior_out, prior_lse=prior_lse)
