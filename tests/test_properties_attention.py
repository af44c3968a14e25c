"""Property tests of mixed_precision_attention, attention (with and without a prior partial) and
merge_attention on the CPU backends against the reference: random shapes (empty segments, odd
sizes, grouped heads), K = 2..65536, G up to 64, duplicated codewords, both formulations,
non-contiguous inputs, and NaN in the inputs (non-finite exactly where the reference is)."""
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import astra_kernels as ak
from astra_kernels import reference

# Triton's attention runs interpreted here at about a second per call: its own tests cover it.
BACKENDS = [b for b in ak.available_backends("cpu") if b in ("reference", "cpu")]
SETTINGS = settings(max_examples=30, deadline=None)
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def _heads_layout(t: torch.Tensor, token_major: bool) -> torch.Tensor:
    """t (B, H, T, d) as itself or as a (B, T, H, d)-stored view (non-contiguous)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2) if token_major else t


@st.composite
def attention_problem(draw):
    """Keyword arguments of ak.mixed_precision_attention."""
    hkv = draw(st.integers(1, 3))
    h = hkv * draw(st.integers(1, 3))
    d = draw(st.sampled_from([1, 2, 5, 8, 16]))
    g = draw(st.sampled_from([1, 1, 2, 3, 64]))
    k = draw(st.one_of(st.integers(2, 24), st.just(65536))) if g == 1 else draw(st.integers(2, 24))
    b, tq, tl, tr = draw(st.integers(0, 2)), draw(st.integers(0, 6)), draw(st.integers(0, 7)), draw(st.integers(0, 9))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    table_k, table_v = rand(g, k, hkv * d), rand(g, k, hkv * d)
    if k > 3 and draw(st.booleans()):  # duplicated codewords: equal rows of the tables
        table_k[:, 1], table_v[:, 1] = table_k[:, 0], table_v[:, 0]
    codes = torch.randint(0, min(k, draw(st.sampled_from([2, 4, k]))), (b, tr, g), generator=gen, dtype=torch.int32)
    layout = draw(st.booleans())
    args = dict(
        q=_heads_layout(rand(b, h, tq, d), layout), k_local=_heads_layout(rand(b, hkv, tl, d), layout),
        v_local=_heads_layout(rand(b, hkv, tl, d), not layout), remote_codes=codes, k_table=table_k, v_table=table_v,
        k_bias=rand(hkv * d) if draw(st.booleans()) else None, v_bias=rand(hkv * d) if draw(st.booleans()) else None,
        causal=draw(st.booleans()), scale=draw(st.sampled_from([None, 0.05, 1.0, 3.0])),
        formulation=draw(st.sampled_from(["tokens", "codewords"] if g == 1 else ["tokens"])),
    )
    if draw(st.booleans()):  # codes given as a strided view of int64
        wide = torch.zeros(b, tr, 2 * g, dtype=torch.int64)
        wide[..., ::2] = codes
        args["remote_codes"] = wide[..., ::2]
    return args


def _reference(args):
    scale = args["scale"] if args["scale"] is not None else args["q"].shape[-1] ** -0.5
    a = dict(args, scale=scale, remote_codes=args["remote_codes"].int())
    return reference.mixed_precision_attention(*a.values())


@SETTINGS
@given(args=attention_problem())
def test_mixed_precision_attention_matches_reference(args):
    want_out, want_lse = _reference(args)
    for backend in BACKENDS:
        out, lse = ak.mixed_precision_attention(**args, backend=backend)
        assert out.shape == args["q"].shape and out.dtype == args["q"].dtype and lse.dtype == torch.float32
        torch.testing.assert_close(out, want_out, **TOL[out.dtype])
        torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(args=attention_problem())
def test_codewords_equal_tokens(args):
    """With G = 1, attending the K codewords with log(count) biases is attending the tokens."""
    assume(args["k_table"].shape[0] == 1)
    for backend in BACKENDS:
        tokens = ak.mixed_precision_attention(**dict(args, formulation="tokens"), backend=backend)
        codewords = ak.mixed_precision_attention(**dict(args, formulation="codewords"), backend=backend)
        torch.testing.assert_close(codewords[0], tokens[0], **TOL[tokens[0].dtype])
        torch.testing.assert_close(codewords[1], tokens[1], rtol=1e-5, atol=1e-5)


@SETTINGS
@given(args=attention_problem(), data=st.data())
def test_nan_inputs_reach_the_outputs_they_reach_in_the_reference(args, data):
    """NaN in a query, a local key or a key table row: non-finite outputs exactly where the reference has them
    (the queries that see that key); every other output matches it. NaN in a value: non-finite outputs only
    where the reference has them (it also multiplies masked keys' values by 0; kernels may skip those)."""
    args = {n: (t.clone() if isinstance(t, torch.Tensor) else t) for n, t in args.items()}
    name = data.draw(st.sampled_from(["q", "k_local", "k_table", "v_local", "v_table"]))
    target = args[name]
    assume(target.numel() > 0)
    flat = data.draw(st.integers(0, target.numel() - 1))
    target[tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), target.shape))] = float("nan")
    want_out, want_lse = _reference(args)
    bad = ~torch.isfinite(want_out)
    for backend in BACKENDS:
        out, lse = ak.mixed_precision_attention(**args, backend=backend)
        got_bad = ~torch.isfinite(out)
        if name.startswith("v"):
            assert not bool((got_bad & ~bad).any()), backend
        else:
            assert torch.equal(got_bad, bad), backend
            assert torch.equal(lse.isnan(), want_lse.isnan()), backend
        fine = ~got_bad & ~bad
        torch.testing.assert_close(out[fine], want_out[fine], **TOL[out.dtype])
        lse_fine = ~lse.isnan() & ~want_lse.isnan()
        torch.testing.assert_close(lse[lse_fine], want_lse[lse_fine], rtol=1e-5, atol=1e-5)


