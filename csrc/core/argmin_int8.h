// Nearest codeword with an int8 prefilter (AVX-512 VNNI), exact in fp32.
//
// Scores s_k = ||e_k||^2 - 2 x.e_k are first estimated from 8-bit copies of
// x and the codebook (x ~ s_x * x~, e ~ s_e * e~ with x~, e~ in [-127, 127];
// x~ + 128 as unsigned bytes) with VPDPBUSD: four multiply-adds per 32-bit
// lane and instruction, against one for an fp32 FMA. Rounding moves each
// estimate by at most
//     B = s_x s_e (||x~||_1 + max_k ||e~_k||_1 + Dg / 2)   (+ fp32 slack),
// so the exact minimiser's estimate lies within 2B of the smallest estimate.
// Those candidates (about 20 of 1024 per row on ViT-Base activations at
// Dg = 768) are re-scored in fp32 from the original vectors, lowest index on
// ties: the result is the fp32 argmin of argmin_kernels.h whatever the data
// (clustered codewords only mean more candidates).
//
// Packed codebook of one group: panels of kInt8PanelWidth codewords; panel p
// holds, for each quad q of features, the int32 words made of the 4 bytes
// e~[4q .. 4q + 3] of each of its codewords: panels[(p * quads + q) * P + j].
// norms[p * P + j] = ||e||^2 in fp32, +inf for padding and for codewords that
// are not finite (they never win); offsets[p * P + j] = 128 * sum_d e~[d],
// which the unsigned bytes of x add to every dot product.
#pragma once

#include <cstdint>

namespace astra::core {

constexpr int64_t kInt8PanelWidth = 32;

// True when this build has the kernels and this CPU runs AVX-512 VNNI.
bool int8_argmin_supported();

// Constants of one packed codebook that bound the estimates' rounding.
struct Int8Grid {
  float scale;      // s_e
  float max_l1;     // max_k ||e~_k||_1
  float norm_peak;  // largest finite ||e_k||^2 (the fp32 slack of an estimate)
};

struct Int8Codebook {
  const int32_t* panels;  // (num_panels, ceil(Dg / 4), P)
  const float* norms;     // (num_panels * P,)
  const float* offsets;   // (num_panels * P,)
  int64_t num_panels;
  Int8Grid grid;
  const float* codebook;  // (K, Dg) fp32 row-major: the exact re-scoring
  int64_t codes;          // K
  int64_t width;          // Dg
};

// Packs a (k, width) fp32 codebook into panels (ceil(k / P) * ceil(width / 4)
// * P words), norms and offsets (ceil(k / P) * P floats each); returns its grid.
Int8Grid int8_pack(const float* codebook, int64_t k, int64_t width, int32_t* panels, float* norms,
                   float* offsets);

// best[r] = argmin for rows r < rows of x (row stride x_row_stride floats).
// Rows that are not finite get 0 (vq_encode's rule 2 overrides them anyway).
void int8_argmin(const Int8Codebook& book, const float* x, int64_t x_row_stride, int64_t rows,
                 int32_t* best);

}  // namespace astra::core
