"""Single-thread CPU microbenchmarks of vq_encode (C++ backend) against baselines of the same run.

    python -m pytest benchmarks/micro/test_bench_vq_encode_cpu.py --benchmark-enable --benchmark-only

Shapes: T tokens x D = 768 features, K = 1024 codewords per group, G groups of
Dg = D / G, float32, fixed seed. Each (op, shape) is its own benchmark, grouped
by shape, so pytest-benchmark's table (and --benchmark-json) shows the ratios:

    astra          astra_kernels.vq_encode(x, codebooks, backend="cpu")
    astra_2threads the same with torch.set_num_threads(2) (multi-thread speed-up)
    astra_prepared astra_kernels.VqEncoder(codebooks) (codebooks packed once, outside the timing)
    astra_int8     astra_kernels.vq_encode_int8 (int8-estimated scores: approximate codes)
    astra_int8_prepared  VqEncoder(codebooks, int8=True), as the ASTRA runtime encodes
    torch_cdist    torch.cdist(x_g, e_g).argmin(-1), batched over groups as (G, T, Dg) vs (G, K, Dg)
    faiss          one faiss.IndexFlatL2(Dg) per group, search k=1 (indices built outside the timing)

With --benchmark-disable (CI) every body runs once as a plain test and the
chosen codes of each op are checked against the other ops' distances (the
int8 ops: within 1 % of their total, most codes equal).
"""
from __future__ import annotations

import functools

import pytest
import torch

import astra_kernels as ak

D = 768
K = 1024
SEED = 0
# Chosen distances agree up to fp32 score rounding (ties may pick other codes).
DIST_RTOL = 1e-4
DIST_ATOL = 1e-3

SHAPES = [(t, g) for t in (256, 1024) for g in (1, 16, 32)]
OPS = ("astra", "astra_2threads", "astra_prepared", "astra_int8", "astra_int8_prepared", "torch_cdist", "faiss")


@functools.lru_cache(maxsize=None)
def _inputs(tokens: int, groups: int):
    """x (T, D), codebooks (G, K, Dg), x_g (G, T, Dg) contiguous."""
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(tokens, D, generator=gen)
    codebooks = torch.randn(groups, K, D // groups, generator=gen)
    x_groups = x.reshape(tokens, groups, D // groups).transpose(0, 1).contiguous()
    return x, codebooks, x_groups


@functools.lru_cache(maxsize=None)
def _reference_distances(tokens: int, groups: int) -> torch.Tensor:
    """(T, G) float64 distance of the codes chosen by torch.cdist (the check's baseline)."""
    x, codebooks, x_groups = _inputs(tokens, groups)
    return _distances(tokens, groups, torch.cdist(x_groups, codebooks).argmin(-1).T)


def _distances(tokens: int, groups: int, codes: torch.Tensor) -> torch.Tensor:
    """(T, G) float64 squared distance of x_g to codebooks[g, codes[:, g]]."""
    _, codebooks, x_groups = _inputs(tokens, groups)
    chosen = torch.gather(codebooks, 1, codes.T.long().unsqueeze(-1).expand(-1, -1, D // groups))
    return ((x_groups.double() - chosen.double()) ** 2).sum(-1).T


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _astra_fn(op, x, codebooks):
    if op.endswith("prepared"):
        encoder = ak.VqEncoder(codebooks, int8="int8" in op, backend="cpu")
        return lambda: encoder(x)[0]
    encode = ak.vq_encode_int8 if "int8" in op else ak.vq_encode
    return lambda: encode(x, codebooks, backend="cpu")[0]


def _cdist_fn(x_groups, codebooks):
    return lambda: torch.cdist(x_groups, codebooks).argmin(-1).T


def _faiss_fn(x_groups, codebooks):
    faiss = _faiss()
    if faiss is None:
        pytest.skip("faiss-cpu is not installed")
    indices = []
    for g in range(codebooks.shape[0]):
        index = faiss.IndexFlatL2(codebooks.shape[2])
        index.add(codebooks[g].numpy())
        indices.append(index)
    queries = [x_groups[g].numpy() for g in range(x_groups.shape[0])]

    def search():
        return torch.stack([torch.from_numpy(ix.search(q, 1)[1][:, 0]) for ix, q in zip(indices, queries)], 1)

    return search


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("tokens,groups", SHAPES, ids=[f"T{t}-G{g}" for t, g in SHAPES])
def test_vq_encode_cpu(benchmark, op, tokens, groups):
    if "cpu" not in ak.available_backends("cpu"):
        pytest.skip("the C++ CPU backend (astra_kernels._C) is not built")
    x, codebooks, x_groups = _inputs(tokens, groups)
    benchmark.group = f"vq_encode T={tokens} D={D} K={K} G={groups} (Dg={D // groups})"
    benchmark.extra_info.update(tokens=tokens, groups=groups, flops=2 * tokens * K * D)
    if op.startswith("astra"):
        if op == "astra_2threads":
            torch.set_num_threads(2)
        fn = _astra_fn(op, x, codebooks)
    elif op == "torch_cdist":
        fn = _cdist_fn(x_groups, codebooks)
    else:
        fn = _faiss_fn(x_groups, codebooks)
    codes = benchmark(fn)

    assert codes.shape == (tokens, groups)
    got = _distances(tokens, groups, codes)
    want = _reference_distances(tokens, groups)
    if "int8" in op:
        assert got.sum() <= 1.01 * want.sum()
        assert (got == want).double().mean() > 0.8
    else:
        torch.testing.assert_close(got, want, rtol=DIST_RTOL, atol=DIST_ATOL)
