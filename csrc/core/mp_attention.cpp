#include "core/mp_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace astra::core {

namespace {

// The fp32 row kernels may touch scores and column biases up to the next
// multiple of this many columns.
constexpr int64_t kColumnPadding = 16;

constexpr double kLog2E = 1.4426950408889634073599246810018921;
constexpr double kLn2 = 0.6931471805599453094172321214581766;

int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Size of the near-equal blocks, about `target` each, that cover n: a ragged
// sliver joins the others (a class token makes 513 one block of 513, not
// 512 + 1, whose GEMMs are all overhead). Blocks stay below 1.5 * target.
int64_t balanced_block(int64_t n, int64_t target) {
  const int64_t blocks = std::max<int64_t>(1, (n + target / 2) / target);
  return std::max<int64_t>(1, (n + blocks - 1) / blocks);
}

}  // namespace

template <class T>
struct AttentionPlan<T>::Workspace {
  // Buffers only grow: the workspace of a thread serves all its later calls.
  void reserve(int64_t heads, int64_t rows, int64_t block_rows, int64_t d, int64_t score_ld,
               int64_t tile_entries) {
    grow(queries, heads * rows * d);
    grow(acc, heads * rows * d);
    grow(row_max, heads * rows);
    grow(row_sum, heads * rows);
    grow(scores, block_rows * score_ld);
    grow(visible, block_rows);
    grow(key_tile, tile_entries * heads * d);
    grow(value_tile, tile_entries * heads * d);
  }
  template <class U>
  static void grow(std::vector<U>& v, int64_t n) {
    if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  }

  // Per kv head of the task (head i at i * rows rows):
  std::vector<T> queries;  // (rows, d) scaled by scale * log2(e)
  std::vector<T> acc;      // (rows, d) unnormalised outputs
  std::vector<T> row_max;  // (rows,) log2 units
  std::vector<T> row_sum;
  // Shared by the task's kv heads, for one query block's rows at a time:
  std::vector<T> scores;         // (block_rows, score_ld)
  std::vector<int64_t> visible;  // (block_rows,) causal diagonal: visible columns of the block
  std::vector<T> key_tile;       // (tile_entries, heads * d) gathered remote keys
  std::vector<T> value_tile;
};

// Rows are query-major: row r is query t0 + r / group_size of query head
// kv_head * group_size + r % group_size.
template <class T>
struct AttentionPlan<T>::Task {
  int64_t batch_row;
  int64_t first_kv_head;
  int64_t kv_heads;
  int64_t t0;
  int64_t t1;
  int64_t rows;  // per kv head
};

// One kv head's slice of the workspace.
template <class T>
struct AttentionPlan<T>::HeadState {
  int64_t kv_head;
  T* queries;
  T* acc;
  T* row_max;
  T* row_sum;
};

