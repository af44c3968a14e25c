// AVX-512 VNNI build of the int8-prefiltered argmin (argmin_int8.h).
#include "core/argmin_int8.h"

#include "core/simd_targets.h"

#if ASTRA_X86_SIMD_KERNELS
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")
// GCC 12's AVX-512 intrinsics self-initialise their "undefined" pass-through
// operand, which -Wmaybe-uninitialized flags once inlined (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "core/simd_avx512.h"

namespace astra::core {
namespace {

constexpr int64_t P = kInt8PanelWidth;
constexpr int kVectors = static_cast<int>(P / 16);  // codeword vectors per panel
constexpr int kTileRows = 8;                        // 8 x 2 int32 accumulators, as the fp32 kernel
constexpr int64_t kRowChunk = 64;
constexpr float kLevels = 127.0f;
// fp32 error of an estimate and of an exact score: a few ulps of the largest term.
constexpr float kSlack = 1.0f / (1 << 20);

// The traits' lane mask for a remaining count that may exceed one vector.
__mmask16 first_lanes(int64_t n) { return SimdAvx512::first_lanes(static_cast<int>(std::min<int64_t>(n, 16))); }

// Largest |v| over n floats; false when one is not finite.
bool finite_peak(const float* v, int64_t n, float* peak) {
  __m512 vmax = _mm512_setzero_ps();
  __m512 vsum = _mm512_setzero_ps();  // v * 0: NaN for inf and NaN inputs
  for (int64_t d = 0; d < n; d += 16) {
    const __m512 x = _mm512_maskz_loadu_ps(first_lanes(n - d), v + d);
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(x));
    vsum = _mm512_add_ps(vsum, _mm512_mul_ps(x, _mm512_setzero_ps()));
  }
  *peak = _mm512_reduce_max_ps(vmax);
  return _mm512_cmp_ps_mask(vsum, vsum, _CMP_ORD_Q) == 0xFFFF;
}

// ||v||^2 in a fixed order: identical codewords get identical norms.
float fixed_order_norm(const float* v, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t d = 0; d < n; d += 16) {
    const __m512 x = _mm512_maskz_loadu_ps(first_lanes(n - d), v + d);
    acc = _mm512_fmadd_ps(x, x, acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// 16 features (masked past n) on the grid: int32 lanes in [-127, 127].
__m512i to_grid(const float* v, int64_t n, __m512 inv_step) {
  const __m512 x = _mm512_maskz_loadu_ps(first_lanes(n), v);
  return _mm512_cvtps_epi32(_mm512_mul_ps(x, inv_step));  // round to nearest
}

// One row of x: s_x, ||x~||_1, and x~ + 128 as bytes (4 per word); false if not finite.
bool quantize_row(const float* x, int64_t width, int32_t* words, float* step, float* l1) {
  float peak;
  if (!finite_peak(x, width, &peak)) return false;
  const int64_t quads = (width + 3) / 4;
  std::memset(words, 0x80, sizeof(int32_t) * static_cast<size_t>(quads));  // x~ = 0 padding
  *step = peak > 0.0f ? peak / kLevels : 0.0f;
  *l1 = 0.0f;
  if (peak == 0.0f) return true;
  const __m512 inv_step = _mm512_set1_ps(kLevels / peak);
  const __m512i bias = _mm512_set1_epi32(128);
  __m512i l1v = _mm512_setzero_si512();
  auto* bytes = reinterpret_cast<uint8_t*>(words);
  for (int64_t d = 0; d < width; d += 16) {
    const __m512i q = to_grid(x + d, width - d, inv_step);
    l1v = _mm512_add_epi32(l1v, _mm512_abs_epi32(q));
    _mm_mask_storeu_epi8(bytes + d, first_lanes(width - d), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, bias)));
  }
  *l1 = static_cast<float>(_mm512_reduce_add_epi32(l1v));
  return true;
}

// Estimated scores of R rows against every panel: scores[r * ld + j].
template <int R>
void estimate_tile(const Int8Codebook& book, const int32_t* words, int64_t quads, const float* alpha,
                   float* scores, int64_t ld) {
  for (int64_t p = 0; p < book.num_panels; ++p) {
    const int32_t* panel = book.panels + p * quads * P;
    __m512i acc[R][kVectors];
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < kVectors; ++c) acc[r][c] = _mm512_setzero_si512();
    }
#pragma GCC unroll 4
    for (int64_t q = 0; q < quads; ++q) {
      __m512i e[kVectors];
      for (int c = 0; c < kVectors; ++c) e[c] = _mm512_loadu_si512(panel + q * P + c * 16);
      for (int r = 0; r < R; ++r) {
        const __m512i xv = _mm512_set1_epi32(words[r * quads + q]);
        for (int c = 0; c < kVectors; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xv, e[c]);
      }
    }
    for (int c = 0; c < kVectors; ++c) {
      const __m512 norm = _mm512_loadu_ps(book.norms + p * P + c * 16);
      const __m512 offset = _mm512_loadu_ps(book.offsets + p * P + c * 16);
      for (int r = 0; r < R; ++r) {
        const __m512 dot = _mm512_sub_ps(_mm512_cvtepi32_ps(acc[r][c]), offset);
        _mm512_storeu_ps(scores + r * ld + p * P + c * 16, _mm512_fmadd_ps(_mm512_set1_ps(alpha[r]), dot, norm));
      }
    }
  }
}

