#include "core/argmin_int8.h"

#include <stdexcept>
#include <string>

namespace astra::core {

namespace {

constexpr Int8Kernels kVnniKernels{"avx512_vnni",         Int8Layout::kQuads,     kInt8PanelWidth,
                                   &int8_pack_avx512vnni, &int8_argmin_estimate_avx512vnni,
                                   &int8_argmin_avx512vnni};
constexpr Int8Kernels kAvx2Kernels{"avx2",          Int8Layout::kPairs, kInt8PairPanelWidth, &int8_pack_avx2,
                                   &int8_argmin_estimate_avx2, nullptr};
constexpr Int8Kernels kPortableKernels{"portable",          Int8Layout::kQuads, kInt8PanelWidth, &int8_pack_portable,
                                       &int8_argmin_estimate_portable, nullptr};

}  // namespace

const Int8Kernels& int8_kernels(Simd simd) {
  if (!simd_supported(simd)) {
    throw std::invalid_argument(std::string("no ") + simd_name(simd) +
                                " int8 kernels: this CPU or build does not support them");
  }
  switch (simd) {
    case Simd::kAvx512Vnni:
      return kVnniKernels;
    case Simd::kAvx512:  // AVX-512F CPUs run AVX2
    case Simd::kAvx2:
      return kAvx2Kernels;
    case Simd::kGeneric:
      break;
  }
  return kPortableKernels;
}

}  // namespace astra::core
