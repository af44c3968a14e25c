"""Single-thread CPU microbenchmarks of mixed-precision attention (C++ backend) against baselines of the same run.

    python -m pytest benchmarks/micro/test_bench_attention_cpu.py --benchmark-enable --benchmark-only

Paper shape: B = 1, H = Hkv = 12, d = 64, D = 768, Tq = Tl = 256 local tokens
(causal), Tr remote tokens quantized with G groups of K = 1024 codewords,
float32, fixed seed. Each (op, shape) is its own benchmark, grouped by shape,
so pytest-benchmark's table shows the ratios (the number in parentheses is
relative to the fastest op of the group):

    astra           ak.mixed_precision_attention(backend="cpu"), projected tables
                    precomputed (not timed), formulation from the cost model
    astra_codewords the same with formulation="codewords" (G = 1)
    astra_tokens    the same with formulation="tokens"
    astra_2threads  astra with torch.set_num_threads(2) (multi-thread speed-up)
    straightforward x_hat = vq_decode(codes); k_r, v_r = x_hat @ W^T + b;
                    concatenate with the local K/V; SDPA with a boolean mask
    gather_sdpa     k_r, v_r = sum_g table[g, codes] (reference.gather_tables);
                    concatenate; SDPA with a boolean mask
    runtime_plan    what a block runs with the default table budget:
                    astra.remote.RemotePlan.attend, the cost model's choice
                    (named in the group, with the tables' memory); for
                    dequantize: decode + one K/V GEMM, then the local and
                    remote partials (ak.attention) and their LSE merge
    runtime_gather  the same with the "gather" formulation: fp16 projected
                    tables (G = 32: 96 MiB, built once, not timed) summed once
                    per call by F.embedding_bag, then the two partials + merge
    runtime_gather_int8  the same from 8-bit row-wise tables (G = 32: 48.5
                    MiB) summed by torch's quantized embedding bag
    attention/sdpa  (Tr = 0) ak.attention(q, k, v, causal=True) vs
                    F.scaled_dot_product_attention(..., is_causal=True)

With --benchmark-disable (CI) every body runs once as a plain test and its
output is checked against reference.mixed_precision_attention.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import astra_kernels as ak
from astra.models.base import BlockWeights, Norm
from astra.remote import RemotePlan
from astra_kernels import reference

HEADS = 12
HEAD_DIM = 64
D = HEADS * HEAD_DIM
K = 1024
LOCAL = 256
SEED = 0
# Same math on every path; fp32 rounding of different association orders only.
RTOL = ATOL = 2e-4

PAPER_OPS = ("astra", "astra_codewords", "astra_2threads", "straightforward", "gather_sdpa", "runtime_plan")
# (remote tokens, groups, ops)
SHAPES = [
    (768, 1, PAPER_OPS),
    (768, 32, ("astra", "astra_2threads", "straightforward", "gather_sdpa", "runtime_plan", "runtime_gather",
               "runtime_gather_int8")),
    (16384, 1, ("astra_codewords", "astra_tokens", "gather_sdpa")),
]
CASES = [(tr, g, op) for tr, g, ops in SHAPES for op in ops]


def _require_cpu_backend():
    if "cpu" not in ak.available_backends("cpu"):
        pytest.skip("the C++ CPU backend (astra_kernels._C) is not built")


@functools.lru_cache(maxsize=None)
def _block(groups: int):
    """(BlockWeights with random K/V projections, codebooks (G, K, D/G)); only what RemotePlan reads is real."""
    gen = torch.Generator().manual_seed(SEED + groups)
    w_qkv = torch.randn(3 * D, D, generator=gen) / D**0.5
    b_qkv = torch.randn(3 * D, generator=gen) * 0.1
    norm = Norm(torch.ones(D), torch.zeros(D), 1e-5)
    unused = torch.empty(0)
    block = BlockWeights(norm, w_qkv, b_qkv, unused, None, norm, unused, None, unused, None, F.gelu,
                         heads=HEADS, kv_heads=HEADS, head_dim=HEAD_DIM)
    codebooks = torch.randn(groups, K, D // groups, generator=gen)
    return block, codebooks


@functools.lru_cache(maxsize=None)
def _inputs(remote: int, groups: int):
    """q (1, H, Tl, d), k/v_local (1, H, Tl, d), codes (1, Tr, G) int32, k/v tables (G, K, D)."""
    block, codebooks = _block(groups)
    gen = torch.Generator().manual_seed(SEED + remote + groups)
    q, k_local, v_local = (torch.randn(1, HEADS, LOCAL, HEAD_DIM, generator=gen) for _ in range(3))
    codes = torch.randint(0, K, (1, remote, groups), generator=gen, dtype=torch.int32)
    k_table = ak.project_codebooks(codebooks, block.w_k, block.b_k)
    v_table = ak.project_codebooks(codebooks, block.w_v, block.b_v)
    return q, k_local, v_local, codes, k_table, v_table


@functools.lru_cache(maxsize=None)
def _expected(remote: int, groups: int) -> torch.Tensor:
    q, k_local, v_local, codes, k_table, v_table = _inputs(remote, groups)
    formulation = "codewords" if groups == 1 else "tokens"
    out, _ = reference.mixed_precision_attention(q, k_local, v_local, codes, k_table, v_table, None, None, True,
                                                 HEAD_DIM**-0.5, formulation)
    return out


def _mask(remote: int, local: int) -> torch.Tensor:
    """(Tl, Tr + Tl) boolean, True = attend: remote always, local causal."""
    return torch.cat([torch.ones(local, remote, dtype=torch.bool),
                      torch.ones(local, local, dtype=torch.bool).tril()], dim=1)


def _heads(x: torch.Tensor) -> torch.Tensor:
    """(1, T, H*d) -> (1, H, T, d)."""
    return x.reshape(x.shape[0], x.shape[1], HEADS, HEAD_DIM).transpose(1, 2)


def _op_fn(op: str, remote: int, groups: int):
    q, k_local, v_local, codes, k_table, v_table = _inputs(remote, groups)
    block, codebooks = _block(groups)
    mask = _mask(remote, LOCAL)
    if op.startswith("astra"):
        if op == "astra_2threads":
            torch.set_num_threads(2)
        formulation = {"astra_codewords": "codewords", "astra_tokens": "tokens"}.get(op)
        return lambda: ak.mixed_precision_attention(q, k_local, v_local, codes, k_table, v_table, causal=True,
                                                    formulation=formulation, backend="cpu")[0]
    if op == "straightforward":
        def straightforward():
            x_hat = ak.vq_decode(codes, codebooks)
            k_r = _heads(F.linear(x_hat, block.w_k, block.b_k))
            v_r = _heads(F.linear(x_hat, block.w_v, block.b_v))
            return F.scaled_dot_product_attention(q, torch.cat([k_r, k_local], 2), torch.cat([v_r, v_local], 2),
                                                  attn_mask=mask)
        return straightforward
    if op == "gather_sdpa":
        def gather_sdpa():
            k_r = _heads(reference.gather_tables(codes, k_table))
            v_r = _heads(reference.gather_tables(codes, v_table))
            return F.scaled_dot_product_attention(q, torch.cat([k_r, k_local], 2), torch.cat([v_r, v_local], 2),
                                                  attn_mask=mask)
        return gather_sdpa
    formulation = {"runtime_gather": "gather", "runtime_gather_int8": "gather_int8"}.get(op, "auto")
    plan = RemotePlan(block, codebooks, formulation)

    def runtime_plan():
        return plan.attend(q, k_local, v_local, codes, causal=True, backend="cpu")
    runtime_plan()  # builds the tables its formulation needs, once per layer like the runtime (not timed)
    return runtime_plan


@pytest.mark.parametrize("remote,groups,op", CASES, ids=[f"Tr{tr}-G{g}-{op}" for tr, g, op in CASES])
def test_mixed_precision_attention_cpu(benchmark, remote, groups, op):
    _require_cpu_backend()
    block, codebooks = _block(groups)
    plan = RemotePlan(block, codebooks)
    shape = plan.shape(1, LOCAL, remote)
    table_mb = shape.table_bytes / 2**20
    benchmark.group = (f"mixed-precision attention Tq=Tl={LOCAL} Tr={remote} G={groups} K={K} H={HEADS} d={HEAD_DIM} "
                       f"causal (tables {table_mb:.0f} MiB; runtime picks {plan.choose(1, LOCAL, remote)})")
    benchmark.extra_info.update(remote=remote, groups=groups, table_bytes=shape.table_bytes,
                                runtime_choice=plan.choose(1, LOCAL, remote))
    out = benchmark(_op_fn(op, remote, groups))
    rounded = {"runtime_gather": "gather", "runtime_gather_int8": "gather_int8"}.get(op)
    if op == "runtime_plan":
        rounded = plan.choose(1, LOCAL, remote)
    tol = {"gather": 1e-3, "gather_int8": 2e-2}.get(rounded, RTOL)  # fp16 / 8-bit table rows
    torch.testing.assert_close(out, _expected(remote, groups), rtol=tol, atol=tol)


LOCAL_ONLY = 512


@functools.lru_cache(maxsize=None)
def _local_inputs():
    gen = torch.Generator().manual_seed(SEED)
    return tuple(torch.randn(1, HEADS, LOCAL_ONLY, HEAD_DIM, generator=gen) for _ in range(3))


@pytest.mark.parametrize("op", ["attention", "sdpa"])
def test_causal_attention_cpu(benchmark, op):
    _require_cpu_backend()
    q, k, v = _local_inputs()
    benchmark.group = f"causal attention Tq=Tk={LOCAL_ONLY} H={HEADS} d={HEAD_DIM} (no remote tokens)"
    if op == "attention":
        fn = lambda: ak.attention(q, k, v, causal=True, backend="cpu")[0]  # noqa: E731
    else:
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    out = benchmark(fn)
    want, _ = reference.mixed_precision_attention(q, k, v, torch.zeros(1, 0, 1, dtype=torch.int32),
                                                  q.new_zeros(1, 1, D), q.new_zeros(1, 1, D), None, None, True,
                                                  HEAD_DIM**-0.5, "tokens")
    torch.testing.assert_close(out, want, rtol=RTOL, atol=ATOL)