template <int R>
void estimate_rows(int64_t rows, const Int8Codebook& book, const int32_t* words, int64_t quads,
                   const float* alpha, float* scores, int64_t ld) {
  if constexpr (R > 0) {
    if (rows == R) {
      estimate_tile<R>(book, words, quads, alpha, scores, ld);
    } else {
      estimate_rows<R - 1>(rows, book, words, quads, alpha, scores, ld);
    }
  }
}

// Exact fp32 score ||e||^2 - 2 x.e in a fixed order (identical codewords tie exactly).
float exact_score(const float* x, const float* e, int64_t width, float norm) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t d = 0; d < width; d += 16) {
    const __mmask16 m = first_lanes(width - d);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + d), _mm512_maskz_loadu_ps(m, e + d), acc);
  }
  return std::fma(-2.0f, _mm512_reduce_add_ps(acc), norm);
}

// Lowest index of the exact minimum among the codewords whose estimate is <= threshold.
int32_t rescore(const Int8Codebook& book, const float* x, const float* scores, float threshold) {
  const __m512 limit = _mm512_set1_ps(threshold);
  float best = std::numeric_limits<float>::infinity();
  int32_t index = 0;
  for (int64_t j0 = 0; j0 < book.codes; j0 += 16) {
    uint32_t hits = _mm512_cmp_ps_mask(_mm512_loadu_ps(scores + j0), limit, _CMP_LE_OQ) &
                    first_lanes(book.codes - j0);
    while (hits != 0) {
      const int64_t j = j0 + __builtin_ctz(hits);
      hits &= hits - 1;
      const float s = exact_score(x, book.codebook + j * book.width, book.width, book.norms[j]);
      if (s < best) {  // increasing j + strict `<`: the lowest index among equal minima
        best = s;
        index = static_cast<int32_t>(j);
      }
    }
  }
  return index;
}

}  // namespace

bool int8_argmin_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

Int8Grid int8_pack(const float* codebook, int64_t k, int64_t width, int32_t* panels, float* norms,
                   float* offsets) {
  const int64_t quads = (width + 3) / 4;
  const int64_t num_panels = (k + P - 1) / P;
  float peak = 0.0f;
  float norm_peak = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    const float* e = codebook + j * width;
    float row_peak;
    norms[j] = fixed_order_norm(e, width);
    if (finite_peak(e, width, &row_peak) && std::isfinite(norms[j])) {
      peak = std::max(peak, row_peak);
      norm_peak = std::max(norm_peak, norms[j]);
    } else {
      norms[j] = std::numeric_limits<float>::infinity();  // never wins; its words stay 0
    }
  }
  const int64_t padded = num_panels * P;
  std::fill(norms + k, norms + padded, std::numeric_limits<float>::infinity());
  std::fill(offsets, offsets + padded, 0.0f);
  std::memset(panels, 0, sizeof(int32_t) * static_cast<size_t>(num_panels * quads * P));
  const float step = peak > 0.0f ? peak / kLevels : 1.0f;
  const __m512 inv_step = _mm512_set1_ps(1.0f / step);
  float l1_max = 0.0f;
  alignas(64) int32_t packed[4];
  for (int64_t j = 0; j < k; ++j) {
    if (std::isinf(norms[j])) continue;
    const float* e = codebook + j * width;
    int32_t* column = panels + (j / P) * quads * P + j % P;
    __m512i sum = _mm512_setzero_si512();
    __m512i l1 = _mm512_setzero_si512();
    for (int64_t d = 0; d < width; d += 16) {
      const __m512i q = to_grid(e + d, width - d, inv_step);
      sum = _mm512_add_epi32(sum, q);
      l1 = _mm512_add_epi32(l1, _mm512_abs_epi32(q));
      _mm_store_si128(reinterpret_cast<__m128i*>(packed), _mm512_cvtepi32_epi8(q));
      for (int64_t w = 0; w < 4 && d / 4 + w < quads; ++w) column[(d / 4 + w) * P] = packed[w];
    }
    offsets[j] = 128.0f * static_cast<float>(_mm512_reduce_add_epi32(sum));
    l1_max = std::max(l1_max, static_cast<float>(_mm512_reduce_add_epi32(l1)));
  }
  return Int8Grid{step, l1_max, norm_peak};
}