@SETTINGS
@given(args=attention_problem(), split=st.integers(0, 7))
def test_attention_after_a_prior_is_attention_over_both_key_sets(args, split):
    """attention(prior=(out, lse) of keys [0, s)) over keys [s, T) equals one attention over [0, T), as does
    merge_attention of the two partials."""
    q, k, v = args["q"], args["k_local"], args["v_local"]
    s = min(split, k.shape[2])
    full = reference.mixed_precision_attention(q, k, v, torch.zeros(q.shape[0], 0, 1, dtype=torch.int32),
                                               q.new_zeros(1, 1, k.shape[1] * k.shape[3]),
                                               q.new_zeros(1, 1, k.shape[1] * k.shape[3]), None, None, False,
                                               q.shape[-1] ** -0.5, "tokens")
    for backend in BACKENDS:
        first = ak.attention(q, k[:, :, :s], v[:, :, :s], backend=backend)
        second = ak.attention(q, k[:, :, s:], v[:, :, s:], backend=backend)
        after = ak.attention(q, k[:, :, s:], v[:, :, s:], prior=first, backend=backend)
        merged = ak.merge_attention(*first, *second, backend=backend)
        for out, lse in (after, merged):
            torch.testing.assert_close(out, full[0], **TOL[torch.float32])  # partials carry fp32 lse
            torch.testing.assert_close(lse, full[1], rtol=1e-5, atol=1e-5)


@SETTINGS
@given(args=attention_problem(), data=st.data())
def test_any_out_of_range_code_is_refused(args, data):
    codes = args["remote_codes"].long().contiguous()
    assume(codes.numel() > 0)
    k = args["k_table"].shape[1]
    bad = data.draw(st.one_of(st.integers(-(2**40), -1), st.integers(k, 2**40)))
    codes.view(-1)[data.draw(st.integers(0, codes.numel() - 1))] = bad
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=rf"remote_codes contains -?\d+, outside \[0, {k}\)"):
            ak.mixed_precision_attention(**dict(args, remote_codes=codes), backend=backend)
