// Portable build of the argmin kernels (baseline instruction set of the target).
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/argmin_kernels.h"
#include "core/simd_generic.h"
#include "core/argmin_kernels_impl.h"

namespace astra::core {
namespace {
constexpr ArgminKernels kGenericKernels = make_argmin_kernels<SimdGeneric>(Simd::kGeneric);
}  // namespace

const ArgminKernels* argmin_kernels_generic() { return &kGenericKernels; }

}  // namespace astra::core
