// Nearest codeword from int8 estimates of the scores.
//
// Scores s_k = ||e_k||^2 - 2 x.e_k are estimated from 8-bit copies of x and
// the codebook (x ~ s_x * x~, e ~ s_e * e~ with x~, e~ in [-127, 127]) with
// integer multiply-adds, several per 32-bit lane and instruction against one
// for an fp32 FMA:
//     est_k = fma(-2 s_x s_e, x~.e~_k, ||e_k||^2)   (x~.e~_k exact in int32).
// Rounding moves each estimate by at most
//     B = s_x s_e (||x~||_1 + max_k ||e~_k||_1 + Dg / 2)   (+ fp32 slack),
// so the exact minimiser's estimate lies within 2B of the smallest estimate.
// Two kernels use the estimates:
//   argmin    exact: those candidates (about 20 of 1024 per row on ViT-Base
//             activations at Dg = 768) are re-scored in fp32 from the original
//             vectors, lowest index on ties: the fp32 argmin of argmin_kernels.h
//             whatever the data.
//   estimate  approximate: the lowest index of the smallest estimate, folded in
//             registers; its true score is within 2B of the best one. Every
//             build (AVX-512 VNNI, AVX2, portable) gives bit-identical codes.
//
// Quantization grid (every kernel, and reference.vq_encode_int8): for a vector
// v (a row group of x, or a whole group's finite codewords), step s =
// max(peak / 127, 2^-100) with peak = max |v| in fp32, and v~ = round-half-even
// (v * (1 / s)) in fp32. A codeword is finite when its fp32 ||e||^2 is; the
// others get +inf estimates (never chosen) and zero bytes. ||e||^2 is
// accumulated feature by feature with fused multiply-adds from 0.
//
// Packed codebook of one group, in one of two layouts (Int8Layout). Both hold
// panels of P codewords (P = the kernels' panel_width) and
// norms[p * P + j] = ||e||^2 in fp32, +inf for padding and for codewords that
// are not finite (they never win).
//   kQuads (AVX-512 VNNI and portable kernels, P = kInt8PanelWidth): panel p
//     holds, for each quad q of features, the int32 words made of the 4 bytes
//     e~[4q .. 4q + 3] of each of its codewords: panels[(p * quads + q) * P + j];
//     offsets[p * P + j] = 128 * sum_d e~[d], which the kernels' unsigned bytes
//     x~ + 128 add to every dot product (int32, exact).
//   kPairs (AVX2 kernels, P = kInt8PairPanelWidth): panel p holds, for each pair
//     q of features, the int32 words made of the two int16 e~[2q] (low half) and
//     e~[2q + 1] (high half) of each of its codewords:
//     panels[(p * pairs + q) * P + j]; signed by signed products, no offsets.
// Features past Dg are zero in both.
#pragma once

#include <cstdint>

#include "core/cpu_features.h"

namespace astra::core {

enum class Int8Layout { kQuads, kPairs };

constexpr int64_t kInt8PanelWidth = 32;      // kQuads
constexpr int64_t kInt8PairPanelWidth = 16;  // kPairs

// Words per codeword in a layout: ceil(Dg / 4) quads or ceil(Dg / 2) pairs.
constexpr int64_t int8_words(Int8Layout layout, int64_t width) {
  return layout == Int8Layout::kQuads ? (width + 3) / 4 : (width + 1) / 2;
}

// True when this build has the AVX-512 VNNI kernels and this CPU runs them.
bool avx512_vnni_supported();

// Smallest quantization step: keeps 1 / s finite for subnormal peaks.
constexpr float kInt8MinStep = 0x1p-100f;

// Widest group of the int8 paths: the int32 lanes' sums, up to 255 * 127 per
// feature, cannot overflow.
constexpr int64_t kInt8MaxWidth = 65536;

// Constants of one packed codebook that bound the estimates' rounding.
struct Int8Grid {
  float scale;      // s_e
  float max_l1;     // max_k ||e~_k||_1
  float norm_peak;  // largest finite ||e_k||^2 (the fp32 slack of an estimate)
};

struct Int8Codebook {
  const int32_t* panels;   // (num_panels, int8_words(layout, Dg), P)
  const float* norms;      // (num_panels * P,)
  const int32_t* offsets;  // (num_panels * P,) kQuads; unused for kPairs
  int64_t num_panels;
  Int8Grid grid;
  const float* codebook;  // (K, Dg) fp32 row-major: the exact re-scoring
  int64_t codes;          // K
  int64_t width;          // Dg
};

// Packs a (k, width) fp32 codebook into panels (ceil(k / P) * int8_words(layout,
// width) * P words), norms and (kQuads only: null is fine for kPairs) offsets
// (ceil(k / P) * P each); returns its grid.
using Int8Pack = Int8Grid (*)(const float* codebook, int64_t k, int64_t width, int32_t* panels, float* norms,
                              int32_t* offsets);
// best[r] for rows r < rows of x (row stride x_row_stride floats).
using Int8Argmin = void (*)(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                            int32_t* best);

// The int8 kernels of one instruction set and the layout they read.
struct Int8Kernels {
  const char* name;  // "avx512_vnni", "avx2" or "portable"
  Int8Layout layout;
  int64_t panel_width;  // P
  Int8Pack pack;
  // Lowest index of the smallest estimate. Rows that are not finite get an
  // unspecified index (vq_encode gives their groups code 0).
  Int8Argmin estimate;
  // Exact argmin (prefilter + fp32 re-scoring); rows that are not finite get 0
  // (vq_encode's rule 2 overrides them anyway). Null where the set has none.
  Int8Argmin argmin;
};

// The int8 kernels that run with `simd`'s kernels: AVX-512 VNNI; AVX2 (also for
// kAvx512, whose CPUs run AVX2); portable code for kGeneric. Throws
// std::invalid_argument when this CPU or build cannot run them.
const Int8Kernels& int8_kernels(Simd simd);

// The kQuads packing (both builds write the same bytes) and kernels.
Int8Grid int8_pack_portable(const float* codebook, int64_t k, int64_t width, int32_t* panels, float* norms,
                            int32_t* offsets);
void int8_argmin_estimate_portable(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                                   int32_t* best);
Int8Grid int8_pack_avx512vnni(const float* codebook, int64_t k, int64_t width, int32_t* panels, float* norms,
                              int32_t* offsets);
void int8_argmin_avx512vnni(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                            int32_t* best);
void int8_argmin_estimate_avx512vnni(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                                     int32_t* best);

// The kPairs packing (offsets unused) and kernel.
Int8Grid int8_pack_avx2(const float* codebook, int64_t k, int64_t width, int32_t* panels, float* norms,
                        int32_t* offsets);
void int8_argmin_estimate_avx2(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                               int32_t* best);

}  // namespace astra::core
