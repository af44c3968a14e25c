// Runtime choice of the SIMD instruction set used by the CPU kernels.
#pragma once

namespace astra::core {

// Instruction sets with a kernel build, weakest first.
enum class Simd { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// Best instruction set this CPU (and this build) supports.
Simd detect_simd();

// detect_simd(), capped by the environment variable ASTRA_CPU_SIMD
// ("generic", "avx2" or "avx512"), read once. Asking for more than the CPU
// supports gives what it supports; an unknown value throws std::invalid_argument.
Simd active_simd();

// True when kernels for `simd` are compiled in and the CPU can run them.
bool simd_supported(Simd simd);

const char* simd_name(Simd simd);

}  // namespace astra::core
