// Mixed-precision attention forward, torch-free: local queries attend to
// remote tokens known by their VQ codes (through projected K/V tables) and to
// full-precision local keys, in one online-softmax pass (flash-attention
// style). Contract: mixed_precision_attention in astra_kernels/reference.py.
//
// Shapes: q (B, H, Tq, d); k_local, v_local (B, Hkv, Tl, d); codes (B, Tr, G);
// tables (G, K, Hkv*d); biases (Hkv*d,). Query head h reads kv head
// h / (H / Hkv). The remote segment precedes the local one and is always
// visible; with `causal`, query i sees local key j iff j <= i + Tl - Tq.
// Outputs: out (B, H, Tq, d) and the natural-log LSE (B, H, Tq); a query with
// no visible key gets out 0 and lse -inf.
//
// Work: one task per (batch row, group of kv heads, block of queries); the
// H / Hkv query heads sharing a kv head are processed together (taller GEMMs).
// In the tokens formulation a task takes several query blocks (and, with
// tables beyond the caches, kv heads) so that each gathered remote tile serves
// all of them.
// Per kv head, a task keeps its scaled queries, running max/sum and output
// accumulators in a workspace and walks the key blocks: scores Q.K^T and the
// P.V update run through caller-supplied GEMMs, the softmax update through
// SIMD row kernels.
//   tokens     remote keys/values of a block of tokens are gathered and summed
//              from the G table rows into a tile buffer (all kv heads of the
//              task at once: contiguous row segments); with rotary angles, each
//              key row is rotated there, while it is still in L1;
//   codewords  (G = 1) the distinct codewords of the batch row, each with a
//              log(count) score bias (count = how many remote tokens carry it);
//   local      keys read in place; causal masking only on the diagonal band,
//              in row chunks so that hidden key blocks are skipped.
#pragma once

#include <cstdint>
#include <vector>

#include "core/attention_kernels.h"

namespace astra::core {

enum class RemoteFormulation { kTokens, kCodewords };

struct AttentionShape {
  int64_t batch;     // B
  int64_t heads;     // H
  int64_t kv_heads;  // Hkv
  int64_t queries;   // Tq
  int64_t local;     // Tl
  int64_t remote;    // Tr
  int64_t groups;    // G
  int64_t codes;     // K
  int64_t head_dim;  // d
};

// Element strides of a (B, heads, T, d) tensor whose last dimension has unit stride.
struct HeadStrides {
  int64_t batch;
  int64_t head;
  int64_t token;
};

template <class T>
struct AttentionInputs {
  const T* q;
  HeadStrides q_strides;
  const T* k_local;
  HeadStrides k_strides;
  const T* v_local;
  HeadStrides v_strides;
  const int32_t* codes;  // (B, Tr, G) contiguous, values in [0, K) (not checked)
  const T* k_table;      // (G, K, Hkv*d) contiguous
  const T* v_table;
  const T* k_bias;  // (Hkv*d,) or null
  const T* v_bias;
  bool causal;
  double scale;
  RemoteFormulation formulation;  // kCodewords needs G == 1
  // Optional rotary angles of the remote tokens, (2, Tr, d/2) contiguous: cos then sin, d even,
  // kTokens only. Remote token t's gathered key is rotated over the feature pairs (i, i + d/2) of
  // each kv head, in the tile, before its scores (reference.mixed_precision_attention).
  const T* rotation = nullptr;
  // Optional attention partial over other, earlier keys, (out (B, H, Tq, d), natural-log lse (B, H, Tq)):
  // the online softmax starts from it, so the result covers those keys too (no separate merge).
  const T* prior_out = nullptr;
  HeadStrides prior_strides{};
  const float* prior_lse = nullptr;
  HeadStrides prior_lse_strides{};  // .token: the stride along Tq
};

template <class T>
struct AttentionOutputs {
  T* out;      // (B, H, Tq, d) contiguous, or (B, Tq, H, d) contiguous with token_major
  float* lse;  // (B, H, Tq) contiguous
  bool token_major = false;
};

// GEMMs over caller-owned row-major memory (leading dimensions in elements).
template <class T>
struct AttentionGemms {
  // C (m, n) = A (m, k) . B^T with B (n, k).
  void (*abt)(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
              T* c, int64_t ldc);
  // C (m, n) += A (m, k) . B with B (k, n).
  void (*ab_add)(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                 T* c, int64_t ldc);
};

// Usage: build a plan, run prepare(b) for every b < prepare_tasks()
// (independent), then run() over any split of [0, tasks()).
template <class T>
class AttentionPlan {
 public:
  // Tiling. Query rows per kv head and task, and keys per block of the fully
  // visible keys, are targets: sizes are balanced so that a ragged sliver joins
  // the other blocks (the causal diagonal's key blocks keep kBlockKeys). Query
  // rows per task are query-major, all query heads of the kv head: tall GEMMs
  // amortise the GEMM's packing of each key block.
  // Keys per block: the scores (rows x keys) stay in L2. Rows per chunk on the
  // causal diagonal: fewer wasted masked scores vs shorter GEMMs. Gathered
  // remote tile (keys x kv heads x d, for K and V each): a full key block for
  // up to 8 kv heads of d = 64 (each block costs every row its softmax
  // bookkeeping), a head's slice of it L2-sized.
  static constexpr int64_t kTaskRows = 256;
  static constexpr int64_t kBlockKeys = 512;
  static constexpr int64_t kDiagonalRows = 64;
  static constexpr int64_t kTileElements = 256 * 1024;
  // Tables above this size (each) are gathered for several kv heads per task:
  // a table beyond the TLB's and L2's reach costs a TLB and cache miss per
  // row segment, so longer row segments are read at once: gathered for all kv
  // heads together, the rows stream at the core's memory bandwidth, one kv
  // head at a time they do not (benchmarks/RESULTS.md, tuning constants).
  static constexpr int64_t kSharedGatherTableBytes = 4 << 20;
  // Remote tokens are gathered for several query blocks per task (tables of any size), so that each
  // remote tile is gathered once for all of them: up to this many elements of per-row state (scaled
  // queries, accumulators) per task.
  static constexpr int64_t kSharedTaskElements = 2 << 20;

