"""How a block attends to remote tokens it knows only by their VQ codes.

Per block, a :class:`RemotePlan` holds what the formulations of
:mod:`astra_kernels.cost_model` need: the projected K/V tables (built once,
only when they fit the memory budget) and the codebook (for
dequantize-then-project). Each call picks the cheapest allowed formulation
for its shape, unless one is forced.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import astra_kernels as ak
from astra_kernels import backends, cost_model, reference

from .models.base import BlockWeights

STRATEGIES = ("auto", "tokens", "codewords", "dequantize")


class RemotePlan:
    def __init__(self, block: BlockWeights, codebook: torch.Tensor, strategy: str = "auto",
                 table_budget_bytes: int = cost_model.TABLE_BUDGET_BYTES):
        if strategy not in STRATEGIES:
            raise ValueError(f"remote strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        g = codebook.shape[0]
        if strategy == "codewords" and g != 1:
            raise ValueError(f"the codewords strategy needs G = 1, got G={g}")
        self.block, self.codebook, self.strategy = block, codebook, strategy
        self.table_budget_bytes = table_budget_bytes
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def shape(self, batch: int, queries: int, remote: int, backend: str | None = None) -> cost_model.RemoteShape:
        b = self.block
        kernel = backends.resolve(backend, self.codebook.device, "mixed_precision_attention")
        return cost_model.RemoteShape(
            batch=batch, heads=b.heads, kv_heads=b.kv_heads, head_dim=b.head_dim, queries=queries, remote=remote,
            groups=self.codebook.shape[0], codebook_size=self.codebook.shape[1], model_dim=b.dim,
            elem_bytes=self.codebook.element_size(), skips_unused=cost_model.skips_unused_codewords(kernel),
        )

    def choose(self, batch: int, queries: int, remote: int, backend: str | None = None) -> str:
        if self.strategy != "auto":
            return self.strategy
        return cost_model.remote_plan(self.shape(batch, queries, remote, backend), self.table_budget_bytes)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_table, v_table), each (G, K, Hkv*d) with the K/V bias folded in; built on first use."""
        if self._tables is None:
            b = self.block
            with torch.no_grad():
                self._tables = (
                    ak.project_codebooks(self.codebook, b.w_k, b.b_k),
                    ak.project_codebooks(self.codebook, b.w_v, b.b_v),
                )
        return self._tables

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Tr, Hkv*d) -> (B, Hkv, Tr, d)."""
        return x.reshape(x.shape[0], x.shape[1], self.block.kv_heads, self.block.head_dim).transpose(1, 2)

    def _dequantized_kv(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the codes and project them with W_k and W_v (one GEMM): each (B, Hkv, Tr, d)."""
        b = self.block
        kv = F.linear(ak.vq_decode(codes, self.codebook), b.w_kv, b.b_kv)
        return tuple(self._heads(t) for t in kv.split(b.kv_heads * b.head_dim, dim=-1))

    def remote_kv(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Materialized remote keys/values (B, Hkv, Tr, d), e.g. for a decoding KV cache."""
        if self.choose(codes.shape[0], 1, codes.shape[1]) == "dequantize":
            return self._dequantized_kv(codes)
        k_table, v_table = self.tables()
        return (self._heads(reference.gather_tables(codes, k_table)),
                self._heads(reference.gather_tables(codes, v_table)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, codes: torch.Tensor, causal: bool,
               backend: str | None) -> torch.Tensor:
        """One attention of q (B, H, T, d) over the remote tokens (codes (B, Tr, G)) and then the
        local keys k, v (B, Hkv, T, d) of the same T tokens as q: (B, H, T, d)."""
        how = self.choose(q.shape[0], q.shape[2], codes.shape[1], backend)
        if how == "dequantize":
            rk, rv = self._dequantized_kv(codes)
            # remote keys first: with Tq = Tl the causal alignment leaves them all visible
            return ak.attention(q, torch.cat([rk, k], dim=2), torch.cat([rv, v], dim=2), causal=causal,
                                backend=backend)[0]
        k_table, v_table = self.tables()
        return ak.mixed_precision_attention(q, k, v, codes, k_table, v_table, causal=causal, strategy=how,
                                            backend=backend)[0]
