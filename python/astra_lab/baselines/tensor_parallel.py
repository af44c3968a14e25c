"""Megatron-style tensor parallelism: the baseline with two all-reduces per block.

Every rank holds the whole sequence and about 1/N of each block: a
near-equal share of the kv heads with their query heads (column-parallel
QKV, row-parallel output projection; e.g. 2 and 1 of SmolLM2's 3 kv heads
over 2 ranks) and of the MLP columns (column-parallel fc1, row-parallel
fc2). The partial outputs of the attention and of the MLP are summed by a ring all-reduce each, which puts
2 * 2 (N-1)/N * T * D values per block on each rank's link. The LM head is
vocabulary-parallel (each rank computes V/N logits); a classifier head runs on
rank 0. Outputs equal the unmodified model's. A gated MLP splits its gate
columns with fc1's; per-head q/k norms and rotary positions apply per head,
as on one device.

``q80=True`` (``tp_int8``) sends the all-reduces' partial sums as 8-bit
row-quantized blocks, as distributed-llama's Q80 sync does
(:func:`~astra_lab.baselines.collectives.q80_quantize`): about a quarter of
the fp32 volume, and outputs within its rounding of the model's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import astra_kernels as ak
from astra import block as B
from astra.engine import PhaseTimer
from astra.models import adapt
from astra.models.base import BlockWeights
from astra.transport import Transport

from .collectives import ring_allreduce


@dataclass
class _Shard:
    """One rank's slice of a block."""

    w_qkv: torch.Tensor
    b_qkv: torch.Tensor | None
    w_out: torch.Tensor  # (D, H/N * d): row-parallel, bias added after the reduction
    w_fc1: torch.Tensor
    b_fc1: torch.Tensor | None
    w_fc2: torch.Tensor
    w_gate: torch.Tensor | None
    b_gate: torch.Tensor | None
    heads: int
    kv_heads: int

    def mlp(self, bw: BlockWeights, x: torch.Tensor) -> torch.Tensor:
        """This rank's partial sum of the block's MLP output (before fc2's bias)."""
        up = F.linear(x, self.w_fc1, self.b_fc1)
        hidden = bw.act(up) if self.w_gate is None else bw.act(F.linear(x, self.w_gate, self.b_gate)) * up
        return F.linear(hidden, self.w_fc2)


