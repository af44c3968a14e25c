// SIMD nearest-codeword (argmin) kernels behind vq_encode, one build per
// instruction set, selected at run time.
//
// Scores are s_k = ||e_k||^2 - 2 x.e_k; every kernel returns, per row, the
// lowest index k among the minimal scores. A NaN score never wins; when no
// score is below +inf the result is index 0.
#pragma once

#include <cstdint>

#include "core/cpu_features.h"

namespace astra::core {

// Fused path: scores are computed in registers from a packed codebook and
// never stored.
//
// Packed codebook of one group (see vq_encode.cpp): panels of P = panel_width
// codewords; panel p holds, for d in [0, Dg), the P values -2 * e_{pP+j}[d]
// contiguously: panels[(p * Dg + d) * P + j]. norms[p * P + j] = ||e||^2, and
// +inf for the padding codewords past K (zero vectors), so they never win.
struct PackedArgminArgs {
  const float* x;          // row 0, first feature of the group
  int64_t x_row_stride;    // floats between rows (any value >= 0)
  int64_t rows;
  int64_t width;           // Dg
  const float* panels;     // (num_panels, Dg, P)
  const float* norms;      // (num_panels * P,)
  int64_t num_panels;
  int32_t* best;           // (rows,) out: argmin index
};

// GEMM path: dot products x.e of a block of codewords were computed by a
// GEMM; this folds one block into the running per-row (score, index) minima.
struct ScoresArgminArgs {
  const float* dots;       // (rows, block) with row stride ld: x_r . e_{first + j}
  int64_t ld;
  int64_t rows;
  int64_t block;
  const float* norms;      // (block,) ||e_{first + j}||^2
  int32_t first;           // codeword index of column 0
  float* best_score;       // (rows,) in/out running minimum (start at +inf)
  int32_t* best_index;     // (rows,) in/out its index (start at 0)
};

// Rules 2 and 3 of vq_encode for rows whose argmin is known: code 0 where
// ||x_g||^2 is not finite, and sqdist = sum_d (x_g[d] - e_code[d])^2.
struct FinishArgs {
  const float* x;          // row 0, first feature of the group
  int64_t x_row_stride;
  int64_t rows;
  int64_t width;           // Dg
  const float* codebook;   // (K, Dg) row-major, this group's
  const int32_t* best;     // (rows,) argmin of the scores
  int32_t* codes;          // out: codes[r * out_stride]
  float* sqdist;           // out: sqdist[r * out_stride]
  int64_t out_stride;
};

struct ArgminKernels {
  Simd simd;
  int panel_width;  // P, codewords per packed panel
  // Packs a (k, width) row-major codebook into ceil(k / P) panels + norms.
  void (*pack)(const float* codebook, int64_t k, int64_t width, float* panels, float* norms);
  void (*packed)(const PackedArgminArgs&);
  void (*scores)(const ScoresArgminArgs&);
  void (*finish)(const FinishArgs&);
};

// Kernels for `simd`; throws std::invalid_argument when this CPU or build
// cannot run them.
const ArgminKernels& argmin_kernels(Simd simd);

// Per-ISA tables (argmin_kernels_<isa>.cpp); nullptr when not compiled in.
const ArgminKernels* argmin_kernels_avx512();
const ArgminKernels* argmin_kernels_avx2();
const ArgminKernels* argmin_kernels_generic();

}  // namespace astra::core
