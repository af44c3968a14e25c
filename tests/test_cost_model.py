"""The cost model that picks how remote tokens are attended: its documented properties and measured choices."""
import math

import pytest
import torch
from runtime_helpers import tiny_lm

import astra
from astra_kernels import cost_model as cm


def shape(**kw):
    base = dict(batch=1, heads=12, kv_heads=12, head_dim=64, queries=256, remote=768, groups=1, codebook_size=1024,
                model_dim=768, skips_unused=False)
    return cm.RemoteShape(**{**base, **kw})


def test_table_bytes_are_two_fp32_tables_per_layer():
    s = shape(groups=32)
    assert s.table_bytes == 2 * 32 * 1024 * 768 * 4
    assert shape(groups=32, elem_bytes=2).table_bytes == s.table_bytes // 2


@pytest.mark.parametrize("heads,kv_heads,queries,want", [(12, 12, 256, 1), (12, 12, 257, 2), (12, 12, 513, 3),
                                                         (32, 8, 64, 1), (32, 8, 65, 2), (8, 8, 1, 1)])
def test_query_tiles_follow_the_kernel_task_size(heads, kv_heads, queries, want):
    """A tile holds QUERY_TILE_ROWS query rows, the query heads of one KV head counted together."""
    assert cm.query_tiles(shape(heads=heads, kv_heads=kv_heads, queries=queries)) == want


def test_codeword_cost_does_not_grow_with_remote_tokens_unless_unused_codes_are_skipped():
    short, long = shape(remote=2048), shape(remote=1 << 20)
    tokens_short, tokens_long = cm.costs(short)["tokens"], cm.costs(long)["tokens"]
    assert tokens_long > 400 * tokens_short  # linear in Tr
    # only the histogram grows (one add per remote token)
    assert cm.costs(long)["codewords"] - cm.costs(short)["codewords"] == pytest.approx(long.remote - short.remote)
    # skipping unused codes: cost grows with the expected number of distinct codes, capped at K
    few = shape(remote=16, skips_unused=True)
    many = shape(remote=1 << 20, skips_unused=True)
    assert cm.costs(few)["codewords"] < cm.costs(shape(remote=16))["codewords"] / 10
    assert cm.costs(many)["codewords"] == pytest.approx(cm.costs(shape(remote=1 << 20))["codewords"], rel=1e-6)


def test_codewords_only_for_one_group():
    assert "codewords" in cm.costs(shape(groups=1))
    for g in (2, 16, 32):
        s = shape(groups=g, remote=1 << 16)
        assert "codewords" not in cm.costs(s)
        assert cm.attention_formulation(s) == "tokens"
        assert cm.remote_plan(s, table_budget_bytes=1 << 40) != "codewords"


def test_over_budget_tables_force_dequantize_and_the_cheapest_wins_within_budget():
    s = shape(groups=32)
    c = cm.costs(s)
    assert s.gather_table_bytes == s.table_bytes // 2  # fp16 storage of fp32 tables
    assert cm.remote_plan(s, table_budget_bytes=s.gather_table_bytes - 1) == "dequantize"
    assert cm.remote_plan(s, table_budget_bytes=s.table_bytes - 1) == min(("gather", "dequantize"), key=c.get)
    assert cm.remote_plan(s, table_budget_bytes=s.table_bytes) == min(c, key=c.get)


@pytest.mark.parametrize("dtype,stored", [(torch.float32, torch.float16), (torch.float16, torch.float16),
                                          (torch.bfloat16, torch.bfloat16), (torch.float64, torch.float64)])
def test_gather_tables_are_half_precision_only_for_fp32_models(dtype, stored):
    assert cm.gather_table_dtype(dtype) == stored
    assert shape(elem_bytes=dtype.itemsize).gather_elem_bytes == stored.itemsize