  // `kernels` must outlive the plan, and so must the inputs' memory.
  // `threads`: how many threads will run tasks (kv heads are grouped only as
  // far as every thread still gets a task).
  AttentionPlan(const AttentionShape& shape, const AttentionInputs<T>& inputs,
                const AttentionKernels<T>& kernels, int64_t threads);

  int64_t prepare_tasks() const;
  void prepare(int64_t batch_row);

  int64_t tasks() const;
  // Tasks [begin, end): their rows of out and lse are written and nothing else.
  void run(int64_t begin, int64_t end, const AttentionGemms<T>& gemms,
           const AttentionOutputs<T>& outputs) const;

 private:
  struct Workspace;
  struct Task;
  struct HeadState;
  HeadState head_state(const Task& task, Workspace& ws, int64_t i) const;
  void start_from_prior(const Task& task, const HeadState& head) const;
  void run_task(int64_t task, Workspace& ws, const AttentionGemms<T>& gemms,
                const AttentionOutputs<T>& outputs) const;
  bool attend_remote(const Task& task, Workspace& ws, const AttentionGemms<T>& gemms) const;
  void rotate_tile(T* tile, int64_t first_entry, int64_t entries, int64_t kv_heads) const;
  HeadState shifted(const HeadState& head, int64_t rows) const;
  void attend_local(const Task& task, const HeadState& head, int64_t r0, Workspace& ws,
                    const AttentionGemms<T>& gemms) const;
  void attend_local_block(const Task& task, const HeadState& head, Workspace& ws,
                          const AttentionGemms<T>& gemms) const;
  void attend_block(const HeadState& head, Workspace& ws, const AttentionGemms<T>& gemms,
                    int64_t row_begin, int64_t row_end, const T* keys, int64_t key_ld,
                    const T* values, int64_t value_ld, int64_t cols, const T* col_bias,
                    const int64_t* visible) const;

  AttentionShape shape_;
  AttentionInputs<T> in_;
  const AttentionKernels<T>& kernels_;
  int64_t group_size_;      // H / Hkv
  int64_t block_queries_;   // queries per query block: the rows of one GEMM of scores
  int64_t task_queries_;    // queries per task: one query block, or several sharing the gathered tiles
  int64_t query_blocks_;    // tasks per (batch row, group of kv heads)
  int64_t heads_per_task_;  // kv heads per task
  int64_t head_groups_;     // per batch row
  int64_t remote_block_;    // remote entries per gathered tile
  int64_t tile_entries_;    // rows of the tile buffers: min(remote_block_, remote entries)
  int64_t task_rows_;       // workspace rows per kv head
  int64_t block_rows_;      // rows of the scores workspace: one query block
  int64_t score_ld_;        // workspace columns of the scores: the widest key block
  int64_t padded_codes_;    // K rounded up to the row kernels' padding
  // Codewords formulation, per batch row b: the distinct codes in increasing
  // order (entries_[b * K + e], e < num_entries_[b]) and log2 of their counts.
  std::vector<int32_t> entries_;
  std::vector<T> entry_bias_;  // (B, padded_codes_)
  std::vector<int64_t> num_entries_;
};

extern template class AttentionPlan<float>;
extern template class AttentionPlan<double>;

}  // namespace astra::core
