// AVX-512F build of the argmin kernels (selected at run time).
#include <cstdint>
#include <limits>

#include "core/argmin_kernels.h"
#include "core/simd_targets.h"

#if ASTRA_X86_SIMD_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#include <immintrin.h>

#include "core/simd_avx512.h"
#include "core/argmin_kernels_impl.h"

namespace astra::core {
namespace {
constexpr ArgminKernels kAvx512Kernels = make_argmin_kernels<SimdAvx512>(Simd::kAvx512);
}  // namespace

const ArgminKernels* argmin_kernels_avx512() { return &kAvx512Kernels; }

}  // namespace astra::core
#pragma GCC pop_options

#else
namespace astra::core {
const ArgminKernels* argmin_kernels_avx512() { return nullptr; }
}  // namespace astra::core
#endif
