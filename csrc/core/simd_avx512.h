// AVX-512F vector traits for the templated CPU kernels.
//
// Include only in a translation unit compiled for AVX-512F (after
// `#pragma GCC target("avx512f,...")` and <immintrin.h>); everything here has
// internal linkage so no AVX-512 code can leak into another ISA's functions.
#pragma once

#include <cstdint>

namespace astra::core {
namespace {

struct SimdAvx512 {
  static constexpr int kWidth = 16;
  // Micro-tile of the fused argmin: rows x vectors of codewords. 8 x 2 = 16
  // accumulators + 2 codeword vectors + 1 broadcast; the 8 rows' (min, index)
  // lanes are touched only between panels. 8x2 ties 4x4 on narrow groups and
  // wins on wide ones (half the codebook loads per FMA); the other shapes tried
  // are slower (benchmarks/RESULTS.md, tuning constants).
  static constexpr int kTileRows = 8;
  static constexpr int kTileVectors = 2;

  using F = __m512;
  using I = __m512i;
  using M = __mmask16;

  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static I load(const int32_t* p) { return _mm512_loadu_si512(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void store(int32_t* p, I v) { _mm512_storeu_si512(p, v); }
  static F broadcast(float v) { return _mm512_set1_ps(v); }
  static I broadcast(int32_t v) { return _mm512_set1_epi32(v); }
  static I lane_index() {
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
  static I add(I a, I b) { return _mm512_add_epi32(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  // Lanes l < n: base[l * stride]; other lanes 0 (not read).
  static F gather(const float* base, int32_t stride, int n) {
    const __mmask16 m = static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1);
    const I offsets = _mm512_mullo_epi32(lane_index(), _mm512_set1_epi32(stride));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, offsets, base, 4);
  }
  static M first_lanes(int n) { return static_cast<M>(n >= 16 ? 0xFFFF : (1u << n) - 1); }
  // Ordered, non-signalling: a NaN score never compares less.
  static M less(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static F select(M m, F if_true, F if_false) { return _mm512_mask_blend_ps(m, if_false, if_true); }
  static I select(M m, I if_true, I if_false) { return _mm512_mask_blend_epi32(m, if_false, if_true); }
};

}  // namespace
}  // namespace astra::core
