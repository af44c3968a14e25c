// AVX2 build of the int8-estimate argmin and of its codebook packing, in the
// kPairs layout (argmin_int8.h): x~.e~ with VPMADDWD on int16 pairs, exact
// (a pair's products sum to at most 2 * 127 * 127, kInt8MaxWidth features to
// less than 2^31), then VPADDD into int32 lanes.
#include "core/argmin_int8.h"

#include "core/simd_targets.h"

#if ASTRA_X86_SIMD_KERNELS
#include <algorithm>
#include <limits>
#include <vector>

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "core/simd_avx2.h"

namespace astra::core {
namespace {

constexpr int64_t P = kInt8PairPanelWidth;
constexpr int kVectors = static_cast<int>(P / 8);  // codeword vectors per panel
constexpr int kTileRows = 4;
constexpr int64_t kRowChunk = 64;
// Packed codebook bytes per pass over a row chunk: half of a 32 KiB L1D, so a
// block of panels stays in L1 while the chunk's row tiles pass over it.
constexpr int64_t kL1PanelBytes = 16 * 1024;
constexpr float kLevels = 127.0f;

using S = SimdAvx2;

// Lanes l < n of 8 floats at v (n may exceed 8); 0 past n, never read.
__m256 load_first(const float* v, int64_t n) {
  if (n >= 8) return _mm256_loadu_ps(v);
  return _mm256_maskload_ps(v, _mm256_castps_si256(S::first_lanes(static_cast<int>(n))));
}

__m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

float reduce_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

int32_t reduce_max(__m256i v) {
  __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xB1));
  return _mm_cvtsi128_si32(m);
}

// Words per row of quantized x: the pairs, padded to whole stores of 8 features.
int64_t row_words(int64_t width) { return (width + 7) / 8 * 4; }

// One row of x on its grid as int16 pairs (words[q] = x~[2q] | x~[2q+1] << 16,
// zero past width; row_words(width) words written); returns the step. No
// finiteness test: a group with NaN or Inf gets code 0 from vq_encode's rule 2
// whatever its estimates.
float quantize_row(const float* x, int64_t width, int32_t* words) {
  __m256 vmax = _mm256_setzero_ps();
  for (int64_t d = 0; d < width; d += 8) vmax = _mm256_max_ps(vmax, abs_ps(load_first(x + d, width - d)));
  const float step = std::max(reduce_max(vmax) / kLevels, kInt8MinStep);
  const __m256 inv_step = _mm256_set1_ps(1.0f / step);
  for (int64_t d = 0; d < width; d += 8) {
    const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(load_first(x + d, width - d), inv_step));  // half to even
    // packs works per 128-bit lane: [q0..q3 q0..q3 | q4..q7 q4..q7]; keep 64-bit elements 0 and 2
    const __m256i pairs = _mm256_permute4x64_epi64(_mm256_packs_epi32(q, q), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(words + d / 2), _mm256_castsi256_si128(pairs));
  }
  return step;
}

// Folds panels [p_begin, p_end) into the running (min, index) lanes of R rows:
// R x kVectors int32 accumulators (4 x 2, as the fp32 AVX2 kernel's tile), the
// panel's vectors and one broadcast pair of x~ per row; the lanes are touched
// once per panel. PAIRS > 0: compile-time ceil(Dg / 2) (unrolled); 0: runtime `pairs`.
template <int R, int PAIRS>
inline void estimate_argmin_tile(const Int8Codebook& book, const int32_t* words, int64_t ld, int64_t pairs,
                                 const float* alpha, int64_t p_begin, int64_t p_end, float* lane_min,
                                 int32_t* lane_index) {
  const int64_t n = PAIRS > 0 ? PAIRS : pairs;
  __m256 vmin[R];
  __m256i vidx[R];
  __m256 valpha[R];
  for (int r = 0; r < R; ++r) {
    vmin[r] = _mm256_loadu_ps(lane_min + r * 8);
    vidx[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lane_index + r * 8));
    valpha[r] = _mm256_set1_ps(alpha[r]);
  }
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int32_t* panel = book.panels + p * n * P;
    __m256i acc[R][kVectors];
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < kVectors; ++c) acc[r][c] = _mm256_setzero_si256();
    }
