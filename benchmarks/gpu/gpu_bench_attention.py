"""GPU benchmark of mixed_precision_attention: our kernels against torch SDPA on materialized K/V.

    python benchmarks/gpu/gpu_bench_attention.py results.json [--kv-heads 32 8 --groups 1 16 --masks causal full
                                                               --rope-groups 1 32 --rope-dtypes bf16 fp32]

Default shape (one prefill chunk of a layer): bf16, B=1, H=32, d=128,
Tq = Tl = 4096 local queries/keys, Tr = 12288 remote tokens, K = 1024
codewords, Hkv in {32, 8} (MHA and GQA), G in {1, 16}, causal local segment.

For each case it times, with ``triton.testing.do_bench`` (median, L2 flushed
between runs):

  triton_tokens     our fused kernel, remote K/V gathered from the tables per tile
  triton_codewords  our fused kernel over the K codewords with log(count) biases (G = 1)
  torch_gather_sdpa_mask   gather remote K/V from the tables, concat with the
                    local K/V (expanded to H heads), one SDPA call with an
                    explicit boolean mask (causal on the local part only)
  torch_gather_flash_merge gather + SDPA flash on the remote part + SDPA flash
                    (causal) on the local part + LSE merge; needs Tq == Tl when
                    causal (SDPA aligns its causal mask top-left)
  torch_sdpa_mask_only     the SDPA call of torch_gather_sdpa_mask alone, on
                    K/V materialized beforehand (torch's lower bound)

With rotary remote keys (``remote_rotation``), at the attention shape of
Llama-3.2-1B (B=1, H=32, Hkv=8, d=64; rope theta 500000) for one chunk of
Tq = Tl = 512 causal local queries/keys after Tr = 512 remote tokens, K = 1024,
for each G in --rope-groups (default 1 32) and dtype in --rope-dtypes (default
bf16 fp16 fp32):

  triton_tokens_rope, cuda_tokens_rope  our fused kernels (tokens formulation),
                    each remote key rotated right after its gather
  torch_gather_rotate_sdpa gather remote K/V from the tables, rotate the keys as
                    Hugging Face's apply_rotary_pos_emb does (cos/sin duplicated
                    over the halves and cast to the dtype beforehand, as its
                    rotary module does once per forward), concat with the local
                    K/V (expanded to H heads), one SDPA call with the mask above

Both kernels are checked at that shape first; fp32 rows are compared with the
card's fp32 CUDA-core peak (both kernels multiply fp32 exactly there). A
backend that is missing or fails is recorded with its error.

TFLOP/s = 4 * B * H * Tq * (keys attended) * d / t, where the keys attended are
Tr (or K for the codewords formulation) plus the visible local keys (about
Tl/2 when causal); it is compared with the card's dense 16-bit peak. GB/s
counts the minimum DRAM traffic of the op (q, local K/V, codes, tables, out,
lse), the same for every implementation; the roofline time is the larger of
the compute and memory bounds. Before timing, our kernel is checked against
:mod:`astra_kernels.reference` on a reduced sequence length (same heads, d,
G, K and tiles) with the flash-attn rule of the test suite.

Exits with status 1 and a message when no CUDA GPU (or no triton) is present.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root: runs from a checkout
from gpu_common import add_speedups, describe_device, require_gpu, time_ms  # noqa: E402 (this script's folder)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ROPE_DTYPES = dict(DTYPES, fp32=torch.float32)
# Llama-3.2-1B's attention heads, one 512-token local chunk after 512 remote tokens.
ROPE_SHAPE = {"b": 1, "h": 32, "hkv": 8, "d": 64, "tq": 512, "tl": 512, "tr": 512, "k": 1024}
ROPE_THETA = 500000.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json_path", type=Path, help="where to write the results (JSON)")
    p.add_argument("--batch", type=int, default=1, help="batch B (default 1)")
    p.add_argument("--heads", type=int, default=32, help="query heads H (default 32)")
    p.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8], help="key/value heads Hkv (default 32 8)")
    p.add_argument("--d", type=int, default=128, help="head dim d (default 128)")
    p.add_argument("--tq", type=int, default=4096, help="local queries Tq (default 4096)")
    p.add_argument("--tl", type=int, default=4096, help="local keys Tl (default 4096)")
    p.add_argument("--tr", type=int, default=12288, help="remote tokens Tr (default 12288)")
    p.add_argument("--k", type=int, default=1024, help="codebook size K (default 1024)")
    p.add_argument("--groups", type=int, nargs="+", default=[1, 16], help="code groups G (default 1 16)")
    p.add_argument("--masks", nargs="+", choices=["causal", "full"], default=["causal"],
                   help="local-segment masks to run (default causal)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--rep-ms", type=int, default=200, help="do_bench measuring time per case (default 200)")
    p.add_argument("--check-len", type=int, default=512,
                   help="Tq = Tl = this and Tr = 2x this for the correctness check (default 512)")
    p.add_argument("--rope-groups", type=int, nargs="+", default=[1, 32],
                   help="code groups G of the rotary cases at the Llama-3.2-1B shape (default 1 32)")
    p.add_argument("--rope-dtypes", nargs="*", choices=sorted(ROPE_DTYPES), default=["bf16", "fp16", "fp32"],
                   help="dtypes of the rotary cases (default bf16 fp16 fp32; none given skips them)")
    args = p.parse_args(argv)
    sizes = dict(batch=args.batch, heads=args.heads, d=args.d, tq=args.tq, k=args.k, check_len=args.check_len)
    for name, value in sizes.items():
        if value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.tl < 0 or args.tr < 0:
        p.error("--tl and --tr must be >= 0")
    for hkv in args.kv_heads:
        if hkv < 1 or args.heads % hkv:
            p.error(f"H={args.heads} is not a multiple of Hkv={hkv}")
    if any(g < 1 for g in args.groups):
        p.error("--groups must be >= 1")
    if any(g < 1 for g in args.rope_groups):
        p.error("--rope-groups must be >= 1")
    return args


def make_inputs(b, h, hkv, d, tq, tl, tr, g, k, dtype, gen) -> dict:
    """Random op inputs on gen's device; q and the local K/V are transposed views of (B, T, heads, d)
    buffers, as a model's projections make them."""
    dev = gen.device

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, device=dev, generator=gen, dtype=torch.float32) * std).to(dtype)

    return dict(
        q=rnd(b, tq, h, d).transpose(1, 2),
        k_local=rnd(b, tl, hkv, d).transpose(1, 2),
        v_local=rnd(b, tl, hkv, d).transpose(1, 2),
        remote_codes=torch.randint(0, k, (b, tr, g), device=dev, generator=gen, dtype=torch.int32),
        k_table=rnd(g, k, hkv * d, std=g ** -0.5),  # a token's key, a sum of G rows, has unit variance
        v_table=rnd(g, k, hkv * d, std=g ** -0.5),
    )


