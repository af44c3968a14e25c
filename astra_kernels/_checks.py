"""Input validation shared by every public op.

Every check raises ``TypeError`` (wrong kind of object or dtype) or
``ValueError`` (wrong shape, size or value) with a message that names the
argument and the problem, before any kernel runs.
"""
from __future__ import annotations

import torch

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
    if cb.dim() != 3:
        raise ValueError(f"codebooks must have shape (G, K, D/G), got {tuple(cb.shape)} (rank {cb.dim()})")
    if cb.dtype not in VQ_DTYPES:
        raise TypeError(f"codebooks must be float32, float16 or bfloat16, got {cb.dtype}")
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
    """All values in [0, upper); reads the tensor's min and max (one sync on GPU)."""
    if codes.numel() == 0:
        return
    if torch.compiler.is_compiling():
        # Data-dependent branches cannot be traced: assert inside the graph instead.
        torch._assert_async(((codes >= 0) & (codes < upper)).all(), f"{name} has values outside [0, {upper}) ({what})")
        return
    lo, hi = torch.aminmax(codes)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains {bad}, outside [0, {upper}) ({what})")


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
    """The score scale: default head_dim ** -0.5, else a positive number."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return float(scale)


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
        if bias.shape != (width,) or bias.dtype != q.dtype:
            raise ValueError(f"{name} must have shape ({width},) and dtype {q.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    named = dict(q=q, k_local=k_local, v_local=v_local, remote_codes=remote_codes, k_table=k_table, v_table=v_table)
    named.update({n: t for n, t in (("k_bias", k_bias), ("v_bias", v_bias)) if t is not None})
    same_device(**named)
    codes_in_range("remote_codes", remote_codes, k, f"table size K={k}")
    return dict(batch=b, heads=h, kv_heads=hkv, head_dim=d, queries=tq, local=tl, remote=tr, groups=g, codebook_size=k)