template <class T>
AttentionPlan<T>::AttentionPlan(const AttentionShape& shape, const AttentionInputs<T>& inputs,
                                const AttentionKernels<T>& kernels, int64_t threads)
    : shape_(shape), in_(inputs), kernels_(kernels) {
  if (shape.batch < 0 || shape.queries < 0 || shape.local < 0 || shape.remote < 0 ||
      shape.heads < 1 || shape.kv_heads < 1 || shape.heads % shape.kv_heads != 0 ||
      shape.head_dim < 1 || shape.groups < 1 || shape.codes < 1) {
    throw std::invalid_argument("AttentionPlan: invalid shape");
  }
  if (inputs.formulation == RemoteFormulation::kCodewords && shape.groups != 1) {
    throw std::invalid_argument("AttentionPlan: the codewords formulation needs G = 1");
  }
  if (!(inputs.scale > 0)) throw std::invalid_argument("AttentionPlan: scale must be positive");
  if (inputs.rotation != nullptr &&
      (inputs.formulation != RemoteFormulation::kTokens || shape.head_dim % 2 != 0)) {
    throw std::invalid_argument("AttentionPlan: rotary angles need the tokens formulation and an even head dim");
  }
  group_size_ = shape.heads / shape.kv_heads;
  block_queries_ = balanced_block(shape.queries, std::max<int64_t>(1, kTaskRows / group_size_));
  const int64_t query_blocks = (shape.queries + block_queries_ - 1) / block_queries_;
  const int64_t d = shape.head_dim;
  const int64_t table_bytes =
      shape.groups * shape.codes * shape.kv_heads * d * static_cast<int64_t>(sizeof(T));
  heads_per_task_ = 1;
  int64_t blocks_per_task = 1;
  if (inputs.formulation == RemoteFormulation::kTokens && shape.remote > 0) {
    // Each remote tile is gathered once per task: a task takes all query blocks (and, with large
    // tables, kv heads) that still leave every thread a task, within the workspace budget.
    const int64_t workers = std::max<int64_t>(1, threads);
    if (table_bytes > kSharedGatherTableBytes) {
      heads_per_task_ = std::clamp<int64_t>(shape.kv_heads * shape.batch / workers, 1, shape.kv_heads);
    }
    const int64_t head_tasks =
        std::max<int64_t>(1, shape.batch * ((shape.kv_heads + heads_per_task_ - 1) / heads_per_task_));
    const int64_t query_tasks = (workers + head_tasks - 1) / head_tasks;  // what the threads still need
    const int64_t block_elements = heads_per_task_ * block_queries_ * group_size_ * d;
    blocks_per_task = std::clamp<int64_t>(std::min(query_blocks / query_tasks, kSharedTaskElements / block_elements),
                                          1, std::max<int64_t>(1, query_blocks));  // no queries: one empty block
  }
  task_queries_ = blocks_per_task * block_queries_;
  query_blocks_ = (shape.queries + task_queries_ - 1) / task_queries_;
  head_groups_ = (shape.kv_heads + heads_per_task_ - 1) / heads_per_task_;
  remote_block_ =
      std::clamp<int64_t>(kTileElements / (heads_per_task_ * d) / kColumnPadding * kColumnPadding,
                          kColumnPadding, kBlockKeys);
  padded_codes_ = round_up(shape.codes, kColumnPadding);
  // Workspace sizes: small problems get small buffers.
  task_rows_ = std::min(task_queries_, shape.queries) * group_size_;
  block_rows_ = std::min(block_queries_, shape.queries) * group_size_;
  const int64_t remote_entries = inputs.formulation == RemoteFormulation::kCodewords
                                     ? std::min(shape.codes, shape.remote)
                                     : shape.remote;
  tile_entries_ = std::min(remote_block_, remote_entries);
  // balanced_block(n, kBlockKeys) < 1.5 * kBlockKeys for every n <= Tl
  score_ld_ = round_up(std::max<int64_t>({1, std::min(shape.local, kBlockKeys * 3 / 2), tile_entries_}),
                       kColumnPadding);
  if (inputs.formulation == RemoteFormulation::kCodewords) {
    entries_.resize(static_cast<size_t>(shape.batch * shape.codes));
    entry_bias_.resize(static_cast<size_t>(shape.batch * padded_codes_));
    num_entries_.resize(static_cast<size_t>(shape.batch));
  }
}

template <class T>
int64_t AttentionPlan<T>::prepare_tasks() const {
  return in_.formulation == RemoteFormulation::kCodewords ? shape_.batch : 0;
}

template <class T>
void AttentionPlan<T>::prepare(int64_t batch_row) {
  // Exact integer histogram of the row's codes; unused codewords are dropped
  // (count 0 is a -inf bias: they would contribute nothing).
  const int64_t k = shape_.codes;
  std::vector<int64_t> counts(static_cast<size_t>(k), 0);
  const int32_t* codes = in_.codes + batch_row * shape_.remote;
  for (int64_t t = 0; t < shape_.remote; ++t) ++counts[static_cast<size_t>(codes[t])];
  int32_t* entries = entries_.data() + batch_row * k;
  T* bias = entry_bias_.data() + batch_row * padded_codes_;
  int64_t n = 0;
  for (int64_t c = 0; c < k; ++c) {
    const int64_t count = counts[static_cast<size_t>(c)];
    if (count == 0) continue;
    entries[n] = static_cast<int32_t>(c);
    bias[n] = std::log2(static_cast<T>(count));
    ++n;
  }
  std::fill(bias + n, bias + padded_codes_, T(0));
  num_entries_[static_cast<size_t>(batch_row)] = n;
}

template <class T>
int64_t AttentionPlan<T>::tasks() const {
  return shape_.batch * head_groups_ * query_blocks_;
}

template <class T>
void AttentionPlan<T>::run(int64_t begin, int64_t end, const AttentionGemms<T>& gemms,
                           const AttentionOutputs<T>& outputs) const {
  if (begin >= end) return;
  // Kept per thread: a fresh workspace of a few MB costs its page faults on every call.
  thread_local Workspace ws;
  ws.reserve(heads_per_task_, task_rows_, block_rows_, shape_.head_dim, score_ld_, tile_entries_);
  for (int64_t task = begin; task < end; ++task) run_task(task, ws, gemms, outputs);
}