#pragma GCC unroll 4
    for (int64_t q = 0; q < n; ++q) {
      __m256i e[kVectors];
      for (int c = 0; c < kVectors; ++c) {
        e[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + q * P + c * 8));
      }
      for (int r = 0; r < R; ++r) {
        const __m256i xv = _mm256_set1_epi32(words[r * ld + q]);
        for (int c = 0; c < kVectors; ++c) acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(xv, e[c]));
      }
    }
    // Vectors in increasing codeword order + strict `<`: each lane keeps the
    // lowest index among its equal minima.
    for (int c = 0; c < kVectors; ++c) {
      const __m256 norm = _mm256_loadu_ps(book.norms + p * P + c * 8);
      const __m256i cand = _mm256_add_epi32(S::lane_index(), _mm256_set1_epi32(static_cast<int32_t>(p * P + c * 8)));
      for (int r = 0; r < R; ++r) {
        const __m256 score = _mm256_fmadd_ps(valpha[r], _mm256_cvtepi32_ps(acc[r][c]), norm);
        const __m256 m = S::less(score, vmin[r]);
        vmin[r] = S::select(m, score, vmin[r]);
        vidx[r] = S::select(m, cand, vidx[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(lane_min + r * 8, vmin[r]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lane_index + r * 8), vidx[r]);
  }
}

// estimate_argmin_tile for a runtime row count in [1, R] (the ragged end of a chunk).
template <int R, int PAIRS>
inline void estimate_argmin_rows(int64_t rows, const Int8Codebook& book, const int32_t* words, int64_t ld,
                                 int64_t pairs, const float* alpha, int64_t p_begin, int64_t p_end,
                                 float* lane_min, int32_t* lane_index) {
  if constexpr (R > 0) {
    if (rows == R) {
      estimate_argmin_tile<R, PAIRS>(book, words, ld, pairs, alpha, p_begin, p_end, lane_min, lane_index);
    } else {
      estimate_argmin_rows<R - 1, PAIRS>(rows, book, words, ld, pairs, alpha, p_begin, p_end, lane_min,
                                         lane_index);
    }
  }
}

// Lowest index among the lanes holding the minimum (each lane holds the lowest index of its own minima).
int32_t reduce_lanes(const float* lane_min, const int32_t* lane_index) {
  float value = lane_min[0];
  int32_t index = lane_index[0];
  for (int l = 1; l < 8; ++l) {
    if (lane_min[l] < value || (lane_min[l] == value && lane_index[l] < index)) {
      value = lane_min[l];
      index = lane_index[l];
    }
  }
  return index;
}

template <int PAIRS>
void estimate_argmin_width(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                           int32_t* best) {
  const int64_t pairs = (book.width + 1) / 2;
  const int64_t ld = row_words(book.width);
  const int64_t panel_bytes = pairs * P * static_cast<int64_t>(sizeof(int32_t));
  const int64_t block = std::max<int64_t>(1, kL1PanelBytes / panel_bytes);
  thread_local std::vector<int32_t> words;
  words.resize(static_cast<size_t>(kRowChunk * ld));
  alignas(32) float lane_min[kRowChunk * 8];
  alignas(32) int32_t lane_index[kRowChunk * 8];
  float alpha[kRowChunk];
  for (int64_t c0 = 0; c0 < rows; c0 += kRowChunk) {
    const int64_t n = std::min(kRowChunk, rows - c0);
    for (int64_t i = 0; i < n; ++i) {
      const float step = quantize_row(x + (c0 + i) * x_row_stride, book.width, words.data() + i * ld);
      alpha[i] = -2.0f * step * book.grid.scale;
    }
    std::fill(lane_min, lane_min + n * 8, std::numeric_limits<float>::infinity());
    std::fill(lane_index, lane_index + n * 8, 0);
    for (int64_t pb = 0; pb < book.num_panels; pb += block) {
      const int64_t pe = std::min(pb + block, book.num_panels);
      for (int64_t r = 0; r < n; r += kTileRows) {
        estimate_argmin_rows<kTileRows, PAIRS>(std::min<int64_t>(kTileRows, n - r), book, words.data() + r * ld, ld,
                                               pairs, alpha + r, pb, pe, lane_min + r * 8, lane_index + r * 8);
      }
    }
    for (int64_t i = 0; i < n; ++i) best[c0 + i] = reduce_lanes(lane_min + i * 8, lane_index + i * 8);
  }
}

// In-register transpose of an 8 x 8 block: r[i] (row i) becomes column i.
void transpose8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}

// Codewords [j0, j0 + 8) of a (k, width) codebook as columns: columns[d * 8 + l]
// = e_{j0 + l}[d], 0 past k. Loads and shuffles: gathers are far slower.
void load_columns(const float* codebook, int64_t k, int64_t width, int64_t j0, float* columns) {
  const int64_t valid = std::min<int64_t>(k - j0, 8);
  for (int64_t d0 = 0; d0 < width; d0 += 8) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) {
      r[i] = i < valid ? load_first(codebook + (j0 + i) * width + d0, width - d0) : _mm256_setzero_ps();
    }
    transpose8(r);
    for (int64_t c = 0; c < 8 && d0 + c < width; ++c) _mm256_storeu_ps(columns + (d0 + c) * 8, r[c]);
  }
}

}  // namespace

