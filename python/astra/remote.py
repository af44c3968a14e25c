"""How a block attends to remote tokens it knows only by their VQ codes.

Per block, a :class:`RemotePlan` holds what the formulations of the kernels'
cost model (:func:`astra_kernels.remote_plan`) need: the projected K/V tables
(built once, only when they fit the memory budget; in half precision for
``gather``) and the codebook (for dequantize-then-project). Each call picks the
cheapest allowed formulation for its shape, unless one is forced.

``codewords`` and ``tokens`` are fused kernels that take the local keys too.
``gather``, ``gather_int8`` and ``dequantize`` build the remote keys/values
as ordinary tokens: their attention is two partials, local (computed while the
codes are on the wire) and remote, merged by their log-sum-exps (on the C++ CPU
backend the remote pass starts its online softmax from the local partial).

Which formulations a plan may use (:attr:`RemotePlan.formulations`):

- Blocks with rotary positions (RoPE): the remote keys are rotated at their
  tokens' global positions. ``tokens`` rotates the summed table rows inside
  the kernel (``remote_rotation``); the materialized formulations rotate the
  keys they build (:data:`ROTARY_FORMULATIONS`). ``codewords`` attends a
  codeword once, whatever its tokens' positions, so it is out.
- Blocks with a per-head key norm (Qwen3): the norm of a rebuilt key needs the
  whole key, which only the materialized formulations build
  (:data:`KEY_NORM_FORMULATIONS`); forcing a fused one is an error.
- ``quantize="kv"``: the codes are the keys' (before rotation) and values' own;
  the receiver decodes them (``dequantize``: codebook lookup, no projection).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import astra_kernels as ak
from astra_kernels import _checks

from . import block as B
from .codebooks import check_quantize
from .models.base import BlockWeights

FORMULATIONS = ("auto", "tokens", "codewords", "gather", "gather_int8", "dequantize")
# Formulations for remote keys rotated at their positions (RoPE): the fused tokens kernel rotates in its tile.
ROTARY_FORMULATIONS = ("tokens", *ak.MATERIALIZED)
# Formulations for remote keys that need a per-head norm after their projection (and before any rotation).
KEY_NORM_FORMULATIONS = ak.MATERIALIZED
# The formulation of quantize="kv": decode the keys' and values' codes.
KV_FORMULATIONS = ("dequantize",)


def int8_gather_available(device: torch.device) -> bool:
    """Whether torch's 8-bit row-wise embedding bag (``gather_int8``) runs on ``device``: CPU builds only."""
    return device.type == "cpu" and hasattr(torch.ops.quantized, "embedding_bag_byte_rowwise_offsets")


