"""ASTRA inference of one model: the per-rank distributed forward and its
single-process simulation.

Each rank owns a contiguous chunk of the sequence. Per block it quantizes its
tokens' attention inputs (or, with ``quantize="kv"``, their keys before
rotation and values), sends the bit-packed codes to the ranks that need them,
projects (and, for the formulations that need it, attends) its own tokens at
full precision while the codes travel, then attends to the remote tokens
through codebook lookups (:mod:`astra.block`). Models with rotary positions
rotate queries and keys at their global positions; the rotary rows of a
rank's own and remote positions are computed once per forward. Models with a
class token keep a copy on every rank (Distributed Class Tokens) and average
the final class states.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch

import astra_kernels as ak

from . import block as B
from .codebooks import Codebooks, check_quantize
from .models import adapt
from .partition import Layout, check_partition, part_bounds, sequence_layout
from .remote import RemotePlan
from .transport import Transport

ENCODINGS = ("auto", "exact", "int8")


def _along_tokens(parts: list[torch.Tensor]) -> torch.Tensor:
    """Parts of hidden states (B, t_j, D) joined along the tokens (one part: itself, not a copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _output_parts(bw: B.BlockWeights, h: torch.Tensor, out: torch.Tensor, rows_of_parts: list[slice],
                  timer: "PhaseTimer", outputs: list[torch.Tensor]):
    """Yields a block's output (:func:`astra.block.residual`) part by part, each also appended to ``outputs``."""
    for rows in rows_of_parts:
        with timer("finish"):
            outputs.append(B.residual(bw, h[:, rows], out[:, :, rows]))
        yield outputs[-1]


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


class KVCache:
    """Per block, preallocated keys (rotated) and values (B, Hkv, capacity, d) of positions [0, length),
    for decoding; written in place (each block's buffers are allocated at its first write)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"a KV cache needs a capacity of at least one position, got {capacity}")
        self.capacity, self.length = capacity, 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def write(self, block: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, Hkv, t, d) at positions [start, start + t) of ``block`` (blocks are first written in
        order); returns views of that block's keys and values of positions [0, start + t)."""
        stop = start + k.shape[2]
        if stop > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} positions; position {stop - 1} does not fit")
        if block == len(self.keys):
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.keys.append(k.new_empty(shape))
            self.values.append(v.new_empty(shape))
        self.keys[block][:, :, start:stop] = k
        self.values[block][:, :, start:stop] = v
        self.length = max(self.length, stop)
        return self.keys[block][:, :, :stop], self.values[block][:, :, :stop]