def _share(total: int, rank: int, n: int) -> range:
    """Rank ``rank``'s near-equal share [r*total/n, (r+1)*total/n) of ``total`` heads or columns."""
    return range(rank * total // n, (rank + 1) * total // n)


def _shard(bw: BlockWeights, rank: int, n: int) -> _Shard:
    d, group = bw.head_dim, bw.heads // bw.kv_heads
    kv = _share(bw.kv_heads, rank, n)  # whole GQA groups: each rank's query heads are those of its kv heads
    q0, k0, v0 = 0, bw.heads * d, (bw.heads + bw.kv_heads) * d
    rows = torch.cat([
        torch.arange(q0 + kv.start * group * d, q0 + kv.stop * group * d),
        torch.arange(k0 + kv.start * d, k0 + kv.stop * d),
        torch.arange(v0 + kv.start * d, v0 + kv.stop * d),
    ]).to(bw.w_qkv.device)
    f = _share(bw.w_fc1.shape[0], rank, n)
    cols = slice(f.start, f.stop)
    return _Shard(
        w_qkv=bw.w_qkv[rows],
        b_qkv=None if bw.b_qkv is None else bw.b_qkv[rows],
        w_out=bw.w_out[:, kv.start * group * d : kv.stop * group * d].contiguous(),
        w_fc1=bw.w_fc1[cols],
        b_fc1=None if bw.b_fc1 is None else bw.b_fc1[cols],
        w_fc2=bw.w_fc2[:, cols].contiguous(),
        w_gate=None if bw.w_gate is None else bw.w_gate[cols],
        b_gate=None if bw.b_gate is None else bw.b_gate[cols],
        heads=len(kv) * group,
        kv_heads=len(kv),
    )


class TensorParallel:
    def __init__(self, model: torch.nn.Module, backend: str | None = None, q80: bool = False):
        self.adapter, self.backend, self.q80 = adapt(model), backend, q80
        self.name = "tp_int8" if q80 else "tp"
        self._shards: dict[tuple[int, int], list[_Shard]] = {}

    def check_ranks(self, n: int) -> None:
        """Raise ValueError unless every rank gets at least one kv head (with its query heads) of every block."""
        for bw in self.adapter.blocks:
            if bw.kv_heads < n:
                raise ValueError(f"tensor parallelism over {n} ranks needs at least {n} kv heads, got {bw.kv_heads}")

    def shards(self, rank: int, n: int) -> list[_Shard]:
        key = (rank, n)
        if key not in self._shards:
            self.check_ranks(n)
            self._shards[key] = [_shard(bw, rank, n) for bw in self.adapter.blocks]
        return self._shards[key]

    @torch.no_grad()
    def run_rank(self, inputs: torch.Tensor, transport: Transport, *, timer: PhaseTimer | None = None,
                 logits_to_keep: int | None = None):
        """LM: this rank's vocabulary slice of the logits (B, T, V/N); classifier: logits on rank 0, None elsewhere.

        ``logits_to_keep`` (LM): instead, the whole vocabulary's logits of the last n positions (B, n, V), from
        this rank alone (every rank holds every position's hidden state; 0: none)."""
        if logits_to_keep is not None and (self.adapter.class_tokens or logits_to_keep < 0):
            raise ValueError(f"logits_to_keep={logits_to_keep}: a count >= 0 of per-token outputs, for models "
                             "without a class token")
        timer = timer or PhaseTimer()
        a, rank, n = self.adapter, transport.rank, transport.world_size
        shards = self.shards(rank, n)
        with timer("embed"):
            h = a.embed(inputs, 0, a.num_tokens(inputs))
            if a.class_tokens:
                h = torch.cat([a.class_token(h.shape[0]).to(h.dtype), h], dim=1)
            rotation = a.rotary(torch.arange(a.num_tokens(inputs)))
        for i, (bw, sh) in enumerate(zip(a.blocks, shards)):
            with timer("local"):
                z = B.attention_input(bw, h)
                hd, kvd = sh.heads * bw.head_dim, sh.kv_heads * bw.head_dim
                q, k, v = F.linear(z, sh.w_qkv, sh.b_qkv).split([hd, kvd, kvd], dim=-1)
                q, k = B.split_heads(q, sh.heads), B.key_norm(bw, B.split_heads(k, sh.kv_heads))
                q = q if bw.q_norm is None else bw.q_norm(q)
                o, _ = ak.attention(B.rotate(q, rotation), B.rotate(k, rotation), B.split_heads(v, sh.kv_heads),
                                    causal=a.causal, backend=self.backend)
                partial = F.linear(B.merge_heads(o), sh.w_out)
            with timer("wait"):
                attn = ring_allreduce(partial, transport, f"block{i}/attn", self.q80)
            with timer("local"):
                attn = attn if bw.b_out is None else attn + bw.b_out
                h = h + attn if bw.norm_first else bw.norm1(h + attn)
                z2 = bw.norm2(h) if bw.norm_first else h
                partial = sh.mlp(bw, z2)
            with timer("wait"):
                mlp = ring_allreduce(partial, transport, f"block{i}/mlp", self.q80)
            with timer("local"):
                mlp = mlp if bw.b_fc2 is None else mlp + bw.b_fc2
                h = h + mlp if bw.norm_first else bw.norm2(h + mlp)
        with timer("head"):
            if a.class_tokens:
                return a.class_outputs(h[:, 0]) if rank == 0 else None
            if logits_to_keep is not None:
                return a.token_outputs(h[:, max(0, h.shape[1] - logits_to_keep):])
            return a.token_outputs_slice(h, rank, n)
