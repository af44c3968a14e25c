"""Single-thread CPU microbenchmark of mixed-precision attention with rotary remote keys (RoPE), at the
attention shape of Llama-3.2-1B, against materializing baselines of the same run.

    python -m pytest benchmarks/micro/test_bench_rope_attention_cpu.py --benchmark-enable --benchmark-only

Shape: B = 1, H = 32 query heads, Hkv = 8 kv heads, d = 64 (D = 2048), Tq = Tl = 512 local tokens (causal)
at positions 512..1023, Tr = 512 remote tokens at positions 0..511, quantized with G groups of K = 1024
codewords, rope_theta 500000, float32, fixed seed. Each (op, G) is its own benchmark, grouped by G:

    astra_rope          ak.mixed_precision_attention(backend="cpu", remote_rotation=...): each remote
                        token's G table rows summed into the kernel's tile and rotated there
    gather_rotate_sdpa  the remote K/V summed from the same tables by F.embedding_bag (torch's fastest
                        gather), the keys rotated as Hugging Face's apply_rotary_pos_emb does, concatenated
                        with the local K/V, F.scaled_dot_product_attention with a boolean mask (remote all
                        visible, local causal) over the grouped kv heads
    runtime_plan        what a Llama block runs: astra.remote.RemotePlan.attend with the cost model's choice
                        within the default table budget (named in the group)

With --benchmark-disable (CI) every body runs once as a plain test and its output is checked against
reference.mixed_precision_attention.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import astra_kernels as ak
from astra.models.base import BlockWeights, Norm
from astra.remote import RemotePlan, half_angles
from astra_kernels import reference

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 64
D = HEADS * HEAD_DIM
K = 1024
LOCAL = REMOTE = 512
THETA = 500000.0
SEED = 0
RTOL = ATOL = 2e-4
OPS = ("astra_rope", "gather_rotate_sdpa", "runtime_plan")
CASES = [(g, op) for g in (1, 32) for op in OPS]


def _rotation(first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) (count, d) of positions first.., Hugging Face's layout (each half a copy of the other)."""
    inv_freq = THETA ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    angles = torch.arange(first, first + count, dtype=torch.float64)[:, None] * inv_freq
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().float(), emb.sin().float()


