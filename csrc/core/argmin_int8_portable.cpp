// Portable build of the int8-estimate argmin and of its kQuads codebook packing
// (argmin_int8.h): plain C++ that writes the same bytes as the AVX-512 VNNI
// build, and picks the same codes as every SIMD build, on any CPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/argmin_int8.h"

namespace astra::core {

namespace {

constexpr int64_t P = kInt8PanelWidth;
constexpr float kLevels = 127.0f;
constexpr float kInf = std::numeric_limits<float>::infinity();

// Round half to even in the default rounding mode, as the vector build's cvtps2dq.
int32_t to_grid(float v, float inv_step) { return static_cast<int32_t>(std::nearbyint(v * inv_step)); }

// Codeword j's first word in the packed panels; its quad q is at [q * P].
template <class W>
W* column_of(W* panels, int64_t quads, int64_t j) {
  return panels + (j / P) * quads * P + j % P;
}

}  // namespace

Int8Grid int8_pack_portable(const float* codebook, int64_t k, int64_t width, int32_t* panels, float* norms,
                            int32_t* offsets) {
  const int64_t quads = (width + 3) / 4;
  const int64_t padded = (k + P - 1) / P * P;
  float peak = 0.0f;
  float norm_peak = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    const float* e = codebook + j * width;
    float norm = 0.0f;
    float big = 0.0f;
    for (int64_t d = 0; d < width; ++d) {
      norm = std::fma(e[d], e[d], norm);
      big = std::max(big, std::fabs(e[d]));
    }
    const bool finite = norm < kInf;  // false for NaN, inf and overflowing squares
    norms[j] = finite ? norm : kInf;
    if (finite) {
      peak = std::max(peak, big);
      norm_peak = std::max(norm_peak, norm);
    }
  }
  std::fill(norms + k, norms + padded, kInf);
  std::fill(offsets, offsets + padded, 0);
  std::memset(panels, 0, sizeof(int32_t) * static_cast<size_t>(padded * quads));
  const float step = std::max(peak / kLevels, kInt8MinStep);
  const float inv_step = 1.0f / step;
  int32_t l1_max = 0;
  for (int64_t j = 0; j < k; ++j) {
    if (!(norms[j] < kInf)) continue;
    const float* e = codebook + j * width;
    int32_t* column = column_of(panels, quads, j);
    int32_t sum = 0;
    int32_t l1 = 0;
    for (int64_t q = 0; q < quads; ++q) {
      uint32_t word = 0;
      for (int64_t b = 0; b < 4 && 4 * q + b < width; ++b) {
        const int32_t v = to_grid(e[4 * q + b], inv_step);
        sum += v;
        l1 += std::abs(v);
        word |= (static_cast<uint32_t>(v) & 0xFFu) << (8 * b);
      }
      column[q * P] = static_cast<int32_t>(word);
    }
    offsets[j] = 128 * sum;
    l1_max = std::max(l1_max, l1);
  }
  return Int8Grid{step, static_cast<float>(l1_max), norm_peak};
}

void int8_argmin_estimate_portable(const Int8Codebook& book, const float* x, int64_t x_row_stride,
                                   int64_t rows, int32_t* best) {
  const int64_t width = book.width;
  const int64_t quads = (width + 3) / 4;
  std::vector<int32_t> xq(static_cast<size_t>(width));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * x_row_stride;
    float peak = 0.0f;
    bool finite = true;
    for (int64_t d = 0; d < width; ++d) {
      finite = finite && std::isfinite(xr[d]);
      peak = std::max(peak, std::fabs(xr[d]));
    }
    best[r] = 0;
    if (!finite) continue;
    const float step = std::max(peak / kLevels, kInt8MinStep);
    const float inv_step = 1.0f / step;
    for (int64_t d = 0; d < width; ++d) xq[static_cast<size_t>(d)] = to_grid(xr[d], inv_step);
    const float alpha = -2.0f * step * book.grid.scale;
    float lowest = kInf;
    for (int64_t j = 0; j < book.codes; ++j) {
      const int32_t* column = column_of(book.panels, quads, j);
      int32_t dot = 0;
      for (int64_t q = 0; q < quads; ++q) {
        const auto word = static_cast<uint32_t>(column[q * P]);
        for (int64_t b = 0; b < 4 && 4 * q + b < width; ++b) {
          dot += xq[static_cast<size_t>(4 * q + b)] * static_cast<int8_t>((word >> (8 * b)) & 0xFFu);
        }
      }
      const float score = std::fma(alpha, static_cast<float>(dot), book.norms[j]);
      if (score < lowest) {  // increasing j + strict `<`: the lowest index of the minimum
        lowest = score;
        best[r] = static_cast<int32_t>(j);
      }
    }
  }
}

}  // namespace astra::core
