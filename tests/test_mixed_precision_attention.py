"""mixed_precision_attention on every backend against the reference, plus its properties."""
import pytest
import torch
from conftest import is_interpreted

import astra_kernels as ak
from astra_kernels import reference


def make_inputs(b=2, h=4, hkv=2, tq=9, tl=11, tr=13, d=16, g=1, k=37, dtype=torch.float32, device="cpu", bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(device)

    args = dict(
        q=rnd(b, h, tq, d),
        k_local=rnd(b, hkv, tl, d),
        v_local=rnd(b, hkv, tl, d),
        remote_codes=torch.randint(0, k, (b, tr, g), generator=gen, dtype=torch.int32).to(device),
        k_table=rnd(g, k, hkv * d) / g**0.5,
        v_table=rnd(g, k, hkv * d) / g**0.5,
    )
    if bias:
        args["k_bias"], args["v_bias"] = rnd(hkv * d), rnd(hkv * d)
    return args


def as_dtype(args, dtype):
    return {n: (t.to(dtype) if t.is_floating_point() else t) for n, t in args.items()}


def reference_result(args, dtype, **kw):
    """Reference computed in float64 (truth) and in ``dtype`` (the error budget)."""
    truth = ak.mixed_precision_attention(**as_dtype(args, torch.float64), backend="reference", **kw)
    same = ak.mixed_precision_attention(**as_dtype(args, dtype), backend="reference", **kw)
    return truth, same


def assert_matches_reference(args, backend, dtype, **kw):
    """flash-attn rule: error vs float64 truth <= 2x the same-precision reference's error (+ eps)."""
    out, lse = ak.mixed_precision_attention(**as_dtype(args, dtype), backend=backend, **kw)
    (t_out, t_lse), (s_out, s_lse) = reference_result({n: t.cpu() for n, t in args.items()}, dtype, **kw)
    assert out.dtype == dtype and out.shape == t_out.shape and lse.dtype == torch.float32
    eps = 1e-12 if dtype == torch.float64 else 1e-5
    out, lse = out.cpu().double(), lse.cpu().double()
    finite = torch.isfinite(t_lse)
    assert torch.equal(torch.isfinite(lse), finite), "lse must be -inf exactly where no key is visible"
    budget_out = 2 * (s_out.double() - t_out).abs().max().item() + eps
    budget_lse = 2 * (s_lse.double() - t_lse.double())[finite].abs().max().item() + eps if finite.any() else eps
    assert (out - t_out).abs().max().item() <= budget_out
    assert (lse - t_lse.double())[finite].abs().max().item() <= budget_lse if finite.any() else True
    assert (out[~finite] == 0).all()


CASES = {
    "plain": dict(),
    "gqa4": dict(h=4, hkv=1),
    "mha": dict(h=3, hkv=3),
    "g16": dict(g=16, k=19, tr=10),
    "g32": dict(g=32, k=8, d=32, hkv=1, h=2),
    "no_remote": dict(tr=0),
    "no_local": dict(tl=0),
    "odd": dict(tq=1, tl=5, tr=3, d=8, k=3),
    "more_queries_than_keys": dict(tq=12, tl=5),
    "bias": dict(bias=True),
    "k_not_pow2_long": dict(k=100, tr=300, tq=17, tl=17, b=1),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_against_reference(backend_device, case, causal):
    backend, device = backend_device
    args = make_inputs(**CASES[case], device=device, seed=len(case))
    g = args["remote_codes"].shape[2]
    dtypes = [torch.float32] + ([torch.float64] if backend in ("reference", "cpu") else [])
    if device == "cuda":
        dtypes += [torch.float16, torch.bfloat16]
    for dtype in dtypes:
        for formulation in ["tokens"] + (["codewords"] if g == 1 else []):
            assert_matches_reference(args, backend, dtype, causal=causal, formulation=formulation)


def test_long_remote_segment_picks_and_matches_codewords(backend_device):
    backend, device = backend_device
    if is_interpreted(backend, device):
        pytest.skip("kept small under the Triton interpreter")
    args = make_inputs(b=1, h=2, hkv=1, tq=8, tl=8, tr=2000, d=16, k=64, device=device)
    assert_matches_reference(args, backend, torch.float32, causal=True)  # cost model: codewords
    assert_matches_reference(args, backend, torch.float32, causal=True, formulation="tokens")


def test_remote_permutation_invariance(backend_device):
    backend, device = backend_device
    for g in (1, 4):
        args = make_inputs(g=g, tr=17, device=device, seed=g)
        out, lse = ak.mixed_precision_attention(**args, backend=backend, causal=True)
        perm = torch.randperm(17, generator=torch.Generator().manual_seed(1)).to(device)
        args["remote_codes"] = args["remote_codes"][:, perm]
        out_p, lse_p = ak.mixed_precision_attention(**args, backend=backend, causal=True)
        torch.testing.assert_close(out_p, out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lse_p, lse, rtol=1e-5, atol=1e-5)


def test_duplicate_token_equals_count_two_in_codeword_segment(backend_device):
    backend, device = backend_device
    args = make_inputs(tr=6, k=9, device=device)
    codes = args["remote_codes"]
    codes[:, 3] = codes[:, 1]  # token 3 duplicates token 1: that codeword's count is 2
    codes[:, 5] = codes[:, 1]  # ... then 3
    tokens = ak.mixed_precision_attention(**args, backend=backend, formulation="tokens")
    words = ak.mixed_precision_attention(**args, backend=backend, formulation="codewords")
    for a, b in zip(tokens, words):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and dropping the duplicates changes the result (the counts matter)
    args["remote_codes"] = codes[:, [0, 1, 2, 4]]
    single = ak.mixed_precision_attention(**args, backend=backend, formulation="codewords")
    assert not torch.allclose(single[0], words[0], atol=1e-4)


def test_merge_of_partials_equals_joint_call(backend_device):
    backend, device = backend_device
    for causal in (False, True):
        args = make_inputs(tq=7, tl=7, device=device, seed=5)
        joint = ak.mixed_precision_attention(**args, backend=backend, causal=causal)
        local = dict(args, remote_codes=args["remote_codes"][:, :0])
        remote = dict(args, k_local=args["k_local"][:, :, :0], v_local=args["v_local"][:, :, :0])
        a = ak.mixed_precision_attention(**local, backend=backend, causal=causal)
        b = ak.mixed_precision_attention(**remote, backend=backend, causal=causal)
        merged = ak.merge_attention(*a, *b)
        torch.testing.assert_close(merged[0], joint[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged[1], joint[1], rtol=1e-5, atol=1e-5)


def test_project_codebooks_matches_projecting_decoded_tokens():
    gen = torch.Generator().manual_seed(2)
    g, k, dg, dout = 4, 10, 6, 20
    cb = torch.randn(g, k, dg, generator=gen)
    w, bias = torch.randn(dout, g * dg, generator=gen), torch.randn(dout, generator=gen)
    table = ak.project_codebooks(cb, w, bias)
    codes = torch.randint(0, k, (5, 7, g), generator=gen)
    direct = torch.nn.functional.linear(ak.vq_decode(codes, cb), w, bias)
    torch.testing.assert_close(reference.gather_tables(codes, table), direct, rtol=1e-5, atol=1e-5)
    # and the reference's group-by-group products, in fp32 and (fp64 weights) fp64
    torch.testing.assert_close(table, reference.project_codebooks(cb, w, bias), rtol=1e-6, atol=1e-6)
    wide = ak.project_codebooks(cb, w.double(), bias.double())
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide, reference.project_codebooks(cb, w.double(), bias.double()))


def test_gradients_flow_through_any_backend(backend_device):
    backend, device = backend_device
    args = make_inputs(tq=4, tl=5, tr=6, d=8, device=device)
    leaves = {n: args[n].clone().requires_grad_() for n in ("q", "k_local", "v_table")}
    out, lse = ak.mixed_precision_attention(**{**args, **leaves}, backend=backend, causal=True)
    (out.square().sum() + lse.sum()).backward()
    ref_leaves = {n: args[n].clone().requires_grad_() for n in leaves}
    r_out, r_lse = ak.mixed_precision_attention(**{**args, **ref_leaves}, backend="reference", causal=True)
    (r_out.square().sum() + r_lse.sum()).backward()
    for n in leaves:
        torch.testing.assert_close(leaves[n].grad, ref_leaves[n].grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(q=torch.randn(2, 4, 9)), ValueError, r"q must have shape \(B, H, Tq, d\)"),
        (dict(k_local=torch.randn(2, 3, 11, 16), v_local=torch.randn(2, 3, 11, 16)), ValueError, "multiple of key/value heads Hkv=3"),
        (dict(v_local=torch.randn(2, 2, 10, 16)), ValueError, "must both have shape"),
        (dict(k_local=torch.randn(3, 2, 11, 16), v_local=torch.randn(3, 2, 11, 16)), ValueError, "batch or head dim"),
        (dict(remote_codes=torch.full((2, 13, 1), 37, dtype=torch.int32)), ValueError, r"contains 37, outside \[0, 37\)"),
        (dict(remote_codes=torch.zeros(2, 13, 2, dtype=torch.int32)), ValueError, "G=2 groups but the tables have 1"),
        (dict(remote_codes=torch.zeros(2, 13, 1)), TypeError, "integer tensor"),
        (dict(k_table=torch.randn(1, 37, 30), v_table=torch.randn(1, 37, 30)), ValueError, "width 30 but Hkv\\*d"),
        (dict(q=torch.randn(2, 4, 9, 16, dtype=torch.float64)), TypeError, "must share q's dtype"),
        (dict(k_bias=torch.randn(7)), ValueError, "k_bias must have shape"),
        (dict(v_table=torch.randn(1, 37, 32, device="meta")), ValueError, "same device"),
    ],
)
def test_bad_input(change, exc, match):
    args = make_inputs()
    args.update(change)
    with pytest.raises(exc, match=match):
        ak.mixed_precision_attention(**args)


