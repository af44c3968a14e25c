// AVX2 + FMA build of the fp32 attention row kernels (selected at run time).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/attention_kernels.h"
#include "core/simd_targets.h"

#if ASTRA_X86_SIMD_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "core/simd_avx2.h"

namespace astra::core {
namespace {

struct AttentionAvx2 : SimdAvx2 {
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  // Returns b when either operand is NaN (vmaxps semantics).
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static float reduce_max(F v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static float reduce_add(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  static void exp2_reduced(F x, F& n, F& f) {
    n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f = _mm256_sub_ps(x, n);
  }
  static F scale_pow2(F p, F n) {
    const __m256i bits =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  }
};

}  // namespace
}  // namespace astra::core

#include "core/attention_kernels_impl.h"

namespace astra::core {
namespace {
constexpr AttentionKernels<float> kAvx2Kernels = make_attention_kernels<AttentionAvx2>(Simd::kAvx2);
}  // namespace

const AttentionKernels<float>* attention_kernels_avx2() { return &kAvx2Kernels; }

}  // namespace astra::core
#pragma GCC pop_options

#else
namespace astra::core {
const AttentionKernels<float>* attention_kernels_avx2() { return nullptr; }
}  // namespace astra::core
#endif
