"""Cost model: how to attend to remote tokens known only by their VQ codes.

Three formulations compute the same attention (exactly, in exact arithmetic):

``codewords`` (G = 1 only)
    Attend over the K projected codewords, each with a log(count) bias, count =
    number of remote tokens carrying that code (0 masks it). Cost independent
    of the number of remote tokens Tr. Kernels that skip unused codewords (the
    C++ CPU one) attend only the distinct codes present: about
    K (1 - (1 - 1/K)^Tr) of them for uniformly spread codes.
``tokens``
    Gather each remote token's key/value from the projected tables
    (sum over G rows) inside the attention loop.
``dequantize``
    Decode codes to D-dim embeddings and project them with W_k, W_v (a GEMM),
    then attend to them as ordinary tokens. Needs no projected tables, whose
    memory is 2 * G * K * Hkv*d elements per layer (100 MB fp32 for G = 32,
    K = 1024, D = 768), so it is the only sane choice for large G.

Costs are counted in multiply-adds of fp32 work per call, with memory-bound
steps converted by a factor: ``GATHER_COST_*`` multiply-adds per gathered table
element. Cache-resident table rows cost about one FMA; rows streamed from
tables larger than the caches cost ~16 (measured on ViT-Base, 12 blocks at
G = 16 and 32: the token gather matched, then lost to, one projection GEMM).
The fused kernels gather the remote tile once per tile of ``QUERY_TILE_ROWS``
query rows (all heads of a KV group together), so the gather is counted once
per query tile. The kernels call
:func:`attention_strategy`; the runtime calls :func:`remote_plan`, which also
weighs the table memory against ``table_budget_bytes``.
"""
from __future__ import annotations

from dataclasses import dataclass

# Multiply-adds charged per table element gathered: cache-resident vs streamed from memory.
GATHER_COST_CACHED = 1.0
GATHER_COST_STREAMED = 16.0
# Query rows (queries x heads per KV head) that share one gathered remote tile (the C++ kernel's task).
QUERY_TILE_ROWS = 256
# Tables larger than this stream from memory (a generous per-core L2 + share of L3).
CACHE_BYTES = 8 << 20
# Default per-layer budget for the two projected tables (K and V), fp32.
TABLE_BUDGET_BYTES = 16 << 20


@dataclass(frozen=True)
class RemoteShape:
    """Sizes of one remote-attention call (per layer)."""

    batch: int
    heads: int  # query heads H
    kv_heads: int  # Hkv
    head_dim: int  # d
    queries: int  # Tq
    remote: int  # Tr
    groups: int  # G
    codebook_size: int  # K
    model_dim: int  # D
    elem_bytes: int = 4
    skips_unused: bool = False  # the kernel attends only codewords that occur

    @property
    def table_bytes(self) -> int:
        """Memory of the K and V projected tables of one layer."""
        return 2 * self.groups * self.codebook_size * self.kv_heads * self.head_dim * self.elem_bytes


def _gather_cost(s: RemoteShape) -> float:
    return GATHER_COST_CACHED if s.table_bytes <= CACHE_BYTES else GATHER_COST_STREAMED


def query_tiles(s: RemoteShape) -> int:
    """How many times the fused kernels gather each remote token: once per tile of query rows."""
    per_tile = max(1, QUERY_TILE_ROWS // (s.heads // s.kv_heads))
    return max(1, -(-s.queries // per_tile))


def costs(s: RemoteShape) -> dict[str, float]:
    """Estimated multiply-adds of each formulation (codewords only when G = 1)."""
    per_key = 2 * s.batch * s.heads * s.queries * s.head_dim  # q.k and p.v for one key, all queries
    kv_width = 2 * s.kv_heads * s.head_dim  # K and V elements per remote token
    gathered = query_tiles(s) * s.batch * s.remote * s.groups * kv_width
    out = {
        "tokens": per_key * s.remote + _gather_cost(s) * gathered,
        "dequantize": per_key * s.remote
        + s.batch * s.remote * s.model_dim * kv_width  # projection GEMM
        + GATHER_COST_CACHED * s.batch * s.remote * s.model_dim,  # decode
    }
    if s.groups == 1:
        k = s.codebook_size
        keys = k * (1 - (1 - 1 / k) ** s.remote) if s.skips_unused else k
        out["codewords"] = per_key * keys + s.batch * s.remote  # + histogram
    return out


def skips_unused_codewords(backend: str) -> bool:
    """Whether a backend's codeword segment attends only the codes that occur."""
    return backend == "cpu"


def attention_strategy(s: RemoteShape) -> str:
    """Inside the attention op (tables given): ``codewords`` or ``tokens``."""
    c = costs(s)
    return "codewords" if "codewords" in c and c["codewords"] < c["tokens"] else "tokens"


def remote_plan(s: RemoteShape, table_budget_bytes: int = TABLE_BUDGET_BYTES) -> str:
    """For the runtime: ``codewords``, ``tokens`` or ``dequantize`` (tables only within budget)."""
    if s.table_bytes > table_budget_bytes:
        return "dequantize"
    c = costs(s)
    return min(c, key=c.get)
