"""ASTRA inference of one model: the per-rank distributed forward and its
single-process simulation.

Each rank owns a contiguous chunk of the sequence. Per block it quantizes its
tokens' attention inputs, sends the bit-packed codes to the ranks that need
them, projects (and, for the formulations that need it, attends) its own
tokens at full precision while the codes travel, then attends to the remote
tokens through codebook lookups (:mod:`astra.block`). Models with a class
token keep a copy on every rank (Distributed Class Tokens) and average the
final class states.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

import astra_kernels as ak
from astra_kernels import cost_model

from . import block as B
from .codebooks import Codebooks
from .models import adapt
from .partition import Layout
from .remote import RemotePlan
from .transport import Transport

ENCODINGS = ("auto", "exact", "int8")


class PhaseTimer:
    """Accumulated wall time per phase name (seconds)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


@dataclass
class KVCache:
    """Per block (keys, values) (B, Hkv, T, d) of every position seen so far, for decoding."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]


class AstraEngine:
    """ASTRA for one model and its per-block codebooks.

    Args:
        model: GPT2LMHeadModel, ViTForImageClassification or TinyTransformer (unmodified).
        codebooks: one (G, K, D/G) codebook per block.
        formulation: how remote tokens are attended ("auto": the cost model, or
            "tokens", "codewords", "gather", "gather_int8", "dequantize"; see
            :mod:`astra_kernels.cost_model`).
        backend: astra_kernels backend for every op (None: fastest available).
        encode: how tokens are quantized: "exact" (nearest codeword,
            :func:`astra_kernels.vq_encode`), "int8" (by int8-estimated scores,
            :func:`astra_kernels.vq_encode_int8`: about 3 % of codes pick a
            near-nearest codeword) or "auto" (int8 where its SIMD kernels run,
            see :func:`astra_kernels.int8_estimate_native`, else exact).
    """

    def __init__(self, model: torch.nn.Module, codebooks: Codebooks, *, formulation: str = "auto",
                 backend: str | None = None, table_budget_bytes: int = cost_model.TABLE_BUDGET_BYTES,
                 encode: str = "auto"):
        if encode not in ENCODINGS:
            raise ValueError(f"encode must be one of {', '.join(ENCODINGS)}, got {encode!r}")
        self.adapter = adapt(model)
        blocks = self.adapter.blocks
        codebooks.check(len(blocks), self.adapter.dim)
        ref = blocks[0].w_qkv
        self.codebooks = codebooks.to(dtype=ref.dtype, device=ref.device)
        self.plans = [RemotePlan(b, cb, formulation, table_budget_bytes) for b, cb in zip(blocks, self.codebooks.tensors)]
        self.backend = backend
        if encode == "auto":
            native = backend in (None, "cpu") and ak.int8_estimate_native(ref.device)
            encode = "int8" if native else "exact"
        self.encode = encode
        self._encoders = [ak.VqEncoder(cb, int8=encode == "int8", backend=backend) for cb in self.codebooks.tensors]

    @property
    def causal(self) -> bool:
        return self.adapter.causal

    def layout(self, inputs: torch.Tensor, world_size: int) -> Layout:
        return Layout(self.adapter.num_tokens(inputs), world_size, self.causal)

    def remote_formulations(self, inputs: torch.Tensor, world_size: int) -> list[str]:
        """The remote-attention formulations the blocks pick for the last rank's shape (the most remote tokens)."""
        layout = self.layout(inputs, world_size)
        mine = layout.size(world_size - 1)
        return sorted({p.choose(inputs.shape[0], mine, layout.tokens - mine, self.backend) for p in self.plans})

    def payload_bytes(self, batch: int, tokens: int) -> int:
        """Bytes of one rank's packed codes for one block."""
        return ak.packed_size(batch * tokens * self.codebooks.groups, self.codebooks.bits)

    def _embed(self, inputs: torch.Tensor, layout: Layout, rank: int) -> torch.Tensor:
        start, stop = layout.bounds(rank)
        h = self.adapter.embed(inputs, start, stop)
        if self.adapter.class_tokens:
            h = torch.cat([self.adapter.class_token(h.shape[0]).to(h.dtype), h], dim=1)
        return h

    # --- one rank of a distributed run -------------------------------------

    @torch.no_grad()
    def run_rank(self, inputs: torch.Tensor, transport: Transport, *, timer: PhaseTimer | None = None,
                 cache: KVCache | None = None) -> torch.Tensor:
        """This rank's outputs: LM logits of its own positions (B, T_r, V), or class logits (B, C).

        ``inputs`` is the whole batch (token ids or pixels); the rank embeds only
        its chunk. With ``cache`` the rank records every block's keys/values
        (remote ones materialized from the codes) for decoding.
        """
        timer = timer or PhaseTimer()
        layout = self.layout(inputs, transport.world_size)
        rank, c, bits = transport.rank, self.adapter.class_tokens, self.codebooks.bits
        dests, srcs = layout.destinations(rank), layout.sources(rank)
        with timer("embed"):
            h = self._embed(inputs, layout, rank)
        batch = h.shape[0]
        blocks = self.adapter.blocks
        sizes = {s: self.payload_bytes(batch, layout.size(s)) for s in srcs}
        remote = sum(layout.size(s) for s in srcs)
        transport.prepost(sizes, "block0")
        for i, (bw, plan) in enumerate(zip(blocks, self.plans)):
            handle = None
            with timer("encode"):
                z = B.attention_input(bw, h)
                payload = torch.empty(0, dtype=torch.uint8)
                if dests:
                    codes, _ = self._encoders[i](z[:, c:])
                    payload = ak.pack_codes(codes, bits, backend=self.backend)
            if dests or srcs:
                handle = transport.exchange(payload, dests, sizes, tag=f"block{i}")
            with timer("project"):
                q, k, v = B.project(bw, z)
            with timer("local"):
                local = B.local_partial(plan, q, k, v, remote, self.causal, self.backend)
            remote_codes = None
            if handle is not None:
                with timer("wait"):
                    parts = handle.wait()
                # the next block's receives, posted before computing: its codes flow meanwhile
                if i + 1 < len(blocks):
                    transport.prepost(sizes, f"block{i + 1}")
                if srcs:
                    shapes = [(batch, layout.size(s), self.codebooks.groups) for s in srcs]
                    remote_codes = torch.cat([ak.unpack_codes(parts[s].to(h.device), bits, shape, backend=self.backend)
                                              for s, shape in zip(srcs, shapes)], dim=1)
                    self._check_codes(remote_codes, srcs, layout, transport, f"block{i}")
            with timer("finish"):
                if cache is not None:
                    self._record(cache, plan, k, v, remote_codes)
                h = B.residual(bw, h, B.attend(plan, q, k, v, remote_codes, self.causal, self.backend, local))
        with timer("head"):
            if not c:
                return self.adapter.token_outputs(h)
            mine = h[:, 0].float().contiguous()
            parts = transport.allgather(mine.view(torch.uint8).reshape(-1), [mine.numel() * 4] * transport.world_size, "class")
            states = [mine if r == rank else parts[r].view(torch.float32).reshape(mine.shape) for r in range(transport.world_size)]
            return self.adapter.class_outputs(torch.stack(states).mean(0).to(h.dtype))

    def _check_codes(self, codes: torch.Tensor, srcs: list[int], layout: Layout, transport: Transport,
                     tag: str) -> None:
        """Every received code (B, T_remote, G) must index a codeword: a peer's code outside [0, K) fails the
        transport with a PeerError naming that peer (one min/max over all sources; per source only to name it)."""
        k = self.codebooks.codebook_size
        if not codes.numel():
            return
        lo, hi = torch.aminmax(codes)
        if bool((lo >= 0) & (hi < k)):
            return
        start = 0
        for s in srcs:
            part = codes[:, start: start + layout.size(s)]
            start += layout.size(s)
            bad = part[(part < 0) | (part >= k)]
            if bad.numel():
                raise transport.fail(s, tag, f"sent code {int(bad[0])} outside [0, {k}) "
                                             f"({bad.numel()} of {part.numel()} codes)")

    @staticmethod
    def _record(cache: KVCache, plan: RemotePlan, k: torch.Tensor, v: torch.Tensor, remote_codes) -> None:
        if remote_codes is not None and remote_codes.shape[1] > 0:
            rk, rv = plan.remote_kv(remote_codes)  # remote tokens precede the local ones
            k, v = torch.cat([rk, k], dim=2), torch.cat([rv, v], dim=2)
        cache.keys.append(k)
        cache.values.append(v)

    # --- all ranks in one process ------------------------------------------

    @torch.no_grad()
    def simulate(self, inputs: torch.Tensor, world_size: int) -> list[torch.Tensor]:
        """Every rank's outputs as :meth:`run_rank` returns them, computed in one process.

        The same block functions run in the same order with the same shapes as
        in a distributed run; only the bytes do not travel (codes are handed
        over directly), so the results match a distributed run exactly up to
        thread-count effects in the underlying kernels.
        """
        layout = self.layout(inputs, world_size)
        c = self.adapter.class_tokens
        hs = [self._embed(inputs, layout, r) for r in range(world_size)]
        for i, (bw, plan) in enumerate(zip(self.adapter.blocks, self.plans)):
            zs = [B.attention_input(bw, h) for h in hs]
            codes = {
                r: self._encoders[i](zs[r][:, c:])[0]
                for r in range(world_size)
                if layout.destinations(r)
            }
            projections = [B.project(bw, z) for z in zs]
            for r in range(world_size):
                srcs = layout.sources(r)
                remote = torch.cat([codes[s] for s in srcs], dim=1) if srcs else None
                local = B.local_partial(plan, *projections[r], sum(layout.size(s) for s in srcs), self.causal,
                                        self.backend)
                out = B.attend(plan, *projections[r], remote, self.causal, self.backend, local)
                hs[r] = B.residual(bw, hs[r], out)
        if not c:
            return [self.adapter.token_outputs(h) for h in hs]
        pooled = torch.stack([h[:, 0].float() for h in hs]).mean(0).to(hs[0].dtype)
        out = self.adapter.class_outputs(pooled)
        return [out] * world_size

    def forward(self, inputs: torch.Tensor, world_size: int) -> torch.Tensor:
        """Simulated ASTRA output of the whole sequence: LM logits (B, T, V) or class logits (B, C)."""
        outs = self.simulate(inputs, world_size)
        return outs[0] if self.adapter.class_tokens else torch.cat(outs, dim=1)

