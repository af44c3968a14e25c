"""What the GPU benchmark scripts share: the card rooflines, the GPU check, do_bench timing, the header line."""
from __future__ import annotations

import os
import sys

import torch

# Dense peaks by card-name substring: HBM TB/s, 16-bit tensor-core TFLOP/s, fp32 CUDA-core TFLOP/s
# (exact-fp32 FMAs, not TF32). First match wins: "H100 PCIe" before "H100".
ROOFLINES = (
    ("H200", {"card": "H200", "tb_s": 4.8, "tflops_16bit": 989.0, "tflops_fp32": 67.0}),
    ("H100 PCIe", {"card": "H100 PCIe", "tb_s": 2.0, "tflops_16bit": 756.0, "tflops_fp32": 51.0}),
    ("H100", {"card": "H100 SXM", "tb_s": 3.35, "tflops_16bit": 989.0, "tflops_fp32": 67.0}),
)


def require_gpu(script: str) -> None:
    """Exit with a message naming ``script`` unless compiled Triton kernels can run on a CUDA GPU."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit(f"{script}: TRITON_INTERPRET is set; unset it, this benchmark times compiled kernels on a GPU")
    if not torch.cuda.is_available():
        sys.exit(f"{script}: no CUDA GPU available (torch.cuda.is_available() is False); "
                 "run this benchmark on an H100/H200 machine")
    try:
        import triton  # noqa: F401
    except ImportError:
        sys.exit(f"{script}: the 'triton' package is not installed")


def roofline(device_name: str) -> dict | None:
    for key, peaks in ROOFLINES:
        if key in device_name:
            return peaks
    return None


def describe_device(device: torch.device) -> tuple[str, dict | None]:
    """Print and return the card's name and roofline (None for an unknown card)."""
    import triton

    name = torch.cuda.get_device_name(device)
    peaks = roofline(name)
    print(f"device {name}; roofline {peaks or 'unknown card: no roofline'}; "
          f"torch {torch.__version__}, triton {triton.__version__}")
    return name, peaks


def time_ms(fn, rep_ms: int) -> tuple[float, float, float]:
    """(median, p20, p80) in ms; the first call (compilation) happens before timing."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    med, lo, hi = triton.testing.do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return med, lo, hi


def add_speedups(rows: list[dict]) -> None:
    """Every timed row's ``speedup_vs``: each torch baseline's time over its own."""
    base = {r["impl"]: r["ms"] for r in rows if "ms" in r}
    for row in rows:
        if "ms" in row:
            row["speedup_vs"] = {b: t / row["ms"] for b, t in base.items()
                                 if b.startswith("torch_") and b != row["impl"]}