template <class T>
typename AttentionPlan<T>::HeadState AttentionPlan<T>::head_state(const Task& task, Workspace& ws,
                                                                  int64_t i) const {
  const int64_t d = shape_.head_dim;
  return HeadState{task.first_kv_head + i, ws.queries.data() + i * task_rows_ * d,
                   ws.acc.data() + i * task_rows_ * d, ws.row_max.data() + i * task_rows_,
                   ws.row_sum.data() + i * task_rows_};
}

// The head's state from row `rows` on: the rows of a later query block of the task.
template <class T>
typename AttentionPlan<T>::HeadState AttentionPlan<T>::shifted(const HeadState& head, int64_t rows) const {
  const int64_t d = shape_.head_dim;
  return HeadState{head.kv_head, head.queries + rows * d, head.acc + rows * d, head.row_max + rows,
                   head.row_sum + rows};
}

template <class T>
void AttentionPlan<T>::run_task(int64_t index, Workspace& ws, const AttentionGemms<T>& gemms,
                                const AttentionOutputs<T>& outputs) const {
  const int64_t d = shape_.head_dim;
  Task task;
  task.batch_row = index / (head_groups_ * query_blocks_);
  task.first_kv_head = index / query_blocks_ % head_groups_ * heads_per_task_;
  task.kv_heads = std::min(heads_per_task_, shape_.kv_heads - task.first_kv_head);
  task.t0 = index % query_blocks_ * task_queries_;
  task.t1 = std::min(shape_.queries, task.t0 + task_queries_);
  task.rows = (task.t1 - task.t0) * group_size_;

  // Queries scaled once so that scores come out of the GEMM in log2 units.
  const T q_scale = static_cast<T>(in_.scale * kLog2E);
  for (int64_t i = 0; i < task.kv_heads; ++i) {
    const HeadState head = head_state(task, ws, i);
    for (int64_t r = 0; r < task.rows; ++r) {
      const T* src = in_.q + task.batch_row * in_.q_strides.batch +
                     (head.kv_head * group_size_ + r % group_size_) * in_.q_strides.head +
                     (task.t0 + r / group_size_) * in_.q_strides.token;
      T* dst = head.queries + r * d;
      for (int64_t j = 0; j < d; ++j) dst[j] = src[j] * q_scale;
    }
    std::fill(head.acc, head.acc + task.rows * d, T(0));
    std::fill(head.row_max, head.row_max + task.rows, -std::numeric_limits<T>::infinity());
    std::fill(head.row_sum, head.row_sum + task.rows, T(0));
    if (in_.prior_out != nullptr) start_from_prior(task, head);
  }

  if (!attend_remote(task, ws, gemms)) {  // no remote tile: the local keys alone
    for (int64_t i = 0; i < task.kv_heads; ++i) {
      const HeadState head = head_state(task, ws, i);
      for (int64_t r0 = 0; r0 < task.rows; r0 += block_rows_) attend_local(task, head, r0, ws, gemms);
    }
  }

  for (int64_t i = 0; i < task.kv_heads; ++i) {
    const HeadState head = head_state(task, ws, i);
    for (int64_t r = 0; r < task.rows; ++r) {
      const int64_t h = head.kv_head * group_size_ + r % group_size_;
      const int64_t t = task.t0 + r / group_size_;
      const int64_t row = (task.batch_row * shape_.heads + h) * shape_.queries + t;
      T* out = outputs.out + (outputs.token_major
                                  ? ((task.batch_row * shape_.queries + t) * shape_.heads + h) * d
                                  : row * d);
      const T* acc = head.acc + r * d;
      const T sum = head.row_sum[r];
      if (sum > 0 || std::isnan(sum)) {  // NaN scores: NaN out and lse
        const T inv = T(1) / sum;
        for (int64_t j = 0; j < d; ++j) out[j] = acc[j] * inv;
        const double m = static_cast<double>(head.row_max[r]);
        outputs.lse[row] = static_cast<float>((m + std::log2(static_cast<double>(sum))) * kLn2);
      } else {
        std::fill(out, out + d, T(0));
        outputs.lse[row] = -std::numeric_limits<float>::infinity();
      }
    }
  }
}