class AstraEngine:
    """ASTRA for one model and its per-block codebooks.

    Args:
        model: an unmodified model that :func:`astra.adapt` supports (GPT2LMHeadModel, ViTForImageClassification,
            BertModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM) or TinyTransformer.
        codebooks: one codebook per block (:class:`astra.Codebooks`).
        formulation: how remote tokens are attended ("auto": the cost model, or
            "tokens", "codewords", "gather", "gather_int8", "dequantize"; see
            :func:`astra_kernels.remote_plan`). Blocks with rotary positions use only
            the materialized ones (gather, gather_int8, dequantize), ``quantize="kv"``
            only dequantize (:class:`astra.remote.RemotePlan`).
        backend: astra_kernels backend for every op (None: fastest available).
        encode: how tokens are quantized: "exact" (nearest codeword,
            :func:`astra_kernels.vq_encode`), "int8" (by int8-estimated scores,
            :func:`astra_kernels.vq_encode_int8`: some codes pick a near-nearest
            codeword, within the rounding bound it states) or "auto" (int8 where it is faster than exact,
            see :func:`astra_kernels.int8_estimate_native`, else exact).
        quantize: what each token sends codes of, "input" or "kv" (:mod:`astra.codebooks`); None: what the
            codebooks were calibrated for. Codebooks of the other kind are an error.
        exchange_parts: how many messages carry a rank's codes of one block to each peer. With P > 1 the block
            before computes its output part by part and sends each part's codes as soon as they exist, so the
            link carries the first parts while the rest are computed; the parts' smaller matrix products cost
            compute, so it pays only where the link time is long against a block's (benchmarks/RESULTS.md).
        partition: how the sequence is cut over the ranks (:mod:`astra.partition`): "balanced" (causal
            models: the later ranks, which attend to more earlier tokens, get fewer tokens) or "even".
    """

    def __init__(self, model: torch.nn.Module, codebooks: Codebooks, *, formulation: str = "auto",
                 backend: str | None = None, table_budget_bytes: int = ak.TABLE_BUDGET_BYTES,
                 encode: str = "auto", quantize: str | None = None, exchange_parts: int = 1,
                 partition: str = "balanced"):
        if encode not in ENCODINGS:
            raise ValueError(f"encode must be one of {', '.join(ENCODINGS)}, got {encode!r}")
        self.partition = check_partition(partition)
        if isinstance(exchange_parts, bool) or not isinstance(exchange_parts, int) or exchange_parts < 1:
            raise ValueError(f"exchange_parts must be a count >= 1, got {exchange_parts!r}")
        self.exchange_parts = exchange_parts
        self.adapter = adapt(model)
        blocks = self.adapter.blocks
        self.quantize = check_quantize(codebooks.quantize if quantize is None else quantize)
        codebooks.check(len(blocks), self.adapter.quantized_dim(self.quantize), self.quantize)
        ref = blocks[0].w_qkv
        self.codebooks = codebooks.to(dtype=ref.dtype, device=ref.device)
        self.plans = [RemotePlan(b, cb, formulation, table_budget_bytes, self.quantize)
                      for b, cb in zip(blocks, self.codebooks.tensors)]
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
        tokens = self.adapter.num_tokens(inputs)
        self.adapter.check_positions(tokens)  # every rank refuses alike, before any exchange
        return sequence_layout(self.adapter, tokens, world_size, self.partition)

    def remote_formulations(self, inputs: torch.Tensor, world_size: int) -> list[str]:
        """The remote-attention formulations the blocks pick for the last rank's shape (the most remote tokens)."""
        layout = self.layout(inputs, world_size)
        mine = layout.size(world_size - 1)
        return sorted({p.choose(inputs.shape[0], mine, layout.tokens - mine, self.backend) for p in self.plans})

    def payload_bytes(self, batch: int, tokens: int) -> int:
        """Bytes of one rank's packed codes for one block (``codebooks.codes_per_token`` codes per token)."""
        return self.codebooks.payload_bytes(batch * tokens)

    def _own_rows(self, tokens: int, parts: int) -> list[slice]:
        """Per part, its rows of a rank's hidden states (B, c + tokens, D); the class tokens go with the first."""
        c = self.adapter.class_tokens
        return [slice(0 if j == 0 else c + a, c + b) for j, (a, b) in enumerate(part_bounds(tokens, parts))]

    def _part_inputs(self, bw: B.BlockWeights, h: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """One part's attention inputs z (B, t, D) and, with ``quantize="kv"`` (its keys and values are what is
        encoded), its projections q, k, v (B, H|Hkv, t, d); else None."""
        z = B.attention_input(bw, h)
        return z, (B.project(bw, z) if self.quantize == "kv" else None)

    def _joined(self, parts: list[tuple[torch.Tensor, tuple | None]]) -> tuple[torch.Tensor, tuple | None]:
        """The parts' (z, qkv) along their tokens."""
        if len(parts) == 1:
            return parts[0]
        z = _along_tokens([p[0] for p in parts])
        return z, (tuple(torch.cat(t, dim=2) for t in zip(*(p[1] for p in parts))) if self.quantize == "kv" else None)

    def _embed(self, inputs: torch.Tensor, layout: Layout, rank: int) -> torch.Tensor:
        start, stop = layout.bounds(rank)
        h = self.adapter.embed(inputs, start, stop)
        if self.adapter.class_tokens:
            h = torch.cat([self.adapter.class_token(h.shape[0]).to(h.dtype), h], dim=1)
        return h

    def _rotations(self, layout: Layout, rank: int) -> tuple[B.Rotation | None, B.Rotation | None]:
        """The rotary embeddings of ``rank``'s own positions and of its remote tokens' (its sources' positions in
        order), computed once per forward for every block; (None, None) for models without rotary positions."""
        own = self.adapter.rotary(torch.arange(*layout.bounds(rank)))
        srcs = layout.sources(rank)
        if own is None or not srcs:
            return own, None
        return own, self.adapter.rotary(torch.cat([torch.arange(*layout.bounds(s)) for s in srcs]))

    def _quantized(self, z: torch.Tensor, qkv: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        """What the tokens send codes of: their attention inputs z (B, T, D), or the keys and values of their
        projections ``qkv`` (B, T, 2*Hkv*d)."""
        return z if self.quantize == "input" else B.kv_features(*qkv[1:])

    def _outputs(self, h: torch.Tensor, logits_to_keep: int | None) -> torch.Tensor:
        if logits_to_keep is None:
            return self.adapter.token_outputs(h)
        return self.adapter.token_outputs(h[:, max(0, h.shape[1] - logits_to_keep):])

    def _check_outputs(self, logits_to_keep: int | None, cache: KVCache | None) -> None:
        if logits_to_keep is not None and (self.adapter.class_tokens or logits_to_keep < 0):
            raise ValueError(f"logits_to_keep={logits_to_keep}: a count >= 0 of per-token outputs, for models "
                             "without a class token")
        if cache is not None and not self.causal:
            raise ValueError("a decoding KV cache needs a causal language model")

    def _record(self, cache: KVCache, block: int, plan: RemotePlan, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, remote_codes: torch.Tensor | None, rotation: B.Rotation | None,
                start: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Store one block's keys/values of positions [0, start + T) in ``cache``: the remote tokens' (positions
        [0, start): a causal rank's sources are all earlier ranks) rebuilt from their codes and rotated, then the
        local ones. Returns the remote keys/values, for :meth:`RemotePlan.attend` to reuse."""
        remote_kv = None
        if remote_codes is not None and remote_codes.shape[1] > 0:
            remote_kv = plan.remote_kv(remote_codes, rotation, queries=q.shape[2], backend=self.backend)
            cache.write(block, 0, *remote_kv)
        cache.write(block, start, k, v)
        return remote_kv

    # --- one rank of a distributed run -------------------------------------

    @torch.no_grad()
    def run_rank(self, inputs: torch.Tensor, transport: Transport, *, timer: PhaseTimer | None = None,
                 cache: KVCache | None = None, logits_to_keep: int | None = None) -> torch.Tensor:
        """This rank's outputs: LM logits of its own positions (B, T_r, V), or class logits (B, C).

        ``inputs`` is the whole batch (token ids or pixels); the rank embeds only
        its chunk. With ``cache`` (causal models) the rank records every block's
        keys/values of positions [0, its end), remote ones rebuilt from their codes,
        for decoding. ``logits_to_keep``: only the last n positions' outputs (B, n, V)
        (None: all; 0: none), as Hugging Face's argument of that name.
        """
        self._check_outputs(logits_to_keep, cache)
        timer = timer or PhaseTimer()
        layout = self.layout(inputs, transport.world_size)
        rank, c, bits = transport.rank, self.adapter.class_tokens, self.codebooks.bits
        dests, srcs = layout.destinations(rank), layout.sources(rank)
        with timer("embed"):
            h = self._embed(inputs, layout, rank)
            rotation, remote_rotation = self._rotations(layout, rank)
        batch, start = h.shape[0], layout.bounds(rank)[0]
        blocks = self.adapter.blocks
        parts = self.exchange_parts
        tags = [[f"block{i}" if parts == 1 else f"block{i}/{j}" for j in range(parts)] for i in range(len(blocks))]
        counts = {s: [b - a for a, b in part_bounds(layout.size(s), parts)] for s in srcs}  # tokens, by part
        sizes = [{s: self.payload_bytes(batch, counts[s][j]) for s in srcs} for j in range(parts)]  # bytes, by part
        remote = sum(layout.size(s) for s in srcs)
        own = self._own_rows(layout.size(rank), parts)

        def send(i: int, j: int, z: torch.Tensor, qkv: tuple[torch.Tensor, ...] | None):
            """Encode and post part j of block i's codes (``z``, ``qkv``: that part's rows)."""
            if not (dests or srcs):
                return None
            with timer("encode"):
                payload = torch.empty(0, dtype=torch.uint8)
                features = self._quantized(z, qkv)[:, c if j == 0 else 0:]
                if dests and features.shape[1]:
                    codes, _ = self._encoders[i](features)
                    payload = ak.pack_codes(codes, bits, backend=self.backend)
            return transport.exchange(payload, dests, sizes[j], tag=tags[i][j])

        def post(i: int, rows_of_parts):
            """Block i's inputs, part by part as ``rows_of_parts`` yields each part's hidden rows; each part's
            codes are posted at once. Returns (z, qkv, handles)."""
            nexts, handles = [], []
            for j, rows in enumerate(rows_of_parts):
                with timer("encode"):
                    nexts.append(self._part_inputs(blocks[i], rows))
                handles.append(send(i, j, *nexts[-1]))
            return (*self._joined(nexts), handles)

        for j in range(parts):
            transport.prepost(sizes[j], tags[0][j])
        z, qkv, handles = post(0, (h[:, rows] for rows in own))
        for i, (bw, plan) in enumerate(zip(blocks, self.plans)):
            with timer("project"):
                q, k, v = qkv or B.project(bw, z)
                q, k = B.rotate(q, rotation), B.rotate(k, rotation)
            with timer("local"):
                local = B.local_partial(plan, q, k, v, remote, self.causal, self.backend)
            remote_codes = None
            if handles[0] is not None:
                with timer("wait"):
                    received = [handle.wait() for handle in handles]
                # the next block's receives, posted before computing: its codes flow meanwhile
                if i + 1 < len(blocks):
                    for j in range(parts):
                        transport.prepost(sizes[j], tags[i + 1][j])
                if srcs:
                    per_token = self.codebooks.codes_per_token
                    remote_codes = torch.cat([
                        ak.unpack_codes(received[j][s].to(h.device), bits, (batch, n, per_token),
                                        backend=self.backend)
                        for s in srcs for j, n in enumerate(counts[s])], dim=1)
                    self._check_codes(remote_codes, srcs, layout, transport, f"block{i}")
            with timer("finish"):
                remote_kv = None
                if cache is not None:
                    remote_kv = self._record(cache, i, plan, q, k, v, remote_codes, remote_rotation, start)
                out = B.attend(plan, q, k, v, remote_codes, self.causal, self.backend, local, remote_rotation, remote_kv)
            outputs: list[torch.Tensor] = []
            computed = _output_parts(bw, h, out, own, timer, outputs)
            if i + 1 < len(blocks):
                z, qkv, handles = post(i + 1, computed)  # each part's codes leave before the next part is computed
            else:
                outputs = list(computed)
            h = _along_tokens(outputs)
        with timer("head"):
            if not c:
                return self._outputs(h, logits_to_keep)
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

    # --- all ranks in one process ------------------------------------------

    @torch.no_grad()
    def simulate(self, inputs: torch.Tensor, world_size: int, *, cache: KVCache | None = None,
                 logits_to_keep: int | None = None) -> list[torch.Tensor]:
        """Every rank's outputs as :meth:`run_rank` returns them, computed in one process.

        The same block functions run in the same order with the same shapes as
        in a distributed run; only the bytes do not travel (codes are handed
        over directly), so the results match a distributed run exactly up to
        thread-count effects in the underlying kernels. ``cache``: the last rank's
        keys/values, as its :meth:`run_rank` records them. ``logits_to_keep``: as
        :meth:`run_rank`, for every rank.
        """
        self._check_outputs(logits_to_keep, cache)
        layout = self.layout(inputs, world_size)
        c, last = self.adapter.class_tokens, world_size - 1
        hs = [self._embed(inputs, layout, r) for r in range(world_size)]
        parts = self.exchange_parts
        rows = [self._own_rows(layout.size(r), parts) for r in range(world_size)]  # each rank's rows, by part
        rotations = [self._rotations(layout, r) for r in range(world_size)]
        for i, (bw, plan) in enumerate(zip(self.adapter.blocks, self.plans)):
            # part by part, as run_rank computes them (the rows meet in other matrix-product shapes)
            block_inputs = [self._joined([self._part_inputs(bw, h[:, p]) for p in rows[r]]) for r, h in enumerate(hs)]
            zs = [z for z, _ in block_inputs]
            projections = [qkv or B.project(bw, z) for z, qkv in block_inputs]
            codes = {
                r: self._encoders[i](self._quantized(zs[r], projections[r])[:, c:])[0]
                for r in range(world_size)
                if layout.destinations(r)
            }
            for r in range(world_size):
                (q, k, v), (rotation, remote_rotation) = projections[r], rotations[r]
                q, k = B.rotate(q, rotation), B.rotate(k, rotation)
                srcs = layout.sources(r)
                remote = torch.cat([codes[s] for s in srcs], dim=1) if srcs else None
                local = B.local_partial(plan, q, k, v, sum(layout.size(s) for s in srcs), self.causal, self.backend)
                remote_kv = None
                if cache is not None and r == last:
                    remote_kv = self._record(cache, i, plan, q, k, v, remote, remote_rotation, layout.bounds(r)[0])
                out = B.attend(plan, q, k, v, remote, self.causal, self.backend, local, remote_rotation, remote_kv)
                hs[r] = _along_tokens([B.residual(bw, hs[r][:, p], out[:, :, p]) for p in rows[r]])
        if not c:
            return [self._outputs(h, logits_to_keep) for h in hs]
        pooled = torch.stack([h[:, 0].float() for h in hs]).mean(0).to(hs[0].dtype)
        out = self.adapter.class_outputs(pooled)
        return [out] * world_size

    def forward(self, inputs: torch.Tensor, world_size: int) -> torch.Tensor:
        """Simulated ASTRA output of the whole sequence: LM logits (B, T, V) or class logits (B, C)."""
        outs = self.simulate(inputs, world_size)
        return outs[0] if self.adapter.class_tokens else torch.cat(outs, dim=1)
