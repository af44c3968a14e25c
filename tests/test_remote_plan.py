"""RemotePlan: the runtime's four formulations of attention over code-only remote tokens, against the oracle."""
import dataclasses

import pytest
import torch
from runtime_helpers import tiny_lm

import astra
import astra_kernels as ak
from astra import block as B
from astra.remote import RemotePlan
from astra_kernels import cost_model, reference


def _setup(groups=4, kv_heads=2, batch=2, queries=9, remote=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    blk = astra.adapt(tiny_lm(kv_heads=kv_heads)).blocks[0]
    codebook = torch.randn(groups, 16, blk.dim // groups, generator=gen)
    codes = torch.randint(0, 16, (batch, remote, groups), generator=gen, dtype=torch.int32)
    z = torch.randn(batch, queries, blk.dim, generator=gen)
    return blk, codebook, codes, B.project(blk, z)


def _oracle(blk, codebook, codes, q, k, v, causal):
    """Remote keys/values from the fp32 tables (pure torch), then one attention over [remote; local]."""
    kt, vt = (reference.project_codebooks(codebook, w, b) for w, b in ((blk.w_k, blk.b_k), (blk.w_v, blk.b_v)))
    heads = lambda t: t.reshape(t.shape[0], t.shape[1], blk.kv_heads, blk.head_dim).transpose(1, 2)  # noqa: E731
    rk, rv = heads(reference.gather_tables(codes, kt)), heads(reference.gather_tables(codes, vt))
    full = ak.attention(q, torch.cat([rk, k], 2), torch.cat([rv, v], 2), causal=causal, backend="reference")
    return full[0]


@pytest.mark.parametrize("strategy", ["tokens", "gather", "dequantize"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("remote", [1, 7, 40])
def test_every_formulation_matches_the_oracle(strategy, causal, remote):
    blk, codebook, codes, (q, k, v) = _setup(remote=remote)
    plan = RemotePlan(blk, codebook, strategy)
    want = _oracle(blk, codebook, codes, q, k, v, causal)
    got = B.attend(plan, q, k, v, codes, causal, None, B.local_partial(plan, q, k, v, remote, causal, None))
    tol = 1e-3 if strategy == "gather" else 1e-5  # fp16 table rows
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_the_gather_table_is_half_precision_and_sums_rows_in_fp32():
    blk, codebook, codes, _ = _setup(groups=8)
    plan = RemotePlan(blk, codebook, "gather")
    table = plan.gather_table()
    g, kk, _ = codebook.shape
    assert table.dtype == torch.float16 and table.shape == (g * kk, 2 * blk.kv_heads * blk.head_dim)
    rk, rv = plan.remote_kv(codes)
    # exactly: fp32 sums of the fp16 rows, rounded once to fp16
    halves = table.float().reshape(g, kk, -1)
    want = reference.gather_tables(codes, halves).half().float()
    got = torch.cat([t.transpose(1, 2).flatten(2) for t in (rk, rv)], dim=-1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_projection_beyond_fp16_range_keeps_an_fp32_table():
    blk, codebook, codes, (q, k, v) = _setup()
    big = dataclasses.replace(blk, w_qkv=blk.w_qkv * 1e6)  # K/V rows of 1e4..1e6: inf in fp16
    plan = RemotePlan(big, codebook, "gather")
    assert plan.gather_table().dtype == torch.float32
    rk, _ = plan.remote_kv(codes)
    want, _ = RemotePlan(big, codebook, "dequantize").remote_kv(codes)
    assert torch.isfinite(rk).all()
    torch.testing.assert_close(rk, want, rtol=1e-4, atol=1e-2)


def test_the_local_partial_exists_only_for_materializing_formulations():
    blk, codebook, codes, (q, k, v) = _setup(groups=1)
    for strategy in ("tokens", "codewords"):
        assert B.local_partial(RemotePlan(blk, codebook, strategy), q, k, v, 7, True, None) is None
    for strategy in cost_model.MATERIALIZED:
        plan = RemotePlan(blk, codebook, strategy)
        out, lse = B.local_partial(plan, q, k, v, 7, True, None)
        want = ak.attention(q, k, v, causal=True)
        assert torch.equal(out, want[0]) and torch.equal(lse, want[1])
        assert B.local_partial(plan, q, k, v, 0, True, None) is None  # no remote tokens: nothing to overlap
        # handing the partial over changes nothing
        assert torch.equal(B.attend(plan, q, k, v, codes, True, None, (out, lse)),
                           B.attend(plan, q, k, v, codes, True, None))


def test_auto_picks_by_cost_within_the_budget():
    blk, codebook, codes, (q, k, v) = _setup(groups=8, queries=600, remote=600)
    shape = RemotePlan(blk, codebook).shape(2, 600, 600)
    c = cost_model.costs(shape)
    assert RemotePlan(blk, codebook, table_budget_bytes=0).choose(2, 600, 600) == "dequantize"
    # room for the half-precision tables only: the fused kernels' fp32 tables are out
    assert shape.gather_table_bytes * 2 == shape.table_bytes
    between = RemotePlan(blk, codebook, table_budget_bytes=shape.gather_table_bytes)
    assert between.choose(2, 600, 600) == min(("gather", "dequantize"), key=c.get)
    roomy = RemotePlan(blk, codebook, table_budget_bytes=1 << 30)
    assert roomy.choose(2, 600, 600) == min(c, key=c.get)
