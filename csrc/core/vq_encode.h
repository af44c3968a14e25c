// Grouped nearest-codeword quantization (vq_encode), torch-free.
//
// Contract (astra_kernels/reference.py, rules 1-3), per row r and group g
// with x_g = x[r, g*Dg:(g+1)*Dg]:
//   1. code = argmin_k ||e_k||^2 - 2 x_g.e_k (fp32), lowest k on ties;
//   2. if sum(x_g^2) is not finite, code = 0;
//   3. sqdist = sum_d (x_g[d] - e_code[d])^2, computed directly in fp32.
//
// Three paths compute rule 1 (choose_encode_path):
//   kFused       SIMD micro-kernel over a per-call packed copy of the
//                codebooks; scores live only in registers.
//   kInt8        with AVX-512 VNNI, groups of at least kInt8MinWidth
//                features: int8 estimates of every score, then the few
//                codewords the rounding cannot rule out re-scored in fp32
//                (argmin_int8.h).
//   kBlockedGemm for wide groups: a caller-supplied GEMM computes x.e for a
//                block of rows x codewords into a buffer, then a SIMD pass
//                folds it into the running argmin.
// A fourth path replaces rule 1 by its int8 estimate (vq_encode_int8):
//   kInt8Estimate code = the lowest index of the smallest int8-estimated score
//                (argmin_int8.h), an approximate nearest codeword; the kernels
//                of int8_kernels(simd): AVX-512 VNNI, AVX2, or portable code,
//                all bit-identical.
// Usage: build an EncodePlan, run prepare(t) for every t < prepare_tasks()
// (independent: in parallel if wanted), then encode_rows() over any split of
// (group, rows).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/argmin_int8.h"
#include "core/argmin_kernels.h"
#include "core/cpu_features.h"

namespace astra::core {

// C (m, n) = A (m, k) . B^T with B (n, k); all fp32 row-major with leading
// dimensions lda, ldb, ldc (in elements).
using GemmABt = void (*)(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                         const float* b, int64_t ldb, float* c, int64_t ldc);

enum class EncodePath { kFused, kInt8, kInt8Estimate, kBlockedGemm };

// Smallest group width Dg that takes the blocked-GEMM path for the given
// kernels: where MKL sgemm + argmin overtakes the fused kernel, measured
// single-thread per instruction set, MKL restricted to the same one
// (MKL_ENABLE_INSTRUCTIONS; the crossovers: benchmarks/RESULTS.md, tuning
// constants). For narrow groups the fused kernel wins by far, since a GEMM of
// inner size Dg is mostly overhead.
int64_t gemm_min_width(Simd simd);

// Narrowest group that takes the int8 path on kAvx512Vnni, the measured
// crossover with the fused fp32 kernel (benchmarks/RESULTS.md, tuning
// constants): narrow groups pay the per-row quantize / min / re-score passes
// on too few multiply-adds. From gemm_min_width on the blocked GEMM still
// wins, and wider groups give the int8 estimates too many candidates.
constexpr int64_t kInt8MinWidth = 64;

EncodePath choose_encode_path(int64_t width, Simd simd);

// Whether the int8-estimate path (approximate codes) is faster than the exact
// path of choose_encode_path, i.e. worth choosing when either will do: with
// AVX-512 VNNI (VPDPBUSD: four multiply-adds per lane and instruction). The
// AVX2 kernels (VPMADDWD + VPADDD: two per lane in two instructions) issue as
// many instructions per multiply-add as the fp32 FMA kernels; measured on an
// AMD EPYC with one vector integer multiplier (Zen 1), single-thread, K = 1024,
// Dg = 24 and 768, they run at about the exact search's speed, so exact codes
// cost nothing more there.
bool int8_estimate_beats_exact(Simd simd);

struct VqShape {
  int64_t groups;  // G
  int64_t codes;   // K
  int64_t width;   // Dg
};

class EncodePlan {
 public:
  // codebooks: (G, K, Dg) contiguous fp32; it must outlive the plan.
  EncodePlan(const float* codebooks, VqShape shape, Simd simd, EncodePath path);

  EncodePath path() const { return path_; }
  const VqShape& shape() const { return shape_; }

  // Per-call codebook preparation, split into independent tasks: packing +
  // norms of a range of panels of one group (fused), the int8 panels of one
  // group (int8, int8 estimate), or norms + duplicate map of one group (GEMM).
  int64_t prepare_tasks() const;
  void prepare(int64_t task);

  // Rows [row_begin, row_end) of group g. x: (N, G*Dg) fp32 with unit feature
  // stride and row stride x_row_stride; codes, sqdist: (N, G) contiguous.
  // `gemm` is used by the kBlockedGemm path only (may be null otherwise).
  void encode_rows(const float* x, int64_t x_row_stride, int64_t g, int64_t row_begin,
                   int64_t row_end, int32_t* codes, float* sqdist, GemmABt gemm) const;

 private:
  struct AlignedFree {
    void operator()(void* p) const;
  };

  int64_t panels_per_task() const;
  int32_t* int8_group_panels(int64_t g) const;
  void encode_rows_gemm(const float* x, int64_t x_row_stride, int64_t g, int64_t rows,
                        int32_t* best, GemmABt gemm) const;

  const float* codebooks_;
  VqShape shape_;
  const ArgminKernels& kernels_;
  EncodePath path_;
  const Int8Kernels* int8_kernels_ = nullptr;  // int8*: pack and scan the int8 panels
  bool int8() const { return int8_kernels_ != nullptr; }
  int64_t int8_group_words() const;  // int8*: panel words per group

  int64_t num_panels_ = 0;                       // fused, int8*: panels per group
  std::unique_ptr<float[], AlignedFree> panels_;  // fused: (G, num_panels, Dg, P)
  std::unique_ptr<int32_t[], AlignedFree> int8_panels_;  // int8*: (G, num_panels, int8_words(Dg), P)
  std::vector<int32_t> int8_offsets_;            // int8* with the kQuads layout: (G, num_panels * P)
  std::vector<Int8Grid> int8_grids_;             // int8*: (G,)
  std::vector<float> norms_;                     // fused, int8*: (G, num_panels * P); GEMM: (G, K)
  std::vector<int32_t> first_duplicate_;         // GEMM: (G, K) lowest index of an identical codeword
};

}  // namespace astra::core
