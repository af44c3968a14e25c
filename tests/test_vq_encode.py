"""vq_encode on every available backend against float64 truth and the reference."""
import pytest
import torch
from conftest import is_interpreted
from vq_helpers import VQ_SHAPES, assert_nearest, near_codewords, separated_codebooks

import astra_kernels as ak

SHAPES = VQ_SHAPES
SMALL = [s for s in SHAPES if s[1] * s[2] <= 4096]


def _dtypes(device):
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_random_inputs_pick_a_nearest_codeword(backend_device, shape, dtype):
    backend, device = backend_device
    if dtype == torch.bfloat16 and device == "cpu" and backend == "triton":
        pytest.skip("the Triton interpreter computes bf16 wrongly; bf16 is checked on a GPU")
    if is_interpreted(backend, device) and shape not in SMALL:
        pytest.skip("kept small under the Triton interpreter")
    lead, g, k, dg = shape
    gen = torch.Generator().manual_seed(hash(shape) % 2**31)
    x = torch.randn(*lead, g * dg, generator=gen).to(dtype).to(device)
    cb = torch.randn(g, k, dg, generator=gen).to(dtype).to(device)
    codes, sqdist = ak.vq_encode(x, cb, backend=backend)
    assert codes.shape == (*lead, g) and codes.dtype == torch.int32
    assert sqdist.shape == (*lead, g) and sqdist.dtype == torch.float32
    assert codes.device.type == device and sqdist.device.type == device
    rel = 1e-5 if dtype == torch.float32 else 1e-3
    assert_nearest(x, cb, codes, sqdist, rel=rel)


@pytest.mark.parametrize("g,k,dg", [(1, 300, 6), (16, 64, 3), (32, 50, 2), (3, 250, 1), (2, 40, 40)])
def test_well_separated_codebooks_give_exact_codes(backend_device, g, k, dg):
    backend, device = backend_device
    cb = separated_codebooks(g, k, dg, seed=k)
    x, expected = near_codewords(cb, 41, seed=g)
    for dtype in _dtypes(device):
        if dtype != torch.float32 and (cb.abs().max() > 64 or dg > 8):
            continue  # keep the grid exactly representable and the noise meaningful
        codes, sqdist = ak.vq_encode(x.to(dtype).to(device), cb.to(dtype).to(device), backend=backend)
        assert torch.equal(codes.cpu().long(), expected), dtype
        assert (sqdist.cpu() < 0.05).all()


def test_ties_resolve_to_the_lowest_index(backend_device):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(3)
    g, k, dg = 4, 70, 9
    cb = torch.randn(g, k, dg, generator=gen)
    # Exact duplicates later in the table, across SIMD-lane and tile boundaries.
    for src, dup in [(5, 6), (5, 69), (17, 33), (0, 64), (40, 41)]:
        cb[:, dup] = cb[:, src]
    x = cb[torch.arange(g), torch.tensor([5, 17, 0, 40])].reshape(1, g * dg)
    x = x + 1e-3 * torch.randn(x.shape, generator=gen)
    codes, _ = ak.vq_encode(x.to(device), cb.to(device), backend=backend)
    assert codes.cpu().tolist() == [[5, 17, 0, 40]]


def test_equidistant_codewords_resolve_to_the_lowest_index(backend_device):
    backend, device = backend_device
    # x = 0 is exactly equidistant from e and -e: scores ||e||^2 tie bit for bit.
    gen = torch.Generator().manual_seed(4)
    e = torch.randn(20, 16, generator=gen) + 3.0
    far = e * 3.0  # larger norms, never nearest to 0
    cb = torch.cat([far[:5], e[:1], -e[:1], far[5:], -e[:1], e[:1]]).unsqueeze(0)  # (1, 24, 16)
    x = torch.zeros(3, 16)
    codes, sqdist = ak.vq_encode(x.to(device), cb.to(device), backend=backend)
    assert codes.cpu().flatten().tolist() == [5, 5, 5]
    torch.testing.assert_close(sqdist.cpu().flatten(), (e[0] ** 2).sum().expand(3))


