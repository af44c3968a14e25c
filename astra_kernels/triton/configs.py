"""Launch configurations of the Triton VQ kernels: a fixed table, no autotuning.

Multi-config ``@triton.autotune`` cannot run under ``TRITON_INTERPRET=1`` (it
needs a GPU benchmarker), so every kernel takes its block sizes from the
functions below. The same GPU-legal shapes run in the interpreter: tl.dot
operands have every dim >= 16, tl.arange sizes are powers of two.

vq_encode (``encode_config``), per dot operand width:

    operands        BLOCK_N  BLOCK_K  one-chunk Dg  split BLOCK_D  warps  stages
    fp16 / bf16       128      128       <= 128          64           8      3
    fp32 ("ieee")      64       64       <= 64           32           4      2

* 16-bit operands run on tensor cores (wgmma on sm_90 needs BLOCK_N % 64 == 0
  and 4 or 8 warps). A 128 x 128 fp32 score tile is 64 registers per thread
  at 8 warps, which leaves room for the resident x tile and the argmin.
* Dg padded to a power of two >= 16 fits one chunk up to 128: the x tile is
  loaded once and stays resident across the K loop (32 KB at 128 x 128 bf16)
  while codebook tiles stream through ``num_stages`` buffers (3 x 32 KB):
  ~128 KB of the 227 KB an H100/H200 block may use, 163 KB on an A100.
  Larger Dg accumulates the dot over 64-wide chunks: 3 x (16 + 16) KB.
* fp32 uses input_precision="ieee" (exact fp32 products, CUDA-core FMAs, no
  TF32) so the argmin matches the fp32 reference; FMA dots want smaller tiles.
* Tiles shrink to the problem (next power of two of N and K, at least 16),
  and on GPUs with less shared memory (sm_86/89: 99 KB) the stages, then
  BLOCK_N, drop until the estimate fits.

vq_decode (``decode_config``) is a bandwidth-bound row gather: tiles of ~4096
elements (32 per thread at 4 warps, 16-byte vector accesses), feature chunks
up to 256 wide. pack/unpack handle one byte/code per lane, 1024 per program.

mixed_precision_attention (``attention_config``), FA2 tiles by padded head dim
(rows = (query, head) pairs of one kv head, see mp_attention.py):

    operands        head dim   BLOCK_M  BLOCK_N  warps  stages
    fp16 / bf16       <= 64      128      64       4      3
                        128      128      64       8      3
                        256       64      32       4      2
                        512       32      32       8      2
    fp32 ("ieee")     <= 64       32      32       4      2
                        128       32      16       4      2
                        256       16      16       4      2
                        512       16      16       4      1

* Shared memory holds the resident q tile and num_stages K/V tile pairs:
  128 x 128 bf16 q (32 KB) + 3 x 2 x 64 x 128 bf16 (96 KB) at d = 128, plus
  one more K/V pair (32 KB) when remote rows are summed (G > 1 or a bias):
  <= 161 KB of the 227 KB of an H100/H200 (measured by compiling for sm_90);
  on smaller GPUs stages, then BLOCK_N, then BLOCK_M drop until it fits.
* Registers bound the rest: the fp32 accumulator (BLOCK_M x d) and score
  tile (BLOCK_M x BLOCK_N) stay resident; the 16-bit rows compile for sm_90
  without spills for single-row remote K/V (G = 1, no bias) at d <= 256.
* fp32 inputs use exact-fp32 FMA dots (input_precision="ieee"), which hold
  whole operand rows per thread: small tiles, or they spill heavily.
* Tiles shrink to the problem (next power of two of the rows and keys, at
  least 16 so every tl.dot dim stays legal on the GPU); fewer rows than the
  table's BLOCK_M (decode) run on 4 warps.
* Rotated remote keys (``remote_rotation``) are loaded, with the q tile, as
  two halves of ``block_half`` columns: the next power of two of d/2, at
  least 16 (tl.dot's minimum; the rest is masked, so d = 6 or 10 works).
  Their scores take two dots (four as hi + lo parts in 16-bit) and the
  shared-memory estimate counts the q and K tiles 2 * block_half wide.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import triton

# (BLOCK_N, BLOCK_K, max one-chunk Dg, split BLOCK_D, num_warps, num_stages) by operand bytes.
_ENCODE_TABLE = {2: (128, 128, 128, 64, 8, 3), 4: (64, 64, 64, 32, 4, 2)}
_MIN_DOT = 16
_SMEM_HEADROOM = 16 * 1024  # layout conversions and the argmin reduction
_DECODE_TILE_ELEMS = 4096
_DECODE_MAX_D = 256
# (max padded head dim, BLOCK_M, BLOCK_N, num_warps, num_stages) by operand bytes, smallest head dim first.
_ATTENTION_TABLE = {
    2: ((64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (256, 64, 32, 4, 2), (512, 32, 32, 8, 2)),
    4: ((64, 32, 32, 4, 2), (128, 32, 16, 4, 2), (256, 16, 16, 4, 2), (512, 16, 16, 4, 1)),
}
MAX_ATTENTION_HEAD_DIM = 512
PACK_BLOCK = 1024
SMALL_WARPS = 4


@dataclass(frozen=True)
class EncodeConfig:
    block_n: int  # rows of x per program
    block_k: int  # codewords per score tile
    block_d: int  # features per tl.dot chunk (>= 16, power of two)
    single_chunk: bool  # Dg fits one chunk: the x tile stays loaded across the K loop
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int  # rows per program
    block_d: int  # features per chunk
    num_warps: int


@dataclass(frozen=True)
class AttentionConfig:
    block_m: int  # (query, head) rows per program
    block_n: int  # keys (codewords, remote tokens or local tokens) per tile
    block_d: int  # head dim padded to a power of two >= 16
    block_half: int  # half the head dim padded to a power of two >= 16 (rotated remote keys, by halves)
    num_warps: int
    num_stages: int


def interpreted(kernel) -> bool:
    """True when ``kernel`` was decorated under TRITON_INTERPRET=1 (numpy on CPU)."""
    return not isinstance(kernel, triton.runtime.JITFunction)


def pow2_divisor(*values: int, cap: int = 16) -> int:
    """Largest power of two <= cap dividing every value: an alignment hint for the compiler.

    Triton specializes integer arguments divisible by 16 on its own; this
    extends that knowledge to e.g. Dg = 24 (8-element vector loads).
    """
    align = cap
    while any(v % align for v in values):
        align //= 2
    return align


def device_guard(device: torch.device):
    """Launch on ``device`` (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _shared_memory_limit_of(device_index: int) -> int:
    props = torch.cuda.get_device_properties(device_index)
    return int(getattr(props, "shared_memory_per_block_optin", props.shared_memory_per_block))


def _shared_memory_limit(device: torch.device) -> int:
    """Shared memory one block may opt into on a CUDA ``device``."""
    return _shared_memory_limit_of(device.index if device.index is not None else torch.cuda.current_device())


def _dot_tile(n: int, cap: int) -> int:
    """The power-of-two tile covering ``n`` (at least tl.dot's minimum), at most ``cap``."""
    return min(cap, max(_MIN_DOT, triton.next_power_of_2(n)))


def _encode_smem(block_n: int, block_k: int, block_d: int, single_chunk: bool, stages: int, nbytes: int) -> int:
    per_stage = block_d * block_k + (0 if single_chunk else block_n * block_d)
    resident_x = block_n * block_d if single_chunk else 0
    return (stages * per_stage + resident_x) * nbytes + _SMEM_HEADROOM


def encode_config(n: int, k: int, dg: int, operand_dtype: torch.dtype, device: torch.device) -> EncodeConfig:
    """Blocks for (N, K, Dg) with tl.dot operands of ``operand_dtype`` on ``device``."""
    nbytes = 4 if operand_dtype == torch.float32 else 2
    block_n, block_k, max_single, split_d, num_warps, stages = _ENCODE_TABLE[nbytes]
    dg_pad = max(_MIN_DOT, triton.next_power_of_2(dg))
    single_chunk = dg_pad <= max_single
    block_d = dg_pad if single_chunk else split_d
    block_n = _dot_tile(n, block_n)
    block_k = _dot_tile(k, block_k)
    if device.type == "cuda":
        limit = _shared_memory_limit(device)
        while _encode_smem(block_n, block_k, block_d, single_chunk, stages, nbytes) > limit:
            if stages > 2:
                stages -= 1
            elif block_n > _MIN_DOT:
                block_n //= 2
            else:
                break
    if block_n * block_k < 64 * 128:
        num_warps = SMALL_WARPS
    return EncodeConfig(block_n, block_k, block_d, single_chunk, num_warps, stages)


def decode_config(n: int, dg: int) -> DecodeConfig:
    """Tile for gathering ``n`` rows of ``dg`` features per group."""
    block_d = min(triton.next_power_of_2(dg), _DECODE_MAX_D)
    block_n = min(max(_DECODE_TILE_ELEMS // block_d, 1), triton.next_power_of_2(n))
    return DecodeConfig(block_n, block_d, SMALL_WARPS)


def _attention_smem(block_m: int, block_n: int, block_d: int, key_d: int, stages: int, nbytes: int,
                    summed_rows: bool) -> int:
    # Summed (or rotated) remote K/V tiles pass through shared memory once more on their way to the dot operands;
    # key_d: the q and K tile width, two halves of block_half columns when the remote keys are rotated.
    tiles = block_m * key_d + (stages + (1 if summed_rows else 0)) * block_n * (key_d + block_d)
    return tiles * nbytes + _SMEM_HEADROOM


def attention_config(rows: int, keys: int, head_dim: int, operand_dtype: torch.dtype, device: torch.device,
                     summed_rows: bool = False, rotary: bool = False) -> AttentionConfig:
    """Tiles for ``rows`` (query, head) rows per kv head over segments of at most ``keys`` keys;
    ``summed_rows``: the remote K/V rows are sums (G > 1 or a bias); ``rotary``: the remote keys are
    rotated, loaded and scored as two halves."""
    if head_dim > MAX_ATTENTION_HEAD_DIM:
        raise ValueError(
            f"the Triton mixed_precision_attention supports head dims up to {MAX_ATTENTION_HEAD_DIM}, got {head_dim}; "
            "use the 'reference' backend"
        )
    nbytes = 4 if operand_dtype == torch.float32 else 2
    block_d = max(_MIN_DOT, triton.next_power_of_2(head_dim))
    block_half = max(_MIN_DOT, triton.next_power_of_2(max(head_dim // 2, 1)))
    key_d = 2 * block_half if rotary else block_d
    _, table_m, block_n, num_warps, stages = next(c for c in _ATTENTION_TABLE[nbytes] if block_d <= c[0])
    block_m = _dot_tile(rows, table_m)
    block_n = _dot_tile(keys, block_n)
    if device.type == "cuda":
        limit = _shared_memory_limit(device)
        while _attention_smem(block_m, block_n, block_d, key_d, stages, nbytes, summed_rows or rotary) > limit:
            if stages > 2:
                stages -= 1
            elif block_n > _MIN_DOT:
                block_n //= 2
            elif block_m > _MIN_DOT:
                block_m //= 2
            else:
                break
    if block_m < table_m:  # few rows (decode): the table's 8 warps would idle
        num_warps = SMALL_WARPS
    return AttentionConfig(block_m, block_n, block_d, block_half, num_warps, stages)
