// Which SIMD kernel builds this compiler/target can produce.
//
// The x86 kernels are compiled per instruction set with `#pragma GCC target`
// inside one translation unit each (never with -march flags), so the library
// runs on any x86-64 and picks the kernels at run time. Other compilers or
// architectures get the portable generic kernels only.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ASTRA_X86_SIMD_KERNELS 1
#else
#define ASTRA_X86_SIMD_KERNELS 0
#endif
