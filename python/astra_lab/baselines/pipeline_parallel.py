"""Pipeline parallelism with chunked prefill: the way exo, llama.cpp RPC, prima.cpp and Petals split a model.

Rank r holds blocks [r*L/N, (r+1)*L/N) (rounded down: the split is even to
within one block). The prompt is cut into ``chunks`` near-equal pieces of
consecutive tokens; each stage runs its blocks on chunk j and sends the
chunk's hidden states (B, t_j, D) on to the next stage, then starts chunk
j + 1 while the next stage works on chunk j. Hidden states travel in
``wire_dtype`` (fp16, or bf16 for a model that runs in bf16). The last stage
applies the final norm and head: LM logits (of the last ``logits_to_keep``
positions only, if given) or class logits.

Causal attention of chunk j needs the keys and values of the earlier chunks:
each stage keeps them per block (rotated keys, in a :class:`astra.engine.KVCache`),
so the chunked prefill computes what the unchunked model computes. With
bidirectional attention (ViT, BERT) a token attends to later chunks too, which
a pipeline has not computed yet: such models run one chunk only.
"""
from __future__ import annotations

import torch

import astra_kernels as ak
from astra import block as B
from astra.engine import KVCache, PhaseTimer
from astra.models import adapt
from astra.partition import part_bounds
from astra.transport import Transport

PP_CHUNKS = (1, 2, 4, 8, 16)  # the chunk counts the bench tries


def stage_blocks(layers: int, rank: int, world: int) -> range:
    """Blocks of stage ``rank`` of ``world``: [rank*L/N, (rank+1)*L/N)."""
    if layers < world:
        raise ValueError(f"pipeline parallelism over {world} ranks needs at least {world} blocks, got {layers}")
    return range(rank * layers // world, (rank + 1) * layers // world)


def chunk_counts(tokens: int, causal: bool) -> list[int]:
    """The chunk counts the bench tries: :data:`PP_CHUNKS` up to ``tokens``; 1 only for bidirectional models."""
    return [c for c in PP_CHUNKS if c <= tokens and (causal or c == 1)]


class PipelineParallel:
    """``chunks`` pieces of the prompt flow through N stages; ``wire_dtype`` None: bf16 for a bf16 model, else fp16."""

    name = "pp"

    def __init__(self, model: torch.nn.Module, chunks: int = 1, wire_dtype: torch.dtype | None = None,
                 backend: str | None = None):
        self.adapter, self.backend = adapt(model), backend
        if chunks < 1:
            raise ValueError(f"pp_chunks must be >= 1, got {chunks}")
        if chunks > 1 and not self.adapter.causal:
            raise ValueError(f"pp_chunks={chunks}: a bidirectional model's tokens attend to later chunks, which the "
                             "pipeline has not computed yet; run it with one chunk")
        self.pp_chunks = chunks
        dtype = self.adapter.blocks[0].w_qkv.dtype
        self.wire_dtype = wire_dtype or (torch.bfloat16 if dtype == torch.bfloat16 else torch.float16)

    def _bytes(self, batch: int, tokens: int) -> int:
        return batch * tokens * self.adapter.dim * torch.finfo(self.wire_dtype).bits // 8

    @torch.no_grad()
    def run_rank(self, inputs: torch.Tensor, transport: Transport, *, timer: PhaseTimer | None = None,
                 logits_to_keep: int | None = None) -> torch.Tensor | None:
        """Last stage: LM logits (B, T, V), or of the last ``logits_to_keep`` positions (B, n, V), or class
        logits (B, C); None on the other stages."""
        timer = timer or PhaseTimer()
        a, rank, n = self.adapter, transport.rank, transport.world_size
        if logits_to_keep is not None and (a.class_tokens or logits_to_keep < 0):
            raise ValueError(f"logits_to_keep={logits_to_keep}: a count >= 0 of per-token outputs, for models "
                             "without a class token")
        blocks = a.blocks
        mine = [blocks[i] for i in stage_blocks(len(blocks), rank, n)]
        tokens, batch = a.num_tokens(inputs), inputs.shape[0]
        bounds = part_bounds(tokens, min(self.pp_chunks, tokens))
        extra = [a.class_tokens if j == 0 else 0 for j in range(len(bounds))]  # class tokens travel with chunk 0
        first, last = rank == 0, rank == n - 1
        cache = KVCache(tokens) if len(bounds) > 1 else None  # several chunks: a causal model, no class token
        dtype = mine[0].w_qkv.dtype
        if not first:  # every chunk's receive is posted up front: each can flow while this stage computes
            for j, (start, stop) in enumerate(bounds):
                transport.prepost({rank - 1: self._bytes(batch, stop - start + extra[j])}, f"stage{rank - 1}/chunk{j}")
        sends, outs = [], []
        for j, (start, stop) in enumerate(bounds):
            width = stop - start + extra[j]
            if first:
                with timer("embed"):
                    h = a.embed(inputs, start, stop)
                    if extra[j]:
                        h = torch.cat([a.class_token(batch).to(h.dtype), h], dim=1)
            else:
                with timer("wait"):
                    got = transport.exchange(torch.empty(0, dtype=torch.uint8), [],
                                             {rank - 1: self._bytes(batch, width)}, f"stage{rank - 1}/chunk{j}")
                    got = got.wait()[rank - 1]
                h = got.view(self.wire_dtype).reshape(batch, width, a.dim).to(dtype)
            with timer("local"):
                rotation = a.rotary(torch.arange(start, stop))
                for i, bw in enumerate(mine):
                    q, k, v = B.project(bw, B.attention_input(bw, h))
                    q, k = B.rotate(q, rotation), B.rotate(k, rotation)
                    if cache is not None:  # the keys of every earlier chunk, then this one's (bottom-right causal)
                        k, v = cache.write(i, start, k, v)
                    out, _ = ak.attention(q, k, v, causal=a.causal, backend=self.backend)
                    h = B.residual(bw, h, out)
            if not last:
                payload = h.to(self.wire_dtype).contiguous().view(torch.uint8).reshape(-1)
                sends.append(transport.exchange(payload, [rank + 1], {}, f"stage{rank}/chunk{j}"))
            else:
                outs.append(h)
        with timer("wait"):
            for handle in sends:
                handle.wait()
        if not last:
            return None
        with timer("head"):
            h = torch.cat(outs, dim=1)
            if a.class_tokens:
                return a.class_outputs(h[:, 0])
            if logits_to_keep is not None:
                h = h[:, max(0, h.shape[1] - logits_to_keep):]
            return a.token_outputs(h)
