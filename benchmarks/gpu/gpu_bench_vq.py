"""GPU benchmark of the VQ kernels: our Triton (and CUDA, if built) backends against torch.

    python benchmarks/gpu/gpu_bench_vq.py results.json [--n 65536 --d 768 --k 1024 --groups 1 32 --dtypes bf16 fp32]

For each (G, dtype) it times, with ``triton.testing.do_bench`` (median of
repeated runs, L2 flushed between runs):

  encode  triton, cuda (if importable), torch cdist + argmin, torch addmm/baddbmm
          (||e||^2 - 2 x e^T in the input dtype) + argmin; the torch baselines
          return codes only, ours also the fp32 sqdist
  decode  triton, cuda (if importable), torch index_select on precomputed
          flat rows, torch gather (+ the (G, N, Dg) -> (N, G*Dg) permute)

and prints TFLOP/s (2*N*K*D per encode) and GB/s against the card's roofline.
GB/s counts the minimum DRAM traffic of the op, the same for every
implementation: encode reads x and the codebooks and writes codes + sqdist;
decode reads codes and the codebooks and writes the (N, D) output. Before
timing, our backends are checked against :mod:`astra_kernels.reference`
(code agreement, sqdist error, decode bit-exactness).

Exits with status 1 and a message when no CUDA GPU (or no triton) is present.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root: runs from a checkout
from gpu_common import add_speedups, describe_device, require_gpu, time_ms  # noqa: E402 (this script's folder)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json_path", type=Path, help="where to write the results (JSON)")
    p.add_argument("--n", type=int, default=65536, help="tokens N (default 65536)")
    p.add_argument("--d", type=int, default=768, help="features D (default 768)")
    p.add_argument("--k", type=int, default=1024, help="codebook size K (default 1024)")
    p.add_argument("--groups", type=int, nargs="+", default=[1, 32], help="group counts G (default 1 32)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    p.add_argument("--rep-ms", type=int, default=100, help="do_bench measuring time per case (default 100)")
    args = p.parse_args(argv)
    for g in args.groups:
        if g < 1 or args.d % g:
            p.error(f"D={args.d} is not divisible by G={g}")
    return args


def our_backends() -> dict:
    """Our backend modules that import here: triton always, cuda when built."""
    from astra_kernels import backends

    found = {"triton": backends.get("triton")}
    try:
        found["cuda"] = backends.get("cuda")
    except backends.BackendUnavailable as exc:
        print(f"  (cuda backend skipped: {exc})")
    return found


def encode_impls(x: torch.Tensor, cb: torch.Tensor, ours: dict) -> dict:
    """name -> zero-argument callable computing the codes of x (N, D) against cb (G, K, Dg)."""
    n = x.shape[0]
    g, _, dg = cb.shape
    xg = x.view(n, g, dg).transpose(0, 1)  # (G, N, Dg), strided view
    e_sq = cb.float().square().sum(-1).to(cb.dtype)  # (G, K) in the input dtype, as torch users would
    impls = {name: (lambda m=m: m.vq_encode(x, cb)) for name, m in ours.items()}
    if g == 1:
        impls["torch_cdist_argmin"] = lambda: torch.cdist(x, cb[0]).argmin(1)
        impls["torch_addmm_argmin"] = lambda: torch.addmm(e_sq[0], x, cb[0].t(), alpha=-2.0).argmin(1)
    else:
        impls["torch_cdist_argmin"] = lambda: torch.cdist(xg, cb).argmin(-1)
        e_t = cb.transpose(1, 2)  # (G, Dg, K)
        impls["torch_addmm_argmin"] = lambda: torch.baddbmm(e_sq[:, None, :], xg, e_t, alpha=-2.0).argmin(-1)
    return impls


def decode_impls(codes: torch.Tensor, cb: torch.Tensor, ours: dict) -> dict:
    """name -> zero-argument callable computing the (N, G*Dg) rows of codes (N, G) int32."""
    n, g = codes.shape
    k, dg = cb.shape[1], cb.shape[2]
    flat = cb.reshape(g * k, dg)
    rows = (codes.long() + torch.arange(g, device=codes.device) * k).reshape(-1)  # precomputed: torch's best case
    index = codes.t().long().unsqueeze(-1).expand(g, n, dg)
    impls = {name: (lambda m=m: m.vq_decode(codes, cb)) for name, m in ours.items()}
    impls["torch_index_select"] = lambda: flat.index_select(0, rows).view(n, g * dg)
    impls["torch_gather"] = lambda: torch.gather(cb, 1, index).transpose(0, 1).reshape(n, g * dg)
    return impls


def check_ours(x: torch.Tensor, cb: torch.Tensor, codes_ref: torch.Tensor, sqdist_ref: torch.Tensor,
               ours: dict) -> list:
    """Agreement of our backends with astra_kernels.reference (also compiles the kernels before timing)."""
    from astra_kernels import reference

    decoded_ref = reference.vq_decode(codes_ref, cb)
    raw = {4: torch.int32, 2: torch.int16}[cb.element_size()]
    checks = []
    for name, m in ours.items():
        codes, sqdist = m.vq_encode(x, cb)
        same = codes == codes_ref
        rel_err = (sqdist - sqdist_ref).abs() / sqdist_ref.clamp_min(1e-12)
        decoded = m.vq_decode(codes_ref, cb)
        checks.append({
            "impl": name,
            "code_agreement": same.float().mean().item(),
            "sqdist_max_rel_err_where_same": torch.where(same, rel_err, 0.0).max().item(),
            "decode_bit_exact": bool(torch.equal(decoded.view(raw), decoded_ref.view(raw))),
        })
        print(f"  check {name:8s} codes agree {checks[-1]['code_agreement']:.6f}  "
              f"sqdist rel err {checks[-1]['sqdist_max_rel_err_where_same']:.2e}  "
              f"decode bit-exact {checks[-1]['decode_bit_exact']}")
    torch.cuda.synchronize()
    return checks


def run_case(op: str, impls: dict, flops: float, nbytes: float, peaks: dict | None, peak_tflops_key: str,
             common: dict, rep_ms: int) -> list:
    rows = []
    for name, fn in impls.items():
        row = dict(common, op=op, impl=name, flops=flops, bytes=nbytes)
        try:
            med, lo, hi = time_ms(fn, rep_ms)
        except Exception as exc:  # a baseline that fails (dtype unsupported, out of memory) is recorded, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"  {op:6s} {name:20s} failed: {row['error']}")
            torch.cuda.empty_cache()
            rows.append(row)
            continue
        row.update(ms=med, ms_p20=lo, ms_p80=hi, tflop_s=flops / med * 1e-9 if flops else None,
                   gb_s=nbytes / med * 1e-6)
        if peaks:
            row["pct_hbm_peak"] = 100.0 * row["gb_s"] / (peaks["tb_s"] * 1e3)
            roof_ms = nbytes / (peaks["tb_s"] * 1e9)
            if flops:
                row["pct_compute_peak"] = 100.0 * row["tflop_s"] / peaks[peak_tflops_key]
                roof_ms = max(roof_ms, flops / (peaks[peak_tflops_key] * 1e9))
            row["roofline_ms"] = roof_ms
        rows.append(row)
    add_speedups(rows)
    for row in rows:
        if "ms" not in row:
            continue
        flops_txt = f"{row['tflop_s']:8.1f} TFLOP/s" if row["tflop_s"] is not None else " " * 16
        peak_txt = ""
        if peaks:
            pct = row.get("pct_compute_peak", row["pct_hbm_peak"])
            peak_txt = f" ({pct:5.1f}% of peak, roofline {row['roofline_ms']:.3f} ms)"
        vs = "  ".join(f"{s:5.2f}x vs {b[6:]}" for b, s in row["speedup_vs"].items())
        print(f"  {op:6s} {row['impl']:20s} {row['ms']:8.3f} ms {flops_txt} {row['gb_s']:8.1f} GB/s{peak_txt}  {vs}")
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    require_gpu("gpu_bench_vq.py")
    import triton

    from astra_kernels import reference

    device = torch.device("cuda")
    name, peaks = describe_device(device)
    ours = our_backends()
    n, d, k = args.n, args.d, args.k
    report = {"device": name, "roofline": peaks, "torch": torch.__version__, "triton": triton.__version__,
              "shape": {"N": n, "D": d, "K": k}, "results": [], "checks": []}
    gen = torch.Generator(device=device).manual_seed(0)
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        size = torch.tensor([], dtype=dtype).element_size()
        peak_key = "tflops_fp32" if dtype == torch.float32 else "tflops_16bit"
        for g in args.groups:
            dg = d // g
            print(f"\nG={g} Dg={dg} K={k} N={n} {dtype_name}")
            x = torch.randn(n, d, device=device, generator=gen).to(dtype)
            cb = torch.randn(g, k, dg, device=device, generator=gen).to(dtype)
            codes_ref, sqdist_ref = reference.vq_encode(x, cb)
            common = {"G": g, "Dg": dg, "dtype": dtype_name}
            report["checks"] += [dict(common, **c) for c in check_ours(x, cb, codes_ref, sqdist_ref, ours)]
            enc_bytes = n * d * size + g * k * dg * size + 2 * n * g * 4
            report["results"] += run_case("encode", encode_impls(x, cb, ours), 2.0 * n * k * d, enc_bytes,
                                          peaks, peak_key, common, args.rep_ms)
            dec_bytes = n * g * 4 + g * k * dg * size + n * d * size
            report["results"] += run_case("decode", decode_impls(codes_ref, cb, ours), 0.0, dec_bytes,
                                          peaks, peak_key, common, args.rep_ms)
            del x, cb, codes_ref, sqdist_ref
            torch.cuda.empty_cache()
    args.json_path.parent.mkdir(parents=True, exist_ok=True)
    args.json_path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json_path}")


if __name__ == "__main__":
    main()