def test_bad_options():
    args = make_inputs(g=2)
    with pytest.raises(ValueError, match="codewords formulation needs G = 1"):
        ak.mixed_precision_attention(**args, formulation="codewords")
    with pytest.raises(ValueError, match="formulation must be"):
        ak.mixed_precision_attention(**args, formulation="fast")
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        ak.mixed_precision_attention(**args, scale=-1.0)


MERGE_BACKENDS = [b for b in ak.available_backends("cpu") if b in ("cpu", "reference")]


@pytest.mark.skipif("cpu" not in ak.available_backends("cpu"), reason="the C++ CPU extension is not built")
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("b,hkv,tq", [(1, 2, 300), (2, 3, 397), (1, 1, 1), (1, 2, 0)])
def test_tables_beyond_the_caches_are_gathered_once_for_several_query_blocks(threads, b, hkv, tq):
    """Tables past the kernel's shared-gather size (8 MiB here): a task takes several kv heads and query
    blocks, each remote tile attended block by block, for any thread count (tasks split to keep threads busy)."""
    args = make_inputs(b=b, h=2 * hkv, hkv=hkv, tq=tq, tl=tq, tr=70, d=64, g=16, k=2048 // hkv, seed=tq)
    assert args["k_table"].numel() * 4 > 4 << 20
    rotation = torch.randn(2, 70, 32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for extra in ({}, {"remote_rotation": rotation}):
            got = ak.mixed_precision_attention(**args, backend="cpu", causal=True, formulation="tokens", **extra)
            want = ak.mixed_precision_attention(**args, backend="reference", causal=True, formulation="tokens",
                                                **extra)
            for a, w in zip(got, want):
                torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(before)


_ATEN_GEMMS_CHECK = """
import torch, astra_kernels as ak
from test_mixed_precision_attention import make_inputs
for case in (dict(), dict(tq=300, tl=300, tr=70, d=64, g=16, k=1024, b=1), dict(tl=0), dict(d=20, h=4, hkv=1)):
    args = make_inputs(**case)
    rotation = torch.randn(2, args["remote_codes"].shape[1], args["q"].shape[3] // 2)
    got = ak.mixed_precision_attention(**args, causal=True, formulation="tokens", remote_rotation=rotation, backend="cpu")
    want = ak.mixed_precision_attention(**args, causal=True, formulation="tokens", remote_rotation=rotation,
                                        backend="reference")
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-4)
print("ok")
"""


@pytest.mark.skipif("cpu" not in ak.available_backends("cpu"), reason="the C++ CPU extension is not built")
def test_aten_gemms_give_the_same_attention(tmp_path):
    """ASTRA_CPU_GEMM=aten (read once per process): the attention's GEMMs through ATen instead of the core's."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, ASTRA_CPU_GEMM="aten", PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    done = subprocess.run([sys.executable, "-c", _ATEN_GEMMS_CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("backend", MERGE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_merge_matches_the_reference_with_empty_partials_and_strides(backend, dtype):
    gen = torch.Generator().manual_seed(5)
    out_a = torch.randn(2, 3, 9, 16, generator=gen).to(dtype)
    out_b = torch.randn(2, 9, 3, 16, generator=gen).to(dtype).transpose(1, 2)  # token-major input
    lse_a, lse_b = torch.randn(2, 3, 9, generator=gen) * 5, torch.randn(2, 9, 3, generator=gen).transpose(1, 2)
    lse_a[0, 0, :3] = float("-inf")  # no key in partial a
    lse_b[0, 0, 2:5] = float("-inf")  # nor in b: rows 2 both empty
    out, lse = ak.merge_attention(out_a, lse_a, out_b, lse_b, backend=backend)
    want, want_lse = reference.merge_attention(out_a, lse_a, out_b, lse_b)
    tol = 1e-3 if dtype == torch.float16 else 1e-6
    torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    torch.testing.assert_close(lse, want_lse, rtol=1e-6, atol=1e-6)
    assert out.dtype == dtype and (out[0, 0, 2] == 0).all() and lse[0, 0, 2] == float("-inf")
    # the heads of a token are contiguous: the output projection's input is a view
    flat = out.transpose(1, 2).reshape(2, 9, 48)
    assert flat.data_ptr() == out.data_ptr()


@pytest.mark.parametrize("backend", MERGE_BACKENDS)
def test_merge_gradients_match_the_reference(backend):
    gen = torch.Generator().manual_seed(6)
    leaves = [torch.randn(1, 2, 4, 8, generator=gen), torch.randn(1, 2, 4, generator=gen),
              torch.randn(1, 2, 4, 8, generator=gen), torch.randn(1, 2, 4, generator=gen)]
    grads = []
    for fn in (lambda *a: ak.merge_attention(*a, backend=backend), reference.merge_attention):
        xs = [t.clone().requires_grad_() for t in leaves]
        out, lse = fn(*xs)
        (out.square().sum() + lse.sum()).backward()
        grads.append([x.grad for x in xs])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_merge_rejects_mismatched_partials():
    out, lse = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match="share a \\(B, H, T, d\\) shape"):
        ak.merge_attention(out, lse, out[:, :1], lse)
    with pytest.raises(TypeError, match="one floating dtype"):
        ak.merge_attention(out, lse, out.double(), lse)
    with pytest.raises(TypeError, match="lse_a and lse_b must be float32"):
        ak.merge_attention(out, lse.double(), out, lse)
    with pytest.raises(ValueError, match="lse_a and lse_b must have shape"):
        ak.merge_attention(out, lse[..., :2], out, lse)


@pytest.mark.skipif("cpu" not in ak.available_backends("cpu"), reason="the C++ CPU extension is not built")
@pytest.mark.parametrize("tq,tl,causal", [(513, 513, False), (700, 700, True), (1000, 1000, True), (300, 1100, True),
                                          (257, 770, False)])
def test_long_segments_with_ragged_sizes(tq, tl, causal):
    """Key and query blocks are balanced around their targets (a sliver joins the other blocks): sizes
    just past a block boundary, causal bands whose fully visible part changes size per query block."""
    args = make_inputs(b=1, h=2, hkv=1, tq=tq, tl=tl, tr=5, d=16, seed=tq)
    got = ak.mixed_precision_attention(**args, backend="cpu", causal=causal)
    want = ak.mixed_precision_attention(**args, backend="reference", causal=causal)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", MERGE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_after_a_prior_equals_merging_the_partials(backend, dtype, causal):
    """ak.attention(..., prior=partial) covers both key sets in one pass: the merge of the two partials."""
    gen = torch.Generator().manual_seed(8)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    q, k, v = rnd(2, 4, 9, 16), rnd(2, 2, 11, 16), rnd(2, 2, 11, 16)
    prior_out, prior_lse = ak.attention(q, rnd(2, 2, 5, 16), rnd(2, 2, 5, 16), backend=backend)
    prior_out, prior_lse = prior_out.clone(), prior_lse.clone()
    prior_out[0, 1, :3], prior_lse[0, 1, :3] = 0, float("-inf")  # rows whose prior saw no key
    out, lse = ak.attention(q, k, v, causal=causal, prior=(prior_out, prior_lse), backend=backend)
    want, want_lse = reference.merge_attention(prior_out, prior_lse, *ak.attention(q, k, v, causal=causal,
                                                                                   backend="reference"))
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    assert out.dtype == dtype and out.transpose(1, 2).is_contiguous()  # token-major, as merge_attention
    # no local key at all: the prior alone
    empty = ak.attention(q, k[:, :, :0], v[:, :, :0], prior=(prior_out, prior_lse), backend=backend)
    torch.testing.assert_close(empty[0], prior_out, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", MERGE_BACKENDS)
def test_attention_after_gradients_match_the_reference(backend):
    gen = torch.Generator().manual_seed(9)
    leaves = [torch.randn(1, 2, 3, 8, generator=gen), torch.randn(1, 1, 4, 8, generator=gen),
              torch.randn(1, 1, 4, 8, generator=gen), torch.randn(1, 2, 3, 8, generator=gen),
              torch.randn(1, 2, 3, generator=gen)]
    grads = []
    for use in (backend, "reference"):
        xs = [t.clone().requires_grad_() for t in leaves]
        out, lse = ak.attention(*xs[:3], prior=(xs[3], xs[4]), backend=use)
        (out.square().sum() + lse.sum()).backward()
        grads.append([x.grad for x in xs])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_attention_after_rejects_mismatched_priors():
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 1, 5, 4)
    out, lse = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3)
    with pytest.raises(TypeError, match="prior must be a tuple"):
        ak.attention(q, k, k, prior=out)
    with pytest.raises(ValueError, match="prior out must match q"):
        ak.attention(q, k, k, prior=(out[:, :, :2], lse))
    with pytest.raises(ValueError, match="prior lse must be float32"):
        ak.attention(q, k, k, prior=(out, lse.double()))
    with pytest.raises(ValueError, match="k and v must have shape"):
        ak.attention(q, k, k[:, :, :2], prior=(out, lse))
