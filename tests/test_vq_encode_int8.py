"""vq_encode_int8: the C++ kernels (AVX-512 VNNI, AVX2 and portable) against the pure-torch
reference, and the chosen codewords against float64 truth and the contract's bound."""
import os
import subprocess
import sys

import pytest
import torch
from vq_helpers import VQ_SHAPES, true_distances

import astra_kernels as ak
from astra_kernels import reference

BACKENDS = [b for b in ak.available_backends("cpu") if b in ("cpu", "reference")]

# the exact encoder's shapes, plus ViT-Base's groups and one wide group
SHAPES = VQ_SHAPES + [((70,), 32, 1024, 24), ((9,), 1, 300, 768)]


def _grids(x: torch.Tensor, cb: torch.Tensor):
    """(x~ (G, N, Dg), s_x (G, N), e~ (G, K, Dg), s_e (G, 1)) as the contract rounds them."""
    g, k, dg = cb.shape
    xg = x.float().reshape(-1, g, dg).transpose(0, 1)
    cbf = cb.float()
    step_e, e_q = reference.int8_grid(cbf, cbf.abs().amax(dim=(1, 2)).unsqueeze(-1))
    step_x, x_q = reference.int8_grid(xg, xg.abs().amax(-1))
    return x_q, step_x, e_q, step_e