class RemotePlan:
    """One block's remote attention.

    Args:
        block: the block's weights.
        codebook: (G, K, D/G) for ``quantize="input"``, (2G, K, Hkv*d/G) for ``quantize="kv"``.
        formulation: "auto" (the cost model, among :attr:`formulations`) or one of them.
        table_budget_bytes: memory allowed for one block's K/V tables.
        quantize: what the codes quantize (:data:`astra.codebooks.QUANTIZE`).
    """

    def __init__(self, block: BlockWeights, codebook: torch.Tensor, formulation: str = "auto",
                 table_budget_bytes: int = ak.TABLE_BUDGET_BYTES, quantize: str = "input"):
        if formulation not in FORMULATIONS:
            raise ValueError(f"remote formulation must be one of {', '.join(FORMULATIONS)}, got {formulation!r}")
        check_quantize(quantize)
        g = codebook.shape[0]
        if formulation == "codewords" and g != 1:
            raise ValueError(f"the codewords formulation needs G = 1, got G={g}")
        if formulation == "gather_int8" and not int8_gather_available(codebook.device):
            raise ValueError(f"the gather_int8 formulation needs torch's quantized CPU ops; this torch has none "
                             f"for {codebook.device.type} tensors (use gather)")
        self.block, self.codebook, self.formulation, self.quantize = block, codebook, formulation, quantize
        self.formulations = self._allowed()
        if formulation != "auto" and formulation not in self.formulations:
            raise ValueError(self._refusal(formulation))
        self.table_budget_bytes = table_budget_bytes
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._gather_table: torch.Tensor | None = None
        self._int8_tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._choices: dict[tuple, str] = {}  # the cost model's pick per call shape

    def _allowed(self) -> tuple[str, ...]:
        """The formulations this block can attend its remote tokens with (see the module docs)."""
        if self.quantize == "kv":
            return KV_FORMULATIONS
        if self.block.k_norm is not None:
            allowed = KEY_NORM_FORMULATIONS
        elif self.block.rotary:
            allowed = ROTARY_FORMULATIONS
        else:
            allowed = FORMULATIONS[1:]
        if self.codebook.shape[0] != 1:
            allowed = tuple(f for f in allowed if f != "codewords")
        if not int8_gather_available(self.codebook.device):
            allowed = tuple(f for f in allowed if f != "gather_int8")
        return tuple(allowed)

    def _refusal(self, formulation: str) -> str:
        if self.quantize == "kv":
            return (f"quantize='kv' sends the keys' and values' own codes, which the receiver decodes (formulation "
                    f"dequantize); {formulation} attends projected codewords of the attention input")
        if self.block.k_norm is not None and formulation in ("tokens", "codewords"):
            need = "attends remote keys inside a fused kernel that applies no per-head key norm"
        elif formulation == "codewords":
            need = "attends each codeword once, whatever its tokens' positions, so it cannot rotate their keys"
        else:
            need = "is not available here"
        return f"the {formulation} formulation {need}; use one of {', '.join(self.formulations)} (or auto)"

    def shape(self, batch: int, queries: int, remote: int, backend: str | None = None) -> ak.RemoteShape:
        b = self.block
        kernel = ak.resolve_backend(backend, self.codebook.device, "mixed_precision_attention")
        return ak.RemoteShape(
            batch=batch, heads=b.heads, kv_heads=b.kv_heads, head_dim=b.head_dim, queries=queries, remote=remote,
            groups=self.codebook.shape[0], codebook_size=self.codebook.shape[1], model_dim=b.dim,
            elem_bytes=self.codebook.element_size(), skips_unused=ak.skips_unused_codewords(kernel),
            int8_gather=int8_gather_available(self.codebook.device), rotary=b.rotary,
        )

    def choose(self, batch: int, queries: int, remote: int, backend: str | None = None) -> str:
        if self.formulation != "auto":
            return self.formulation
        if len(self.formulations) == 1:
            return self.formulations[0]
        key = (batch, queries, remote, backend)
        if key not in self._choices:  # asked twice per block (local partial, then attend)
            self._choices[key] = ak.remote_plan(self.shape(batch, queries, remote, backend), self.table_budget_bytes,
                                                self.formulations)
        return self._choices[key]

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_table, v_table), each (G, K, Hkv*d) with the K/V bias folded in; built on first use."""
        if self._tables is None:
            self._tables = self._project_tables()
        return self._tables

    def _project_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.block
        with torch.no_grad():
            return (ak.project_codebooks(self.codebook, b.w_k, b.b_k),
                    ak.project_codebooks(self.codebook, b.w_v, b.b_v))

    def materializes(self, batch: int, queries: int, remote: int, backend: str | None = None) -> bool:
        """Whether this shape's formulation attends remote tokens apart from the local ones."""
        return remote > 0 and self.choose(batch, queries, remote, backend) in ak.MATERIALIZED

    def gather_table(self) -> torch.Tensor:
        """(G*K, 2*Hkv*d): each code's K row then V row, in :func:`astra_kernels.gather_table_dtype`."""
        if self._gather_table is None:
            k_table, v_table = self._project_tables()
            table = torch.cat([k_table, v_table], dim=-1).flatten(0, 1)
            narrow = table.to(ak.gather_table_dtype(table.dtype))
            # a projection beyond fp16's range keeps its fp32 table: slower, never wrong
            self._gather_table = narrow if torch.isfinite(narrow).all() else table
        return self._gather_table

    def int8_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_rows, v_rows) for ``gather_int8``: each (G*K, Hkv*d + 8) uint8, a code's K (V) row rounded to
        8 bits with its fp32 scale and offset (torch's row-wise layout); built on first use."""
        if self._int8_tables is None:
            pack = torch.ops.quantized.embedding_bag_byte_prepack
            self._int8_tables = tuple(pack(t.flatten(0, 1).float().contiguous()) for t in self._project_tables())
        return self._int8_tables

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Tr, Hkv*d) -> (B, Hkv, Tr, d)."""
        return x.reshape(x.shape[0], x.shape[1], self.block.kv_heads, self.block.head_dim).transpose(1, 2)

    def _dequantized_kv(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the codes; ``input``: project them with W_k and W_v (one GEMM). Each (B, Hkv, Tr, d)."""
        decoded = ak.vq_decode(codes, self.codebook)
        if self.quantize == "kv":
            return B.split_kv_features(decoded, self.block.kv_heads)
        return B.project_kv(self.block, decoded)

    def _table_rows(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, Tr, G) -> the rows of the flattened (G*K, ...) tables they select, (B*Tr, G) int64."""
        g, k = self.codebook.shape[:2]
        # the embedding bags check rows against G*K only: a code >= K would read the next group's row
        _checks.codes_in_range("codes", codes, k, f"codebook size K={k}")
        return (codes.long() + torch.arange(g, device=codes.device) * k).flatten(0, 1)

    def _summed_rows(self, codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Each token's G rows of a flattened (G*K, W) table, summed (fp32 accumulation for 16-bit tables):
        codes (B, Tr, G) -> (B, Tr, W) in the table's dtype."""
        sums = F.embedding_bag(self._table_rows(codes), table, mode="sum")
        return sums.reshape(codes.shape[0], codes.shape[1], table.shape[-1])

    def _gathered_kv(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum each token's G rows of the gather table: each (B, Hkv, Tr, d)."""
        kv = self._summed_rows(codes, self.gather_table()).to(self.codebook.dtype)
        return tuple(self._heads(t) for t in kv.split(self.block.kv_dim, dim=-1))

    def _int8_gathered_kv(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum each token's G rows of the 8-bit tables (dequantized in fp32): each (B, Hkv, Tr, d)."""
        rows = self._table_rows(codes)
        offsets = torch.arange(0, rows.numel(), rows.shape[1], device=rows.device)  # one bag per token
        bag = torch.ops.quantized.embedding_bag_byte_rowwise_offsets
        sums = (bag(t, rows.flatten(), offsets, mode=0) for t in self.int8_tables())  # mode 0: sum
        b, tr = codes.shape[:2]
        return tuple(self._heads(x.to(self.codebook.dtype).reshape(b, tr, x.shape[-1])) for x in sums)

    def _materialized_kv(self, codes: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Remote keys (after the per-head key norm, not rotated) and values, each (B, Hkv, Tr, d)."""
        if how == "dequantize":
            return self._dequantized_kv(codes)
        if how == "gather":
            k, v = self._gathered_kv(codes)
        elif how == "gather_int8":
            k, v = self._int8_gathered_kv(codes)
        else:  # the fused formulations' tables, (G, K, Hkv*d) each
            k, v = (self._heads(self._summed_rows(codes, table.flatten(0, 1))) for table in self.tables())
        return B.key_norm(self.block, k), v

    def _require_rotation(self, codes: torch.Tensor, rotation: B.Rotation | None) -> None:
        if self.block.rotary and rotation is None and codes.shape[1] > 0:
            raise ValueError("this block has rotary positions: remote keys need their tokens' rotation (cos, sin)")

    def remote_kv(self, codes: torch.Tensor, rotation: B.Rotation | None = None, *, queries: int = 1,
                  backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Materialized remote keys (rotated) and values (B, Hkv, Tr, d) of codes (B, Tr, codes per token), as
        :meth:`attend` builds them for ``queries`` queries (e.g. to keep them in a decoding cache).

        ``rotation``: (cos, sin) (Tr, d) of the remote tokens' global positions, for blocks with rotary positions.
        """
        self._require_rotation(codes, rotation)
        k, v = self._materialized_kv(codes, self.choose(codes.shape[0], queries, codes.shape[1], backend))
        return B.rotate(k, rotation), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, codes: torch.Tensor, causal: bool,
               backend: str | None, local: tuple[torch.Tensor, torch.Tensor] | None = None,
               rotation: B.Rotation | None = None,
               remote_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Attention of q (B, H, T, d) over the remote tokens (codes (B, Tr, codes per token), all earlier than
        the local ones) and the local keys k, v (B, Hkv, T, d) of the same T tokens as q: (B, H, T, d).

        q and k are rotated at their positions already. ``local``: the local partial (out, lse) of a
        materializing formulation, if already computed. ``rotation``: the remote tokens' (cos, sin) (Tr, d),
        for blocks with rotary positions. ``remote_kv``: the remote keys/values as :meth:`remote_kv` built them
        for this call, if already built; a fused formulation does not need them.
        """
        how = self.choose(q.shape[0], q.shape[2], codes.shape[1], backend)
        if how in ak.MATERIALIZED:
            rk, rv = remote_kv if remote_kv is not None else self.remote_kv(codes, rotation, queries=q.shape[2],
                                                                           backend=backend)
            if local is None:
                local = ak.attention(q, k, v, causal=causal, backend=backend)
            # every remote token precedes every query (no mask on them); merged with the local partial
            return ak.attention(q, rk, rv, prior=local, backend=backend)[0]
        k_table, v_table = self.tables()
        self._require_rotation(codes, rotation)
        remote_rotation = half_angles(rotation) if self.block.rotary and codes.shape[1] > 0 else None
        return ak.mixed_precision_attention(q, k, v, codes, k_table, v_table, causal=causal, formulation=how,
                                            remote_rotation=remote_rotation, backend=backend)[0]


def half_angles(rotation: B.Rotation) -> torch.Tensor:
    """(cos, sin) (T, d) in Hugging Face's layout, each half a copy of the other -> (2, T, d/2), what the
    fused kernels take."""
    cos, sin = rotation
    half = cos.shape[-1] // 2
    return torch.stack([cos[..., :half], sin[..., :half]])
