#include "core/argmin_kernels.h"

#include <stdexcept>
#include <string>

namespace astra::core {

const ArgminKernels& argmin_kernels(Simd simd) {
  const ArgminKernels* kernels = nullptr;
  if (simd_supported(simd)) {
    switch (simd) {
      case Simd::kAvx512Vnni:  // VNNI adds the int8 prefilter (vq_encode), not a new fp32 kernel
      case Simd::kAvx512:
        kernels = argmin_kernels_avx512();
        break;
      case Simd::kAvx2:
        kernels = argmin_kernels_avx2();
        break;
      case Simd::kGeneric:
        kernels = argmin_kernels_generic();
        break;
    }
  }
  if (kernels == nullptr) {
    throw std::invalid_argument(std::string("no ") + simd_name(simd) +
                                " argmin kernels: this CPU or build does not support them");
  }
  return *kernels;
}

}  // namespace astra::core
