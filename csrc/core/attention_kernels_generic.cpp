// Portable build of the fp32 attention row kernels (baseline instruction set).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/attention_kernels.h"
#include "core/simd_generic.h"

namespace astra::core {
namespace {

struct AttentionGeneric : SimdGeneric {
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  // Returns b when either operand is NaN, as vmaxps does in the x86 builds.
  static F max(F a, F b) { return a > b ? a : b; }
  static float reduce_max(F v) { return std::max(std::max(v[0], v[1]), std::max(v[2], v[3])); }
  static float reduce_add(F v) { return (v[0] + v[2]) + (v[1] + v[3]); }
  // dst[p * ldd + j] = src[j * ld + p] for j, p < 8.
  static void transpose8(const float* src, int64_t ld, float* dst, int64_t ldd) {
    for (int64_t j = 0; j < 8; ++j) {
      for (int64_t p = 0; p < 8; ++p) dst[p * ldd + j] = src[j * ld + p];
    }
  }
  static void exp2_reduced(F x, F& n, F& f) {
    // Adding and subtracting 1.5 * 2^23 rounds to nearest for |x| < 2^22.
    const F magic = broadcast(12582912.0f);
    n = (x + magic) - magic;
    f = x - n;
  }
  static F scale_pow2(F p, F n) {
    const I bits = (__builtin_convertvector(n, I) + broadcast(127)) << 23;
    F scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
  }
};

}  // namespace
}  // namespace astra::core

#include "core/attention_kernels_impl.h"

namespace astra::core {
namespace {
constexpr AttentionKernels<float> kGenericKernels =
    make_attention_kernels<AttentionGeneric>(Simd::kGeneric);
}  // namespace

const AttentionKernels<float>* attention_kernels_generic() { return &kGenericKernels; }

}  // namespace astra::core
