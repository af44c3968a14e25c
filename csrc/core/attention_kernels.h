// Row kernels of the fused attention (mp_attention.h): the online-softmax
// update of a block of scores, the gather of remote keys/values from
// projected tables, and the GEMMs of scores and outputs. fp32 has one build per instruction set, selected at run
// time; fp64 has one portable scalar build.
#pragma once

#include <cstdint>

#include "core/cpu_features.h"

namespace astra::core {

// Online-softmax step for `rows` rows of one key block. Scores are in log2
// units (the query scale and log2(e) are folded into q). Per row r with
// v = visible[r] (all `cols` when visible is null):
//   x_j  = s[r, j] + col_bias[j] for j < v, -inf for v <= j < cols
//   m'   = max(row_max[r], max_j x_j)
//   s[r, j] <- exp2(x_j - m') (0 for j >= v), row_sum[r] <- row_sum[r] * a + sum_j s[r, j],
//   o[r, :width] *= a, with a = exp2(row_max[r] - m'), and row_max[r] <- m'.
// A row whose m' is -inf (nothing visible yet) gets zeros and keeps its state.
// fp32 kernels may read and write s and read col_bias up to the next multiple
// of 16 columns past `cols` (inside ld): callers pad those buffers.
template <class T>
struct SoftmaxRowsArgs {
  T* s;  // (rows, ld) scores in, probabilities out
  int64_t ld;
  int64_t rows;
  int64_t cols;
  const T* col_bias;       // (cols,) or null
  const int64_t* visible;  // (rows,) visible leading columns, or null
  T* row_max;              // (rows,) running max, -inf at start
  T* row_sum;              // (rows,) running sum, 0 at start
  T* o;                    // (rows, ldo) output accumulators
  int64_t ldo;
  int64_t width;  // d
};

// out[e, :] = sum_g table[g, codes[e * code_stride + g], offset : offset + width] (+ bias)
// for entries e < entries: the keys (or values) of a remote token, or of one
// codeword when groups == 1, for the kv heads [offset / d, (offset + width) / d).
template <class T>
struct GatherArgs {
  const T* table;           // (G, K, row_width) contiguous
  int64_t codes_per_group;  // K
  int64_t row_width;        // Hkv * d
  int64_t offset;           // first column: first kv head * d
  int64_t width;            // columns gathered: kv heads * d
  const int32_t* codes;     // entry e, group g: codes[e * code_stride + g], in [0, K)
  int64_t code_stride;
  int64_t groups;  // G
  int64_t entries;
  const T* bias;  // (width,) already offset to the first column, or null
  T* out;         // (entries, width) contiguous
};

template <class T>
struct AttentionKernels {
  Simd simd;
  void (*softmax_rows)(const SoftmaxRowsArgs<T>&);
  void (*gather)(const GatherArgs<T>&);
  // Register-tiled GEMMs of this instruction set for the attention's shapes (attention_gemm_impl.h),
  // with AttentionGemms' contract (mp_attention.h); null where none is built (fp64).
  void (*gemm_abt)(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
                   int64_t ldc) = nullptr;
  void (*gemm_ab_add)(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
                      int64_t ldc) = nullptr;
};

// fp32 kernels for `simd`; throws std::invalid_argument when this CPU or
// build cannot run them.
const AttentionKernels<float>& attention_kernels_f32(Simd simd);
// fp64: portable scalar kernels (std::exp2).
const AttentionKernels<double>& attention_kernels_f64();

// Per-ISA fp32 tables (attention_kernels_<isa>.cpp); nullptr when not compiled in.
const AttentionKernels<float>* attention_kernels_avx512();
const AttentionKernels<float>* attention_kernels_avx2();
const AttentionKernels<float>* attention_kernels_generic();

}  // namespace astra::core
