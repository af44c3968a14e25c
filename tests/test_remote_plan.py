"""RemotePlan: the runtime's five formulations of attention over code-only remote tokens, against the oracle."""
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


@pytest.mark.parametrize("formulation", ["tokens", "gather", "gather_int8", "dequantize"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("remote", [1, 7, 40])
def test_every_formulation_matches_the_oracle(formulation, causal, remote):
    blk, codebook, codes, (q, k, v) = _setup(remote=remote)
    plan = RemotePlan(blk, codebook, formulation)
    want = _oracle(blk, codebook, codes, q, k, v, causal)
    got = B.attend(plan, q, k, v, codes, causal, None, B.local_partial(plan, q, k, v, remote, causal, None))
    tol = {"gather": 1e-3, "gather_int8": 2e-2}.get(formulation, 1e-5)  # fp16 / 8-bit table rows
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def _int8_rows_oracle(packed: torch.Tensor) -> torch.Tensor:
    """Pure-torch reading of torch's row-wise 8-bit layout: values, then the row's fp32 scale and offset."""
    scale_offset = packed[:, -8:].contiguous().view(torch.float32)  # (rows, 2)
    return packed[:, :-8].float() * scale_offset[:, :1] + scale_offset[:, 1:]


@pytest.mark.parametrize("groups,kv_heads,remote", [(4, 2, 7), (8, 1, 33), (1, 2, 5)])
def test_int8_gather_sums_the_rounded_rows_within_their_bound(groups, kv_heads, remote):
    blk, codebook, codes, _ = _setup(groups=groups, kv_heads=kv_heads, remote=remote)
    plan = RemotePlan(blk, codebook, "gather_int8")
    rk, rv = plan.remote_kv(codes)
    exact = RemotePlan(blk, codebook, "dequantize").remote_kv(codes)
    width = blk.kv_heads * blk.head_dim
    flat = lambda t: t.transpose(1, 2).flatten(2)  # noqa: E731  (B, Hkv, Tr, d) -> (B, Tr, Hkv*d)
    for got, packed, table, want in zip((rk, rv), plan.int8_tables(), plan._project_tables(), exact):
        assert packed.dtype == torch.uint8 and packed.shape == (groups * 16, width + 8)
        # the op is the sum of the rows as the layout defines them
        rounded = _int8_rows_oracle(packed)
        torch.testing.assert_close(flat(got), reference.gather_tables(codes, rounded.reshape(groups, 16, width)),
                                   rtol=1e-6, atol=1e-5)
        # and each row moved by at most half a step of its own grid
        rows = table.flatten(0, 1)
        step = (rows.amax(1) - rows.amin(1)) / 255
        assert ((rounded - rows).abs() <= step[:, None] / 2 * (1 + 1e-5) + 1e-6).all()
        bound = reference.gather_tables(codes, (step[:, None] / 2).expand_as(rows).reshape(groups, 16, width))
        assert ((flat(got) - flat(want)).abs() <= bound * (1 + 1e-4) + 1e-4).all()
        assert not torch.equal(flat(got), flat(want))  # rounded for real


@pytest.mark.parametrize("formulation,groups", [("tokens", 1), ("tokens", 4), ("codewords", 1)])
def test_remote_kv_of_the_fused_formulations_sums_their_tables_rows(formulation, groups):
    """The decoding cache's remote keys/values when the fused kernels attend: sums of the fp32 table rows."""
    blk, codebook, codes, _ = _setup(groups=groups, remote=23)
    plan = RemotePlan(blk, codebook, formulation)
    flat = lambda t: t.transpose(1, 2).flatten(2)  # noqa: E731  (B, Hkv, Tr, d) -> (B, Tr, Hkv*d)
    for got, table in zip(plan.remote_kv(codes), plan.tables()):
        assert got.shape == (2, blk.kv_heads, 23, blk.head_dim) and got.dtype == table.dtype
        torch.testing.assert_close(flat(got), reference.gather_tables(codes, table), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("formulation", cost_model.MATERIALIZED)
def test_materialized_remote_kv_of_no_remote_tokens_is_empty(formulation):
    blk, codebook, _, _ = _setup()
    rk, rv = RemotePlan(blk, codebook, formulation).remote_kv(torch.zeros((2, 0, 4), dtype=torch.int32))
    assert rk.shape == rv.shape == (2, blk.kv_heads, 0, blk.head_dim)


def test_int8_gather_refuses_a_device_without_the_quantized_op(monkeypatch):
    blk, codebook, _, _ = _setup()
    monkeypatch.setattr(astra.remote, "int8_gather_available", lambda device: False)
    with pytest.raises(ValueError, match="gather_int8 formulation needs torch's quantized CPU ops"):
        RemotePlan(blk, codebook, "gather_int8")
    assert "gather_int8" not in cost_model.costs(RemotePlan(blk, codebook).shape(1, 4, 4))


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
    for formulation in ("tokens", "codewords"):
        assert B.local_partial(RemotePlan(blk, codebook, formulation), q, k, v, 7, True, None) is None
    for formulation in cost_model.MATERIALIZED:
        plan = RemotePlan(blk, codebook, formulation)
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
    assert between.choose(2, 600, 600) == min(("gather", "gather_int8", "dequantize"), key=c.get)
    # room for the 8-bit tables only
    assert shape.int8_gather_table_bytes < shape.gather_table_bytes
    int8_only = RemotePlan(blk, codebook, table_budget_bytes=shape.int8_gather_table_bytes)
    assert int8_only.choose(2, 600, 600) == min(("gather_int8", "dequantize"), key=c.get)
    roomy = RemotePlan(blk, codebook, table_budget_bytes=1 << 30)
    assert roomy.choose(2, 600, 600) == min(c, key=c.get)


@pytest.mark.parametrize("formulation", ["tokens", "gather", "gather_int8", "dequantize"])
@pytest.mark.parametrize("bad", [16, -1, 10**6])
def test_every_formulation_refuses_a_code_outside_its_group(formulation, bad):
    """A code >= K in an early group selects a row of the flattened tables that exists (the next group's):
    every formulation refuses it instead of reading that row."""
    blk, codebook, codes, (q, k, v) = _setup()
    codes = codes.clone()
    codes[1, 3, 0] = bad
    plan = RemotePlan(blk, codebook, formulation)
    with pytest.raises(ValueError, match=rf"codes contains {bad}, outside \[0, 16\)"):
        B.attend(plan, q, k, v, codes, False, None, B.local_partial(plan, q, k, v, codes.shape[1], False, None))
