#include "core/merge_partials.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace astra::core {

template <class T>
void merge_partials(const MergeArgs<T>& a, int64_t row_begin, int64_t row_end) {
  constexpr float kNoKey = -std::numeric_limits<float>::infinity();
  // (b, h, t) of the first row, then stepped: no division per row
  int64_t t = row_begin % a.tokens;
  int64_t h = (row_begin / a.tokens) % a.heads;
  int64_t b = row_begin / (a.tokens * a.heads);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float la = a.lse_a[b * a.lse_a_strides[0] + h * a.lse_a_strides[1] + t * a.lse_a_strides[2]];
    const float lb = a.lse_b[b * a.lse_b_strides[0] + h * a.lse_b_strides[1] + t * a.lse_b_strides[2]];
    const float m = std::max(la, lb);
    T wa = 0, wb = 0;
    float lse = kNoKey;
    if (m != kNoKey) {  // one of them saw a key: the weights are finite and sum to 1
      const float ea = std::exp(la - m);
      const float eb = std::exp(lb - m);
      const float sum = ea + eb;
      lse = m + std::log(sum);
      wa = static_cast<T>(ea / sum);
      wb = static_cast<T>(eb / sum);
    }
    a.lse[r] = lse;
    const T* xa = a.out_a + b * a.out_a_strides[0] + h * a.out_a_strides[1] + t * a.out_a_strides[2];
    const T* xb = a.out_b + b * a.out_b_strides[0] + h * a.out_b_strides[1] + t * a.out_b_strides[2];
    T* y = a.out + ((b * a.tokens + t) * a.heads + h) * a.dim;
    for (int64_t d = 0; d < a.dim; ++d) y[d] = wa * xa[d] + wb * xb[d];
    if (++t == a.tokens) {
      t = 0;
      if (++h == a.heads) {
        h = 0;
        ++b;
      }
    }
  }
}

template void merge_partials<float>(const MergeArgs<float>&, int64_t, int64_t);
template void merge_partials<double>(const MergeArgs<double>&, int64_t, int64_t);

}  // namespace astra::core
