// Templated bodies of the argmin kernels (argmin_kernels.h), instantiated
// once per instruction set by argmin_kernels_<isa>.cpp with a SIMD traits
// type S (simd_<isa>.h).
//
// Include only after the ISA's `#pragma GCC target` and traits header. All
// definitions have internal linkage: an inline function compiled for AVX-512
// in one translation unit must never be the copy the linker keeps for the
// generic path.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "core/argmin_kernels.h"

namespace astra::core {
namespace {

// Rows whose running (min, index) lanes are kept in a stack buffer while the
// codebook is streamed block by block.
constexpr int64_t kArgminRowChunk = 64;
// Packed codebook bytes streamed per pass over a row chunk: half of a 48 KiB
// L1D, so panels, the rows of x and the lane state stay in L1.
constexpr int64_t kArgminL1PanelBytes = 24 * 1024;

// Folds panels [p_begin, p_end) into the running lanes of R rows.
// DG > 0: compile-time group width (constant trip count, unrolled by the
// compiler); DG == 0: runtime width.
template <class S, int R, int DG>
inline void argmin_tile(const float* x, int64_t x_stride, int64_t width, const float* panels,
                        const float* norms, int64_t p_begin, int64_t p_end, float* lane_min,
                        int32_t* lane_index) {
  using F = typename S::F;
  using I = typename S::I;
  using M = typename S::M;
  constexpr int W = S::kWidth;
  constexpr int C = S::kTileVectors;
  constexpr int P = W * C;
  const int64_t dg = DG > 0 ? DG : width;

  const float* xr[R];
  F vmin[R];
  I vidx[R];
  for (int r = 0; r < R; ++r) {
    xr[r] = x + r * x_stride;
    vmin[r] = S::load(lane_min + r * W);
    vidx[r] = S::load(lane_index + r * W);
  }
  I cand = S::add(S::lane_index(), S::broadcast(static_cast<int32_t>(p_begin * P)));
  const I step = S::broadcast(W);

  for (int64_t p = p_begin; p < p_end; ++p) {
    const float* panel = panels + p * dg * P;
    F acc[R][C];
    for (int c = 0; c < C; ++c) {
      const F n = S::load(norms + p * P + c * W);
      for (int r = 0; r < R; ++r) acc[r][c] = n;
    }
#pragma GCC unroll 8
    for (int64_t d = 0; d < dg; ++d) {
      F e[C];
      for (int c = 0; c < C; ++c) e[c] = S::load(panel + d * P + c * W);
      for (int r = 0; r < R; ++r) {
        const F xv = S::broadcast(xr[r][d]);
        for (int c = 0; c < C; ++c) acc[r][c] = S::fmadd(xv, e[c], acc[r][c]);
      }
    }
    // Vectors in increasing codeword order + strict `<`: each lane keeps the
    // lowest index among its equal minima.
    for (int c = 0; c < C; ++c) {
      for (int r = 0; r < R; ++r) {
        const M m = S::less(acc[r][c], vmin[r]);
        vmin[r] = S::select(m, acc[r][c], vmin[r]);
        vidx[r] = S::select(m, cand, vidx[r]);
      }
      cand = S::add(cand, step);
    }
  }
  for (int r = 0; r < R; ++r) {
    S::store(lane_min + r * W, vmin[r]);
    S::store(lane_index + r * W, vidx[r]);
  }
}

// argmin_tile for a runtime row count in [1, R] (the ragged end of a chunk).
template <class S, int R, int DG>
inline void argmin_tile_rows(int64_t rows, const float* x, int64_t x_stride, int64_t width,
                             const float* panels, const float* norms, int64_t p_begin,
                             int64_t p_end, float* lane_min, int32_t* lane_index) {
  if constexpr (R > 0) {
    if (rows == R) {
      argmin_tile<S, R, DG>(x, x_stride, width, panels, norms, p_begin, p_end, lane_min,
                            lane_index);
    } else {
      argmin_tile_rows<S, R - 1, DG>(rows, x, x_stride, width, panels, norms, p_begin, p_end,
                                     lane_min, lane_index);
    }
  }
}

// Lowest index among the lanes holding the minimum (each lane already holds
// the lowest index of its own minima); the minimum goes to *best.
template <int W>
inline int32_t reduce_lanes(const float* lane_min, const int32_t* lane_index, float* best) {
  float value = lane_min[0];
  int32_t index = lane_index[0];
  for (int l = 1; l < W; ++l) {
    const float v = lane_min[l];
    if (v < value || (v == value && lane_index[l] < index)) {
      value = v;
      index = lane_index[l];
    }
  }
  *best = value;
  return index;
}

template <class S, int DG>
void argmin_packed_width(const PackedArgminArgs& a) {
  constexpr int W = S::kWidth;
  constexpr int R = S::kTileRows;
  constexpr int P = W * S::kTileVectors;
  const int64_t panel_bytes = a.width * P * static_cast<int64_t>(sizeof(float));
  const int64_t block = panel_bytes >= kArgminL1PanelBytes ? 1 : kArgminL1PanelBytes / panel_bytes;

  alignas(64) float lane_min[kArgminRowChunk * W];
  alignas(64) int32_t lane_index[kArgminRowChunk * W];
  for (int64_t c0 = 0; c0 < a.rows; c0 += kArgminRowChunk) {
    const int64_t n = a.rows - c0 < kArgminRowChunk ? a.rows - c0 : kArgminRowChunk;
    for (int64_t i = 0; i < n * W; ++i) {
      lane_min[i] = std::numeric_limits<float>::infinity();
      lane_index[i] = 0;
    }
    const float* x = a.x + c0 * a.x_row_stride;
    for (int64_t pb = 0; pb < a.num_panels; pb += block) {
      const int64_t pe = pb + block < a.num_panels ? pb + block : a.num_panels;
      int64_t r = 0;
      for (; r + R <= n; r += R) {
        argmin_tile<S, R, DG>(x + r * a.x_row_stride, a.x_row_stride, a.width, a.panels, a.norms,
                              pb, pe, lane_min + r * W, lane_index + r * W);
      }
      if (r < n) {
        argmin_tile_rows<S, R - 1, DG>(n - r, x + r * a.x_row_stride, a.x_row_stride, a.width,
                                       a.panels, a.norms, pb, pe, lane_min + r * W,
                                       lane_index + r * W);
      }
    }
    float score;
    for (int64_t i = 0; i < n; ++i) {
      a.best[c0 + i] = reduce_lanes<W>(lane_min + i * W, lane_index + i * W, &score);
    }
  }
}

// Panels are the transposed codebook: each vector of W codewords is read
// with a strided gather per feature d. ||e||^2 accumulates in the same
// per-lane order for every codeword, so identical codewords get identical
// norms (ties stay exact).
template <class S>
void pack_panels(const float* codebook, int64_t k, int64_t width, float* panels, float* norms) {
  using F = typename S::F;
  constexpr int W = S::kWidth;
  constexpr int P = W * S::kTileVectors;
  const int64_t num_panels = (k + P - 1) / P;
  const F minus_two = S::broadcast(-2.0f);
  const F inf = S::broadcast(std::numeric_limits<float>::infinity());
  const int32_t stride = static_cast<int32_t>(width);
  for (int64_t q = 0; q < num_panels; ++q) {
    float* panel = panels + q * width * P;
    for (int c = 0; c < S::kTileVectors; ++c) {
      const int64_t first = q * P + c * W;
      const int valid = first >= k ? 0 : (k - first >= W ? W : static_cast<int>(k - first));
      const float* base = codebook + (valid > 0 ? first * width : 0);
      F norm = S::broadcast(0.0f);
      for (int64_t d = 0; d < width; ++d) {
        const F e = S::gather(base + d, stride, valid);
        S::store(panel + d * P + c * W, S::mul(minus_two, e));
        norm = S::fmadd(e, e, norm);
      }
      // Padding codewords (zero vectors) get +inf so they never win.
      S::store(norms + q * P + c * W, S::select(S::first_lanes(valid), norm, inf));
    }
  }
}

// Unrolled builds for the common group widths, a runtime loop otherwise.
template <class S>
void argmin_packed(const PackedArgminArgs& a) {
  switch (a.width) {
    case 4: return argmin_packed_width<S, 4>(a);
    case 8: return argmin_packed_width<S, 8>(a);
    case 16: return argmin_packed_width<S, 16>(a);
    case 24: return argmin_packed_width<S, 24>(a);
    case 32: return argmin_packed_width<S, 32>(a);
    case 48: return argmin_packed_width<S, 48>(a);
    case 64: return argmin_packed_width<S, 64>(a);
    default: return argmin_packed_width<S, 0>(a);
  }
}

template <class S>
void argmin_scores(const ScoresArgminArgs& a) {
  using F = typename S::F;
  using I = typename S::I;
  using M = typename S::M;
  constexpr int W = S::kWidth;
  const F minus_two = S::broadcast(-2.0f);
  const I step = S::broadcast(W);
  alignas(64) float lane_min[W];
  alignas(64) int32_t lane_index[W];
  const int64_t vec_end = a.block - a.block % W;
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* dots = a.dots + r * a.ld;
    F vmin = S::broadcast(std::numeric_limits<float>::infinity());
    I vidx = S::broadcast(0);
    I cand = S::add(S::lane_index(), S::broadcast(a.first));
    for (int64_t j = 0; j < vec_end; j += W) {
      const F s = S::fmadd(minus_two, S::load(dots + j), S::load(a.norms + j));
      const M m = S::less(s, vmin);
      vmin = S::select(m, s, vmin);
      vidx = S::select(m, cand, vidx);
      cand = S::add(cand, step);
    }
    S::store(lane_min, vmin);
    S::store(lane_index, vidx);
    float best = a.best_score[r];
    int32_t index = a.best_index[r];
    // Earlier blocks hold lower indices: only a strictly smaller score replaces them.
    float vec_best;
    const int32_t vec_index = reduce_lanes<W>(lane_min, lane_index, &vec_best);
    if (vec_best < best) {
      best = vec_best;
      index = vec_index;
    }
    for (int64_t j = vec_end; j < a.block; ++j) {
      const float s = -2.0f * dots[j] + a.norms[j];
      if (s < best) {
        best = s;
        index = a.first + static_cast<int32_t>(j);
      }
    }
    a.best_score[r] = best;
    a.best_index[r] = index;
  }
}

template <class S>
float lane_sum(typename S::F v) {
  alignas(64) float lanes[S::kWidth];
  S::store(lanes, v);
  float sum = 0.0f;
  for (int l = 0; l < S::kWidth; ++l) sum += lanes[l];
  return sum;
}

// sum_d (a[d] - b[d])^2 (b = nullptr: sum_d a[d]^2): W-lane partial sums, then the lanes and the tail.
template <class S>
float squared_distance(const float* a, const float* b, int64_t n) {
  using F = typename S::F;
  constexpr int W = S::kWidth;
  const F minus_one = S::broadcast(-1.0f);
  const int64_t body = n - n % W;
  F acc = S::broadcast(0.0f);
  for (int64_t d = 0; d < body; d += W) {
    const F t = b == nullptr ? S::load(a + d) : S::fmadd(minus_one, S::load(b + d), S::load(a + d));
    acc = S::fmadd(t, t, acc);
  }
  float sum = lane_sum<S>(acc);
  for (int64_t d = body; d < n; ++d) {
    const float t = b == nullptr ? a[d] : a[d] - b[d];
    sum += t * t;
  }
  return sum;
}

// Rows ahead whose chosen codeword is requested before it is needed: a task's
// rows at once on the int8-estimate path (64), a bounded window on the others.
constexpr int64_t kFinishPrefetchRows = 64;

inline void prefetch_codeword(const FinishArgs& a, int64_t i) {
  const char* e = reinterpret_cast<const char*>(a.codebook + a.best[i] * a.width);
  const int64_t row_bytes = a.width * static_cast<int64_t>(sizeof(float));
  for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(e + b);
  __builtin_prefetch(e + row_bytes - 1);  // rows need not start on a line
}

template <class S>
void finish_rows(const FinishArgs& a) {
  // The chosen codewords are scattered over the group's fp32 codebook, which the
  // int8-estimate kernel never reads: each is a cache miss unless requested early.
  const int64_t ahead = std::min(a.rows, kFinishPrefetchRows);
  for (int64_t i = 0; i < ahead; ++i) prefetch_codeword(a, i);
  for (int64_t i = 0; i < a.rows; ++i) {
    if (i + ahead < a.rows) prefetch_codeword(a, i + ahead);
    const float* x = a.x + i * a.x_row_stride;
    const bool finite = std::isfinite(squared_distance<S>(x, nullptr, a.width));
    const int32_t code = finite ? a.best[i] : 0;
    a.codes[i * a.out_stride] = code;
    a.sqdist[i * a.out_stride] = squared_distance<S>(x, a.codebook + code * a.width, a.width);
  }
}

template <class S>
constexpr ArgminKernels make_argmin_kernels(Simd simd) {
  return ArgminKernels{simd,          S::kWidth * S::kTileVectors, &pack_panels<S>,
                       &argmin_packed<S>, &argmin_scores<S>,            &finish_rows<S>};
}

}  // namespace
}  // namespace astra::core
