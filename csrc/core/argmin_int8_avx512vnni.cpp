// AVX-512 VNNI build of the int8-estimate argmins and their codebook packing (argmin_int8.h).
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
// operand, which -W(maybe-)uninitialized flags once inlined (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

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

// 16 features (masked past n) on the grid: int32 lanes in [-127, 127].
__m512i to_grid(const float* v, int64_t n, __m512 inv_step) {
  const __m512 x = _mm512_maskz_loadu_ps(first_lanes(n), v);
  return _mm512_cvtps_epi32(_mm512_mul_ps(x, inv_step));  // round to nearest
}

// x~ + 128 of one row on the grid of `step`, as bytes (4 per word, the last
// word padded with x~ = 0); returns ||x~||_1.
float store_row_bytes(const float* x, int64_t width, float step, int32_t* words) {
  const __m512 inv_step = _mm512_set1_ps(1.0f / step);
  const __m512i bias = _mm512_set1_epi32(128);
  __m512i l1v = _mm512_setzero_si512();
  auto* bytes = reinterpret_cast<uint8_t*>(words);
  if (width % 4 != 0) words[width / 4] = static_cast<int32_t>(0x80808080u);
  for (int64_t d = 0; d < width; d += 16) {
    const __m512i q = to_grid(x + d, width - d, inv_step);
    l1v = _mm512_add_epi32(l1v, _mm512_abs_epi32(q));
    _mm_mask_storeu_epi8(bytes + d, first_lanes(width - d), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, bias)));
  }
  return static_cast<float>(_mm512_reduce_add_epi32(l1v));
}

// One row of x: s_x, ||x~||_1, and x~ + 128 as bytes (4 per word); false if not finite.
bool quantize_row(const float* x, int64_t width, int32_t* words, float* step, float* l1) {
  float peak;
  if (!finite_peak(x, width, &peak)) return false;
  *step = std::max(peak / kLevels, kInt8MinStep);
  *l1 = store_row_bytes(x, width, *step, words);
  return true;
}

// quantize_row for the estimate kernel: no finiteness test (a group with NaN or
// Inf gets code 0 from vq_encode's rule 2 whatever its estimates); returns the step.
float quantize_row_estimate(const float* x, int64_t width, int32_t* words) {
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t d = 0; d < width; d += 16) {
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(first_lanes(width - d), x + d)));
  }
  const float step = std::max(_mm512_reduce_max_ps(vmax) / kLevels, kInt8MinStep);
  store_row_bytes(x, width, step, words);
  return step;
}

// x~.e~ of R rows and panel p's codewords, exactly, in R x kVectors int32 lanes:
// the accumulators start at -offset, which cancels the +128 on x~'s bytes.
template <int R>
inline void panel_dots(const Int8Codebook& book, int64_t p, const int32_t* words, int64_t quads,
                       __m512i (&acc)[R][kVectors]) {
  const int32_t* panel = book.panels + p * quads * P;
  for (int c = 0; c < kVectors; ++c) {
    const __m512i start = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(book.offsets + p * P + c * 16));
    for (int r = 0; r < R; ++r) acc[r][c] = start;
  }
#pragma GCC unroll 8
  for (int64_t q = 0; q < quads; ++q) {
    __m512i e[kVectors];
    for (int c = 0; c < kVectors; ++c) e[c] = _mm512_loadu_si512(panel + q * P + c * 16);
    for (int r = 0; r < R; ++r) {
      const __m512i xv = _mm512_set1_epi32(words[r * quads + q]);
      for (int c = 0; c < kVectors; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xv, e[c]);
    }
  }
}