// The prior partial's total weight exp(lse) becomes the running state 2^max * sum
// with sum = 1 (max in log2 units) and the accumulator its normalized output.
template <class T>
void AttentionPlan<T>::start_from_prior(const Task& task, const HeadState& head) const {
  const int64_t d = shape_.head_dim;
  for (int64_t r = 0; r < task.rows; ++r) {
    const int64_t h = head.kv_head * group_size_ + r % group_size_;
    const int64_t t = task.t0 + r / group_size_;
    const float lse = in_.prior_lse[task.batch_row * in_.prior_lse_strides.batch + h * in_.prior_lse_strides.head +
                                    t * in_.prior_lse_strides.token];
    if (lse == -std::numeric_limits<float>::infinity()) continue;  // it saw no key: nothing to carry
    const T* src = in_.prior_out + task.batch_row * in_.prior_strides.batch + h * in_.prior_strides.head +
                   t * in_.prior_strides.token;
    std::copy(src, src + d, head.acc + r * d);
    head.row_max[r] = static_cast<T>(static_cast<double>(lse) * kLog2E);
    head.row_sum[r] = T(1);
  }
}

// Each query block's local keys follow its last remote tile at once, while the block's queries and
// accumulators are still in cache. Returns false when there is no remote tile (nothing attended).
template <class T>
bool AttentionPlan<T>::attend_remote(const Task& task, Workspace& ws,
                                     const AttentionGemms<T>& gemms) const {
  const int64_t d = shape_.head_dim;
  const bool codewords = in_.formulation == RemoteFormulation::kCodewords;
  const int64_t entries =
      codewords ? num_entries_[static_cast<size_t>(task.batch_row)] : shape_.remote;
  const int32_t* codes = codewords ? entries_.data() + task.batch_row * shape_.codes
                                   : in_.codes + task.batch_row * shape_.remote * shape_.groups;
  const int64_t code_stride = codewords ? 1 : shape_.groups;
  const T* bias = codewords ? entry_bias_.data() + task.batch_row * padded_codes_ : nullptr;
  const int64_t offset = task.first_kv_head * d;
  const int64_t width = task.kv_heads * d;  // tile row: the task's kv heads side by side
  for (int64_t e0 = 0; e0 < entries; e0 += remote_block_) {
    const int64_t n = std::min(remote_block_, entries - e0);
    GatherArgs<T> gather{in_.k_table,
                         shape_.codes,
                         shape_.kv_heads * d,
                         offset,
                         width,
                         codes + e0 * code_stride,
                         code_stride,
                         shape_.groups,
                         n,
                         in_.k_bias != nullptr ? in_.k_bias + offset : nullptr,
                         ws.key_tile.data()};
    kernels_.gather(gather);
    if (in_.rotation != nullptr) rotate_tile(ws.key_tile.data(), e0, n, task.kv_heads);
    gather.table = in_.v_table;
    gather.bias = in_.v_bias != nullptr ? in_.v_bias + offset : nullptr;
    gather.out = ws.value_tile.data();
    kernels_.gather(gather);
    const bool last_tile = e0 + n == entries;
    for (int64_t i = 0; i < task.kv_heads; ++i) {
      const HeadState head = head_state(task, ws, i);
      for (int64_t r0 = 0; r0 < task.rows; r0 += block_rows_) {  // the scores of one query block at a time
        attend_block(shifted(head, r0), ws, gemms, 0, std::min(block_rows_, task.rows - r0),
                     ws.key_tile.data() + i * d, width, ws.value_tile.data() + i * d, width, n,
                     bias != nullptr ? bias + e0 : nullptr, nullptr);
        if (last_tile) attend_local(task, head, r0, ws, gemms);
      }
    }
  }
  return entries > 0;
}

// Rows [0, entries) of the key tile hold remote tokens first_entry.. for `kv_heads` heads side by
// side; pair (i, i + d/2) of each head turns by the token's angle i.
template <class T>
void AttentionPlan<T>::rotate_tile(T* tile, int64_t first_entry, int64_t entries, int64_t kv_heads) const {
  const int64_t d = shape_.head_dim;
  const int64_t half = d / 2;
  const T* cos = in_.rotation + first_entry * half;
  const T* sin = cos + shape_.remote * half;
  for (int64_t e = 0; e < entries; ++e) {
    const T* c = cos + e * half;
    const T* s = sin + e * half;
    for (int64_t i = 0; i < kv_heads; ++i) {
      T* x = tile + (e * kv_heads + i) * d;
      T* y = x + half;
      for (int64_t j = 0; j < half; ++j) {
        const T a = x[j];
        const T b = y[j];
        x[j] = a * c[j] - b * s[j];
        y[j] = b * c[j] + a * s[j];
      }
    }
  }
}

