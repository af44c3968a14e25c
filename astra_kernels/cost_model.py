"""Cost model: how to attend to remote tokens known only by their VQ codes.

Five formulations compute the same attention (exactly in exact arithmetic,
but for the rounded tables of ``gather_int8``):

``codewords`` (G = 1 only)
    Attend over the K projected codewords, each with a log(count) bias, count =
    number of remote tokens carrying that code (0 masks it). Cost independent
    of the number of remote tokens Tr. Kernels that skip unused codewords (the
    C++ CPU one) attend only the distinct codes present: about
    K (1 - (1 - 1/K)^Tr) of them for uniformly spread codes.
``tokens``
    Gather each remote token's key/value from the projected tables
    (sum over G rows) inside the attention loop.
``gather``
    Sum each remote token's G table rows once per call, from tables stored in
    half precision (``GATHER_TABLE_DTYPE``: half the bytes to stream, fp32
    accumulation), then attend to the results as ordinary keys/values.
``gather_int8`` (CPU)
    ``gather`` from tables rounded to 8 bits per element, row by row (an fp32
    scale and offset per row: torch's quantized embedding bag, FBGEMM's
    layout). A quarter of the fp32 bytes; approximate, not exact: each row
    element moves by at most (row max - row min) / 510, which moves a model's
    outputs far less than the vector quantization itself does (figures:
    benchmarks/RESULTS.md).
``dequantize``
    Decode codes to D-dim embeddings and project them with W_k, W_v (a GEMM),
    then attend to them as ordinary tokens. Needs no projected tables, whose
    memory is 2 * G * K * Hkv*d elements per layer (192 MiB fp32, 96 MiB half
    for G = 32, K = 1024, D = 768), so it is the choice when they do not fit.

Blocks with rotary positions (RoPE) rotate each remote key at its token's
global position (``RemoteShape.rotary``): ``tokens`` rotates the gathered rows
inside the kernel, the materialized formulations rotate the keys they build
in one more pass over them, and ``codewords`` is out (a codeword's tokens sit
at different positions).

``gather``, ``gather_int8`` and ``dequantize`` build the remote keys/values as
ordinary tokens, so the runtime attends the local keys first, while the codes
travel, and merges the two partials (:mod:`astra.block`).

Costs are counted in multiply-adds of fp32 work per call, with memory-bound
steps converted by a factor: ``GATHER_COST_*`` multiply-adds per gathered table
element. Cache-resident table rows cost about one FMA; fp32 rows streamed from
tables larger than the caches cost ``GATHER_COST_STREAMED``, fitted so that the
token gather matches, then loses to, one projection GEMM where the measured
ViT-Base blocks do (G = 16, then 32), and streamed rows cost in proportion to
their bytes (half precision: 8, 8-bit rows: about 4), as the measured gathers
of K and V against decode-and-project do (figures: benchmarks/RESULTS.md).
The fused kernels gather the remote tile once per tile of ``QUERY_TILE_ROWS``
query rows (all heads of a KV group together), so the gather is counted once
per query tile. The kernels call
:func:`attention_formulation`; the runtime calls :func:`remote_plan`, which also
weighs the table memory against ``table_budget_bytes``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Multiply-adds charged per table element gathered: cache-resident vs streamed from memory.
GATHER_COST_CACHED = 1.0
GATHER_COST_STREAMED = 16.0
# Query rows (queries x heads per KV head) that share one gathered remote tile (the C++ kernel's task).
QUERY_TILE_ROWS = 256
# Tables larger than this stream from memory (a generous per-core L2 + share of L3).
CACHE_BYTES = 8 << 20
# Default per-layer budget for the two projected tables (K and V): room for the 8-bit tables of D = 768,
# K = 1024, G = 32 (48.5 MiB), not for their fp16 ones (96 MiB).
TABLE_BUDGET_BYTES = 64 << 20
# Storage of the ``gather`` tables when the model computes in fp32 (narrower dtypes are kept).
GATHER_TABLE_DTYPE = torch.float16
# Bytes an 8-bit table row carries besides its values: its fp32 scale and offset.
INT8_ROW_EXTRA_BYTES = 8
# Multiply-adds charged per remote key element rotated: two products and a sum, plus the element's read and
# write (in the kernel's tile for ``tokens``, a pass over the built keys for the materialized formulations).
ROTATION_COST = 4.0
# Formulations that build remote keys/values as ordinary tokens (attended apart from the local ones).
MATERIALIZED = ("gather", "gather_int8", "dequantize")


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
    int8_gather: bool = False  # gather_int8 runs on this device (torch's quantized CPU op)
    rotary: bool = False  # remote keys are rotated at their tokens' positions (RoPE)

    @property
    def table_bytes(self) -> int:
        """Memory of the K and V projected tables of one layer."""
        return self.table_elements * self.elem_bytes

    @property
    def gather_elem_bytes(self) -> int:
        """Bytes per table element as the ``gather`` formulation stores them (see :func:`gather_table_dtype`)."""
        return GATHER_TABLE_DTYPE.itemsize if self.elem_bytes == 4 else self.elem_bytes

    @property
    def gather_table_bytes(self) -> int:
        return self.table_elements * self.gather_elem_bytes

    @property
    def int8_gather_table_bytes(self) -> int:
        """Memory of the K and V tables of ``gather_int8``: a byte per element, plus each row's scale and offset."""
        return self.table_elements + self.table_rows * INT8_ROW_EXTRA_BYTES

    @property
    def table_rows(self) -> int:
        """Rows of the K and V tables together: one per code and group."""
        return 2 * self.groups * self.codebook_size

    @property
    def table_elements(self) -> int:
        return self.table_rows * self.kv_heads * self.head_dim


