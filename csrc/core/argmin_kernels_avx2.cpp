// AVX2 + FMA build of the argmin kernels (selected at run time).
#include <cstdint>
#include <limits>

#include "core/argmin_kernels.h"
#include "core/simd_targets.h"

#if ASTRA_X86_SIMD_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "core/simd_avx2.h"
#include "core/argmin_kernels_impl.h"

namespace astra::core {
namespace {
constexpr ArgminKernels kAvx2Kernels = make_argmin_kernels<SimdAvx2>(Simd::kAvx2);
}  // namespace

const ArgminKernels* argmin_kernels_avx2() { return &kAvx2Kernels; }

}  // namespace astra::core
#pragma GCC pop_options

#else
namespace astra::core {
const ArgminKernels* argmin_kernels_avx2() { return nullptr; }
}  // namespace astra::core
#endif
