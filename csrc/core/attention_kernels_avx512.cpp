// AVX-512F build of the fp32 attention row kernels (selected at run time).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/attention_kernels.h"
#include "core/simd_targets.h"

#if ASTRA_X86_SIMD_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 intrinsics self-initialise their "undefined" pass-through
// operand, which -Wmaybe-uninitialized flags once inlined (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "core/simd_avx2.h"
#include "core/simd_avx512.h"

namespace astra::core {
namespace {

struct AttentionAvx512 : SimdAvx512 {
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  // Returns b when either operand is NaN (vmaxps semantics).
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static float reduce_max(F v) { return _mm512_reduce_max_ps(v); }
  static float reduce_add(F v) { return _mm512_reduce_add_ps(v); }
  static void transpose8(const float* src, int64_t ld, float* dst, int64_t ldd) {
    SimdAvx2::transpose8(src, ld, dst, ldd);
  }
  static void exp2_reduced(F x, F& n, F& f) {
    n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f = _mm512_sub_ps(x, n);
  }
  static F scale_pow2(F p, F n) {
    const __m512i bits =
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
  }
};

}  // namespace
}  // namespace astra::core

#include "core/attention_kernels_impl.h"

namespace astra::core {
namespace {
constexpr AttentionKernels<float> kAvx512Kernels =
    make_attention_kernels<AttentionAvx512>(Simd::kAvx512);
}  // namespace

const AttentionKernels<float>* attention_kernels_avx512() { return &kAvx512Kernels; }

}  // namespace astra::core
#pragma GCC diagnostic pop
#pragma GCC pop_options

#else
namespace astra::core {
const AttentionKernels<float>* attention_kernels_avx512() { return nullptr; }
}  // namespace astra::core
#endif
