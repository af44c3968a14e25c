// Nearest codeword from int8 estimates of the scores, with AVX-512 VNNI.
//
// Scores s_k = ||e_k||^2 - 2 x.e_k are estimated from 8-bit copies of x and
// the codebook (x ~ s_x * x~, e ~ s_e * e~ with x~, e~ in [-127, 127];
// x~ + 128 as unsigned bytes) with VPDPBUSD: four multiply-adds per 32-bit
// lane and instruction, against one for an fp32 FMA:
//     est_k = fma(-2 s_x s_e, x~.e~_k, ||e_k||^2)   (x~.e~_k exact in int32).
// Rounding moves each estimate by at most
//     B = s_x s_e (||x~||_1 + max_k ||e~_k||_1 + Dg / 2)   (+ fp32 slack),
// so the exact minimiser's estimate lies within 2B of the smallest estimate.
// Two kernels use the estimates:
//   int8_argmin           exact: those candidates (about 20 of 1024 per row on
//                         ViT-Base activations at Dg = 768) are re-scored in fp32
//                         from the original vectors, lowest index on ties: the
//                         fp32 argmin of argmin_kernels.h whatever the data.
//   int8_argmin_estimate  approximate: the lowest index of the smallest estimate,
//                         folded in registers; its true score is within 2B of the
//                         best one. int8_argmin_estimate_portable (any CPU) gives
//                         bit-identical codes.
//
// Quantization grid (both kernels, and reference.vq_encode_int8): for a vector
// v (a row group of x, or a whole group's finite codewords), step s =
// max(peak / 127, 2^-100) with peak = max |v| in fp32, and v~ = round-half-even
// (v * (1 / s)) in fp32. A codeword is finite when its fp32 ||e||^2 is; the
// others get +inf estimates (never chosen) and zero bytes. ||e||^2 is
// accumulated feature by feature with fused multiply-adds from 0.
//
// Packed codebook of one group: panels of kInt8PanelWidth codewords; panel p
// holds, for each quad q of features, the int32 words made of the 4 bytes
// e~[4q .. 4q + 3] of each of its codewords: panels[(p * quads + q) * P + j].
// norms[p * P + j] = ||e||^2 in fp32, +inf for padding and for codewords that
// are not finite (they never win); offsets[p * P + j] = 128 * sum_d e~[d],
// which the unsigned bytes of x add to every dot product (int32, exact).
#pragma once

#include <cstdint>

namespace astra::core {

constexpr int64_t kInt8PanelWidth = 32;

// True when this build has the kernels and this CPU runs AVX-512 VNNI.
bool int8_argmin_supported();

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
  const int32_t* panels;  // (num_panels, ceil(Dg / 4), P)
  const float* norms;     // (num_panels * P,)
  const int32_t* offsets;  // (num_panels * P,)
  int64_t num_panels;
  Int8Grid grid;
  const float* codebook;  // (K, Dg) fp32 row-major: the exact re-scoring
  int64_t codes;          // K
  int64_t width;          // Dg
};

// Packs a (k, width) fp32 codebook into panels (ceil(k / P) * ceil(width / 4)
// * P words), norms and offsets (ceil(k / P) * P each); returns its grid.
// The portable build writes the same bytes.
Int8Grid int8_pack(const float* codebook, int64_t k, int64_t width, int32_t* panels, float* norms,
                   int32_t* offsets);
Int8Grid int8_pack_portable(const float* codebook, int64_t k, int64_t width, int32_t* panels,
                            float* norms, int32_t* offsets);

// best[r] = argmin for rows r < rows of x (row stride x_row_stride floats).
// Rows that are not finite get 0 (vq_encode's rule 2 overrides them anyway).
void int8_argmin(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                 int32_t* best);

// best[r] = lowest index of the smallest estimate. Rows that are not finite get an
// unspecified index (vq_encode gives their groups code 0).
void int8_argmin_estimate(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                          int32_t* best);
void int8_argmin_estimate_portable(const Int8Codebook& book, const float* x, int64_t x_row_stride,
                                   int64_t rows, int32_t* best);

}  // namespace astra::core