// Estimated scores of R rows against every panel: scores[r * ld + j].
template <int R>
void estimate_tile(const Int8Codebook& book, const int32_t* words, int64_t quads, const float* alpha,
                   float* scores, int64_t ld) {
  for (int64_t p = 0; p < book.num_panels; ++p) {
    __m512i acc[R][kVectors];
    panel_dots<R>(book, p, words, quads, acc);
    for (int c = 0; c < kVectors; ++c) {
      const __m512 norm = _mm512_loadu_ps(book.norms + p * P + c * 16);
      for (int r = 0; r < R; ++r) {
        const __m512 dot = _mm512_cvtepi32_ps(acc[r][c]);
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

// Smallest estimate of R rows over every panel: per lane a running (minimum,
// index), in registers. Strict `<` in increasing codeword order, then the
// lowest index among the lanes' equal minima: the lowest index of the minimum.
template <int R>
void estimate_argmin_tile(const Int8Codebook& book, const int32_t* words, int64_t quads, const float* alpha,
                          int32_t* best) {
  __m512 vmin[R];
  __m512i vidx[R];
  for (int r = 0; r < R; ++r) {
    vmin[r] = _mm512_set1_ps(std::numeric_limits<float>::infinity());
    vidx[r] = _mm512_setzero_si512();
  }
  for (int64_t p = 0; p < book.num_panels; ++p) {
    __m512i acc[R][kVectors];
    panel_dots<R>(book, p, words, quads, acc);
    for (int c = 0; c < kVectors; ++c) {
      const __m512 norm = _mm512_loadu_ps(book.norms + p * P + c * 16);
      const __m512i cand =
          _mm512_add_epi32(SimdAvx512::lane_index(), _mm512_set1_epi32(static_cast<int32_t>(p * P + c * 16)));
      for (int r = 0; r < R; ++r) {
        const __m512 score = _mm512_fmadd_ps(_mm512_set1_ps(alpha[r]), _mm512_cvtepi32_ps(acc[r][c]), norm);
        const __mmask16 m = SimdAvx512::less(score, vmin[r]);
        vmin[r] = SimdAvx512::select(m, score, vmin[r]);
        vidx[r] = SimdAvx512::select(m, cand, vidx[r]);
      }
    }
  }
  alignas(64) float lane_min[16];
  alignas(64) int32_t lane_index[16];
  for (int r = 0; r < R; ++r) {
    _mm512_store_ps(lane_min, vmin[r]);
    _mm512_store_si512(lane_index, vidx[r]);
    int32_t index = lane_index[0];
    float value = lane_min[0];
    for (int l = 1; l < 16; ++l) {
      if (lane_min[l] < value || (lane_min[l] == value && lane_index[l] < index)) {
        value = lane_min[l];
        index = lane_index[l];
      }
    }
    best[r] = index;
  }
}

template <int R>
void estimate_argmin_rows(int64_t rows, const Int8Codebook& book, const int32_t* words, int64_t quads,
                          const float* alpha, int32_t* best) {
  if constexpr (R > 0) {
    if (rows == R) {
      estimate_argmin_tile<R>(book, words, quads, alpha, best);
    } else {
      estimate_argmin_rows<R - 1>(rows, book, words, quads, alpha, best);
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

bool avx512_vnni_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

// In-register transpose of a 16 x 16 block: r[i] (row i) becomes column i.
void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int h = 0; h < 16; h += 8) {
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xDD);
    }
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
}

// Codewords [j0, j0 + 16) of a (k, width) codebook as columns: columns[d * 16 + l]
// = e_{j0 + l}[d], 0 past k. Loads and shuffles: gathers are far slower.
void load_columns(const float* codebook, int64_t k, int64_t width, int64_t j0, float* columns) {
  const int valid = static_cast<int>(std::min<int64_t>(k - j0, 16));
  for (int64_t d0 = 0; d0 < width; d0 += 16) {
    const __mmask16 cols = first_lanes(width - d0);
    __m512 r[16];
    for (int i = 0; i < 16; ++i) {
      r[i] = i < valid ? _mm512_maskz_loadu_ps(cols, codebook + (j0 + i) * width + d0) : _mm512_setzero_ps();
    }
    transpose16(r);
    for (int64_t c = 0; c < 16 && d0 + c < width; ++c) _mm512_storeu_ps(columns + (d0 + c) * 16, r[c]);
  }
}

// Sixteen codewords per vector, feature by feature, so each lane accumulates
// ||e||^2 in the portable build's order.
Int8Grid int8_pack_avx512vnni(const float* codebook, int64_t k, int64_t width, int32_t* panels, float* norms,
                              int32_t* offsets) {
  const int64_t quads = (width + 3) / 4;
  const int64_t padded = (k + P - 1) / P * P;
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  std::vector<float> columns(static_cast<size_t>(padded * width));  // transposed, 16 codewords per block
  // Pass 1: norms, which codewords are finite, and their largest |e| and norm.
  __m512 peak = _mm512_setzero_ps();
  __m512 norm_peak = _mm512_setzero_ps();
  for (int64_t j0 = 0; j0 < padded; j0 += 16) {
    const int valid = static_cast<int>(std::clamp<int64_t>(k - j0, 0, 16));
    float* block = columns.data() + j0 * width;
    if (valid > 0) load_columns(codebook, k, width, j0, block);
    __m512 norm = _mm512_setzero_ps();
    __m512 big = _mm512_setzero_ps();
    for (int64_t d = 0; d < width && valid > 0; ++d) {
      const __m512 e = _mm512_loadu_ps(block + d * 16);
      norm = _mm512_fmadd_ps(e, e, norm);
      big = _mm512_max_ps(big, _mm512_abs_ps(e));
    }
    // NaN and inf features, and overflowing squares, all leave ||e||^2 not below +inf.
    const __mmask16 finite = _mm512_cmp_ps_mask(norm, inf, _CMP_LT_OQ) & SimdAvx512::first_lanes(valid);
    _mm512_storeu_ps(norms + j0, _mm512_mask_blend_ps(finite, inf, norm));
    peak = _mm512_mask_max_ps(peak, finite, peak, big);
    norm_peak = _mm512_mask_max_ps(norm_peak, finite, norm_peak, norm);
  }
  const float step = std::max(_mm512_reduce_max_ps(peak) / kLevels, kInt8MinStep);
  const __m512 inv_step = _mm512_set1_ps(1.0f / step);
  // Pass 2: the bytes of each quad of features, byte b from feature 4q + b.
  const __m512i low_byte = _mm512_set1_epi32(0xFF);
  __m512i l1_max = _mm512_setzero_si512();
  for (int64_t j0 = 0; j0 < padded; j0 += 16) {
    const int valid = static_cast<int>(std::clamp<int64_t>(k - j0, 0, 16));
    const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_loadu_ps(norms + j0), inf, _CMP_LT_OQ);
    const float* block = columns.data() + j0 * width;
    int32_t* column = panels + (j0 / P) * quads * P + j0 % P;
    __m512i sum = _mm512_setzero_si512();
    __m512i l1 = _mm512_setzero_si512();
    for (int64_t q = 0; q < quads; ++q) {
      __m512i word = _mm512_setzero_si512();
      for (int64_t b = 0; b < 4 && 4 * q + b < width && valid > 0; ++b) {
        const __m512 e = _mm512_loadu_ps(block + (4 * q + b) * 16);
        const __m512i v = _mm512_maskz_cvtps_epi32(finite, _mm512_mul_ps(e, inv_step));  // round to nearest
        sum = _mm512_add_epi32(sum, v);
        l1 = _mm512_add_epi32(l1, _mm512_abs_epi32(v));
        word = _mm512_or_si512(word, _mm512_slli_epi32(_mm512_and_si512(v, low_byte), static_cast<unsigned>(8 * b)));
      }
      _mm512_storeu_si512(column + q * P, word);
    }
    _mm512_storeu_si512(offsets + j0, _mm512_slli_epi32(sum, 7));  // 128 * sum
    l1_max = _mm512_max_epi32(l1_max, l1);
  }
  return Int8Grid{step, static_cast<float>(_mm512_reduce_max_epi32(l1_max)), _mm512_reduce_max_ps(norm_peak)};
}

void int8_argmin_avx512vnni(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
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

void int8_argmin_estimate_avx512vnni(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                                     int32_t* best) {
  const int64_t quads = (book.width + 3) / 4;
  thread_local std::vector<int32_t> words;
  words.resize(static_cast<size_t>(kRowChunk * quads));
  float alpha[kRowChunk];
  for (int64_t c0 = 0; c0 < rows; c0 += kRowChunk) {
    const int64_t n = std::min(kRowChunk, rows - c0);
    for (int64_t i = 0; i < n; ++i) {
      const float step = quantize_row_estimate(x + (c0 + i) * x_row_stride, book.width, words.data() + i * quads);
      alpha[i] = -2.0f * step * book.grid.scale;
    }
    for (int64_t r = 0; r < n; r += kTileRows) {
      estimate_argmin_rows<kTileRows>(std::min<int64_t>(kTileRows, n - r), book, words.data() + r * quads, quads,
                                      alpha + r, best + c0 + r);
    }
  }
}

}  // namespace astra::core
#pragma GCC pop_options

#else
#include <stdexcept>

namespace astra::core {
bool avx512_vnni_supported() { return false; }
Int8Grid int8_pack_avx512vnni(const float*, int64_t, int64_t, int32_t*, float*, int32_t*) {
  throw std::logic_error("int8_pack_avx512vnni: this build has no AVX-512 VNNI kernels");
}
void int8_argmin_avx512vnni(const Int8Codebook&, const float*, int64_t, int64_t, int32_t*) {
  throw std::logic_error("int8_argmin_avx512vnni: this build has no AVX-512 VNNI kernels");
}
void int8_argmin_estimate_avx512vnni(const Int8Codebook&, const float*, int64_t, int64_t, int32_t*) {
  throw std::logic_error("int8_argmin_estimate_avx512vnni: this build has no AVX-512 VNNI kernels");
}
}  // namespace astra::core
#endif