void int8_argmin(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                 int32_t* best) {
  const int64_t quads = (book.width + 3) / 4;
  const int64_t ld = book.num_panels * P;
  // Per-thread buffers: vq_encode runs one task per (group, row block).
  thread_local std::vector<int32_t> words;
  thread_local std::vector<float> scores;
  words.resize(static_cast<size_t>(kRowChunk * quads));
  scores.resize(static_cast<size_t>(kRowChunk * ld));
  float step[kRowChunk], l1[kRowChunk], alpha[kRowChunk];
  bool finite[kRowChunk];
  for (int64_t c0 = 0; c0 < rows; c0 += kRowChunk) {
    const int64_t n = std::min(kRowChunk, rows - c0);
    for (int64_t i = 0; i < n; ++i) {
      int32_t* w = words.data() + i * quads;
      finite[i] = quantize_row(x + (c0 + i) * x_row_stride, book.width, w, &step[i], &l1[i]);
      if (!finite[i]) {
        std::memset(w, 0x80, sizeof(int32_t) * static_cast<size_t>(quads));
        step[i] = l1[i] = 0.0f;
      }
      alpha[i] = -2.0f * step[i] * book.grid.scale;
    }
    for (int64_t r = 0; r < n; r += kTileRows) {
      estimate_rows<kTileRows>(std::min<int64_t>(kTileRows, n - r), book, words.data() + r * quads, quads,
                               alpha + r, scores.data() + r * ld, ld);
    }
    for (int64_t i = 0; i < n; ++i) {
      if (!finite[i]) {
        best[c0 + i] = 0;
        continue;
      }
      const float* s = scores.data() + i * ld;
      __m512 vmin = _mm512_set1_ps(std::numeric_limits<float>::infinity());
      for (int64_t j = 0; j < ld; j += 16) vmin = _mm512_min_ps(vmin, _mm512_loadu_ps(s + j));
      const float lowest = _mm512_reduce_min_ps(vmin);
      const float bound =
          step[i] * book.grid.scale * (l1[i] + book.grid.max_l1 + 0.5f * static_cast<float>(book.width));
      // the largest terms an estimate adds: the norm, and |alpha| * (byte sum + offset)
      const float terms =
          book.grid.norm_peak + -alpha[i] * 2.0f * 255.0f * kLevels * static_cast<float>(quads * 4);
      const float threshold = lowest + (2.0f * bound + kSlack * terms) * 1.001f;
      best[c0 + i] = rescore(book, x + (c0 + i) * x_row_stride, s, threshold);
    }
  }
}

}  // namespace astra::core
#pragma GCC diagnostic pop
#pragma GCC pop_options

#else
#include <stdexcept>

namespace astra::core {
bool int8_argmin_supported() { return false; }
Int8Grid int8_pack(const float*, int64_t, int64_t, int32_t*, float*, float*) {
  throw std::logic_error("int8_pack: this build has no AVX-512 VNNI kernels");
}
void int8_argmin(const Int8Codebook&, const float*, int64_t, int64_t, int32_t*) {
  throw std::logic_error("int8_argmin: this build has no AVX-512 VNNI kernels");
}
}  // namespace astra::core
#endif
