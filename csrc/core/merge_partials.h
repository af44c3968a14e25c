// Merge of two attention partials over disjoint key sets (merge_attention),
// torch-free. Per (b, h, t), with lse = log(exp(lse_a) + exp(lse_b)):
//     out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b,
// and out = 0, lse = -inf when both partials saw no key (lse -inf).
// The output is written token-major, (B, T, H, d), so that the heads of a
// token are already the contiguous input of the output projection.
#pragma once

#include <cstdint>

namespace astra::core {

template <class T>
struct MergeArgs {
  int64_t batch, heads, tokens, dim;  // B, H, T, d
  const T* out_a;                     // (B, H, T, d), element strides below, unit along d
  const T* out_b;
  int64_t out_a_strides[3];
  int64_t out_b_strides[3];
  const float* lse_a;                 // (B, H, T), element strides below
  const float* lse_b;
  int64_t lse_a_strides[3];
  int64_t lse_b_strides[3];
  T* out;                             // (B, T, H, d) contiguous
  float* lse;                         // (B, H, T) contiguous
};

// Rows r = (b * H + h) * T + t for r in [row_begin, row_end).
template <class T>
void merge_partials(const MergeArgs<T>& a, int64_t row_begin, int64_t row_end);

}  // namespace astra::core