def visible_local_keys(tq: int, tl: int, causal: bool) -> float:
    """Mean number of local keys a query sees (query i sees j <= i + Tl - Tq when causal)."""
    if not causal:
        return float(tl)
    return sum(min(tl, max(0, i + tl - tq + 1)) for i in range(tq)) / tq if tq else 0.0


def rotation(positions: torch.Tensor, d: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """(2, T, d/2) float32 (cos, sin) of the rotary angles position * theta^(-2i/d), computed in float64."""
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=positions.device) / d)
    angles = positions.double()[:, None] * inv_freq[None, :]
    return torch.stack([angles.cos(), angles.sin()]).float()


def hf_cos_sin(rot: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face's layout of rot (2, T, d/2): cos and sin (T, d), duplicated over the halves, in dtype."""
    return tuple(torch.cat([part, part], dim=-1).to(dtype) for part in rot)


def materialize(a: dict, heads: int, cos_sin: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Remote K/V gathered from the tables, concatenated before the local K/V, expanded to H heads: (B, H, Tr+Tl, d).
    With ``cos_sin`` (:func:`hf_cos_sin`), the remote keys are rotated first, as Hugging Face's
    apply_rotary_pos_emb does: k * cos + rotate_half(k) * sin."""
    from astra_kernels import reference

    b, hkv, _, d = a["k_local"].shape
    tr = a["remote_codes"].shape[1]
    out = []
    parts = ((a["k_table"], a["k_local"], cos_sin is not None), (a["v_table"], a["v_local"], False))
    for table, local, rotate in parts:
        remote = reference.gather_tables(a["remote_codes"], table).view(b, tr, hkv, d).transpose(1, 2)
        if rotate:
            x1, x2 = remote.chunk(2, dim=-1)
            remote = remote * cos_sin[0] + torch.cat((-x2, x1), dim=-1) * cos_sin[1]
        out.append(torch.cat([remote, local], dim=2).repeat_interleave(heads // hkv, dim=1))
    return out[0], out[1]


def local_mask(tq: int, tl: int, tr: int, causal: bool, device: torch.device) -> torch.Tensor:
    """(Tq, Tr+Tl) boolean SDPA mask, True = attend: remote always, local j <= i + Tl - Tq when causal."""
    i = torch.arange(tq, device=device).unsqueeze(1)
    j = torch.arange(tl, device=device).unsqueeze(0)
    local = (j <= i + tl - tq) if causal else torch.ones(tq, tl, dtype=torch.bool, device=device)
    return torch.cat([torch.ones(tq, tr, dtype=torch.bool, device=device), local], dim=1)


def flash_with_lse(q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's flash kernel, which also returns the natural-log LSE (B, H, Tq) needed to merge partials."""
    res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
    return res[0], res[1]


def op_args(a: dict) -> tuple:
    """The positional tensors of mixed_precision_attention, biases None."""
    return (a["q"], a["k_local"], a["v_local"], a["remote_codes"], a["k_table"], a["v_table"], None, None)


def implementations(a: dict, heads: int, causal: bool, scale: float) -> dict:
    """name -> zero-argument callable computing the attention output of the case ``a``."""
    import torch.nn.functional as F

    from astra_kernels import backends, reference

    ours = backends.get("triton")
    tq, tl, tr = a["q"].shape[2], a["k_local"].shape[2], a["remote_codes"].shape[1]
    g = a["remote_codes"].shape[2]
    args = (*op_args(a), causal, scale)
    impls = {"triton_tokens": lambda: ours.mixed_precision_attention(*args, "tokens")}
    if g == 1:
        impls["triton_codewords"] = lambda: ours.mixed_precision_attention(*args, "codewords")
    mask = local_mask(tq, tl, tr, causal, a["q"].device)

    def gather_sdpa_mask():
        keys, values = materialize(a, heads)
        return F.scaled_dot_product_attention(a["q"], keys, values, attn_mask=mask, scale=scale)

    impls["torch_gather_sdpa_mask"] = gather_sdpa_mask
    has_flash_lse = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention")
    if has_flash_lse and tr > 0 and tl > 0 and (tq == tl or not causal):
        def gather_flash_merge():
            keys, values = materialize(a, heads)
            remote = flash_with_lse(a["q"], keys[:, :, :tr], values[:, :, :tr], False, scale)
            local = flash_with_lse(a["q"], keys[:, :, tr:], values[:, :, tr:], causal, scale)
            return reference.merge_attention(remote[0], remote[1], local[0], local[1])[0]

        impls["torch_gather_flash_merge"] = gather_flash_merge
    pre = {}

    def sdpa_mask_only():
        return F.scaled_dot_product_attention(a["q"], pre["k"], pre["v"], attn_mask=mask, scale=scale)

    pre["k"], pre["v"] = materialize(a, heads)
    impls["torch_sdpa_mask_only"] = sdpa_mask_only
    return impls


def backend_op(backend: str):
    """``backend``'s mixed_precision_attention or, where that backend cannot run, a function raising why."""
    from astra_kernels import backends

    try:
        return backends.get(backend).mixed_precision_attention
    except backends.BackendUnavailable as exc:
        why = exc

    def unavailable(*_):
        raise why

    return unavailable


def rope_implementations(a: dict, rot: torch.Tensor, heads: int, causal: bool, scale: float) -> dict:
    """name -> zero-argument callable computing the attention output of the case ``a`` with the remote keys
    rotated by ``rot`` (2, Tr, d/2)."""
    import torch.nn.functional as F

    args = (*op_args(a), causal, scale, "tokens", rot)
    impls = {f"{backend}_tokens_rope": functools.partial(backend_op(backend), *args) for backend in ("triton", "cuda")}
    tq, tl, tr = a["q"].shape[2], a["k_local"].shape[2], a["remote_codes"].shape[1]
    mask = local_mask(tq, tl, tr, causal, a["q"].device)
    cos_sin = hf_cos_sin(rot, a["q"].dtype)

    def gather_rotate_sdpa():
        keys, values = materialize(a, heads, cos_sin)
        return F.scaled_dot_product_attention(a["q"], keys, values, attn_mask=mask, scale=scale)

    impls["torch_gather_rotate_sdpa"] = gather_rotate_sdpa
    return impls


def check_ours(a: dict, causal: bool, scale: float, backend: str = "triton", rot: torch.Tensor | None = None) -> list:
    """Our kernel vs the reference, flash-attn rule (error vs fp64 <= 2x the same-precision reference's + 1e-5);
    with ``rot`` (2, Tr, d/2), the tokens formulation with rotated remote keys. A kernel that raises is a FAIL
    with its error."""
    from astra_kernels import reference

    g = a["remote_codes"].shape[2]
    wide = {n: (t.double() if t.is_floating_point() else t) for n, t in a.items()}
    extra = () if rot is None else (rot,)
    results = []
    for formulation in ["tokens"] + (["codewords"] if g == 1 and rot is None else []):
        name = f"{backend}_{formulation}" + ("" if rot is None else "_rope")
        opts = (causal, scale, formulation, *extra)
        try:
            out, lse = backend_op(backend)(*op_args(a), *opts)
        except Exception as exc:  # recorded, not fatal: the timings still run
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            results.append({"backend": backend, "formulation": formulation, "error": error, "pass": False})
            print(f"  check {name:19s} failed: {error}")
            continue
        t_out, t_lse = reference.mixed_precision_attention(*op_args(wide), *opts)
        s_out, s_lse = reference.mixed_precision_attention(*op_args(a), *opts)
        err = (out.double() - t_out).abs().max().item()
        budget = 2 * (s_out.double() - t_out).abs().max().item() + 1e-5
        lse_err = (lse.double() - t_lse.double()).abs().max().item()
        lse_budget = 2 * (s_lse.double() - t_lse.double()).abs().max().item() + 1e-5
        ok = err <= budget and lse_err <= lse_budget
        results.append({"backend": backend, "formulation": formulation, "out_err": err, "out_budget": budget,
                        "lse_err": lse_err, "lse_budget": lse_budget, "pass": ok})
        print(f"  check {name:19s} out err {err:.3e} (budget {budget:.3e})  "
              f"lse err {lse_err:.3e} (budget {lse_budget:.3e})  {'PASS' if ok else 'FAIL'}")
        del t_out, t_lse, s_out, s_lse
    torch.cuda.empty_cache()
    return results


def min_bytes(b, h, hkv, d, tq, tl, tr, g, k, size: int) -> int:
    """DRAM bytes any implementation must move: read q, local K/V, codes, tables; write out and lse."""
    return (b * h * tq * d * size + 2 * b * hkv * tl * d * size + b * tr * g * 4 + 2 * g * k * hkv * d * size
            + b * h * tq * d * size + b * h * tq * 4)


def run_case(impls: dict, attended: dict, nbytes: int, peaks: dict | None, common: dict, rep_ms: int,
             peak: str = "tflops_16bit") -> list:
    """Times every implementation; ``peak`` names the compute roofline of ``peaks`` they are compared with."""
    rows = []
    for name, fn in impls.items():
        keys = attended["codewords"] if name == "triton_codewords" else attended["tokens"]
        flops = 4.0 * common["B"] * common["H"] * common["Tq"] * keys * common["d"]
        row = dict(common, impl=name, keys_attended=keys, flops=flops, bytes=nbytes)
        try:
            med, lo, hi = time_ms(fn, rep_ms)
        except Exception as exc:  # a baseline that fails (out of memory, unsupported) is recorded, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"  {name:26s} failed: {row['error']}")
            torch.cuda.empty_cache()
            rows.append(row)
            continue
        row.update(ms=med, ms_p20=lo, ms_p80=hi, tflop_s=flops / med * 1e-9, gb_s=nbytes / med * 1e-6)
        if peaks:
            row["pct_compute_peak"] = 100.0 * row["tflop_s"] / peaks[peak]
            row["pct_hbm_peak"] = 100.0 * row["gb_s"] / (peaks["tb_s"] * 1e3)
            row["roofline_ms"] = max(nbytes / (peaks["tb_s"] * 1e9), flops / (peaks[peak] * 1e9))
        rows.append(row)
    add_speedups(rows)
    for row in rows:
        if "ms" not in row:
            continue
        peak_txt = ""
        if peaks:
            peak_txt = (f" {row['pct_compute_peak']:5.1f}% peak  {row['gb_s']:7.1f} GB/s ({row['pct_hbm_peak']:4.1f}%)"
                        f"  roofline {row['roofline_ms']:.3f} ms")
        vs = "  ".join(f"{s:5.2f}x vs {b[6:]}" for b, s in row["speedup_vs"].items())
        print(f"  {row['impl']:26s} {row['ms']:8.3f} ms {row['tflop_s']:7.1f} TFLOP/s{peak_txt}  {vs}")
    return rows


def rope_cases(args: argparse.Namespace, gen: torch.Generator, peaks: dict | None) -> tuple[list, list]:
    """(checks, timing rows) of the rotary cases at ROPE_SHAPE, causal, for each of --rope-dtypes and --rope-groups."""
    b, h, hkv, d, tq, tl, tr, k = (ROPE_SHAPE[n] for n in ("b", "h", "hkv", "d", "tq", "tl", "tr", "k"))
    scale = d ** -0.5
    rot = rotation(torch.arange(tr, device=gen.device), d)  # the remote tokens precede the local chunk
    local_keys = visible_local_keys(tq, tl, True)
    checks, rows = [], []
    for dtype_name in args.rope_dtypes:
        dtype = ROPE_DTYPES[dtype_name]
        size = torch.tensor([], dtype=dtype).element_size()
        peak = "tflops_fp32" if dtype == torch.float32 else "tflops_16bit"
        for g in args.rope_groups:
            common = {"B": b, "H": h, "Hkv": hkv, "d": d, "Tq": tq, "Tl": tl, "Tr": tr, "G": g, "K": k,
                      "mask": "causal", "dtype": dtype_name, "remote_rotation": True}
            print(f"\nrope causal H={h} Hkv={hkv} d={d} Tq={tq} Tl={tl} Tr={tr} G={g} K={k} {dtype_name}")
            a = make_inputs(b, h, hkv, d, tq, tl, tr, g, k, dtype, gen)
            for backend in ("triton", "cuda"):
                checks += [dict(common, **c) for c in check_ours(a, True, scale, backend, rot)]
            # the op also reads the (2, Tr, d/2) fp32 angles
            nbytes = min_bytes(b, h, hkv, d, tq, tl, tr, g, k, size) + rot.numel() * rot.element_size()
            rows += run_case(rope_implementations(a, rot, h, True, scale), {"tokens": tr + local_keys}, nbytes, peaks,
                             common, args.rep_ms, peak)
            del a
            torch.cuda.empty_cache()
    return checks, rows


def main(argv=None) -> None:
    args = parse_args(argv)
    require_gpu("gpu_bench_attention.py")
    import triton

    device = torch.device("cuda")
    name, peaks = describe_device(device)
    dtype = DTYPES[args.dtype]
    size = torch.tensor([], dtype=dtype).element_size()
    b, h, d, tq, tl, tr, k = args.batch, args.heads, args.d, args.tq, args.tl, args.tr, args.k
    scale = d ** -0.5
    report = {"device": name, "roofline": peaks, "torch": torch.__version__, "triton": triton.__version__,
              "shape": {"B": b, "H": h, "d": d, "Tq": tq, "Tl": tl, "Tr": tr, "K": k, "dtype": args.dtype},
              "results": [], "checks": []}
    gen = torch.Generator(device=device).manual_seed(0)
    for mask in args.masks:
        causal = mask == "causal"
        local_keys = visible_local_keys(tq, tl, causal)
        for hkv in args.kv_heads:
            for g in args.groups:
                common = {"B": b, "H": h, "Hkv": hkv, "d": d, "Tq": tq, "Tl": tl, "Tr": tr, "G": g, "K": k,
                          "mask": mask, "dtype": args.dtype}
                print(f"\n{mask} H={h} Hkv={hkv} d={d} Tq={tq} Tl={tl} Tr={tr} G={g} K={k} {args.dtype}")
                n = args.check_len
                small = make_inputs(b, h, hkv, d, n, n, 2 * n, g, k, dtype, gen)
                report["checks"] += [dict(common, Tq=n, Tl=n, Tr=2 * n, **c) for c in check_ours(small, causal, scale)]
                del small
                a = make_inputs(b, h, hkv, d, tq, tl, tr, g, k, dtype, gen)
                attended = {"tokens": tr + local_keys, "codewords": k + local_keys}
                nbytes = min_bytes(b, h, hkv, d, tq, tl, tr, g, k, size)
                report["results"] += run_case(implementations(a, h, causal, scale), attended, nbytes, peaks, common,
                                              args.rep_ms)
                del a
                torch.cuda.empty_cache()
    if args.rope_dtypes:
        checks, rows = rope_cases(args, gen, peaks)
        report["checks"] += checks
        report["results"] += rows
    args.json_path.parent.mkdir(parents=True, exist_ok=True)
    args.json_path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json_path}")


if __name__ == "__main__":
    main()