@pytest.mark.parametrize(
    "kw,budget,want",
    [
        # the paper shape (Tq = 256, Tr = 768): codewords at G = 1 (tables 6 MiB fit the default budget)
        (dict(groups=1, skips_unused=True), cm.TABLE_BUDGET_BYTES, "codewords"),
        # long context, G = 1: codewords whatever the kernel
        (dict(groups=1, remote=16384), cm.TABLE_BUDGET_BYTES, "codewords"),
        # G = 32, Tq = 256, Tr = 768 with the tables allowed, one ViT-Base block on one core: the fp16 gather
        # (measured 17.4 ms; fused token gather 18.8 ms; dequantize 22.3 ms)
        (dict(groups=32), 1 << 30, "gather"),
        # ViT-Base N = 2 blocks (Tq = 513, Tr = 512), G = 32, 96 MiB of fp16 tables allowed: the gather (measured
        # 1.07 s vs 1.11 s with the projection GEMM, whole model, 2 ranks, one core each; the fused token
        # gather was 1.31 s)
        (dict(groups=32, queries=513, remote=512), 96 << 20, "gather"),
        # the same blocks where the 8-bit tables run (CPU): 48.5 MiB, the quickest (measured 1.03 s vs 1.07 s
        # with fp16 tables, 2 ranks; 13.7 vs 17.6 ms in the G = 32 microbenchmark)
        (dict(groups=32, queries=513, remote=512, int8_gather=True), 96 << 20, "gather_int8"),
        (dict(groups=32, queries=513, remote=512, int8_gather=True), 49 << 20, "gather_int8"),
        # the default budget keeps 96 MiB of fp16 (192 MiB of fp32) tables out, and lets 48.5 MiB of 8-bit ones in
        (dict(groups=32), cm.TABLE_BUDGET_BYTES, "dequantize"),
        (dict(groups=32, int8_gather=True), cm.TABLE_BUDGET_BYTES, "gather_int8"),
        (dict(groups=32, int8_gather=True), 16 << 20, "dequantize"),
    ],
)
def test_measured_choices(kw, budget, want):
    assert cm.remote_plan(shape(**kw), budget) == want


def test_streamed_tables_cost_more_per_gathered_element():
    small, big = shape(groups=1), shape(groups=32)
    assert small.table_bytes <= cm.CACHE_BYTES < big.table_bytes
    per_element = {}
    for s in (small, big):
        no_gather = 2 * s.batch * s.heads * s.queries * s.head_dim * s.remote
        gathered = cm.query_tiles(s) * s.batch * s.remote * s.groups * 2 * s.kv_heads * s.head_dim
        per_element[s.groups] = (cm.costs(s)["tokens"] - no_gather) / gathered
    assert per_element == {1: cm.GATHER_COST_CACHED, 32: cm.GATHER_COST_STREAMED}
    # the gather's fp16 rows stream half the bytes, once per call
    gather = (cm.costs(big)["gather"] - no_gather) / (big.batch * big.remote * big.groups * 2 * big.kv_heads * big.head_dim)
    assert gather == cm.GATHER_COST_STREAMED / 2
    # 8-bit rows: a quarter of the bytes, plus each row's scale and offset
    s8 = shape(groups=32, int8_gather=True)
    width = s8.kv_heads * s8.head_dim
    assert s8.int8_gather_table_bytes == 2 * 32 * 1024 * (width + cm.INT8_ROW_EXTRA_BYTES)
    gather8 = (cm.costs(s8)["gather_int8"] - no_gather) / (s8.batch * s8.remote * s8.groups * 2 * width)
    assert gather8 == pytest.approx(cm.GATHER_COST_STREAMED / 4 * (width + cm.INT8_ROW_EXTRA_BYTES) / width)
    assert "gather_int8" not in cm.costs(big)  # only where the quantized op runs


def test_the_engine_reports_what_its_blocks_pick_and_honours_the_budget():
    model = tiny_lm()
    x = torch.randint(0, 50, (1, 40), generator=torch.Generator().manual_seed(0))
    books = astra.calibrate(model, [x], 16, 4, progress=False)
    assert astra.AstraEngine(model, books, table_budget_bytes=0).remote_formulations(x, 2) == ["dequantize"]
    roomy = astra.AstraEngine(model, books, table_budget_bytes=1 << 30)
    plan = roomy.plans[0]
    layout = roomy.layout(x, 2)
    s = plan.shape(1, layout.size(1), layout.tokens - layout.size(1))
    c = cm.costs(s)
    assert roomy.remote_formulations(x, 2) == [min(c, key=c.get)]
    assert math.isfinite(c["tokens"]) and c["tokens"] > 0
