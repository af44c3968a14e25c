"""Sequence-parallel baselines that exchange full-precision data (no quantization).

``x`` mode (plain SP, Voltage-style): each rank sends its tokens' block inputs
(attention inputs) in fp32 or fp16, and projects the remote ones to K/V
itself: (N-1)/N * T * D values received per rank per block.
``kv`` mode (ring-attention volume, K/V all-gather): each rank sends its
tokens' keys and values: 2 (N-1)/N * T * Hkv*d values per block.

Both give the unmodified model's outputs (up to fp16 rounding of the wire in
``sp_fp16``): a class token lives on rank 0 as an ordinary token. With rotary
positions, ``x`` mode rotates the remote keys it projects at their positions,
``kv`` mode sends keys already rotated. Exchanges overlap the local attention,
as in ASTRA.
"""
from __future__ import annotations

import torch

import astra_kernels as ak
from astra import block as B
from astra.engine import PhaseTimer
from astra.models import adapt
from astra.partition import Layout, sequence_layout
from astra.transport import Transport


class SequenceParallel:
    """``mode`` "x" with ``wire_dtype`` float32 (sp_fp32) / float16 (sp_fp16), or "kv" (kv_sp)."""

    def __init__(self, model: torch.nn.Module, mode: str = "x", wire_dtype: torch.dtype = torch.float32,
                 backend: str | None = None):
        if mode not in ("x", "kv"):
            raise ValueError(f"mode must be 'x' or 'kv', got {mode!r}")
        self.adapter, self.mode, self.wire_dtype, self.backend = adapt(model), mode, wire_dtype, backend
        self.name = "kv_sp" if mode == "kv" else {torch.float32: "sp_fp32", torch.float16: "sp_fp16"}[wire_dtype]

    def _tokens(self, layout: Layout, rank: int) -> int:
        """Tokens held by ``rank``: its chunk, plus the class token(s) on rank 0."""
        return layout.size(rank) + (self.adapter.class_tokens if rank == 0 else 0)

    def _as_bytes(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.wire_dtype).contiguous().view(torch.uint8).reshape(-1)

    def _from_bytes(self, data: torch.Tensor, shape, dtype) -> torch.Tensor:
        return data.view(self.wire_dtype).reshape(shape).to(dtype)

    @torch.no_grad()
    def run_rank(self, inputs: torch.Tensor, transport: Transport, *, timer: PhaseTimer | None = None,
                 logits_to_keep: int | None = None):
        """This rank's outputs: LM logits of its positions (of its last ``logits_to_keep`` ones only, if given),
        class logits on rank 0 (None elsewhere)."""
        timer = timer or PhaseTimer()
        a = self.adapter
        if logits_to_keep is not None and (a.class_tokens or logits_to_keep < 0):
            raise ValueError(f"logits_to_keep={logits_to_keep}: a count >= 0 of per-token outputs, for models "
                             "without a class token")
        layout = sequence_layout(a, a.num_tokens(inputs), transport.world_size)  # ASTRA's default (balanced) cut
        rank = transport.rank
        dests, srcs = layout.destinations(rank), layout.sources(rank)
        with timer("embed"):
            start, stop = layout.bounds(rank)
            h = a.embed(inputs, start, stop)
            if a.class_tokens and rank == 0:
                h = torch.cat([a.class_token(h.shape[0]).to(h.dtype), h], dim=1)
            rotation = a.rotary(torch.arange(start, stop))
            remote_rotation = None
            if rotation is not None and srcs:
                remote_rotation = a.rotary(torch.cat([torch.arange(*layout.bounds(s)) for s in srcs]))
        batch, elem = h.shape[0], torch.finfo(self.wire_dtype).bits // 8
        blocks = a.blocks

        def sizes_of(bw):
            width = bw.dim if self.mode == "x" else 2 * bw.kv_heads * bw.head_dim
            return {s: batch * self._tokens(layout, s) * width * elem for s in srcs}

        transport.prepost(sizes_of(blocks[0]), "block0")
        for i, bw in enumerate(blocks):
            kvd = bw.kv_heads * bw.head_dim
            width = bw.dim if self.mode == "x" else 2 * kvd
            sizes = sizes_of(bw)
            with timer("local"):
                z = B.attention_input(bw, h)
                q, k, v = B.project(bw, z)
                q, k = B.rotate(q, rotation), B.rotate(k, rotation)
                payload = self._as_bytes(z if self.mode == "x" else B.kv_features(k, v))
            handle = transport.exchange(payload, dests, sizes, tag=f"block{i}") if dests or srcs else None
            with timer("local"):
                out, lse = ak.attention(q, k, v, causal=a.causal, backend=self.backend)
            if handle is not None:
                with timer("wait"):
                    parts = handle.wait()
                if i + 1 < len(blocks):  # as in ASTRA: the next receives are posted before computing
                    transport.prepost(sizes_of(blocks[i + 1]), f"block{i + 1}")
            with timer("finish"):
                if srcs:
                    remote = torch.cat(
                        [self._from_bytes(parts[s], (batch, self._tokens(layout, s), width), h.dtype) for s in srcs], 1
                    )
                    if self.mode == "x":
                        rk, rv = B.project_kv(bw, remote)
                        rk = B.rotate(rk, remote_rotation)
                    else:
                        rk, rv = B.split_kv_features(remote, bw.kv_heads)
                    r_out, r_lse = ak.attention(q, rk, rv, backend=self.backend)
                    out, lse = ak.merge_attention(out, lse, r_out, r_lse)
                h = B.residual(bw, h, out)
        with timer("head"):
            if not a.class_tokens:
                return a.token_outputs(h if logits_to_keep is None else h[:, max(0, h.shape[1] - logits_to_keep):])
            return a.class_outputs(h[:, 0]) if rank == 0 else None