// Eight codewords per vector, feature by feature, so each lane accumulates
// ||e||^2 in the portable build's order.
Int8Grid int8_pack_avx2(const float* codebook, int64_t k, int64_t width, int32_t* panels, float* norms,
                        int32_t* /*offsets: none in kPairs*/) {
  const int64_t pairs = (width + 1) / 2;
  const int64_t padded = (k + P - 1) / P * P;
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  std::vector<float> columns(static_cast<size_t>(padded * width));  // transposed, 8 codewords per block
  // Pass 1: norms, which codewords are finite, and their largest |e| and norm.
  __m256 peak = _mm256_setzero_ps();
  __m256 norm_peak = _mm256_setzero_ps();
  for (int64_t j0 = 0; j0 < padded; j0 += 8) {
    const int valid = static_cast<int>(std::clamp<int64_t>(k - j0, 0, 8));
    float* block = columns.data() + j0 * width;
    __m256 norm = _mm256_setzero_ps();
    __m256 big = _mm256_setzero_ps();
    if (valid > 0) {
      load_columns(codebook, k, width, j0, block);
      for (int64_t d = 0; d < width; ++d) {
        const __m256 e = _mm256_loadu_ps(block + d * 8);
        norm = _mm256_fmadd_ps(e, e, norm);
        big = _mm256_max_ps(big, abs_ps(e));
      }
    }
    // NaN and inf features, and overflowing squares, all leave ||e||^2 not below +inf.
    const __m256 finite = _mm256_and_ps(_mm256_cmp_ps(norm, inf, _CMP_LT_OQ), S::first_lanes(valid));
    _mm256_storeu_ps(norms + j0, _mm256_blendv_ps(inf, norm, finite));
    peak = _mm256_max_ps(peak, _mm256_and_ps(big, finite));
    norm_peak = _mm256_max_ps(norm_peak, _mm256_and_ps(norm, finite));
  }
  const float step = std::max(reduce_max(peak) / kLevels, kInt8MinStep);
  const __m256 inv_step = _mm256_set1_ps(1.0f / step);
  // Pass 2: the int16 pairs, feature 2q in the low half of word q.
  const __m256i low_half = _mm256_set1_epi32(0xFFFF);
  __m256i l1_max = _mm256_setzero_si256();
  for (int64_t j0 = 0; j0 < padded; j0 += 8) {
    const __m256i finite =
        _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(norms + j0), inf, _CMP_LT_OQ));
    const float* block = columns.data() + j0 * width;
    int32_t* column = panels + (j0 / P) * pairs * P + j0 % P;
    __m256i l1 = _mm256_setzero_si256();
    for (int64_t q = 0; q < pairs; ++q) {
      // round to nearest; codewords that are not finite (and padding) get zeros
      const __m256i lo = _mm256_and_si256(
          finite, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(block + 2 * q * 8), inv_step)));
      __m256i hi = _mm256_setzero_si256();
      if (2 * q + 1 < width) {
        hi = _mm256_and_si256(finite,
                              _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(block + (2 * q + 1) * 8), inv_step)));
      }
      l1 = _mm256_add_epi32(l1, _mm256_add_epi32(_mm256_abs_epi32(lo), _mm256_abs_epi32(hi)));
      const __m256i word = _mm256_or_si256(_mm256_and_si256(lo, low_half), _mm256_slli_epi32(hi, 16));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(column + q * P), word);
    }
    l1_max = _mm256_max_epi32(l1_max, l1);
  }
  return Int8Grid{step, static_cast<float>(reduce_max(l1_max)), reduce_max(norm_peak)};
}

// Unrolled builds for the common group widths, a runtime loop otherwise.
void int8_argmin_estimate_avx2(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                               int32_t* best) {
  switch ((book.width + 1) / 2) {
    case 2: return estimate_argmin_width<2>(book, x, x_row_stride, rows, best);
    case 4: return estimate_argmin_width<4>(book, x, x_row_stride, rows, best);
    case 8: return estimate_argmin_width<8>(book, x, x_row_stride, rows, best);
    case 12: return estimate_argmin_width<12>(book, x, x_row_stride, rows, best);
    case 16: return estimate_argmin_width<16>(book, x, x_row_stride, rows, best);
    case 24: return estimate_argmin_width<24>(book, x, x_row_stride, rows, best);
    case 32: return estimate_argmin_width<32>(book, x, x_row_stride, rows, best);
    default: return estimate_argmin_width<0>(book, x, x_row_stride, rows, best);
  }
}

}  // namespace astra::core
#pragma GCC pop_options

#else
#include <stdexcept>

namespace astra::core {
Int8Grid int8_pack_avx2(const float*, int64_t, int64_t, int32_t*, float*, int32_t*) {
  throw std::logic_error("int8_pack_avx2: this build has no AVX2 kernels");
}
void int8_argmin_estimate_avx2(const Int8Codebook&, const float*, int64_t, int64_t, int32_t*) {
  throw std::logic_error("int8_argmin_estimate_avx2: this build has no AVX2 kernels");
}
}  // namespace astra::core
#endif