def _rotate(x: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    cos, sin = rotation
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@functools.lru_cache(maxsize=None)
def _block(groups: int):
    """(a Llama-shaped BlockWeights with random K/V projections, codebooks (G, K, D/G)); only what RemotePlan
    reads is real."""
    gen = torch.Generator().manual_seed(SEED + groups)
    w_qkv = torch.randn((HEADS + 2 * KV_HEADS) * HEAD_DIM, D, generator=gen) / D**0.5
    norm = Norm(torch.ones(D), None, 1e-5, kind="rms")
    unused = torch.empty(0)
    block = BlockWeights(norm, w_qkv, None, unused, None, norm, unused, None, unused, None, F.silu,
                         heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM, rotary=True)
    return block, torch.randn(groups, K, D // groups, generator=gen)


@functools.lru_cache(maxsize=None)
def _inputs(groups: int):
    """q (1, H, Tl, d) and k_local (1, Hkv, Tl, d) rotated at positions Tr.., v_local, codes (1, Tr, G) int32,
    k/v tables (G, K, Hkv*d), the remote tokens' rotation."""
    block, codebooks = _block(groups)
    gen = torch.Generator().manual_seed(SEED + 1 + groups)
    local_rotation = _rotation(REMOTE, LOCAL)
    q = _rotate(torch.randn(1, HEADS, LOCAL, HEAD_DIM, generator=gen), local_rotation)
    k_local = _rotate(torch.randn(1, KV_HEADS, LOCAL, HEAD_DIM, generator=gen), local_rotation)
    v_local = torch.randn(1, KV_HEADS, LOCAL, HEAD_DIM, generator=gen)
    codes = torch.randint(0, K, (1, REMOTE, groups), generator=gen, dtype=torch.int32)
    k_table = ak.project_codebooks(codebooks, block.w_k)
    v_table = ak.project_codebooks(codebooks, block.w_v)
    return q, k_local, v_local, codes, k_table, v_table, _rotation(0, REMOTE)


@functools.lru_cache(maxsize=None)
def _expected(groups: int) -> torch.Tensor:
    q, k_local, v_local, codes, k_table, v_table, rotation = _inputs(groups)
    return reference.mixed_precision_attention(q, k_local, v_local, codes, k_table, v_table, None, None, True,
                                               HEAD_DIM**-0.5, "tokens", half_angles(rotation))[0]


def _heads(x: torch.Tensor) -> torch.Tensor:
    """(1, T, Hkv*d) -> (1, Hkv, T, d)."""
    return x.reshape(x.shape[0], x.shape[1], KV_HEADS, HEAD_DIM).transpose(1, 2)


def _op_fn(op: str, groups: int):
    q, k_local, v_local, codes, k_table, v_table, rotation = _inputs(groups)
    if op == "astra_rope":
        angles = half_angles(rotation)
        return lambda: ak.mixed_precision_attention(q, k_local, v_local, codes, k_table, v_table, causal=True,
                                                    remote_rotation=angles, backend="cpu")[0]
    if op == "gather_rotate_sdpa":
        rows = (codes.long() + torch.arange(groups) * K).flatten(0, 1)  # (Tr, G) rows of the flat tables
        k_flat, v_flat = k_table.flatten(0, 1), v_table.flatten(0, 1)
        mask = torch.cat([torch.ones(LOCAL, REMOTE, dtype=torch.bool),
                          torch.ones(LOCAL, LOCAL, dtype=torch.bool).tril()], dim=1)

        def gather_rotate_sdpa():
            k_r = _rotate(_heads(F.embedding_bag(rows, k_flat, mode="sum")[None]), rotation)
            v_r = _heads(F.embedding_bag(rows, v_flat, mode="sum")[None])
            return F.scaled_dot_product_attention(q, torch.cat([k_r, k_local], 2), torch.cat([v_r, v_local], 2),
                                                  attn_mask=mask, enable_gqa=True)
        return gather_rotate_sdpa
    block, codebooks = _block(groups)
    plan = RemotePlan(block, codebooks)

    def runtime_plan():
        return plan.attend(q, k_local, v_local, codes, causal=True, backend="cpu", rotation=rotation)
    runtime_plan()  # builds the tables its formulation needs, once per layer like the runtime (not timed)
    return runtime_plan


@pytest.mark.parametrize("groups,op", CASES, ids=[f"G{g}-{op}" for g, op in CASES])
def test_rope_mixed_precision_attention_cpu(benchmark, groups, op):
    if "cpu" not in ak.available_backends("cpu"):
        pytest.skip("the C++ CPU backend (astra_kernels._C) is not built")
    block, codebooks = _block(groups)
    plan = RemotePlan(block, codebooks)
    choice = plan.choose(1, LOCAL, REMOTE)
    benchmark.group = (f"RoPE mixed-precision attention, Llama-3.2-1B shape: H={HEADS} Hkv={KV_HEADS} "
                       f"d={HEAD_DIM} Tq=Tl={LOCAL} Tr={REMOTE} G={groups} K={K} causal fp32 "
                       f"(runtime picks {choice})")
    benchmark.extra_info.update(groups=groups, runtime_choice=choice,
                                table_bytes=plan.shape(1, LOCAL, REMOTE).table_bytes)
    out = benchmark(_op_fn(op, groups))
    # the runtime's table rows in fp16 (gather) or 8 bits (gather_int8)
    tol = {"gather": 1e-3, "gather_int8": 2e-2}.get(choice, RTOL) if op == "runtime_plan" else RTOL
    torch.testing.assert_close(out, _expected(groups), rtol=tol, atol=tol)
