// Runtime choice of the SIMD instruction set used by the CPU kernels.
#pragma once

namespace astra::core {

// Instruction sets with a kernel build, weakest first. kAvx512Vnni runs the
// AVX-512 kernels plus the int8 nearest-codeword prefilter (argmin_int8.h);
// the int8-estimate kernels run with AVX-512 VNNI, with AVX2 on kAvx2 and
// kAvx512, and as portable code on kGeneric.
enum class Simd { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3 };

// Best instruction set this CPU (and this build) supports.
Simd detect_simd();

// detect_simd(), capped by the environment variable ASTRA_CPU_SIMD
// ("generic", "avx2", "avx512" or "avx512_vnni"), read once. Asking for more than the CPU
// supports gives what it supports; an unknown value throws std::invalid_argument.
Simd active_simd();

// True when kernels for `simd` are compiled in and the CPU can run them.
bool simd_supported(Simd simd);

const char* simd_name(Simd simd);

}  // namespace astra::core