// The local keys of the task's query block at row `r0` of `head` (a multiple of block_rows_).
template <class T>
void AttentionPlan<T>::attend_local(const Task& task, const HeadState& head, int64_t r0, Workspace& ws,
                                    const AttentionGemms<T>& gemms) const {
  if (shape_.local == 0) return;
  Task block = task;
  block.t0 = task.t0 + r0 / group_size_;
  block.t1 = std::min(task.t1, block.t0 + block_queries_);
  block.rows = (block.t1 - block.t0) * group_size_;
  attend_local_block(block, shifted(head, r0), ws, gemms);
}

// One query block's rows [0, task.rows) of `head` (task.t0, task.t1: the block's queries).
template <class T>
void AttentionPlan<T>::attend_local_block(const Task& task, const HeadState& head, Workspace& ws,
                                          const AttentionGemms<T>& gemms) const {
  const int64_t tl = shape_.local;
  const T* keys =
      in_.k_local + task.batch_row * in_.k_strides.batch + head.kv_head * in_.k_strides.head;
  const T* values =
      in_.v_local + task.batch_row * in_.v_strides.batch + head.kv_head * in_.v_strides.head;
  const int64_t kld = in_.k_strides.token;
  const int64_t vld = in_.v_strides.token;
  // Query t sees local keys j < t + shift + 1 (all of them without causal).
  // Keys every row sees are attended without a mask, unless they are too few
  // to pay for their own GEMMs: then the diagonal chunks take them.
  const int64_t shift = tl - shape_.queries;
  int64_t all_visible_end = in_.causal ? std::clamp<int64_t>(task.t0 + shift + 1, 0, tl) : tl;
  if (in_.causal && all_visible_end < kDiagonalRows) all_visible_end = 0;
  const int64_t block = balanced_block(all_visible_end, kBlockKeys);
  for (int64_t j0 = 0; j0 < all_visible_end; j0 += block) {
    const int64_t n = std::min(block, all_visible_end - j0);
    attend_block(head, ws, gemms, 0, task.rows, keys + j0 * kld, kld, values + j0 * vld, vld, n,
                 nullptr, nullptr);
  }
  if (!in_.causal) return;
  // Diagonal band: chunks of rows, each up to the last key its last query sees.
  for (int64_t r0 = 0; r0 < task.rows; r0 += kDiagonalRows) {
    const int64_t r1 = std::min(task.rows, r0 + kDiagonalRows);
    const int64_t end = std::clamp<int64_t>(task.t0 + (r1 - 1) / group_size_ + shift + 1, 0, tl);
    for (int64_t j0 = all_visible_end; j0 < end; j0 += kBlockKeys) {
      const int64_t n = std::min(kBlockKeys, end - j0);
      for (int64_t r = r0; r < r1; ++r) {
        ws.visible[static_cast<size_t>(r)] =
            std::clamp<int64_t>(task.t0 + r / group_size_ + shift + 1 - j0, 0, n);
      }
      attend_block(head, ws, gemms, r0, r1, keys + j0 * kld, kld, values + j0 * vld, vld, n,
                   nullptr, ws.visible.data() + r0);
    }
  }
}

template <class T>
void AttentionPlan<T>::attend_block(const HeadState& head, Workspace& ws,
                                    const AttentionGemms<T>& gemms, int64_t row_begin,
                                    int64_t row_end, const T* keys, int64_t key_ld, const T* values,
                                    int64_t value_ld, int64_t cols, const T* col_bias,
                                    const int64_t* visible) const {
  const int64_t d = shape_.head_dim;
  const int64_t rows = row_end - row_begin;
  if (rows <= 0 || cols <= 0) return;
  T* scores = ws.scores.data() + row_begin * score_ld_;
  T* acc = head.acc + row_begin * d;
  gemms.abt(rows, cols, d, head.queries + row_begin * d, d, keys, key_ld, scores, score_ld_);
  kernels_.softmax_rows(SoftmaxRowsArgs<T>{scores, score_ld_, rows, cols, col_bias, visible,
                                           head.row_max + row_begin, head.row_sum + row_begin, acc,
                                           d, d});
  gemms.ab_add(rows, d, cols, scores, score_ld_, values, value_ld, acc, d);
}

template class AttentionPlan<float>;
template class AttentionPlan<double>;

}  // namespace astra::core
