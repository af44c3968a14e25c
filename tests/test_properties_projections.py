"""Property tests of project_codebooks and of the projected tables' use against the reference:
a decoded token's projection is the sum of its G table rows (what every formulation of the remote
attention relies on), for random G up to 64 (D/G = 1 included), K = 2..65536, biases, strided
weights and codebooks."""
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import astra_kernels as ak
from astra_kernels import reference

SETTINGS = settings(max_examples=40, deadline=None)
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4)}


@st.composite
def projection_problem(draw):
    """(codebooks (G, K, Dg) fp32, weight (Dout, G*Dg), bias (Dout,) or None, codes (N, G))."""
    dg = draw(st.sampled_from([1, 1, 2, 3, 8]))
    g = draw(st.sampled_from([1, 2, 5, 64]))
    k = draw(st.one_of(st.integers(2, 30), st.just(65536)))
    dout = draw(st.integers(1, 12))
    assume(g * k * max(dg, dout) <= 1 << 20)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    cb = torch.randn(g, k, dg, generator=gen)  # codebooks are fp32/fp16/bf16; an fp64 weight projects in fp64
    weight = torch.randn(dout, g * dg, generator=gen, dtype=dtype)
    if draw(st.booleans()):  # a transposed (column-major) weight
        weight = weight.T.contiguous().T
    if draw(st.booleans()):  # strided codebooks: every other codeword of a larger book
        cb = torch.repeat_interleave(cb, 2, dim=1)[:, ::2]
    bias = torch.randn(dout, generator=gen, dtype=dtype) if draw(st.booleans()) else None
    n = draw(st.integers(0, 20))
    codes = torch.randint(0, k, (1, n, g), generator=gen, dtype=torch.int32)
    return cb, weight, bias, codes


@SETTINGS
@given(problem=projection_problem())
def test_project_codebooks_matches_reference(problem):
    cb, weight, bias, _ = problem
    table = ak.project_codebooks(cb, weight, bias)
    assert table.shape == (cb.shape[0], cb.shape[1], weight.shape[0]) and table.dtype == weight.dtype
    torch.testing.assert_close(table, reference.project_codebooks(cb, weight, bias), **TOL[weight.dtype])


@SETTINGS
@given(problem=projection_problem())
def test_summed_table_rows_are_the_decoded_tokens_projection(problem):
    cb, weight, bias, codes = problem
    table = ak.project_codebooks(cb, weight, bias)
    want = reference.vq_decode(codes[0], cb).to(weight.dtype) @ weight.T + (0 if bias is None else bias)
    torch.testing.assert_close(reference.gather_tables(codes, table)[0], want, **TOL[weight.dtype])


@SETTINGS
@given(problem=projection_problem(), data=st.data())
def test_duplicated_codewords_project_to_equal_rows(problem, data):
    cb, weight, bias, _ = problem
    k = cb.shape[1]
    cb = cb.clone()
    src, dst = data.draw(st.integers(0, k - 1)), data.draw(st.integers(0, k - 1))
    cb[:, dst] = cb[:, src]
    table = ak.project_codebooks(cb, weight, bias)
    torch.testing.assert_close(table[:, dst], table[:, src], **TOL[weight.dtype])  # BLAS tiles may round apart


@SETTINGS
@given(problem=projection_problem(), data=st.data())
def test_non_finite_codewords_reach_only_their_rows(problem, data):
    """A NaN or Inf codeword makes its own table rows non-finite and no other row."""
    cb, weight, bias, _ = problem
    g, k, dg = cb.shape
    cb = cb.clone()
    at = (data.draw(st.integers(0, g - 1)), data.draw(st.integers(0, k - 1)), data.draw(st.integers(0, dg - 1)))
    cb[at] = data.draw(st.sampled_from([float("nan"), float("inf")]))
    table = ak.project_codebooks(cb, weight, bias)
    hit = torch.zeros(g, k, dtype=torch.bool)
    hit[at[0], at[1]] = True
    assert bool(torch.isfinite(table[~hit]).all())
    assert not bool(torch.isfinite(table[at[0], at[1]]).all()) or not bool(weight[:, at[0] * dg + at[2]].any())