def rounding_bound(x: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """2 B of the contract per (row, group), float64 (N, G): the most by which the chosen codeword's
    true score may exceed the best one."""
    x_q, step_x, e_q, step_e = _grids(x, cb)
    l1 = x_q.abs().sum(-1).double() + e_q.abs().sum(-1).amax(-1, keepdim=True).double() + cb.shape[2] / 2
    return (2 * step_x.double() * step_e.double() * l1).transpose(0, 1)


def assert_within_bound(x, cb, codes, sqdist):
    """The chosen codeword is nearest up to the int8 rounding bound; sqdist is its exact distance."""
    g, k, dg = cb.shape
    x = x.reshape(-1, g * dg).cpu()
    codes = codes.reshape(-1, g).long().cpu()
    d = true_distances(x, cb.cpu())
    assert codes.min() >= 0 and codes.max() < k
    chosen = d.gather(2, codes.unsqueeze(-1)).squeeze(-1)
    best = d.min(-1).values
    scale = (x.double().reshape(-1, g, dg) ** 2).sum(-1) + (cb.double().cpu() ** 2).sum(-1).max(-1).values
    excess = chosen - best - rounding_bound(x, cb.cpu())
    assert (excess <= 1e-5 * scale + 1e-12).all(), f"worst excess over the bound {excess.max().item():.3g}"
    torch.testing.assert_close(sqdist.reshape(-1, g).cpu().double(), chosen, rtol=1e-4, atol=1e-5 * scale.max().item())


def assert_matches_reference(x, cb, codes):
    """Codes equal the reference's, except where both choices' estimates lie within fp32 rounding."""
    g, k, dg = cb.shape
    flat = x.reshape(-1, g * dg).cpu()
    want, _ = reference.vq_encode_int8(flat, cb.cpu())
    got = codes.reshape(-1, g).cpu()
    differ = got != want
    if differ.any():
        xg = flat.float().reshape(-1, g, dg).transpose(0, 1)
        est = reference.int8_estimates(xg, cb.cpu().float()).transpose(0, 1)  # (N, G, K) float64
        pick = lambda c: est.gather(2, c.long().unsqueeze(-1)).squeeze(-1)  # noqa: E731
        size = est.masked_fill(~torch.isfinite(est), 0).abs().amax(-1)
        gap = (pick(got) - pick(want)).abs()
        assert (gap[differ] <= 1e-6 * size[differ]).all(), f"{int(differ.sum())} codes differ beyond rounding"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_random_inputs_match_the_reference_within_the_bound(backend, shape):
    lead, g, k, dg = shape
    gen = torch.Generator().manual_seed(hash(shape) % 2**31)
    x = torch.randn(*lead, g * dg, generator=gen)
    cb = torch.randn(g, k, dg, generator=gen) * torch.rand(g, 1, 1, generator=gen) * 3
    codes, sqdist = ak.vq_encode_int8(x, cb, backend=backend)
    assert codes.shape == (*lead, g) and codes.dtype == torch.int32 and sqdist.dtype == torch.float32
    assert_matches_reference(x, cb, codes)
    assert_within_bound(x, cb, codes, sqdist)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_normed_tokens_lose_little_against_exact_encoding(backend):
    """The runtime's case: normalized activations, k-means-like codebooks drawn from them."""
    gen = torch.Generator().manual_seed(1)
    x = torch.nn.functional.layer_norm(torch.randn(512, 768, generator=gen) * torch.rand(768, generator=gen), (768,))
    cb = x[torch.randperm(512, generator=gen)[:256]].reshape(256, 32, 24).transpose(0, 1).contiguous()
    cb = cb + 0.1 * torch.randn(cb.shape, generator=gen)
    codes, sqdist = ak.vq_encode_int8(x, cb, backend=backend)
    exact, exact_sq = ak.vq_encode(x, cb)
    assert (codes != exact).float().mean() < 0.1
    assert sqdist.sum() <= 1.005 * exact_sq.sum()
    assert_within_bound(x, cb, codes, sqdist)


SIMD_ORDER = ("generic", "avx2", "avx512", "avx512_vnni")  # ASTRA_CPU_SIMD values, weakest first


def _cpu_runs(simd: str) -> bool:
    """Whether the C++ CPU backend can run the kernels of ``simd`` on this machine."""
    if "cpu" not in BACKENDS:
        return False
    from astra_kernels import cpu

    return SIMD_ORDER.index(cpu.capabilities()["simd_detected"]) >= SIMD_ORDER.index(simd)


def _identity_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, codebooks) pairs for the bit-identity tests: widths around the kernels' pair / quad / vector
    sizes, K around their panel widths, and the adversarial inputs (duplicates, ties, zero, subnormal,
    NaN/Inf rows and codewords, strided rows, tiny and huge scales)."""
    gen = torch.Generator().manual_seed(7)
    cases = []
    for (n, d), (g, k, dg) in [((200, 96), (4, 300, 24)), ((64, 130), (1, 1000, 130)), ((33, 15), (5, 77, 3)),
                               ((70, 768), (32, 1024, 24)), ((9, 768), (1, 300, 768)), ((41, 67), (1, 33, 67)),
                               ((17, 34), (2, 16, 17)), ((25, 1), (1, 17, 1)), ((12, 18), (2, 4099, 9))]:
        cb = torch.randn(g, k, dg, generator=gen) * torch.rand(g, 1, 1, generator=gen) * 3
        cb[0, 3] = cb[0, 1]  # a duplicate codeword
        cases.append((torch.randn(n, d, generator=gen) * 2, cb))
    cb = torch.randn(3, 64, 8, generator=gen)
    cb[:, 32:] = -cb[:, :32]  # e and -e: equal norms, so a zero row ties every pair
    cb[1, 5, 2] = float("nan")
    cb[1, 9, 0] = float("inf")
    cb[2, 7] = 1e30  # finite, its squared norm overflows
    x = torch.randn(30, 40, generator=gen)[:, 7:31]  # strided rows
    x[0] = 0.0
    x[1] = 1e-41
    x[2, 3] = float("nan")
    x[3, 20] = float("-inf")
    x[4, 8:16] = cb[1, 40]  # exactly a codeword
    cases.append((x, cb))
    for x_scale, cb_scale in ((1e-39, 1e-39), (1e-15, 1e-15), (1e15, 1e15), (1e-12, 1e12)):
        cases.append((torch.randn(20, 16, generator=gen) * x_scale, torch.randn(2, 40, 8, generator=gen) * cb_scale))
    cases.append((torch.randn(9, 6, generator=gen), torch.full((1, 40, 6), 0.5)))  # every estimate equal
    return cases


def _encode_under(simd: str, cases):
    """(capabilities()['int8_estimate'], [vq_encode_int8 on cpu]) in a fresh process with ASTRA_CPU_SIMD=simd."""
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"astra-int8-{simd}-{os.getpid()}.pt")
    torch.save(cases, path)
    script = (
        "import sys, torch, astra_kernels as ak, astra_kernels.cpu\n"
        "cases = torch.load(sys.argv[1])\n"
        "out = [ak.vq_encode_int8(x, cb, backend='cpu') for x, cb in cases]\n"
        "torch.save((ak.cpu.capabilities()['int8_estimate'], out), sys.argv[1])\n"
    )
    try:
        subprocess.run([sys.executable, "-c", script, path], env=dict(os.environ, ASTRA_CPU_SIMD=simd), check=True,
                       timeout=300)
        return torch.load(path)
    finally:
        os.remove(path)


@pytest.mark.parametrize("simd", ["avx2", "avx512_vnni"])
def test_simd_kernels_give_the_portable_codes(simd):
    """ASTRA_CPU_SIMD=generic runs the portable C++ build, ASTRA_CPU_SIMD=avx2 the AVX2 kernels and
    avx512_vnni the VNNI kernels: every build must write the same codes and distances."""
    if not _cpu_runs(simd):
        pytest.skip(f"this CPU or build does not run the {simd} kernels")
    cases = _identity_cases()
    kernels, fast = _encode_under(simd, cases)
    assert kernels == simd
    kernels, portable = _encode_under("generic", cases)
    assert kernels == "portable"
    for (x, cb), (codes, sqdist), (want, want_sq) in zip(cases, fast, portable):
        assert torch.equal(codes, want)
        assert torch.allclose(sqdist, want_sq, rtol=1e-6, atol=1e-6, equal_nan=True)
        assert_matches_reference(x, cb, codes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_and_ties_resolve_to_the_lowest_index(backend):
    gen = torch.Generator().manual_seed(3)
    cb = torch.randn(2, 300, 24, generator=gen)
    for c in (70, 150, 299):
        cb[:, c] = cb[:, 5]
    x = cb[:, [150, 299, 5] * 4].transpose(0, 1).reshape(12, 48)  # exactly the copies
    codes, sqdist = ak.vq_encode_int8(x, cb, backend=backend)
    assert (codes == 5).all() and (sqdist == 0).all()
    same = torch.full((1, 40, 6), 0.5)  # every codeword equal: index 0
    assert (ak.vq_encode_int8(torch.randn(9, 6, generator=gen), same, backend=backend)[0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_and_subnormal_rows_pick_the_smallest_norm(backend):
    cb = torch.randn(3, 50, 8, generator=torch.Generator().manual_seed(4))
    cb[:, 20] = cb[:, 20] * 1e-3  # a clear smallest norm in every group
    for scale in (0.0, 1e-41, 1e-38):
        x = torch.full((4, 24), scale)
        codes, _ = ak.vq_encode_int8(x, cb, backend=backend)
        assert (codes == 20).all(), scale
        assert_matches_reference(x, cb, codes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_and_huge_scales_follow_the_reference(backend):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 16, generator=gen)
    for scale in (1e-15, 1e-5, 1e18):  # the grids scale along: same codes as at scale 1
        cb = torch.randn(2, 40, 8, generator=gen)
        codes, sqdist = ak.vq_encode_int8(x * scale, cb * scale, backend=backend)
        assert torch.equal(codes, ak.vq_encode_int8(x, cb, backend=backend)[0]), scale
        assert_within_bound(x * scale, cb * scale, codes, sqdist)
    # a subnormal codebook: 127 / peak overflows, the 2^-100 step floor keeps the grid finite; its
    # codewords are below the grid's resolution, so every estimate is its norm (0 in fp32): index 0
    cb = torch.randn(2, 40, 8, generator=gen) * 1e-39
    codes, sqdist = ak.vq_encode_int8(x, cb, backend=backend)
    assert (codes == 0).all() and torch.isfinite(sqdist).all()
    assert_matches_reference(x, cb, codes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_codewords_never_win(backend):
    gen = torch.Generator().manual_seed(6)
    cb = torch.randn(2, 64, 8, generator=gen)
    x = cb[:, [1, 2, 3]].transpose(0, 1).reshape(3, 16).clone()  # exactly codewords 1, 2, 3
    cb[:, 1, 0] = float("nan")
    cb[:, 2, 5] = float("inf")
    cb[:, 3] = 1e30  # finite, but its squared norm overflows fp32
    codes, _ = ak.vq_encode_int8(x, cb, backend=backend)
    assert not ((codes >= 1) & (codes <= 3)).any()
    assert_matches_reference(x, cb, codes)
    dead = torch.full((1, 5, 4), float("nan"))  # no usable codeword: index 0
    assert (ak.vq_encode_int8(torch.randn(3, 4), dead, backend=backend)[0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 3e38])
def test_non_finite_groups_get_code_zero_and_non_finite_sqdist(backend, bad):
    gen = torch.Generator().manual_seed(8)
    cb = torch.randn(3, 20, 4, generator=gen)
    x = torch.randn(6, 12, generator=gen)
    x[2, 5] = bad  # group 1 of row 2
    codes, sqdist = ak.vq_encode_int8(x, cb, backend=backend)
    assert codes[2, 1] == 0 and not torch.isfinite(sqdist[2, 1])
    keep = torch.ones_like(codes, dtype=torch.bool)
    keep[2, 1] = False
    ok, _ = ak.vq_encode_int8(torch.where(torch.isfinite(x), x, 0.0), cb, backend=backend)
    assert torch.equal(codes[keep], ok[keep])


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_strided_and_empty_inputs(backend):
    gen = torch.Generator().manual_seed(9)
    cb = torch.randn(4, 33, 6, generator=gen)
    wide = torch.randn(20, 40, generator=gen)
    x = wide[:, 5:29]  # row stride 40
    codes, _ = ak.vq_encode_int8(x, cb, backend=backend)
    assert torch.equal(codes, ak.vq_encode_int8(x.contiguous(), cb, backend=backend)[0])
    half, _ = ak.vq_encode_int8(x.half(), cb.half(), backend=backend)
    assert_matches_reference(x.half().float(), cb.half().float(), half)
    empty, sq = ak.vq_encode_int8(torch.empty(0, 3, 24), cb, backend=backend)
    assert empty.shape == (0, 3, 4) and sq.shape == (0, 3, 4)


def test_native_kernels_are_reported_and_missing_backends_refuse():
    native = ak.int8_estimate_native("cpu")
    if "cpu" in BACKENDS:
        from astra_kernels import cpu

        caps = cpu.capabilities()
        assert native == caps["int8_estimate_faster"] == (caps["int8_estimate"] == "avx512_vnni")
    assert not ak.int8_estimate_native("meta")
    x, cb = torch.randn(4, 8), torch.randn(2, 8, 4)
    for backend in ("triton", "cuda"):
        with pytest.raises(ak.BackendUnavailable, match="vq_encode_int8|not available"):
            ak.vq_encode_int8(x, cb, backend=backend)
