// AVX2 + FMA vector traits for the templated CPU kernels.
//
// Include only in a translation unit compiled for AVX2 and FMA (after
// `#pragma GCC target("avx2,fma")` and <immintrin.h>); internal linkage keeps
// this code out of other ISAs' functions.
#pragma once

#include <cstdint>

namespace astra::core {
namespace {

struct SimdAvx2 {
  static constexpr int kWidth = 8;
  // 4 x 2 tile: 8 accumulators + 2 codeword vectors + 1 broadcast in the 16
  // ymm registers; the (min, index) lanes spill, touched only between panels.
  // The fastest of the tile shapes tried (benchmarks/RESULTS.md, tuning constants).
  static constexpr int kTileRows = 4;
  static constexpr int kTileVectors = 2;

  using F = __m256;
  using I = __m256i;
  using M = __m256;  // all-ones lanes where true

  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static I load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void store(int32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static F broadcast(float v) { return _mm256_set1_ps(v); }
  static I broadcast(int32_t v) { return _mm256_set1_epi32(v); }
  static I lane_index() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  static I add(I a, I b) { return _mm256_add_epi32(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  // Lanes l < n: base[l * stride]; other lanes 0 (not read).
  static F gather(const float* base, int32_t stride, int n) {
    const I offsets = _mm256_mullo_epi32(lane_index(), _mm256_set1_epi32(stride));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, offsets, first_lanes(n), 4);
  }
  static M first_lanes(int n) {
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane_index()));
  }
  // Ordered, non-signalling: a NaN score never compares less.
  static M less(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static F select(M m, F if_true, F if_false) { return _mm256_blendv_ps(if_false, if_true, m); }
  static I select(M m, I if_true, I if_false) {
    return _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(if_false), _mm256_castsi256_ps(if_true), m));
  }
  // dst[p * ldd + j] = src[j * ld + p] for j, p < 8.
  static void transpose8(const float* src, int64_t ld, float* dst, int64_t ldd) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld);
    // t[i]: columns 0 1 | 4 5 of rows i, i + 1 interleaved; t[i + 1]: columns 2 3 | 6 7
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {  // r[i + c]: column c | c + 4 of rows i..i + 3
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {
      _mm256_storeu_ps(dst + c * ldd, _mm256_permute2f128_ps(r[c], r[c + 4], 0x20));
      _mm256_storeu_ps(dst + (c + 4) * ldd, _mm256_permute2f128_ps(r[c], r[c + 4], 0x31));
    }
  }
};

}  // namespace
}  // namespace astra::core