def test_non_contiguous_input(backend_device):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(5)
    g, k, dg = 4, 33, 6
    cb = torch.randn(k, g, dg, generator=gen).transpose(0, 1).to(device)  # non-contiguous codebooks
    base = torch.randn(24, 2 * g * dg, generator=gen).to(device)
    views = [base[::3, : g * dg], base[:, ::2], base.t().contiguous().t()[:, : g * dg]]
    for x in views:
        assert not x.is_contiguous()
        codes, sqdist = ak.vq_encode(x, cb, backend=backend)
        ref_codes, ref_sqdist = ak.vq_encode(x.contiguous(), cb.contiguous(), backend="reference")
        assert_nearest(x, cb, codes, sqdist)
        torch.testing.assert_close(sqdist, ref_sqdist, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_groups_get_code_zero_and_non_finite_sqdist(backend_device, bad):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(6)
    g, k, dg = 3, 21, 5
    cb = torch.randn(g, k, dg, generator=gen)
    x = torch.randn(6, g * dg, generator=gen)
    x[1, 0] = bad  # group 0 of row 1
    x[4, 2 * dg + 3] = bad  # group 2 of row 4
    codes, sqdist = ak.vq_encode(x.to(device), cb.to(device), backend=backend)
    codes, sqdist = codes.cpu(), sqdist.cpu()
    assert codes[1, 0] == 0 and codes[4, 2] == 0
    assert not sqdist[1, 0].isfinite() and not sqdist[4, 2].isfinite()
    finite = torch.ones_like(codes, dtype=torch.bool)
    finite[1, 0] = finite[4, 2] = False
    ref_codes, ref_sqdist = ak.vq_encode(x, cb, backend="reference")
    assert torch.equal(codes[finite], ref_codes[finite])
    torch.testing.assert_close(sqdist[finite], ref_sqdist[finite])


@pytest.mark.parametrize("spread", [1.0, 0.01, 0.0])
def test_wide_groups_with_clustered_codewords(backend_device, spread):
    """Paper width (G = 1, Dg = 768, K = 1024). spread 0.01: every codeword within 0.01 per feature
    of one centre, finer than an int8 grid (step ~0.03 here) yet ~20x the test's distance tolerance
    apart; spread 0: all identical (the lowest index wins). Ranking must stay exact."""
    backend, device = backend_device
    if is_interpreted(backend, device):
        pytest.skip("kept small under the Triton interpreter")
    gen = torch.Generator().manual_seed(7)
    centre = torch.randn(768, generator=gen)
    cb = (centre + spread * torch.randn(1, 1024, 768, generator=gen)).to(device)
    x = (centre + 0.5 * torch.randn(40, 768, generator=gen)).to(device)
    codes, sqdist = ak.vq_encode(x, cb, backend=backend)
    assert_nearest(x, cb, codes, sqdist)
    if spread == 0.0:
        assert (codes == 0).all()


@pytest.mark.parametrize("g,k,dg,n", [(1, 65536, 3, 5), (1, 16, 4096, 9), (64, 2, 1, 7), (2, 3000, 130, 33),
                                      (1, 1024, 768, 70)])
def test_extreme_sizes(backend_device, g, k, dg, n):
    backend, device = backend_device
    if is_interpreted(backend, device) and k * n > 100_000:
        pytest.skip("kept small under the Triton interpreter")
    gen = torch.Generator().manual_seed(k + dg)
    x = torch.randn(n, g * dg, generator=gen).to(device)
    cb = torch.randn(g, k, dg, generator=gen).to(device)
    codes, sqdist = ak.vq_encode(x, cb, backend=backend)
    assert_nearest(x, cb, codes, sqdist)


def test_empty_batch(backend_device):
    backend, device = backend_device
    codes, sqdist = ak.vq_encode(torch.empty(0, 3, 8, device=device), torch.randn(2, 5, 4, device=device), backend=backend)
    assert codes.shape == (0, 3, 2) and sqdist.shape == (0, 3, 2)


@pytest.mark.parametrize("encode", [ak.vq_encode, ak.vq_encode_int8], ids=["exact", "int8"])
def test_sqdist_is_a_differentiable_commitment_loss(encode):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(10, 12, generator=gen, requires_grad=True)
    cb = torch.randn(3, 9, 4, generator=gen, requires_grad=True)
    codes, sqdist = encode(x, cb)
    w = torch.randn(sqdist.shape, generator=gen)
    (sqdist * w).sum().backward()
    # Same loss written with plain torch ops, the codes held fixed.
    x2, cb2 = x.detach().clone().requires_grad_(), cb.detach().clone().requires_grad_()
    chosen = cb2[torch.arange(3), codes.long()]  # (10, 3, 4)
    (((x2.reshape(10, 3, 4) - chosen) ** 2).sum(-1) * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(cb.grad, cb2.grad)
