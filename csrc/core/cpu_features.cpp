#include "core/cpu_features.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "core/argmin_int8.h"
#include "core/simd_targets.h"

namespace astra::core {

namespace {

Simd simd_from_env() {
  const Simd best = detect_simd();
  const char* value = std::getenv("ASTRA_CPU_SIMD");
  if (value == nullptr || *value == '\0') return best;
  for (Simd s : {Simd::kGeneric, Simd::kAvx2, Simd::kAvx512, Simd::kAvx512Vnni}) {
    if (std::strcmp(value, simd_name(s)) == 0) return s < best ? s : best;
  }
  throw std::invalid_argument(std::string("ASTRA_CPU_SIMD=") + value +
                              " is not one of generic, avx2, avx512, avx512_vnni");
}

}  // namespace

Simd detect_simd() {
#if ASTRA_X86_SIMD_KERNELS
  __builtin_cpu_init();
  if (avx512_vnni_supported()) return Simd::kAvx512Vnni;
  if (__builtin_cpu_supports("avx512f")) return Simd::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Simd::kAvx2;
#endif
  return Simd::kGeneric;
}

Simd active_simd() {
  static const Simd simd = simd_from_env();
  return simd;
}

bool simd_supported(Simd simd) { return simd <= detect_simd(); }

const char* simd_name(Simd simd) {
  switch (simd) {
    case Simd::kAvx512Vnni:
      return "avx512_vnni";
    case Simd::kAvx512:
      return "avx512";
    case Simd::kAvx2:
      return "avx2";
    case Simd::kGeneric:
      break;
  }
  return "generic";
}

}  // namespace astra::core