def gather_table_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the ``gather`` formulation stores the tables of a ``dtype`` model in."""
    return GATHER_TABLE_DTYPE if dtype == torch.float32 else dtype


def _gather_cost(table_bytes: int, elem_bytes: float) -> float:
    if table_bytes <= CACHE_BYTES:
        return GATHER_COST_CACHED
    return GATHER_COST_STREAMED * elem_bytes / 4  # memory-bound: in proportion to the bytes streamed


def query_tiles(s: RemoteShape) -> int:
    """How many times the fused kernels gather each remote token: once per tile of query rows."""
    per_tile = max(1, QUERY_TILE_ROWS // (s.heads // s.kv_heads))
    return max(1, -(-s.queries // per_tile))


def costs(s: RemoteShape) -> dict[str, float]:
    """Estimated multiply-adds of each formulation (codewords only when G = 1 without rotary positions)."""
    per_key = 2 * s.batch * s.heads * s.queries * s.head_dim  # q.k and p.v for one key, all queries
    kv_width = 2 * s.kv_heads * s.head_dim  # K and V elements per remote token
    rows = s.batch * s.remote * s.groups * kv_width  # table elements summed into the remote keys/values
    rotated = ROTATION_COST * s.batch * s.remote * s.kv_heads * s.head_dim if s.rotary else 0.0  # one pass
    out = {
        "tokens": per_key * s.remote
        + (_gather_cost(s.table_bytes, s.elem_bytes) * rows + rotated) * query_tiles(s),
        "gather": per_key * s.remote + _gather_cost(s.gather_table_bytes, s.gather_elem_bytes) * rows + rotated,
        "dequantize": per_key * s.remote
        + s.batch * s.remote * s.model_dim * kv_width  # projection GEMM
        + GATHER_COST_CACHED * s.batch * s.remote * s.model_dim  # decode
        + rotated,
    }
    if s.int8_gather:
        bytes_per_element = s.int8_gather_table_bytes / s.table_elements
        out["gather_int8"] = (per_key * s.remote + _gather_cost(s.int8_gather_table_bytes, bytes_per_element) * rows
                              + rotated)
    if s.groups == 1 and not s.rotary:
        k = s.codebook_size
        keys = k * (1 - (1 - 1 / k) ** s.remote) if s.skips_unused else k
        out["codewords"] = per_key * keys + s.batch * s.remote  # + histogram
    return out


def skips_unused_codewords(backend: str) -> bool:
    """Whether a backend's codeword segment attends only the codes that occur."""
    return backend == "cpu"


def attention_formulation(s: RemoteShape) -> str:
    """Inside the attention op (tables given): ``codewords`` or ``tokens``."""
    c = costs(s)
    return "codewords" if "codewords" in c and c["codewords"] < c["tokens"] else "tokens"


def remote_plan(s: RemoteShape, table_budget_bytes: int = TABLE_BUDGET_BYTES,
                formulations: tuple[str, ...] | None = None) -> str:
    """For the runtime: the cheapest formulation whose tables fit ``table_budget_bytes``
    (``dequantize`` needs none), among ``formulations`` (default: all that :func:`costs` lists)."""
    fits = {"tokens": s.table_bytes, "codewords": s.table_bytes, "gather": s.gather_table_bytes,
            "gather_int8": s.int8_gather_table_bytes, "dequantize": 0}
    c = {how: cost for how, cost in costs(s).items()
         if fits[how] <= table_budget_bytes and (formulations is None or how in formulations)}
    return min(c, key=c.get)
