"""Property tests of vq_encode, vq_encode_int8 and vq_decode on every CPU backend against the
reference: random shapes (empty and odd ones), K = 2..65536, G up to 64, D/G = 1, duplicated
codewords (the lowest index wins), NaN/Inf inputs and non-contiguous inputs."""
import pytest
import torch
from conftest import is_interpreted
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import astra_kernels as ak
from astra_kernels import reference

BACKENDS = ak.available_backends("cpu")
SETTINGS = settings(max_examples=25, deadline=None)
MAX_TABLE = 1 << 17  # G*K*Dg elements per example: the K = 65536 cases keep G*Dg small


@st.composite
def vq_problem(draw, max_rows=40):
    """(x (N, D) fp32, possibly a strided view; codebooks (G, K, Dg) with duplicated codewords)."""
    dg = draw(st.sampled_from([1, 1, 2, 3, 4, 7, 8, 16, 33]))
    g = draw(st.integers(1, max(1, min(64, MAX_TABLE // (2 * dg)))))
    k = draw(st.one_of(st.integers(2, 40), st.sampled_from([255, 256, 4097, 65536])))
    assume(g * k * dg <= MAX_TABLE)
    n = draw(st.one_of(st.just(0), st.integers(1, max_rows)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    cb = torch.randn(g, k, dg, generator=gen)
    if k > 2 and draw(st.booleans()):  # ties: later copies of earlier codewords
        src = torch.randint(0, k // 2, (k // 4 + 1,), generator=gen)
        dst = torch.randint(k // 2, k, (k // 4 + 1,), generator=gen)
        cb[:, dst] = cb[:, src]
    x = torch.randn(n, g * dg, generator=gen)
    rows = torch.randint(0, k, (n, g), generator=gen)
    if draw(st.booleans()):  # points on codewords: exact ties with the duplicates
        x = reference.vq_decode(rows.int(), cb) + 0.0
    if draw(st.booleans()):  # non-contiguous: every other column of a wider tensor
        wide = torch.zeros(n, 2 * g * dg)
        wide[:, ::2] = x
        x = wide[:, ::2]
    return x, cb


def _true_scores(x: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """(N, G, K) squared distances in float64."""
    g, _, dg = cb.shape
    xg = x.double().reshape(-1, g, 1, dg)
    return ((xg - cb.double().unsqueeze(0)) ** 2).sum(-1)


def _first_copy(cb: torch.Tensor) -> torch.Tensor:
    """(G, K) index of the first codeword equal to each codeword."""
    same = (cb.unsqueeze(2) == cb.unsqueeze(1)).all(-1)  # (G, K, K)
    return same.int().argmax(-1)


def _encode_backends(n: int, k: int) -> list[str]:
    return [b for b in BACKENDS if not (is_interpreted(b, "cpu") and n * k > 400)]


@SETTINGS
@given(problem=vq_problem())
def test_vq_encode_finds_the_nearest_codeword_lowest_index_first(problem):
    x, cb = problem
    n, (g, k, _) = x.shape[0], cb.shape
    scores = _true_scores(x, cb)
    first = _first_copy(cb)
    for backend in _encode_backends(n, k):
        codes, sqdist = ak.vq_encode(x, cb, backend=backend)
        assert codes.shape == (n, g) and codes.dtype == torch.int32 and sqdist.dtype == torch.float32
        if n == 0:
            continue
        chosen = scores.gather(-1, codes.long().unsqueeze(-1)).squeeze(-1)
        best = scores.min(-1).values
        # fp32 scores ||e||^2 - 2 x.e: an other codeword can win within their rounding
        slack = 1e-5 * (x.double().reshape(n, g, -1).pow(2).sum(-1) + cb.double().pow(2).sum(-1).max(-1).values + 1)
        assert bool((chosen <= best + slack).all()), backend
        assert torch.equal(codes.long(), first.gather(1, codes.long().T).T), f"{backend}: a later duplicate won"
        torch.testing.assert_close(sqdist.double(), chosen, rtol=1e-4, atol=1e-4)
        assert bool((sqdist >= 0).all())


@SETTINGS
@given(problem=vq_problem())
def test_vq_encode_int8_stays_within_its_bound(problem):
    """The int8 estimates' code: the reference's, up to fp32 rounding of the estimates; exact sqdist."""
    x, cb = problem
    n, (g, _, dg) = x.shape[0], cb.shape
    for backend in [b for b in BACKENDS if b in ("reference", "cpu")]:
        codes, sqdist = ak.vq_encode_int8(x, cb, backend=backend)
        assert codes.shape == (n, g)
        if n == 0:
            continue
        est = reference.int8_estimates(x.float().reshape(n, g, dg).transpose(0, 1), cb.float())  # (G, N, K)
        chosen = est.gather(-1, codes.long().T.unsqueeze(-1)).squeeze(-1)
        best = est.min(-1).values
        assert bool((chosen <= best + 1e-5 * (best.abs() + est.abs().amax(-1) + 1)).all()), backend
        exact = _true_scores(x, cb).gather(-1, codes.long().unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(sqdist.double(), exact, rtol=1e-4, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(problem=vq_problem(max_rows=12), data=st.data())
def test_vq_encode_non_finite_groups_get_code_zero(problem, data):
    x, cb = problem
    n, (g, k, dg) = x.shape[0], cb.shape
    assume(n > 0)
    x = x.clone()
    bad = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, g * dg - 1)), min_size=1, max_size=4))
    values = data.draw(st.lists(st.sampled_from([float("nan"), float("inf"), -float("inf")]), min_size=len(bad),
                                max_size=len(bad)))
    for (r, c), v in zip(bad, values):
        x[r, c] = v
    hit = ~torch.isfinite(x.reshape(n, g, dg)).all(-1)  # (N, G)
    want, _ = reference.vq_encode(x, cb)
    for backend in _encode_backends(n, k):
        for encode in (ak.vq_encode, ak.vq_encode_int8) if backend != "triton" else (ak.vq_encode,):
            codes, sqdist = encode(x, cb, backend=backend)
            assert bool((codes[hit] == 0).all()) and not bool(torch.isfinite(sqdist[hit]).any()), backend
            assert bool(torch.isfinite(sqdist[~hit]).all())
            if encode is ak.vq_encode:
                assert bool((codes[hit] == want[hit]).all())


@SETTINGS
@given(problem=vq_problem(), lead=st.sampled_from([(), (1,), (2, 3)]), step=st.integers(1, 3), data=st.data())
def test_vq_decode_gathers_exactly(problem, lead, step, data):
    _, cb = problem
    g, k, dg = cb.shape
    n = data.draw(st.integers(0, 30))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    codes = torch.randint(0, k, (*lead, n, g * step), generator=gen)[..., ::step]  # strided when step > 1
    dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    cb = cb.to(dtype)
    want = cb[torch.arange(g), codes.long()].reshape(*lead, n, g * dg)
    for backend in BACKENDS:
        out = ak.vq_decode(codes, cb, backend=backend)
        assert out.dtype == dtype and torch.equal(out, want), backend


@SETTINGS
@given(problem=vq_problem(max_rows=8), data=st.data())
def test_vq_decode_refuses_any_out_of_range_code(problem, data):
    _, cb = problem
    g, k, _ = cb.shape
    codes = torch.zeros(data.draw(st.integers(1, 5)), g, dtype=torch.int64)
    bad = data.draw(st.one_of(st.integers(-(2**40), -1), st.integers(k, 2**40)))
    codes[data.draw(st.integers(0, codes.shape[0] - 1)), data.draw(st.integers(0, g - 1))] = bad
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=rf"codes contains -?\d+, outside \[0, {k}\)"):
            ak.vq_decode(codes, cb, backend=backend)
